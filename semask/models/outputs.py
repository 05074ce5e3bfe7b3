"""Typed model outputs, so callers read fields by name instead of unpacking tuples, and the
error a model raises for an input it cannot segment."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class UnsegmentableImageError(ValueError):
    """This one image cannot be segmented by the model (e.g. a 10x20000 strip too thin for the
    encoder, or one that runs out of memory); other images can. Loops over images skip it."""


@dataclass
class SegmentationOutput:
    """What every semask segmentation model returns.

    ``logits`` and ``semantic_logits`` are at the input resolution. With
    ``forward(..., upsample_logits=False)`` (what the trainer calls) they are at the decoder's
    stride instead; for the mask-classification models only ``logits`` are, at 1/4 of the input
    padded to a multiple of 32. ``semantic_logits``
    (the semantic decoder's prediction) only when labels were given or
    ``output_semantic_logits=True`` was passed, as inference has no use for it. The losses are
    set only when ``labels`` were passed to ``forward``: ``loss`` is the training
    objective (paper eq. 5), ``loss_main`` the decoder CE (L1) and
    ``loss_semantic`` the semantic-prior CE (L2) before weighting.
    """

    logits: Tensor
    semantic_logits: Tensor | None = None
    loss: Tensor | None = None
    loss_main: Tensor | None = None
    loss_semantic: Tensor | None = None


# Outputs are pytrees, so ``torch.export.export(model, ...)`` works on the model itself.
torch.export.register_dataclass(SegmentationOutput, serialized_type_name="semask.SegmentationOutput")
