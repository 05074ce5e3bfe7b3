"""The encoder-decoder segmenter both SeMask-FPN and SeMask-MiT are: one forward, one loss path.

An encoder (Swin or MiT, with semantic layers) gives stage features and semantic-prior maps; a
decode head maps the features to stride-4 logits; the parameter-free semantic decoder sums the
priors (paper Fig. 2). Both outputs are resized to the input, and with labels the loss is
L = L1 + lambda_s * L2 (paper eq. 5, weight 0.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SeMaskModel
from .loss import add_semantic_prior_loss, check_labels
from .outputs import SegmentationOutput


def upsample2x(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling, align_corners False (mmseg's ``Upsample`` in the FPN head)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize, align_corners False.

    On CPU in eager mode, NCHW maps (the full-resolution outputs) are resized one axis
    at a time, the same arithmetic as the 2-D kernel and about 2x faster than aten's NCHW
    CPU path: along W with the 1-D kernel, then along H by viewing the (B*K, h, W) result
    as an NHWC image whose "channels" are the W columns. Everything else (channels-last
    maps, GPU, compiled and exported graphs) gets the plain 2-D op.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if x.device.type != "cpu" or nhwc or torch.compiler.is_compiling():
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    b, k, h, w = x.shape
    out_h, out_w = size
    y = F.interpolate(x.reshape(b, k * h, w), size=out_w, mode="linear", align_corners=False)
    y = F.interpolate(
        y.view(b * k, h, 1, out_w).permute(0, 3, 1, 2), size=(out_h, 1), mode="bilinear", align_corners=False
    )
    return y.permute(0, 2, 3, 1).reshape(b, k, out_h, out_w)


def semantic_decoder(priors: list[Tensor]) -> Tensor:
    """Parameter-free: prior i upsampled x2 i times, resized to stride 4 and summed (paper Fig. 2).

    Upsampling runs channels-last (the priors are token-major already); the sum is
    returned NCHW-contiguous, like the main logits.
    """
    priors = [p.contiguous(memory_format=torch.channels_last) for p in priors]
    out = priors[0]
    for i, prior in enumerate(priors[1:], start=1):
        for _ in range(i):
            prior = upsample2x(prior)
        out = out + resize(prior, out.shape[-2:])
    return out.contiguous()


class EncoderDecoderModel(SeMaskModel):
    """``backbone`` + ``decode_head`` (set by the family); ``forward(pixel_values, labels=None)``."""

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        output_semantic_logits: bool = False,
        upsample_logits: bool = True,
    ) -> SegmentationOutput:
        """``semantic_logits`` (the semantic decoder's output, a training signal) are computed
        only with ``labels`` or ``output_semantic_logits=True``: inference does not need them.
        ``upsample_logits=False`` leaves both at the decoder's stride (1/4), as mmseg's training
        forward and HF's SegFormer do; the losses never need the full-size maps, so a training
        step then never builds them (2 x B x K x H x W floats)."""
        if labels is not None:
            check_labels(labels, self.config.num_classes)  # before any compute is spent
        size = pixel_values.shape[-2:]
        encoded = self.backbone(pixel_values, output_priors=labels is not None or output_semantic_logits)
        low = self.decode_head(encoded.features)
        semantic_low = semantic_decoder(encoded.semantic_priors) if encoded.semantic_priors else None
        logits, semantic_logits = low, semantic_low
        if upsample_logits:
            logits = resize(low, size)
            semantic_logits = None if semantic_low is None else resize(semantic_low, size)
        out = SegmentationOutput(logits=logits, semantic_logits=semantic_logits)
        if labels is not None:
            add_semantic_prior_loss(
                out, labels, self.config.semantic_loss_weight, self.config.loss_reduction, low_res=(low, semantic_low)
            )
        return out
