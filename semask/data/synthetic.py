"""A small synthetic dataset whose classes can only be told apart by context.

Why: SeMask's claim is that semantic context helps segmentation. This dataset makes context
strictly necessary, so a model that uses it can be shown to beat one that does not, in minutes
on a CPU.

Design of one scene (all sizes scale with the image):

* Background: a wavy boundary at a random angle splits the image into **sea** (blue, horizontal
  wave texture) and **land** (green-brown, blocky blotch texture). About 15% of scenes are all
  sea or all land, so the model cannot assume both are present. The two textures are easy to
  tell apart locally. Pixels on the sea/land boundary are labelled 255 (ignore), like the
  unlabelled seams of real datasets.
* **Vehicles**: 2-5 rectangles per scene whose colour and noise are drawn from ONE distribution
  (grey with a small random tint), whatever their class. A vehicle is a **boat** if most of
  its footprint lies on sea and a **car** if most lies on land, so the pixels inside a vehicle
  look the same for both classes: only the surrounding region decides. About 40% of vehicles
  are centred on the sea/land boundary, where the nearby background is mixed and a small
  receptive field is not enough.
* **Buoys**: 0-2 bright red discs, class buoy on either background: the unambiguous control
  class.

Classes: 0 sea, 1 land, 2 boat, 3 car, 4 buoy. Files follow the generic folder format
(:class:`semask.data.datasets.FolderDataset`): ``images/{train,val}/NNNNN.png`` (lossless, so
textures stay exact), ``labels/{train,val}/NNNNN.png``, ``classes.txt`` and ``palette.txt``.
Image ``i`` of a split depends only on ``(seed, split, i)``, so changing ``num_train`` does not
change the validation images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CONTEXT_CLASSES: tuple[str, ...] = ("sea", "land", "boat", "car", "buoy")
CONTEXT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (30, 90, 200),
    (130, 110, 60),
    (250, 200, 0),
    (200, 0, 200),
    (230, 30, 30),
)
SEA, LAND, BOAT, CAR, BUOY = range(5)
_SPLIT_IDS = {"train": 0, "val": 1}


def make_context_dataset(
    root: str | Path,
    num_train: int = 64,
    num_val: int = 16,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
) -> Path:
    """Write the dataset described in the module docstring under ``root``; return ``root``."""
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 32:
        raise ValueError(f"size must be at least 32 pixels per side, got {size}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    root = Path(root)
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = root / "images" / split
        label_dir = root / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
            image, label = make_scene(rng, height, width)
            Image.fromarray(image).save(image_dir / f"{i:05d}.png", compress_level=1)
            Image.fromarray(label).save(label_dir / f"{i:05d}.png", compress_level=1)
    (root / "classes.txt").write_text("\n".join(CONTEXT_CLASSES) + "\n", encoding="utf-8")
    colours = "\n".join(f"{r} {g} {b}" for r, g, b in CONTEXT_PALETTE)
    (root / "palette.txt").write_text(colours + "\n", encoding="utf-8")
    return root


def make_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, uint8 label) scene drawn from ``rng``."""
    unit = min(height, width) / 128.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Background regions: a wavy line through a random centre at a random angle.
    angle = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    along = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    across = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    amplitude, period, phase = rng.uniform(3, 8) * unit, rng.uniform(30, 60) * unit, rng.uniform(0, 2 * np.pi)
    across += amplitude * np.sin(2 * np.pi * along / period + phase)
    land = across > 0
    uniform_scene = rng.random()
    if uniform_scene < 0.075:
        land[:] = False
    elif uniform_scene < 0.15:
        land[:] = True

    waves = 14 * np.sin(
        2 * np.pi * yy / (6 * unit) + 0.8 * np.sin(2 * np.pi * xx / (23 * unit)) + rng.uniform(0, 2 * np.pi)
    )
    sea_tex = np.array([40, 90, 150], np.float32) + waves[..., None]
    block = max(2, round(8 * unit))
    blotches = rng.normal(0, 18, (height // block + 1, width // block + 1, 3)).astype(np.float32)
    blotches = np.repeat(np.repeat(blotches, block, 0), block, 1)[:height, :width]
    land_tex = np.array([110, 130, 70], np.float32) + blotches
    image = np.where(land[..., None], land_tex, sea_tex) + rng.normal(0, 8, (height, width, 3)).astype(np.float32)

    label = np.where(land, LAND, SEA).astype(np.uint8)
    seam = np.zeros_like(land)
    seam[:, 1:] |= land[:, 1:] != land[:, :-1]
    seam[1:, :] |= land[1:, :] != land[:-1, :]
    label[seam] = 255

    # Vehicles: same appearance distribution for boats and cars; the class follows the region.
    boundary = np.argwhere(seam)
    for _ in range(int(rng.integers(2, 6))):
        h = int(rng.integers(6, 15) * unit)
        w = int(rng.integers(10, 21) * unit)
        if len(boundary) and rng.random() < 0.4:
            y, x = boundary[rng.integers(len(boundary))]
            top, left = int(y) - h // 2, int(x) - w // 2
        else:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        top, left = min(max(top, 0), height - h), min(max(left, 0), width - w)
        box = (slice(top, top + h), slice(left, left + w))
        on_land = land[box].mean() > 0.5
        grey = rng.uniform(100, 180) + rng.uniform(-15, 15, 3)
        image[box] = grey + rng.normal(0, 8, (h, w, 3))
        label[box] = CAR if on_land else BOAT

    # Buoys: unambiguous bright red discs.
    for _ in range(int(rng.integers(0, 3))):
        radius = rng.uniform(3, 6) * unit
        y, x = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        image[disc] = np.array([220, 40, 40], np.float32) + rng.normal(0, 6, (int(disc.sum()), 3))
        label[disc] = BUOY

    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label
