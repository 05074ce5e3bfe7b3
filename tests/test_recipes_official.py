"""Every packaged recipe of the Semantic-FPN and MiT families against its official config file, field
by field (the transcription with file paths: tests/official_recipes.py), and the recipe table of
semask/configs/README.md against the one scripts/recipe_table.py renders."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
from official_recipes import ABLATIONS, INCONSISTENT, MASK2FORMER, OFFICIAL

import semask
from semask.config import PAPER_MIOU, LossTermConfig, get_recipe, paper_miou, recipe_names, recipe_path
from semask.data import ADE20K_CLASSES, CITYSCAPES_CLASSES, COCO_STUFF_CLASSES
from semask.data.datasets import DATASETS
from semask.models.registry import _ARCHITECTURES, build_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"ade20k": ADE20K_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "coco_stuff10k": COCO_STUFF_CLASSES}
IMAGENET_FILES = {  # the public ImageNet checkpoints the official runs start from (model.pretrained)
    "swin_t": "swin_tiny_patch4_window7_224.pth",
    "swin_s": "swin_small_patch4_window7_224.pth",
    "swin_b": "swin_base_patch4_window12_384_22k.pth",
    "swin_l": "swin_large_patch4_window12_384_22k.pth",
}


def test_every_recipe_is_audited() -> None:
    """Each packaged recipe has an official transcription (or is an ablation, a detectron2-family
    recipe audited with its own files, or the demo)."""
    covered = set(OFFICIAL) | set(ABLATIONS) | set(MASK2FORMER) | {"demo"}
    assert set(recipe_names()) == covered


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_recipe_equals_its_official_file(name: str) -> None:
    o = OFFICIAL[name]
    cfg = get_recipe(name)
    text = recipe_path(name).read_text()
    # The comment names the official file and the official run's GPUs x per-GPU batch.
    assert f"{o['repo']}: {o['file']}" in text
    image = "image" if o["samples_per_gpu"] == 1 else "images"
    total = o["gpus"] * o["samples_per_gpu"]
    assert f"Official run: {o['gpus']} GPUs x {o['samples_per_gpu']} {image} per GPU = {total} per step" in text
    if o["paper"]:
        assert f"{o['paper'][0]:.2f} / {o['paper'][1]:.2f} mIoU" in text
    # Model: the preset carries the settings the official file sets for the model.
    assert cfg.model.name == o["model"] and cfg.model.backbone_weights == "imagenet"
    model_cfg = semask.get_config(cfg.model.name, **cfg.model.overrides)
    for key, value in o["model_settings"].items():
        got = getattr(model_cfg, key)
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, key
    assert cfg.data.num_classes in (None, o["num_classes"]) and len(CLASSES[cfg.data.type]) == o["num_classes"]
    assert cfg.data.type == o["dataset"]
    # Optimiser: AdamW; mmcv's lr_mult on "head" = our lr for the decoder, lr x backbone_lr_mult for the encoder.
    assert cfg.optim.betas == o["betas"] and cfg.optim.weight_decay == o["weight_decay"]
    assert cfg.optim.lr * cfg.optim.backbone_lr_mult == pytest.approx(o["lr"], rel=1e-12)
    assert cfg.optim.lr == pytest.approx(o["lr"] * o["head_lr_mult"], rel=1e-12)
    assert cfg.optim.no_decay_keys is None  # the model's no_weight_decay(): its family's custom_keys
    assert _ARCHITECTURES[model_cfg.model_type].no_weight_decay_keys == o["no_decay_keys"]
    # Schedule and loop.
    s = cfg.schedule
    assert (s.iters, s.warmup_iters, s.warmup_ratio, s.power, s.min_lr) == (
        o["iters"],
        o["warmup_iters"],
        o["warmup_ratio"],
        o["power"],
        o["min_lr"],
    )
    assert (cfg.train.eval_interval, cfg.train.ckpt_interval) == (o["eval_interval"], o["ckpt_interval"])
    assert cfg.train.batch_size == o["samples_per_gpu"] and cfg.train.grad_accum == 1
    # Train pipeline, every parameter.
    d = cfg.data
    assert d.scale == o["img_scale"] and d.crop_size == o["crop"]
    assert d.ratios == o["ratios"] and d.ratio_range == o["ratio_range"]  # list = pick one, tuple = uniform range
    assert d.cat_max_ratio == o["cat_max_ratio"]
    assert (d.flip_prob, d.photometric) == (o["flip_prob"], o["photometric"])
    default = inspect.signature(DATASETS[d.type]).parameters["reduce_zero_label"].default
    assert d.reduce_zero_label is None and default == o["reduce_zero_label"]  # the dataset type's own rule
    assert d.ignore_index == o["seg_pad_val"] and o["pad_val"] == 0  # Pad after Normalize: 0 = the mean colour
    assert d.num_workers == o["workers_per_gpu"]
    # Loss: OHEM on the main CE only, or the paper's default CE + 0.4 CE.
    if o["ohem"]:
        assert cfg.loss.main == [LossTermConfig("ohem", thresh=o["ohem"]["thresh"], min_kept=o["ohem"]["min_kept"])]
        assert cfg.loss.semantic is None and cfg.loss.semantic_weight is None
        assert "OHEM" in text
    else:
        assert cfg.loss.is_default
    # Test protocol (single scale, no flip: MultiScaleFlipAug(img_ratios commented out, flip=False)).
    e = cfg.eval
    assert (e.mode, e.scale, e.scales, e.flip, e.sizes) == (o["test_mode"], o["test_scale"], [1.0], False, None)
    if o["test_mode"] == "slide":
        assert (e.crop_size, e.stride) == (o["test_crop"], o["test_stride"])
    if name in INCONSISTENT:
        assert "inconsistent" in text
    if o["repo"] == "NVlabs/SegFormer":
        assert "Differs from that file on purpose" in text and ("AlignedResize" in text) == (o["dataset"] == "ade20k")
    else:
        size = name.split("_fpn")[0].rsplit("_", 1)[-1]
        assert semask.get_pretrained(f"swin_{size}.imagenet").file_name == IMAGENET_FILES[f"swin_{size}"]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_released_weights_carry_the_recipes_paper_numbers(name: str) -> None:
    entry = f"{OFFICIAL[name]['model']}.{OFFICIAL[name]['dataset']}"
    if entry in semask.list_pretrained():
        assert semask.get_pretrained(entry).paper_miou == OFFICIAL[name]["paper"]


def test_the_packaged_paper_numbers_equal_the_transcription() -> None:
    """``semask config`` and the recipe table print semask.config.paper_miou (the released weights'
    numbers, else PAPER_MIOU): it must say what the paper says, as this file transcribes it."""
    expected = {name: o["paper"] for name, o in OFFICIAL.items() if o["paper"]}
    expected.update({name: (row[3], None) for name, row in ABLATIONS.items()})
    found = {name: paper_miou(name) for name in recipe_names() if name not in MASK2FORMER}
    assert {name: miou for name, miou in found.items() if miou is not None} == expected
    assert set(PAPER_MIOU) <= set(expected)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_trains_with_the_recipe_it_modifies(name: str) -> None:
    model, base, table, miou = ABLATIONS[name]
    cfg, reference = get_recipe(name), get_recipe(base)
    assert cfg.model.name == model
    cfg.model = reference.model
    assert cfg == reference
    text = recipe_path(name).read_text()
    assert "Official: none" in text and base in text and f"{table}" in text and f"{miou:.2f} mIoU" in text


@pytest.mark.parametrize("name", ["semask_swin_t_fpn", "mit_b0"])
def test_no_decay_and_head_lr_follow_the_official_substring_rules(name: str) -> None:
    """mmcv's custom_keys match parameter names by substring: decay_mult 0 for the no-decay keys,
    and (SegFormer) lr_mult 10 for "head", i.e. exactly the decoder, as our backbone_lr_mult groups."""
    config = semask.get_config(name)
    with torch.device("meta"):
        model = build_model(config)
    names = [n for n, _ in model.named_parameters()]
    keys = type(model).no_weight_decay_keys
    assert model.no_weight_decay() == {n for n in names if any(k in n for k in keys)} != set()
    if name.startswith("mit"):
        assert {n for n in names if "head" in n} == {n for n in names if not n.startswith("backbone.")}


def test_recipe_table_is_the_generated_one() -> None:
    spec = importlib.util.spec_from_file_location("recipe_table", ROOT / "scripts" / "recipe_table.py")
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    readme = (ROOT / "semask" / "configs" / "README.md").read_text()
    assert f"{table.START}\n{table.table()}\n{table.END}" in readme, "run: python scripts/recipe_table.py --write"
