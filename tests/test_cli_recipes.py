"""What a pip user types: recipes by name (`semask config`), `semask list-models`, close matches for
typos, one set of common flags on the long-running commands, and predict inputs counted once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NAMED_TINY
from PIL import Image

import semask
from semask.cli import _training_overrides, build_parser, main
from semask.config import get_recipe, load_config, recipe_names

LONG_RUNNING = {  # command -> the common flags it takes (--amp / --device only where they apply)
    "train": {"--no-progress", "--device", "--amp"},
    "eval": {"--no-progress", "--device", "--amp"},
    "predict": {"--no-progress", "--device", "--amp"},
    "demo": {"--no-progress", "--device", "--amp"},
    "explain": {"--device", "--amp"},
    "serve": {"--device", "--amp"},
    "check-data": {"--no-progress"},
    "download": {"--no-progress"},
}


def _flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {opt for action in sub.choices[command]._actions for opt in action.option_strings}


def test_config_lists_every_recipe_with_its_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split()[1] for line in lines[1:] if line and not line.startswith("semask ")}
    assert set(listed) == set(recipe_names())
    assert listed["semask_swin_l_mask2former_ade20k"] == "semask_swin_l_mask2former"
    rows = {line.split()[0]: line.split()[2:] for line in lines[1:] if line and not line.startswith("semask ")}
    assert rows["semask_swin_t_fpn_ade20k"] == ["ade20k", "80,000", "42.06", "/", "43.36"]  # paper Table 2
    assert rows["swin_t_fpn_ade20k"] == ["ade20k", "80,000", "41.48", "/", "42.89"]  # a baseline: no weights
    assert rows["trans_swin_t_fpn_ade20k"] == ["ade20k", "80,000", "41.42", "/", "-"]  # Table 3: s.s. only
    assert rows["demo"][-1] == "-"


@pytest.mark.parametrize("name", recipe_names())
def test_config_name_prints_yaml_that_train_accepts_unchanged(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["config", name]) == 0
    path = tmp_path / f"{name}.yaml"
    path.write_text(capsys.readouterr().out)
    assert load_config(path) == get_recipe(name)


def test_config_name_applies_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "semask_mit_b0_ade20k", "train.batch_size=3", "data.root=/x"]) == 0
    path = tmp_path / "mine.yaml"
    path.write_text(capsys.readouterr().out)
    cfg = load_config(path)
    assert (cfg.train.batch_size, cfg.data.root) == (3, "/x")
    assert cfg == get_recipe("semask_mit_b0_ade20k", ["train.batch_size=3", "data.root=/x"])


def test_list_models_counts_parameters_and_names_released_weights(capsys: pytest.CaptureFixture) -> None:
    assert main(["list-models", "semask_swin_t_fpn"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["model", "parameters", "classes"]
    name, params, classes, weights = row.split(maxsplit=3)
    model = semask.create_model(name)
    assert int(params.replace(",", "")) == sum(p.numel() for p in model.parameters()) == 34_655_748
    assert int(classes) == 150
    assert weights.split(", ") == ["ade20k", "cityscapes", "coco_stuff10k"]
    assert main(["list-models", "*mask2former_msfapn"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split()[0] for r in rows] == semask.list_models("*mask2former_msfapn")


@pytest.mark.parametrize(
    ("argv", "closest"),
    [
        (["info", "semask_swin_tt_fpn"], "closest: semask_swin_t_fpn,"),
        (["train", "semask_swin_tt_fpn_ade20k"], "closest: semask_swin_t_fpn_ade20k"),
        (["config", "semask_mit_b9_ade20k"], "closest: semask_mit_b5_ade20k,"),
        (["download", "semask_swin_t_fpn.ade2k"], "semask_swin_t_fpn.ade20k"),
    ],
)
def test_unknown_names_get_the_closest_matches(argv: list[str], closest: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and closest in err, err
    assert "mask2former" not in err or "mask2former" in argv[1]


@pytest.mark.parametrize("command", sorted(LONG_RUNNING))
def test_long_running_commands_share_the_common_flags(command: str) -> None:
    common = {"--no-progress", "--device", "--amp"}
    assert _flags(command) & common == LONG_RUNNING[command]


@pytest.mark.parametrize(
    ("flags", "overrides"),
    [
        ([], []),
        (["--device", "cpu"], ["train.device=cpu"]),
        (["--amp"], ["train.amp=true", "train.amp_dtype=bf16"]),
        (["--device", "cuda", "--amp", "fp16"], ["train.device=cuda", "train.amp=true", "train.amp_dtype=fp16"]),
    ],
)
def test_training_device_and_amp_flags_become_config_overrides(flags: list[str], overrides: list[str]) -> None:
    for command in ("train", "demo"):
        args = build_parser().parse_args([command, *(["demo"] if command == "train" else []), *flags])
        assert _training_overrides(args) == overrides
    cfg = get_recipe("demo", _training_overrides(build_parser().parse_args(["demo", *flags])))
    assert (cfg.train.amp, cfg.train.amp_dtype) == (("--amp" in flags), "fp16" if "fp16" in flags else "bf16")


def test_training_refuses_a_numbered_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "demo", "--device", "cuda:1", "--work-dir", str(tmp_path / "w")]) == 1
    assert "training takes auto, cpu or cuda" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_predict_segments_a_file_named_with_its_folder_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", **NAMED_TINY)
    model.eval().save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(
            images / f"{name}.png"
        )
    inputs = [str(images / "a.png"), str(images), str(images / ".." / "images" / "b.png")]
    argv = ["predict", str(tmp_path / "model"), *inputs, "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("2 image(s)")
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == ["a.png", "b.png"]
