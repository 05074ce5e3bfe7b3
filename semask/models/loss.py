"""Cross-entropy for dense labels, with the two averaging conventions people compare against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .outputs import SegmentationOutput

IGNORE_INDEX = 255
# How the cross-entropy is averaged (see segmentation_cross_entropy).
LOSS_REDUCTIONS = ("all", "valid")


def check_labels(labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise a readable error for label values the loss cannot use (CUDA would only assert)."""
    if labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:10].tolist()
        raise ValueError(
            f"labels contain values {values} outside [0, {num_classes - 1}] (and not the ignore index {ignore_index})"
        )


def segmentation_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    reduction: str = "all",
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """CE between (B,K,h,w) logits and (B,H,W) labels; logits are resized to the labels.

    ``reduction="all"`` divides by all pixels, ignored ones counting as zero: the
    mmseg 0.x behaviour behind the paper's numbers (eq. 3-4, 1/(H x W)).
    ``reduction="valid"`` divides by the number of non-ignored pixels.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none")
    if reduction == "all":
        return per_pixel.mean()
    if reduction == "valid":
        return per_pixel.sum() / (labels != ignore_index).sum().clamp(min=1)
    raise ValueError(f"unknown loss reduction {reduction!r}; use 'all' or 'valid'")


def add_semantic_prior_loss(
    out: SegmentationOutput, labels: Tensor, semantic_loss_weight: float, reduction: str = "all"
) -> SegmentationOutput:
    """Fill ``out``'s losses: L = L1 + semantic_loss_weight * L2 (paper eq. 3-5).

    L2 is skipped when there is no prior map (baselines) or its weight is 0 (ablation).
    """
    out.loss_main = segmentation_cross_entropy(out.logits, labels, reduction)
    out.loss = out.loss_main
    if out.semantic_logits is not None and semantic_loss_weight:
        out.loss_semantic = segmentation_cross_entropy(out.semantic_logits, labels, reduction)
        out.loss = out.loss + semantic_loss_weight * out.loss_semantic
    return out
