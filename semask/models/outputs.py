"""Typed model outputs, so callers read fields by name instead of unpacking tuples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
