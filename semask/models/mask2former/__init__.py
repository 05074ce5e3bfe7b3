"""SeMask Swin with mask-classification heads (MaskFormer, Mask2Former, FaPN, MSFaPN); registers presets."""

from .model import (
    MaskClassificationOutput,
    MaskFormerConfig,
    SeMaskMaskFormer,
    multi_scale_flip_inference,
    semantic_head,
    semantic_inference,
)

__all__ = [
    "MaskClassificationOutput",
    "MaskFormerConfig",
    "SeMaskMaskFormer",
    "multi_scale_flip_inference",
    "semantic_head",
    "semantic_inference",
]
