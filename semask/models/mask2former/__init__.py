"""SeMask Swin with mask-classification heads (MaskFormer, Mask2Former, FaPN, MSFaPN); registers presets."""

from . import convert  # noqa: F401  (registers the official-checkpoint converter)
from .model import (
    MaskClassificationOutput,
    MaskFormerConfig,
    SeMaskMaskFormer,
    semantic_head,
    semantic_inference,
)

__all__ = [
    "MaskClassificationOutput",
    "MaskFormerConfig",
    "SeMaskMaskFormer",
    "semantic_head",
    "semantic_inference",
]
