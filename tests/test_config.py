"""Experiment configs: YAML + _base_ + overrides, type errors, and the shipped recipes vs the spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import TINY

import semask
from semask.cli import demo_config
from semask.config import RECIPES_DIR, ConfigError, ExperimentConfig, dump_config, get_recipe, load_config, recipe_names

CONFIGS = RECIPES_DIR

# The official values of every recipe (with the official file paths) live in
# tests/official_recipes.py; tests/test_recipes_official.py checks the recipes field by field.
DATASETS = ("ade20k", "cityscapes", "coco_stuff10k")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_every_table2_model_has_a_config_per_dataset() -> None:
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    for variant in "tsbl":
        for prefix in ("swin", "semask_swin"):
            for dataset in DATASETS:
                assert f"{prefix}_{variant}_fpn_{dataset}" in names


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_under_configs_resolves(path: Path) -> None:
    cfg = load_config(path)
    if path.parent.name != "_base_":  # complete experiments name a registered model
        assert cfg.model.name in semask.list_models()


def test_recipes_by_name(tmp_path: Path) -> None:
    """Stems are unique across the subfolders; a name, a name with its folder and a YAML whose
    ``_base_`` names a recipe all resolve to the packaged file; a typo gets the close matches."""
    files = [p for p in CONFIGS.rglob("*.yaml") if "_base_" not in p.parts]
    assert len(recipe_names()) == len(files) == len({p.stem for p in files}) >= 60
    assert load_config("semask_mit_b0_ade20k") == load_config(CONFIGS / "mit" / "semask_mit_b0_ade20k.yaml")
    assert get_recipe("ablations/trans_swin_t_fpn_ade20k").model.name == "trans_swin_t_fpn"
    assert get_recipe("demo", [f"data.root={tmp_path}"]) == demo_config(str(tmp_path))
    _write(tmp_path / "mine.yaml", "_base_: semask_swin_t_fpn_ade20k\ntrain: {batch_size: 2}\n")
    mine = load_config(tmp_path / "mine.yaml")
    assert mine.train.batch_size == 2 and mine.model == get_recipe("semask_swin_t_fpn_ade20k").model
    with pytest.raises(ConfigError, match="closest: semask_swin_t_fpn_ade20k"):
        load_config("semask_swin_tt_fpn_ade20k")


def test_base_inheritance_and_overrides(tmp_path: Path) -> None:
    _write(tmp_path / "bases" / "data.yaml", "data:\n  type: folder\n  crop_size: [64, 64]\noptim: {lr: 0.5}\n")
    _write(tmp_path / "bases" / "sched.yaml", "_base_: data.yaml\nschedule: {iters: 100, warmup_iters: 10}\n")
    cfg_path = _write(tmp_path / "exp.yaml", "_base_: [bases/sched.yaml]\noptim: {weight_decay: 0.25}\n")
    cfg = load_config(
        cfg_path,
        [
            "optim.lr=1e-4",
            "model.overrides.depths=[1,1,1,1]",
            "train.clip_grad=null",
            "eval.scales=[0.5, 1]",
            "data.val_split=null",
        ],
    )
    assert cfg.data.type == "folder" and cfg.data.crop_size == (64, 64)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)  # YAML reads 1e-4 as a string
    assert cfg.optim.weight_decay == 0.25
    assert cfg.schedule.iters == 100 and cfg.schedule.warmup_iters == 10
    assert cfg.model.overrides == {"depths": [1, 1, 1, 1]}
    assert cfg.eval.scales == [0.5, 1.0] and cfg.data.val_split is None
    # untouched fields keep the defaults
    assert cfg.optim.betas == ExperimentConfig().optim.betas


def test_dump_round_trip(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "semask_swin_l_fpn_ade20k.yaml", ["train.amp=true"])
    dumped = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert "_base_" not in dumped.read_text()
    assert load_config(dumped) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=2.5", "train.batch_size must be an integer"),
        ("train.batch_sise=2", "train.batch_sise"),
        ("optim.betas=[0.9]", "optim.betas must be a list of 2 numbers"),
        ("eval.mode=sliding", "eval.mode must be one of 'whole', 'slide'"),
        ("train.amp=yes please", "train.amp must be true or false"),
        ("data.crop_size=[512, x]", "data.crop_size[1] must be an integer"),
        ("data.ratio_range=[0.5, 2.0]", "set exactly one of ratios"),
        ("schedule.warmup_iters=90000", "warmup_iters"),
        ("train.batch_size.x=1", "train.batch_size is a value"),
        ("nonsense", "not of the form key.path=value"),
        ("model=3", "model must be a mapping"),
        ("train.seed=[1", "cannot parse value"),
        ("model.name=semask_swin_q_fpn", "unknown model 'semask_swin_q_fpn'"),
        ("model.overrides.window_sise=7", "has no settings ['window_sise']"),
        ("model.overrides.depths=[2,2]", "do not fit semask_swin_t_fpn"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "semask_swin_t_fpn_ade20k.yaml", [override])
    assert message in str(info.value)
    assert override.partition("=")[0].split(".")[0] in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    _write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", "_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml does not exist \(a _base_ of .*c\.yaml\)"):
        load_config(tmp_path / "c.yaml")
    _write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    _write(tmp_path / "typo.yaml", "optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"\['optim.learning_rate'\].*valid keys under optim"):
        load_config(tmp_path / "typo.yaml")


def test_from_dict_applies_overrides_to_an_embedded_config() -> None:
    stored = ExperimentConfig().to_dict()
    cfg = ExperimentConfig.from_dict(stored, "ckpt", ["data.root=/elsewhere"])
    assert cfg.data.root == "/elsewhere"
    assert stored["data"]["root"] != "/elsewhere"  # the input dict is not modified


def test_a_models_protocol_has_the_fields_of_eval_config(tmp_path: Path) -> None:
    from semask.config import EvalConfig
    from semask.models.base import PROTOCOL_FIELDS

    assert set(PROTOCOL_FIELDS) == {f.name for f in dataclasses.fields(EvalConfig)}
    cfg = EvalConfig(mode="slide", crop_size=(64, 64), stride=(48, 48), scale=(256, 128), flip=True)
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    model = semask.create_model("semask_swin_t_fpn", num_classes=3, protocol=cfg.to_dict(), **TINY)
    model.save_pretrained(tmp_path / "m")
    assert EvalConfig.of_model(semask.load(tmp_path / "m"), EvalConfig()) == cfg
    assert EvalConfig.of_model(semask.create_model("semask_swin_t_fpn", num_classes=3, **TINY), cfg) is cfg
    with pytest.raises(ValueError, match=r"protocol has unknown fields \['scael'\]"):
        semask.create_model("semask_swin_t_fpn", num_classes=3, protocol={"scael": [1, 1]}, **TINY)
    with pytest.raises(ConfigError, match="eval.mode must be one of 'whole', 'slide'"):
        EvalConfig.from_dict({"mode": "sliding"})
