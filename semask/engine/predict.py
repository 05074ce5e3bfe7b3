"""Prediction on new images: one image to a class-id map, or a folder to PNGs and overlays."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import ExperimentConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_rgb(image: str | os.PathLike[str] | Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a file path, a PIL image or such an array."""
    if isinstance(image, (str, os.PathLike)):
        from ..data.datasets import read_image

        return read_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"expected an image path, a PIL image or an (H, W, 3) uint8 RGB array, got {array.dtype} "
            f"array of shape {array.shape}"
        )
    return array


def load_model_any(path: str | os.PathLike[str]) -> tuple[nn.Module, ExperimentConfig | None]:
    """A model (eval mode) from a semask model folder / ``.safetensors``, a training checkpoint or an
    official ``.pth``.

    For a training checkpoint the run's config comes too, so evaluation and prediction can use
    its dataset and test protocol (``semask eval work_dir/checkpoints/best.pth``).
    """
    import semask

    from .checkpoint import TrainingCheckpointError, load_training_checkpoint, model_from_state

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist (expected a semask model folder or a checkpoint file)")
    if path.is_dir() or path.suffix == ".safetensors":
        return semask.load_model(path), None
    try:
        state = load_training_checkpoint(path)
    except TrainingCheckpointError as exc:
        if "is not a semask training checkpoint" not in str(exc):
            raise
        return semask.load_official_checkpoint(path).eval(), None
    cfg = ExperimentConfig.from_dict(state["config"], source=f"{path} (embedded config)")
    return model_from_state(state, str(path)).eval(), cfg


def predict(
    model: nn.Module,
    image: str | os.PathLike[str] | Image.Image | np.ndarray,
    *,
    scale: tuple[int, int] | None = None,
    mode: str = "whole",
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> np.ndarray:
    """(H, W) int64 class ids of one image at its original size.

    The image is normalised with ``model.config.mean/std``. ``scale`` = (long, short) resizes
    it to fit first, as the benchmark test protocols do (e.g. (2048, 512) for ADE20K models);
    ``None`` runs at the original size. ``scales``/``flip`` give multi-scale + flip testing.
    The model runs on the device of its parameters and is put in eval mode.
    """
    from .inference import predict_image

    model.eval()
    config = model.config  # type: ignore[union-attr]
    return predict_image(
        model,
        load_rgb(image),
        config.mean,
        config.std,
        scale,
        mode=mode,  # type: ignore[arg-type]
        crop_size=crop_size,
        stride=stride,
        scales=scales,
        flip=flip,
        num_classes=config.num_classes,
    )


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files from paths that are files or folders (searched recursively), sorted per folder."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {path}")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"input image {path} does not exist")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems and stems[path.stem] != path:
            raise ValueError(f"two inputs share the output name {path.stem!r}: {stems[path.stem]} and {path}")
        stems[path.stem] = path
    return found


def predict_folder(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    alpha: float = 0.5,
    progress: bool = True,
    **options: Any,
) -> list[dict[str, Path]]:
    """Predict every image of ``inputs`` (files or folders) and write, per image NAME:

    ``labels/NAME.png`` (class ids, 8-bit), ``color/NAME.png`` (palette colours) and
    ``overlay/NAME.png`` (colours blended over the image with opacity ``alpha``).
    ``options`` go to :func:`predict` (scale, mode, crop_size, stride, scales, flip).
    """
    from tqdm import tqdm

    from ..data.palettes import default_palette
    from ..data.visualize import colorize, overlay, save_label_png

    config = model.config  # type: ignore[union-attr]
    palette = config.palette or default_palette(config.num_classes)
    out_dir = Path(out_dir)
    for sub in ("labels", "color", "overlay"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(collect_images(inputs), desc="predict", unit="img", disable=not progress):
        image = load_rgb(path)
        with torch.inference_mode():
            label = predict(model, image, **options)
        files = {
            "image": path,
            "labels": save_label_png(out_dir / "labels" / f"{path.stem}.png", label),
            "color": out_dir / "color" / f"{path.stem}.png",
            "overlay": out_dir / "overlay" / f"{path.stem}.png",
        }
        Image.fromarray(colorize(label, palette)).save(files["color"])
        Image.fromarray(overlay(image, label, palette, alpha)).save(files["overlay"])
        written.append(files)
    return written
