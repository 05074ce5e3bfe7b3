"""Label maps to pictures: colour maps, overlays on the image, and raw id PNGs.

The ignore id 255 is drawn black in colour maps and left transparent (the image shows through)
in overlays.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..models.loss import IGNORE_INDEX


def _as_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"label must be a 2-D integer array, got {label.dtype} of shape {label.shape}")
    return label


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; 255 (ignore) is black."""
    label = _as_label(label)
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise ValueError("palette colours must be (r, g, b) values in 0..255")
    lut = np.zeros((256, 3), np.uint8)  # ids 0..254 take their colour, 255 stays black
    lut[: min(len(colours), IGNORE_INDEX)] = colours[:IGNORE_INDEX]
    valid = label != IGNORE_INDEX
    if valid.any():
        low, high = int(label[valid].min()), int(label[valid].max())
        if low < 0 or high >= min(len(colours), IGNORE_INDEX):
            raise ValueError(
                f"label holds ids {low}..{high} but the palette has {len(colours)} colours "
                "(ids 0..254 can be drawn, 255 = ignore)"
            )
    return lut[label.astype(np.intp)]


def overlay(
    image_rgb: np.ndarray, label: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """Blend class colours over an RGB uint8 image: ``(1 - alpha) * image + alpha * colour``.

    ``alpha=1`` gives the bare colour map; ignored pixels always show the image.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image_rgb.dtype} of shape {image_rgb.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(label, palette)
    if colours.shape != image_rgb.shape:
        raise ValueError(f"label size {colours.shape[:2]} does not match image size {image_rgb.shape[:2]}")
    blended = (1.0 - alpha) * image_rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    blended = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    ignored = np.asarray(label) == IGNORE_INDEX
    blended[ignored] = image_rgb[ignored]
    return blended


def save_label_png(path: str | Path, label: np.ndarray) -> Path:
    """Write class ids as an 8-bit grey PNG (ids 0..254, 255 = ignore), creating parent folders."""
    label = _as_label(label)
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(
            f"cannot save ids {int(label.min())}..{int(label.max())} to {path}: 8-bit PNG labels hold 0..255"
        )
    return save_png(path, label.astype(np.uint8))


def save_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as PNG atomically (a temporary file in the same folder, then
    ``os.replace``): a crash or a second writer never leaves a half-written file at ``path``."""
    from ..models.io import atomic_write

    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
