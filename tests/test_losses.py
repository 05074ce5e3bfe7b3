"""Configurable losses (loss.* in YAML) against hand computations; the default stays the paper's."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.config import ConfigError, ExperimentConfig, LossConfig, LossName, LossTermConfig
from semask.engine.criterion import build_criterion, training_forward
from semask.models.loss import (
    LOSSES,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszLoss,
    OhemCrossEntropyLoss,
    SegmentationCriterion,
    WeightedSum,
    add_semantic_prior_loss,
    build_loss,
    enet_class_weights,
)
from semask.models.outputs import SegmentationOutput

LN = math.log


def two_class_logits(p0: list[float]) -> torch.Tensor:
    """(1, 2, 1, n) logits whose softmax gives class 0 probability p0[i] at pixel i."""
    p = torch.tensor(p0, dtype=torch.float64)
    return torch.stack([torch.log(p / (1 - p)), torch.zeros_like(p)]).reshape(1, 2, 1, -1).float()


def labels(*ids: int) -> torch.Tensor:
    return torch.tensor(ids).reshape(1, 1, -1)


def test_loss_names_in_the_config_match_the_loss_classes() -> None:
    assert set(typing.get_args(LossName)) == set(LOSSES)
    for name, cls in LOSSES.items():
        assert cls.name == name


def test_cross_entropy_with_class_weights_by_hand() -> None:
    # pixel a: p = (1/2, 1/2), label 0 -> ln 2; pixel b: p = (3/4, 1/4), label 1 -> ln 4; pixel c ignored
    logits = two_class_logits([0.5, 0.75, 0.9])
    y = labels(0, 1, 255)
    weighted = 1 * LN(2) + 2 * LN(4)
    assert CrossEntropyLoss([1, 2], reduction="all")(logits, y).item() == pytest.approx(weighted / 3, rel=1e-6)
    assert CrossEntropyLoss([1, 2], reduction="valid")(logits, y).item() == pytest.approx(weighted / 3, rel=1e-6)
    assert CrossEntropyLoss([3, 1], reduction="valid")(logits, y).item() == pytest.approx(
        (3 * LN(2) + LN(4)) / 4, rel=1e-6
    )
    assert CrossEntropyLoss(reduction="valid")(logits, y).item() == pytest.approx((LN(2) + LN(4)) / 2, rel=1e-6)


def test_label_smoothing_by_hand() -> None:
    # target (1 - eps) onehot + eps / K, K = 2, eps = 0.3
    logits = two_class_logits([0.5, 0.75])
    y = labels(0, 1)
    a = 0.7 * LN(2) + 0.15 * (LN(2) + LN(2))
    b = 0.7 * LN(4) + 0.15 * (LN(4 / 3) + LN(4))
    loss = CrossEntropyLoss(label_smoothing=0.3, reduction="valid")(logits, y)
    assert loss.item() == pytest.approx((a + b) / 2, rel=1e-6)


def test_ohem_keeps_pixels_below_the_threshold_or_the_min_kept_hardest() -> None:
    # true-class probabilities 0.9, 0.6, 0.3, 0.8 and one ignored pixel (5 pixels in all)
    logits = two_class_logits([0.9, 0.6, 0.3, 0.8, 0.5])
    y = labels(0, 0, 0, 0, 255)
    # min_kept 1: threshold = max(0.7, sorted[1] = 0.6) = 0.7 -> keeps 0.6 and 0.3
    loss = OhemCrossEntropyLoss(thresh=0.7, min_kept=1, reduction="all")
    assert loss.kept(logits, y).tolist() == [[[0.0, 1.0, 1.0, 0.0, 0.0]]]
    assert loss(logits, y).item() == pytest.approx((-LN(0.6) - LN(0.3)) / 5, rel=1e-5)
    # min_kept 3: threshold = max(0.7, sorted[3] = 0.9) = 0.9 -> keeps 0.6, 0.3 and 0.8
    loss = OhemCrossEntropyLoss(thresh=0.7, min_kept=3, reduction="valid")
    assert loss.kept(logits, y).tolist() == [[[0.0, 1.0, 1.0, 1.0, 0.0]]]
    assert loss(logits, y).item() == pytest.approx((-LN(0.6) - LN(0.3) - LN(0.8)) / 3, rel=1e-5)


def _ohem_image(entries: list[tuple[float, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 2, 2, 3) logits and (1, 2, 3) labels from (odds, logit index, label) per pixel: the
    logits are 0 except ln(odds) at the index, so the CE is ln(1 + odds) when the label is the
    other class and ln((1 + odds) / odds) when it is that class."""
    logits = torch.zeros(1, 2, 6, dtype=torch.float64)
    for i, (odds, index, _) in enumerate(entries):
        logits[0, index, i] = LN(odds)
    y = torch.tensor([label for _, _, label in entries]).reshape(1, 2, 3)
    return logits.reshape(1, 2, 2, 3).float(), y


def test_ohem_without_threshold_keeps_the_min_kept_hardest_pixels_by_hand() -> None:
    """mmseg's OHEMPixelSampler(thresh=None): the min_kept x batch highest-loss valid pixels weigh 1,
    the weighted CE is averaged over all pixels (mmseg 'mean'); ignored pixels are never kept."""
    image, y = _ohem_image([(7, 1, 0), (3, 1, 0), (1, 1, 1), (3, 0, 0), (7, 1, 255), (3, 1, 1)])
    # CE per pixel: ln 8, ln 4, ln 2, ln 4/3, (ignored; ln 8 if it counted), ln 4/3
    loss = OhemCrossEntropyLoss(thresh=None, min_kept=2)
    assert loss.kept(image, y).tolist() == [[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]
    assert loss(image, y).item() == pytest.approx((LN(8) + LN(4)) / 6, rel=1e-6)  # = 5 ln 2 / 6
    valid_mean = OhemCrossEntropyLoss(thresh=None, min_kept=2, reduction="valid")(image, y)
    assert valid_mean.item() == pytest.approx((LN(8) + LN(4)) / 2, rel=1e-6)
    # fewer valid pixels (5) than min_kept: every valid pixel is kept
    many = OhemCrossEntropyLoss(thresh=None, min_kept=10)
    assert many.kept(image, y).tolist() == [[[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]]
    assert many(image, y).item() == pytest.approx(LN(8 * 4 * 2 * 16 / 9) / 6, rel=1e-6)
    # the kept set is chosen over the whole batch (min_kept x B pixels), not per image
    second, y2 = _ohem_image([(15, 1, 0), (1 / 3, 1, 0), (1 / 3, 1, 0), (3, 0, 0), (3, 0, 0), (1 / 3, 1, 0)])
    # second image: ln 16 once, all others ln 4/3
    batch = OhemCrossEntropyLoss(thresh=None, min_kept=2)
    both, y_both = torch.cat([image, second]), torch.cat([y, y2])
    assert batch.kept(both, y_both).sum().item() == 4
    assert batch(both, y_both).item() == pytest.approx((LN(16) + LN(8) + LN(4) + LN(2)) / 12, rel=1e-6)
    # class weights scale each pixel's loss and take part in the ranking, as mmseg's weighted CE
    weighted = OhemCrossEntropyLoss(thresh=None, min_kept=1, class_weight=[1.0, 4.0])
    assert weighted.kept(image, y).tolist() == [[[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]  # 4 ln 2 > ln 8
    assert weighted(image, y).item() == pytest.approx(4 * LN(2) / 6, rel=1e-6)


@pytest.mark.parametrize("thresh", [None, 0.7])
def test_ohem_from_stride4_logits_equals_ohem_of_the_resized_logits(thresh: float | None) -> None:
    """The trainer hands the losses stride-4 logits: OHEM ranks and sums band by band, with the same
    kept pixels, value and gradient as resizing the logits to the labels first (as mmseg does)."""
    g = torch.Generator().manual_seed(0)
    small = torch.randn(2, 5, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (2, 36, 44), generator=g)
    y[:, :4] = 255
    for loss in (
        OhemCrossEntropyLoss(thresh=thresh, min_kept=300),
        OhemCrossEntropyLoss(thresh=thresh, min_kept=300, class_weight=[1, 2, 3, 0.5, 1], reduction="valid"),
    ):
        big = torch.nn.functional.interpolate(small, size=(36, 44), mode="bilinear", align_corners=False)
        assert torch.equal(loss.kept(small, y), loss.kept(big, y))
        assert 0 < loss.kept(small, y).sum() < (y != 255).sum()
        (grad_small,) = torch.autograd.grad(loss(small, y), small)
        (grad_big,) = torch.autograd.grad(loss(big, y), small)
        # the literal path computes in float32 (as mmseg), the banded one keeps float64
        assert loss(small, y).item() == pytest.approx(loss(big, y).item(), rel=1e-6)
        torch.testing.assert_close(grad_small, grad_big, rtol=1e-5, atol=1e-9)


def test_ohem_samples_only_the_main_loss() -> None:
    """SeMask's decode head samples the main CE only; the 0.4 x semantic CE stays a plain mean."""
    g = torch.Generator().manual_seed(1)
    out = SegmentationOutput(
        logits=torch.randn(2, 4, 6, 6, generator=g), semantic_logits=torch.randn(2, 4, 6, 6, generator=g)
    )
    y = torch.randint(0, 4, (2, 24, 24), generator=g)
    cfg = ExperimentConfig.from_dict(
        {
            "model": {"name": "semask_swin_t_fpn", "overrides": {"num_classes": 4}},
            "loss": {"main": [{"name": "ohem", "thresh": None, "min_kept": 50}]},
        }
    )
    assert cfg.loss.main == [LossTermConfig("ohem", thresh=None, min_kept=50)]
    criterion = build_criterion(cfg.loss, semask.get_config("semask_swin_t_fpn", num_classes=4))
    got = criterion(SegmentationOutput(out.logits, out.semantic_logits), y)
    reference = add_semantic_prior_loss(SegmentationOutput(out.logits, out.semantic_logits), y, 0.4)
    assert torch.equal(got.loss_semantic, reference.loss_semantic)
    assert got.loss_main.item() == pytest.approx(OhemCrossEntropyLoss(None, 50)(out.logits, y).item())
    assert got.loss_main < reference.loss_main  # 100 of 1152 pixels kept, averaged over all
    assert got.loss.item() == pytest.approx((got.loss_main + 0.4 * got.loss_semantic).item())


def test_focal_loss_by_hand() -> None:
    logits = two_class_logits([0.9, 0.25, 0.5])
    y = labels(0, 0, 255)
    expected = (-(0.1**2) * LN(0.9) - (0.75**2) * LN(0.25)) / 2
    assert FocalLoss(gamma=2.0, reduction="valid")(logits, y).item() == pytest.approx(expected, rel=1e-5)
    # gamma 0 is plain cross-entropy
    assert FocalLoss(gamma=0.0)(logits, y).item() == pytest.approx(CrossEntropyLoss()(logits, y).item(), rel=1e-6)


def test_dice_loss_by_hand_ignores_the_ignored_pixels() -> None:
    # p = (1/2, 1/2) at both valid pixels, labels 0 and 1; per class 2*(0.5)+1 / (0.25+0.25 + 1 + 1) = 0.8
    logits = torch.zeros(1, 2, 1, 3)
    logits[0, 0, 0, 2] = 30.0  # the ignored pixel is confidently class 0: must not matter
    y = labels(0, 1, 255)
    assert DiceLoss()(logits, y).item() == pytest.approx(0.2, rel=1e-6)
    # smooth 0, exponent 1: (2 * 0.5) / (1 + 1) = 0.5 per class
    assert DiceLoss(smooth=0.0, exponent=1.0)(logits, y).item() == pytest.approx(0.5, rel=1e-6)


def test_lovasz_softmax_by_hand() -> None:
    # P(class 0) = 0.9 and 0.2, labels 0 and 1: class 0 errors (0.1, 0.2) sorted -> (0.2, 0.1) with
    # gradient (0.5, 0.5) = 0.15; class 1 errors sorted (0.2 fg, 0.1 bg), gradient (1, 0) = 0.2
    logits = two_class_logits([0.9, 0.2, 0.5])
    y = labels(0, 1, 255)
    assert LovaszLoss()(logits, y).item() == pytest.approx(0.175, rel=1e-5)
    perfect = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    assert LovaszLoss()(perfect, labels(0, 1)).item() == pytest.approx(0.0, abs=1e-6)


def test_weighted_sums_and_build_by_name() -> None:
    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    y[0, 0] = 255
    loss = build_loss([{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}])
    assert isinstance(loss, WeightedSum)
    expected = CrossEntropyLoss()(logits, y) + 0.5 * DiceLoss()(logits, y)
    assert loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert isinstance(build_loss([{"name": "lovasz"}]), LovaszLoss)
    with pytest.raises(ValueError, match="unknown loss 'bce'"):
        build_loss([{"name": "bce"}])


def test_enet_class_weights_by_hand() -> None:
    w = enet_class_weights([98, 2, 0])
    assert w == pytest.approx([1 / LN(1.02 + 0.98), 1 / LN(1.04), 1 / LN(1.02)])
    with pytest.raises(ValueError, match="no labelled pixel"):
        enet_class_weights([0, 0])


def test_explicit_cross_entropy_reproduces_the_papers_loss_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    out = SegmentationOutput(
        logits=torch.randn(2, 4, 8, 8, generator=g), semantic_logits=torch.randn(2, 4, 8, 8, generator=g)
    )
    y = torch.randint(0, 4, (2, 16, 16), generator=g)
    y[:, :3] = 255
    reference = add_semantic_prior_loss(SegmentationOutput(out.logits, out.semantic_logits), y, 0.4)
    criterion = SegmentationCriterion(CrossEntropyLoss(), CrossEntropyLoss(), 0.4, 4)
    mine = criterion(SegmentationOutput(out.logits, out.semantic_logits), y)
    assert torch.equal(mine.loss, reference.loss)
    assert torch.equal(mine.loss_main, reference.loss_main) and torch.equal(mine.loss_semantic, reference.loss_semantic)


# ----------------------------------------------------------------------------- config


def test_loss_section_from_yaml_is_typed_and_checked() -> None:
    cfg = ExperimentConfig.from_dict(
        {"loss": {"main": [{"name": "ohem", "thresh": 0.8}, {"name": "dice", "weight": 0.5}], "semantic_weight": 0.2}}
    )
    assert cfg.loss.main == [LossTermConfig("ohem", thresh=0.8), LossTermConfig("dice", weight=0.5)]
    assert cfg.loss.semantic is None and not cfg.loss.is_default
    assert ExperimentConfig().loss.is_default
    with pytest.raises(ConfigError, match=r"loss.main\[0\].name must be one of 'ce', 'ohem'"):
        ExperimentConfig.from_dict({"loss": {"main": [{"name": "bce"}]}})
    with pytest.raises(ConfigError, match="gamma does not apply to the 'ce' loss"):
        ExperimentConfig.from_dict({"loss": {"main": [{"name": "ce", "gamma": 1.0}]}})
    with pytest.raises(ConfigError, match="class_weight must be"):
        ExperimentConfig.from_dict({"loss": {"main": [{"name": "ce", "class_weight": "sqrt"}]}})
    over = ExperimentConfig.from_dict({}, overrides=["loss.semantic=[{name: focal, gamma: 1}]"])
    assert over.loss.semantic == [LossTermConfig("focal", gamma=1.0)]


def test_mask_classification_models_refuse_the_loss_section() -> None:
    with pytest.raises(ConfigError, match="mask-classification model semask_swin_b_mask2former.*own set-prediction"):
        ExperimentConfig.from_dict(
            {"model": {"name": "semask_swin_b_mask2former"}, "loss": {"main": [{"name": "dice"}]}}
        )
    ExperimentConfig.from_dict({"model": {"name": "semask_swin_b_mask2former"}})  # default: fine


def test_one_class_is_rejected_with_the_two_class_hint() -> None:
    with pytest.raises(ConfigError, match="data.num_classes: 1 is not supported.*num_classes: 2"):
        ExperimentConfig.from_dict({"data": {"type": "folder", "num_classes": 1}})
    with pytest.raises(ConfigError, match="model.overrides.num_classes: 1"):
        ExperimentConfig.from_dict({"model": {"overrides": {"num_classes": 1}}})


# ----------------------------------------------------------------------------- in training


class _Fixed(torch.nn.Module):
    """Returns fixed main and semantic logits; records how it was called."""

    def __init__(self, logits: torch.Tensor, semantic: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.semantic = logits, semantic
        self.calls: list[dict] = []

    def forward(self, x, labels=None, output_semantic_logits=False, upsample_logits=True):
        self.calls.append(
            {"labels": labels, "output_semantic_logits": output_semantic_logits, "upsample_logits": upsample_logits}
        )
        out = SegmentationOutput(self.logits, self.semantic)
        if labels is not None:
            add_semantic_prior_loss(out, labels, 0.4)
        return out


def test_build_criterion_and_training_forward() -> None:
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(3)
    main, sem = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    y = torch.randint(0, 3, (1, 4, 4), generator=g)
    model = _Fixed(main, sem)
    config = SimpleNamespace(num_classes=3, loss_reduction="all", semantic_loss_weight=0.4)
    assert build_criterion(LossConfig(), config) is None
    default = training_forward(model, None, torch.zeros(1), y)
    assert (
        model.calls[-1]["labels"] is y and model.calls[-1]["upsample_logits"] is False
    )  # the losses need no full-size maps

    loss_cfg = LossConfig(
        main=[LossTermConfig("dice")], semantic=[LossTermConfig("focal", gamma=1.0)], semantic_weight=0.1
    )
    criterion = build_criterion(loss_cfg, config)
    out = training_forward(model, criterion, torch.zeros(1), y)
    assert model.calls[-1] == {"labels": None, "output_semantic_logits": True, "upsample_logits": False}
    expected = DiceLoss()(main, y) + 0.1 * FocalLoss(gamma=1.0)(sem, y)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the semantic weight defaults to the model's 0.4 and main/semantic to cross-entropy
    out = training_forward(
        model, build_criterion(LossConfig(semantic_weight=None, main=[LossTermConfig("ce")]), config), torch.zeros(1), y
    )
    assert torch.equal(out.loss, default.loss)

    # another ignore index: the model's own loss sees 255 there
    y7 = y.clone()
    y7[0, 0] = 7
    y255 = y.clone()
    y255[0, 0] = 255
    assert torch.equal(
        training_forward(model, None, torch.zeros(1), y7, ignore_index=7).loss,
        training_forward(model, None, torch.zeros(1), y255).loss,
    )


def test_auto_class_weights_come_from_the_training_pixels(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from semask.data import FolderDataset

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    label = np.zeros((4, 5), np.uint8)  # 20 pixels: 12 of class 0, 6 of class 1, 2 ignored, none of class 2
    label[0, :] = 1
    label[1, :1] = 1
    label[3, :2] = 255
    for i in range(2):
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / "train" / f"{i}.png")
        Image.fromarray(label).save(tmp_path / "labels" / "train" / f"{i}.png")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    ds = FolderDataset(tmp_path, "train")
    config = SimpleNamespace(num_classes=3, loss_reduction="all", semantic_loss_weight=0.4)
    criterion = build_criterion(LossConfig(main=[LossTermConfig("ce", class_weight="auto")]), config, ds)
    assert criterion.main.class_weight == pytest.approx([1 / LN(1.02 + 24 / 36), 1 / LN(1.02 + 12 / 36), 1 / LN(1.02)])
    assert criterion.semantic.class_weight is None  # the semantic head is set independently


def test_training_with_a_configured_loss_runs(tmp_path: Path) -> None:
    import json

    from semask.data import make_context_dataset
    from semask.engine.trainer import train
    from tests.test_train import tiny_config

    root = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=64, seed=0)
    cfg = tiny_config(
        root,
        "schedule.iters=2",
        "train.eval_interval=2",
        "train.ckpt_interval=2",
        "loss.main=[{name: ohem, min_kept: 100}, {name: lovasz, weight: 0.5}]",
        "loss.semantic=[{name: ce, class_weight: auto, label_smoothing: 0.1}]",
    )
    train(cfg, tmp_path / "work", progress=False)
    records = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if r["type"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(r["loss"]) and r["loss_semantic"] is not None for r in losses)


def test_a_custom_ignore_index_reaches_every_term() -> None:
    logits = two_class_logits([0.5, 0.75, 0.9])
    y = labels(0, 1, 7)
    loss = build_loss([{"name": "ce", "reduction": "valid"}, {"name": "dice", "weight": 0.5}], ignore_index=7)
    criterion = SegmentationCriterion(loss, CrossEntropyLoss(ignore_index=7), 0.4, 2)
    out = criterion(SegmentationOutput(logits), y)
    # Dice over the two valid pixels, p = (0.5, 0.5) label 0 and (0.75, 0.25) label 1
    dice0 = (2 * 0.5 + 1) / (0.25 + 0.5625 + 1 + 1)
    dice1 = (2 * 0.25 + 1) / (0.25 + 0.0625 + 1 + 1)
    expected = (LN(2) + LN(4)) / 2 + 0.5 * (1 - (dice0 + dice1) / 2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5) and out.loss_semantic is None
    with pytest.raises(ValueError, match=r"outside \[0, 1\] \(and not the ignore index 7\)"):
        criterion(SegmentationOutput(logits), labels(0, 1, 255))


def test_public_losses_module_is_what_the_trainer_builds() -> None:
    import semask
    from semask.models import loss as model_loss

    for name in semask.losses.__all__:
        assert getattr(semask.losses, name) is getattr(model_loss, name), name
    config = semask.get_config("semask_swin_t_fpn", num_classes=3)
    section = LossConfig(
        main=[LossTermConfig("ce"), LossTermConfig("dice", weight=0.5)], semantic=[LossTermConfig("lovasz")]
    )
    criterion = build_criterion(section, config)
    assert isinstance(criterion, semask.losses.SegmentationCriterion)
    assert isinstance(criterion.main, semask.losses.WeightedSum) and isinstance(
        criterion.semantic, semask.losses.LovaszLoss
    )
    assert [type(t) for t in criterion.main.terms] == [semask.losses.CrossEntropyLoss, semask.losses.DiceLoss]
    # used standalone, smp style: loss(logits, labels), logits below the label size are resized
    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2, 8, 10), generator=torch.Generator().manual_seed(1))
    standalone = semask.losses.WeightedSum([(1.0, semask.losses.CrossEntropyLoss()), (0.5, semask.losses.DiceLoss())])
    assert standalone(logits, y).item() == pytest.approx(criterion.main(logits, y).item(), abs=0)
