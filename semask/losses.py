"""Segmentation losses, the public names (as ``segmentation_models_pytorch.losses`` users expect).

Each is an ``nn.Module`` called as ``loss(logits, labels)``: ``logits`` (B, K, h, w) at the
labels' size or lower (bilinearly resized to it first), ``labels`` (B, H, W) int64 class ids with
``ignore_index`` (255) not counted. They are the objects the trainer builds from a config's
``loss:`` section (:func:`build_loss`, names ``ce``, ``ohem``, ``focal``, ``dice``, ``lovasz``);
the implementations live in :mod:`semask.models.loss`.

* :class:`CrossEntropyLoss` (``class_weight``, ``label_smoothing``, ``reduction`` "all" = mean
  over every pixel as mmseg, "valid" = over the labelled ones);
* :class:`OhemCrossEntropyLoss` (mmseg's OHEM: ``thresh``, ``min_kept``);
* :class:`FocalLoss` (``gamma``, ``class_weight`` as alpha);
* :class:`DiceLoss` (soft Dice on softmax probabilities: ``smooth``, ``exponent``);
* :class:`LovaszLoss` (Lovasz-softmax over the classes present);
* :class:`WeightedSum` of (weight, loss) pairs; :class:`SegmentationCriterion`: main loss +
  weight x semantic-prior loss on a model output (the paper's L = L1 + 0.4 L2 with any losses);
* :func:`enet_class_weights`: class weights 1 / ln(1.02 + f) from pixel frequencies.

Example::

    from semask.losses import CrossEntropyLoss, DiceLoss, WeightedSum
    loss = WeightedSum([(1.0, CrossEntropyLoss(label_smoothing=0.1)), (0.5, DiceLoss())])
    value = loss(model(images).logits, labels)
"""

from .models.loss import (
    IGNORE_INDEX,
    LOSSES,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszLoss,
    OhemCrossEntropyLoss,
    SegLoss,
    SegmentationCriterion,
    WeightedSum,
    build_loss,
    enet_class_weights,
)

__all__ = [
    "IGNORE_INDEX",
    "LOSSES",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszLoss",
    "OhemCrossEntropyLoss",
    "SegLoss",
    "SegmentationCriterion",
    "WeightedSum",
    "build_loss",
    "enet_class_weights",
]
