"""The training loss of a run: the model's own (the paper's) or the ``loss.*`` section of the config.

With the default ``loss`` section the model computes L = CE + 0.4 CE_semantic itself, exactly
as before (the parity tests pin those numbers). Otherwise :func:`build_criterion` turns the
section into a :class:`semask.models.loss.SegmentationCriterion` and :func:`training_forward`
runs the model without labels (asking for the semantic-prior maps) and applies it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import LossConfig, LossTermConfig
from ..models.loss import IGNORE_INDEX, SegmentationCriterion, build_loss, enet_class_weights
from ..models.outputs import SegmentationOutput

logger = logging.getLogger("semask.train")


def build_criterion(
    loss_cfg: LossConfig,
    model_config: Any,
    train_set: Any = None,
    ignore_index: int = IGNORE_INDEX,
    progress: bool = False,
) -> SegmentationCriterion | None:
    """None for the default section (the model's own loss); else the configured criterion.

    ``class_weight: auto`` counts the labelled pixels of ``train_set`` once (threads) and
    applies :func:`semask.models.loss.enet_class_weights`.
    """
    if loss_cfg.is_default:
        return None
    k = model_config.num_classes
    reduction = getattr(model_config, "loss_reduction", "all")
    auto = None
    if loss_cfg.needs_auto_weights():
        if train_set is None:
            raise ValueError("class_weight: auto needs the training set to count class pixels")
        from ..data.check import label_statistics

        pixels = label_statistics(train_set, progress=progress)["pixels"]
        auto = [float(w) for w in enet_class_weights(pixels)]
        logger.info("class weights from training pixel frequencies (1/ln(1.02+f)): %s", np.round(auto, 3).tolist())
    default = [LossTermConfig(name="ce")]
    main = build_loss([t.spec(k, auto, reduction) for t in loss_cfg.main or default], ignore_index)
    semantic = build_loss([t.spec(k, auto, reduction) for t in loss_cfg.semantic or default], ignore_index)
    weight = loss_cfg.semantic_weight
    if weight is None:
        weight = getattr(model_config, "semantic_loss_weight", 0.0)
    return SegmentationCriterion(main, semantic, weight, k)


def training_forward(
    model: nn.Module,
    criterion: SegmentationCriterion | None,
    images: Tensor,
    labels: Tensor,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationOutput:
    """The model's output with its losses filled in, by ``criterion`` or by the model itself.

    The models' own losses know ignore id 255 only, so another ``ignore_index`` is mapped to
    255 for them (a label map holds at most 255 classes, ids 0..254).
    """
    if criterion is not None:
        out = model(images, output_semantic_logits=True, upsample_logits=False)  # the losses resize themselves
        return criterion(out, labels)  # type: ignore[no-any-return]
    if ignore_index != IGNORE_INDEX:
        labels = torch.where(labels == ignore_index, torch.full_like(labels, IGNORE_INDEX), labels)
    return model(images, labels, upsample_logits=False)  # type: ignore[no-any-return]
