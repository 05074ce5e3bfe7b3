"""Fine-tuning released weights on other classes: ``reset_classes`` from YAML, ``create_model`` and
``semask.load``, and class names for released files that carry none."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, randomize, to_official
from test_train import tiny_config

import semask
from semask.config import ConfigError
from semask.data import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, make_context_dataset
from semask.engine.trainer import train
from semask.models import CheckpointError, PretrainedCfg, pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def ade_file(tmp_path: Path) -> Path:
    """A tiny "released" ADE20K model in the official mmseg layout: 150 classes, names in ``meta``."""
    torch.manual_seed(0)
    model = randomize(semask.create_model("semask_swin_t_fpn", num_classes=150, **TINY))
    path = tmp_path / "ade.pth"
    torch.save({"state_dict": to_official(model), "meta": {"CLASSES": ADE20K_CLASSES, "PALETTE": ADE20K_PALETTE}}, path)
    return path


def test_training_from_150_classes_on_5_with_reset_classes(ade_file: Path, tmp_path: Path) -> None:
    data = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=48, seed=0)  # sea land boat car buoy
    args = ("schedule.iters=2", "train.eval_interval=2", "train.ckpt_interval=2", f"model.pretrained={ade_file}")
    cfg = tiny_config(data, *args, "model.overrides={}")
    with pytest.raises(CheckpointError, match=r"has 150 classes, 5 were asked for.*model\.reset_classes: true"):
        train(cfg, tmp_path / "refused", progress=False)
    summary = train(
        tiny_config(data, *args, "model.overrides={}", "model.reset_classes=true"), tmp_path / "w", progress=False
    )
    model = semask.load(summary["model_dir"])
    assert model.config.num_classes == 5 and model.config.class_names == ["sea", "land", "boat", "car", "buoy"]
    log = (tmp_path / "w" / "train.log").read_text()
    assert "150 -> 5 classes" in log and "decode_head.conv_seg.weight" in log
    assert re.search(r"same name: sea \(0 <- 26\), land \(1 <- 94\), boat \(2 <- 76\), car \(3 <- 20\)", log)
    assert "drawn fresh: buoy" in log


def test_reset_classes_needs_pretrained_weights(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.reset_classes applies to model.pretrained"):
        tiny_config(tmp_path, "model.reset_classes=true")
    with pytest.raises(ValueError, match="reset_classes=True applies to pretrained weights"):
        semask.create_model("semask_swin_t_fpn", num_classes=3, reset_classes=True, **TINY)


def test_create_model_pretrained_with_other_classes(
    ade_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        pretrained._PRETRAINED,
        "semask_swin_t_fpn.tinyade",
        PretrainedCfg("semask_swin_t_fpn", "tinyade", file_name="ade.pth", url="http://unused", num_classes=150),
    )
    monkeypatch.setattr(pretrained, "_resolver", lambda cfg: ade_file)
    with pytest.raises(CheckpointError, match="pass reset_classes=True"):
        semask.create_model("semask_swin_t_fpn", pretrained="tinyade", num_classes=4, **TINY)
    names = ["wall", "my widget", "sky", "floor"]
    model = semask.create_model(
        "semask_swin_t_fpn", pretrained="tinyade", num_classes=4, class_names=names, reset_classes=True, **TINY
    )
    source = semask.load(ade_file, **TINY)
    got, old = model.decode_head.conv_seg.weight, source.decode_head.conv_seg.weight
    assert torch.equal(got[0], old[0]) and torch.equal(got[2], old[2]) and torch.equal(got[3], old[3])
    assert not torch.equal(got[1], old[1])
    torch.testing.assert_close(  # the encoder is the released one
        model.backbone.layers[2].blocks[0].attn.qkv.weight, source.backbone.layers[2].blocks[0].attn.qkv.weight
    )


def test_released_files_without_class_names_get_their_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = randomize(semask.create_model("semask_swin_t_fpn", num_classes=19, **TINY))
    torch.save({"state_dict": to_official(model)}, tmp_path / "city.pth")  # no meta: no names
    assert semask.load(tmp_path / "city.pth").config.class_names is None
    monkeypatch.setitem(
        pretrained._PRETRAINED,
        "semask_swin_t_fpn.tinycity",
        PretrainedCfg(
            "semask_swin_t_fpn",
            "tinycity",
            file_name="c.pth",
            url="http://unused",
            dataset="cityscapes",
            num_classes=19,
        ),
    )
    monkeypatch.setattr(pretrained, "_resolver", lambda cfg: tmp_path / "city.pth")
    loaded = semask.load("semask_swin_t_fpn.tinycity", **TINY)
    assert loaded.config.class_names == list(CITYSCAPES_CLASSES) and len(loaded.config.palette) == 19
