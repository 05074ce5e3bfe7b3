"""Losses for dense labels: the paper's cross-entropy (two averaging conventions) and, chosen by
name from a config, weighted / label-smoothed CE, OHEM CE, focal, Dice, Lovasz-softmax and
weighted sums of them (see :func:`build_loss`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .outputs import SegmentationOutput
from .upsampled_ce import upsampled_cross_entropy, upsampled_pixel_cross_entropy

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
    """CE between (B,K,h,w) logits and (B,H,W) labels; logits are bilinearly resized to the labels.

    ``reduction="all"`` divides by all pixels, ignored ones counting as zero: the
    mmseg 0.x behaviour behind the paper's numbers (eq. 3-4, 1/(H x W)).
    ``reduction="valid"`` divides by the number of non-ignored pixels.
    Smaller logits (the decoders' stride-4 maps) never become full-size tensors: value and
    gradient are formed band by band (:func:`semask.models.upsampled_ce.upsampled_cross_entropy`;
    the same numbers as resizing first, faster on CPU and about 1 GB less memory at 512^2, K=150,
    batch 2).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; use 'all' or 'valid'")
    if logits.shape[-2:] != labels.shape[-2:]:
        total = upsampled_cross_entropy(logits, labels, ignore_index)
    else:
        total = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="sum")
    if reduction == "all":
        return total / labels.numel()
    return total / (labels != ignore_index).sum().clamp(min=1)


def add_semantic_prior_loss(
    out: SegmentationOutput,
    labels: Tensor,
    semantic_loss_weight: float,
    reduction: str = "all",
    low_res: tuple[Tensor, Tensor | None] | None = None,
) -> SegmentationOutput:
    """Fill ``out``'s losses: L = L1 + semantic_loss_weight * L2 (paper eq. 3-5).

    L2 is skipped when there is no prior map (baselines) or its weight is 0 (ablation).
    ``low_res`` = (logits, semantic logits) before their resize to the input: the losses are
    then taken from them (same values, no full-size temporaries).
    """
    main, semantic = (out.logits, out.semantic_logits) if low_res is None else low_res
    out.loss_main = segmentation_cross_entropy(main, labels, reduction)
    out.loss = out.loss_main
    if semantic is not None and semantic_loss_weight:
        out.loss_semantic = segmentation_cross_entropy(semantic, labels, reduction)
        out.loss = out.loss + semantic_loss_weight * out.loss_semantic
    return out


# ----------------------------------------------------------------------------- configurable losses
#
# Every loss below maps (B, K, h, w) logits and (B, H, W) integer labels to a scalar; logits at
# another size than the labels are bilinearly resized to them first, and pixels labelled
# ``ignore_index`` never contribute. Pixel-averaged losses take ``reduction``: "all" divides
# the summed pixel losses by all B*H*W pixels (mmseg 0.x, the paper's CE), "valid" by the
# summed weights of the non-ignored pixels (torch's weighted mean; without class weights,
# the number of non-ignored pixels).


def _at_label_size(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.float()


def _class_weight_tensor(class_weight: Sequence[float] | None, num_classes: int, like: Tensor) -> Tensor | None:
    if class_weight is None:
        return None
    if len(class_weight) != num_classes:
        raise ValueError(f"class_weight has {len(class_weight)} values for {num_classes} classes")
    return torch.as_tensor(list(class_weight), dtype=torch.float32, device=like.device)


class SegLoss(nn.Module):
    """Base class: ``forward(logits, labels)`` -> scalar; see the section comment above."""

    name = ""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def _reduce(self, total: Tensor, labels: Tensor, reduction: str, weights: Callable[[], Tensor]) -> Tensor:
        """``total`` (the summed pixel losses) over all B*H*W pixels ("all", mmseg's 'mean') or over
        the sum of the pixel weights ("valid"); ``weights`` builds those only when they are needed."""
        if reduction == "all":
            return total / labels.numel()
        if reduction == "valid":
            return total / weights().sum().clamp(min=1e-12)
        raise ValueError(f"unknown loss reduction {reduction!r}; use 'all' or 'valid'")

    def _pixel_weights(self, labels: Tensor, class_weight: Tensor | None) -> Tensor:
        valid = labels != self.ignore_index
        if class_weight is None:
            return valid.float()
        return class_weight[labels.long().clamp(0, len(class_weight) - 1)] * valid


class CrossEntropyLoss(SegLoss):
    """Softmax cross-entropy with optional per-class weights and label smoothing (torch's rule:
    target ``(1 - eps) * onehot + eps / K``, each class's term weighted by its class weight)."""

    name = "ce"

    def __init__(
        self,
        class_weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "all",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(ignore_index)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        check_reduction(reduction)
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction

    def pixel_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(B, H, W) per-pixel CE (0 on ignored pixels), logits already at the label size."""
        weight = _class_weight_tensor(self.class_weight, logits.shape[1], logits)
        return F.cross_entropy(
            logits,
            labels.long(),
            weight=weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )

    def summed(self, logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        """Sum of the per-pixel losses (times ``mask``, (B, H, W), when given). Logits smaller than
        the labels (the decoders' stride-4 maps) are resized band by band, never as a full-size
        tensor (:func:`semask.models.upsampled_ce.upsampled_cross_entropy`; label smoothing
        resizes them first)."""
        weight = _class_weight_tensor(self.class_weight, logits.shape[1], logits)
        if self.label_smoothing == 0 and logits.shape[-2:] != labels.shape[-2:]:
            pixel = None if weight is None else weight[labels.long().clamp(0, len(weight) - 1)]
            if mask is not None:
                pixel = mask if pixel is None else pixel * mask
            return upsampled_cross_entropy(logits, labels, self.ignore_index, weight=pixel)
        per_pixel = self.pixel_losses(_at_label_size(logits, labels), labels)
        return (per_pixel if mask is None else per_pixel * mask).sum()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        weight = _class_weight_tensor(self.class_weight, logits.shape[1], logits)
        return self._reduce(
            self.summed(logits, labels), labels, self.reduction, lambda: self._pixel_weights(labels, weight)
        )


class OhemCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy on the hard pixels only, as mmseg's ``OHEMPixelSampler(thresh, min_kept)``
    (``mmseg/core/seg/sampler/ohem_pixel_sampler.py``) followed by its weighted CE.

    Per batch of B images, over the valid pixels, with the logits resized to the labels:

    * ``thresh=None``: the ``min_kept * B`` pixels with the highest CE are kept (all valid pixels
      when there are fewer). The SeMask-L ADE20K and SeMask COCO-Stuff recipes use this.
    * ``thresh`` p0: with p the softmax probability of each pixel's true class, sorted
      ascending, ``threshold = max(p0, p_sorted[min(min_kept * B, n_valid - 1)])``; the pixels
      with ``p < threshold`` are kept: at least about ``min_kept`` per image, plus every pixel
      less confident than p0.

    Kept pixels weigh 1, all others 0; the weighted CE is reduced as ``reduction`` says ("all":
    over all B*H*W pixels, mmseg's 'mean'; "valid": over the kept pixels' weights). Ties at the
    ``min_kept`` cut are broken by torch's sort order, as in mmseg.
    """

    name = "ohem"

    def __init__(
        self,
        thresh: float | None = 0.7,
        min_kept: int = 100000,
        class_weight: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "all",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(class_weight, label_smoothing, reduction, ignore_index)
        if (thresh is not None and not 0.0 < thresh <= 1.0) or min_kept < 0:
            raise ValueError(f"OHEM needs thresh None or 0 < thresh <= 1, and min_kept >= 0, got {thresh}, {min_kept}")
        self.thresh = None if thresh is None else float(thresh)
        self.min_kept = int(min_kept)

    def kept(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(B, H, W) float mask of the pixels OHEM trains on (logits at any size)."""
        with torch.no_grad():
            if logits.shape[-2:] != labels.shape[-2:]:  # per-pixel CE band by band
                ce = upsampled_pixel_cross_entropy(logits, labels, self.ignore_index)
            else:
                ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=self.ignore_index, reduction="none")
            valid = labels != self.ignore_index
            keep = torch.zeros_like(ce)
            batch_kept = self.min_kept * labels.shape[0]
            if self.thresh is None:
                score = ce[valid]
                weight = _class_weight_tensor(self.class_weight, logits.shape[1], logits)
                if weight is not None:  # mmseg ranks by the loss it trains with: class weights included
                    score = score * weight[labels[valid].long()]
                hardest = score.sort(descending=True).indices[:batch_kept]
                keep_valid = torch.zeros_like(score)
                keep_valid[hardest] = 1.0
                keep[valid] = keep_valid
                return keep
            prob = torch.exp(-ce[valid])  # softmax probability of the true class
            if prob.numel() == 0:
                return keep
            floor = prob.sort().values[min(batch_kept, prob.numel() - 1)]
            keep[valid] = (prob < torch.clamp(floor, min=self.thresh)).to(keep.dtype)
            return keep

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        keep = self.kept(logits, labels)
        weight = _class_weight_tensor(self.class_weight, logits.shape[1], logits)
        return self._reduce(
            self.summed(logits, labels, keep),
            labels,
            self.reduction,
            lambda: self._pixel_weights(labels, weight) * keep,
        )


class FocalLoss(SegLoss):
    """Softmax focal loss (Lin et al. 2017): ``-w_y * (1 - p_y) ** gamma * log p_y`` per pixel,
    ``w`` the optional class weights (the alpha of the paper); ``gamma=0`` is plain CE."""

    name = "focal"

    def __init__(
        self,
        gamma: float = 2.0,
        class_weight: Sequence[float] | None = None,
        reduction: str = "all",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(ignore_index)
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        check_reduction(reduction)
        self.gamma = float(gamma)
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]
        self.reduction = reduction

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = _at_label_size(logits, labels)
        valid = labels != self.ignore_index
        target = torch.where(valid, labels.long(), torch.zeros_like(labels, dtype=torch.long))
        log_p = logits.log_softmax(1).gather(1, target.unsqueeze(1)).squeeze(1)
        weight = _class_weight_tensor(self.class_weight, logits.shape[1], logits)
        pixel_weight = self._pixel_weights(labels, weight)
        per_pixel = torch.where(valid, -((1 - log_p.exp()) ** self.gamma) * log_p * pixel_weight, 0.0)
        return self._reduce(per_pixel.sum(), labels, self.reduction, lambda: pixel_weight)


class DiceLoss(SegLoss):
    """Soft Dice on softmax probabilities p and one-hot targets t over the non-ignored pixels:
    per image b and class c, ``d = (2 * sum p*t + smooth) / (sum p**exponent + sum t**exponent + smooth)``,
    loss = ``1 - mean over b and c of d`` (class weights, if given, weight that mean:
    ``sum_c w_c d / sum_c w_c``)."""

    name = "dice"

    def __init__(
        self,
        smooth: float = 1.0,
        exponent: float = 2.0,
        class_weight: Sequence[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__(ignore_index)
        if smooth < 0 or exponent <= 0:
            raise ValueError(f"dice needs smooth >= 0 and exponent > 0, got {smooth}, {exponent}")
        self.smooth = float(smooth)
        self.exponent = float(exponent)
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = _at_label_size(logits, labels)
        k = logits.shape[1]
        valid = (labels != self.ignore_index).unsqueeze(1).float()
        prob = logits.softmax(1) * valid
        onehot = F.one_hot(labels.long().clamp(0, k - 1), k).permute(0, 3, 1, 2).float() * valid
        num = 2 * (prob * onehot).flatten(2).sum(-1) + self.smooth
        den = (prob**self.exponent).flatten(2).sum(-1) + (onehot**self.exponent).flatten(2).sum(-1) + self.smooth
        dice = num / den  # (B, K)
        weight = _class_weight_tensor(self.class_weight, k, logits)
        if weight is None:
            return 1 - dice.mean()
        return 1 - (dice * weight).sum(-1).mean() / weight.sum()


class LovaszLoss(SegLoss):
    """Lovasz-softmax (Berman et al. 2018), over the whole batch, classes present in the labels.

    For each class c present among the valid pixels: errors ``e_i = |[y_i = c] - p_i(c)|`` sorted
    descending, and the loss is ``sum_i e_(i) * g_i`` where g is the discrete gradient of the
    Jaccard loss ``1 - |gt & pred_top_i| / |gt | pred_top_i|`` along that order. The result is
    the mean over present classes (0 when no pixel is valid).
    """

    name = "lovasz"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        logits = _at_label_size(logits, labels)
        k = logits.shape[1]
        prob = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, k)
        flat = labels.reshape(-1)
        valid = flat != self.ignore_index
        prob, flat = prob[valid], flat[valid].long()
        losses = []
        for c in torch.unique(flat).tolist():
            fg = (flat == c).float()
            errors = (fg - prob[:, c]).abs()
            errors, order = errors.sort(descending=True)
            losses.append(torch.dot(errors, lovasz_grad(fg[order])))
        if not losses:
            return logits.sum() * 0.0
        return torch.stack(losses).mean()


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Discrete gradient of the Jaccard loss for ground truth sorted by descending error."""
    total = gt_sorted.sum()
    intersection = total - gt_sorted.cumsum(0)
    union = total + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


class WeightedSum(SegLoss):
    """``sum_i w_i * loss_i``; ``terms`` are (weight, loss) pairs."""

    name = "sum"

    def __init__(self, terms: Sequence[tuple[float, SegLoss]]) -> None:
        if not terms:
            raise ValueError("a loss sum needs at least one term")
        super().__init__(terms[0][1].ignore_index)
        if any(loss.ignore_index != self.ignore_index for _, loss in terms):
            raise ValueError("every term of a loss sum must use the same ignore_index")
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList(loss for _, loss in terms)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        total = None
        for weight, loss in zip(self.weights, self.terms):
            value = weight * loss(logits, labels)
            total = value if total is None else total + value
        return total  # type: ignore[return-value]


# Loss name -> class; the config's LossName literal must list exactly these names.
LOSSES: dict[str, type[SegLoss]] = {
    cls.name: cls for cls in (CrossEntropyLoss, OhemCrossEntropyLoss, FocalLoss, DiceLoss, LovaszLoss)
}


def check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; use one of {LOSS_REDUCTIONS}")


def build_loss(terms: Sequence[Mapping[str, Any]], ignore_index: int = IGNORE_INDEX) -> SegLoss:
    """A loss from specs ``{"name": ..., "weight": 1.0, **options}`` (options: the class's
    keyword arguments); one term of weight 1 is that loss itself, several are a :class:`WeightedSum`."""
    built = []
    for spec in terms:
        options = dict(spec)
        name = options.pop("name")
        weight = float(options.pop("weight", 1.0))
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
        try:
            built.append((weight, LOSSES[name](ignore_index=ignore_index, **options)))
        except TypeError as exc:
            raise ValueError(f"loss {name!r}: {exc}") from None
    if len(built) == 1 and built[0][0] == 1.0:
        return built[0][1]
    return WeightedSum(built)


def enet_class_weights(pixel_counts: Sequence[int] | Tensor, c: float = 1.02) -> list[float]:
    """Class weights from pixel frequencies, the ENet rule (Paszke et al. 2016):
    ``w_k = 1 / ln(c + f_k)``, ``f_k = pixels_k / sum(pixels)``. A class with no pixels gets
    the largest weight ``1 / ln(c)`` (50.5 for c = 1.02); a class covering everything ~1.44."""
    counts = torch.as_tensor(list(pixel_counts) if not isinstance(pixel_counts, Tensor) else pixel_counts)
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        raise ValueError("cannot compute class weights: the training labels hold no labelled pixel")
    return (1.0 / torch.log(c + counts / total)).tolist()


class SegmentationCriterion(nn.Module):
    """L = main(logits) + semantic_weight * semantic(semantic_logits): the paper's eq. 5 with any
    losses. The semantic term is skipped without prior maps or with weight 0, as in
    :func:`add_semantic_prior_loss`, which this reproduces with two ``CrossEntropyLoss``."""

    def __init__(self, main: SegLoss, semantic: SegLoss, semantic_weight: float, num_classes: int) -> None:
        super().__init__()
        self.main = main
        self.semantic = semantic
        self.semantic_weight = float(semantic_weight)
        self.num_classes = num_classes

    def forward(self, out: SegmentationOutput, labels: Tensor) -> SegmentationOutput:
        check_labels(labels, self.num_classes, self.main.ignore_index)
        out.loss_main = self.main(out.logits, labels)
        out.loss = out.loss_main
        if out.semantic_logits is not None and self.semantic_weight:
            out.loss_semantic = self.semantic(out.semantic_logits, labels)
            out.loss = out.loss + self.semantic_weight * out.loss_semantic
        return out
