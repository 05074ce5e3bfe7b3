"""Class names and colour palettes of the benchmark datasets, plus a generator for custom ones.

The tables live in :mod:`semask.models.palettes` (released weights carry these classes, and
``semask.models`` never imports ``semask.data``); this is their dataset-side name.
"""

from ..models.palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    default_palette,
)

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_PALETTE",
    "default_palette",
]
