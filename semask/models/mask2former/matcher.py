"""Hungarian matching of predicted (class, mask) pairs to ground-truth segments (spec section 2.2).

The cost of assigning query q to segment t is
``w_class * (-p_q(class_t)) + w_mask * mask_cost + w_dice * dice_cost``; the assignment
minimising the total cost is found with ``scipy.optimize.linear_sum_assignment``.
Mask2Former evaluates the mask costs on random points (BCE), MaskFormer on the full
stride-4 grid (sigmoid focal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import point_sample

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def _linear_sum_assignment() -> Callable[..., tuple[Any, Any]]:
    """scipy's solver, imported on first use: only training mask-classification models needs scipy."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ImportError(
            "training a MaskFormer / Mask2Former model needs scipy for Hungarian matching: "
            "pip install 'semask[maskformer]'"
        ) from None
    return linear_sum_assignment


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits of every prediction (Q, P) against every target (T, P) -> (Q, T)."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_sigmoid_focal(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid focal loss (alpha 0.25, gamma 2) of every prediction/target pair -> (Q, T)."""
    prob = logits.sigmoid()
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    pos = FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * pos
    neg = (1 - FOCAL_ALPHA) * prob**FOCAL_GAMMA * neg
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - (2 sum(p t) + 1) / (sum p + sum t + 1) for every pair -> (Q, T)."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher:
    """Per image: indices (query_idx, target_idx) of the optimal one-to-one assignment.

    ``num_points`` > 0: Mask2Former point costs; ``num_points == 0``: MaskFormer focal costs
    on the prediction grid (targets nearest-resized to it).
    """

    def __init__(self, class_weight: float, mask_weight: float, dice_weight: float, num_points: int) -> None:
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points

    def cost_matrix(self, logits: Tensor, masks: Tensor, target_classes: Tensor, target_masks: Tensor) -> Tensor:
        """logits (Q, K+1), masks (Q, h, w), targets (T,), (T, H, W) -> cost (Q, T), float32."""
        logits, masks, target_masks = logits.float(), masks.float(), target_masks.float()
        cost_class = -logits.softmax(-1)[:, target_classes]
        if self.num_points > 0:
            coords = torch.rand(1, self.num_points, 2, device=masks.device)
            tgt = point_sample(target_masks[:, None], coords.expand(len(target_masks), -1, -1))[:, 0]
            pred = point_sample(masks[:, None], coords.expand(len(masks), -1, -1))[:, 0]
            cost_mask = pairwise_sigmoid_ce(pred, tgt)
        else:
            tgt = F.interpolate(target_masks[:, None], size=masks.shape[-2:], mode="nearest")[:, 0].flatten(1)
            pred = masks.flatten(1)
            cost_mask = pairwise_sigmoid_focal(pred, tgt)
        cost_dice = pairwise_dice(pred, tgt)
        return self.class_weight * cost_class + self.mask_weight * cost_mask + self.dice_weight * cost_dice

    @torch.no_grad()
    def __call__(
        self, logits: Tensor, masks: Tensor, targets: list[tuple[Tensor, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """logits (B, Q, K+1), masks (B, Q, h, w), targets per image (classes (T,), masks (T, H, W))."""
        indices = []
        for b, (classes, target_masks) in enumerate(targets):
            if len(classes) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty))
                continue
            cost = self.cost_matrix(logits[b], masks[b], classes, target_masks).cpu()
            rows, cols = _linear_sum_assignment()(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
