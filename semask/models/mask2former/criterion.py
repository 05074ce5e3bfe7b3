"""Set-prediction loss of the mask-classification heads (spec sections 2.1-2.3).

Every supervised prediction set (final and, with deep supervision, each earlier layer) is
matched to the ground-truth segments on its own, then scored with a class CE (unmatched
queries -> "no object", weighted ``no_object_weight``) and mask losses on the matched
pairs: point-sampled BCE + dice (Mask2Former) or full-resolution focal + dice (MaskFormer).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..loss import IGNORE_INDEX
from .matcher import FOCAL_ALPHA, FOCAL_GAMMA, HungarianMatcher
from .ops import point_sample, uncertain_point_coords
from .transformer_decoders import Predictions


def labels_to_targets(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> list[tuple[Tensor, Tensor]]:
    """(B, H, W) semantic labels -> per image (present classes (T,), binary masks (T, H, W)).

    Ignored pixels are 0 in every mask (no ignore handling in the mask losses, as the official code).
    """
    targets = []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        targets.append((classes.long(), (label[None] == classes[:, None, None]).float()))
    return targets


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    prob = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    dice = 1 - (2 * (prob * targets).sum(-1) + 1) / (prob.sum(-1) + targets.sum(-1) + 1)
    return dice.sum() / num_masks


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    logits, targets = logits.flatten(1), targets.flatten(1)
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).mean(1).sum() / num_masks


class SetCriterion(nn.Module):
    """Weighted sum over prediction sets of ``w_ce*CE + w_mask*mask + w_dice*dice``.

    ``num_points`` > 0 selects the Mask2Former point losses (PointRend importance sampling),
    0 the MaskFormer full-resolution focal + dice.
    """

    def __init__(
        self,
        num_classes: int,
        class_weight: float,
        mask_weight: float,
        dice_weight: float,
        no_object_weight: float,
        num_points: int,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(self, predictions: Predictions, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Total weighted loss and the unweighted terms (``loss_ce``, ``loss_ce_0``, ...)."""
        targets = labels_to_targets(labels)
        num_masks = self.global_num_masks(sum(len(c) for c, _ in targets), labels.device)
        terms: dict[str, Tensor] = {}
        total = labels.new_zeros((), dtype=torch.float32)
        last = len(predictions.logits) - 1
        for i, (logits, masks) in enumerate(zip(predictions.logits, predictions.masks)):
            suffix = "" if i == last else f"_{i}"
            indices = self.matcher(logits, masks, targets)
            for name, value in self.losses(logits, masks, targets, indices, num_masks).items():
                terms[name + suffix] = value
                total = total + self.weights[name] * value
        return total, terms

    def global_num_masks(self, local: int, device: torch.device) -> float:
        """GT masks in the whole batch averaged over processes, at least 1."""
        count = torch.tensor(float(local), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(float(count), 1.0)

    def losses(
        self,
        logits: Tensor,
        masks: Tensor,
        targets: list[tuple[Tensor, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        num_masks: float,
    ) -> dict[str, Tensor]:
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (rows, cols) in enumerate(indices):
            target_classes[b, rows.to(logits.device)] = targets[b][0][cols.to(logits.device)]
        loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight)
        src = torch.cat([masks[b, rows.to(masks.device)] for b, (rows, _) in enumerate(indices)])
        tgt = torch.cat([targets[b][1][cols.to(masks.device)] for b, (_, cols) in enumerate(indices)]).to(src.dtype)
        if len(src) == 0:  # no segment in the batch: mask losses are 0 but keep the graph
            zero = masks.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        if self.num_points > 0:
            src, tgt = src.float()[:, None], tgt.float()[:, None]
            with torch.no_grad():
                coords = uncertain_point_coords(
                    src, self.num_points, self.oversample_ratio, self.importance_sample_ratio
                )
                point_labels = point_sample(tgt, coords)[:, 0]
            point_logits = point_sample(src, coords)[:, 0]
            return {
                "loss_ce": loss_ce,
                "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
                "loss_dice": dice_loss(point_logits, point_labels, num_masks),
            }
        src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return {
            "loss_ce": loss_ce,
            "loss_mask": sigmoid_focal_loss(src, tgt, num_masks),
            "loss_dice": dice_loss(src, tgt, num_masks),
        }
