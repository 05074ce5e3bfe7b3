"""Segmentation datasets: a common base class and readers for ADE20K, Cityscapes, COCO-Stuff and
plain folders.

Every dataset is a list of (image path, label path) pairs plus class names and a palette.
Items are dicts ``image`` (float32 (3, h, w), normalised), ``label`` (int64 (h, w), 255 = ignore),
``name`` (image file stem), ``ori_size`` ((H, W) of the file) and ``index``.

Augmentation is reproducible and resumable: item ``i`` in epoch ``e`` draws all its randomness
from ``numpy.random.default_rng([seed, e, i])``, independent of worker count or order. Call
:meth:`SegmentationDataset.set_epoch` before each epoch; DataLoader workers see the new epoch
when their iterator is created, so do not use ``persistent_workers=True`` with it.

Broken data fails loudly with a :class:`DataError` naming the file: at construction for missing
folders and unpaired images, when a sample is loaded for unreadable images, size mismatches and
out-of-range label values, and for the whole split at once with :meth:`~SegmentationDataset.validate`.
Images are read with PIL as stored (EXIF orientation is not applied, so pixels stay aligned with
label maps drawn on the stored pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    default_palette,
)
from .transforms import IGNORE_INDEX, TestTransform, Transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """Unusable dataset content; the message names the offending file or folder."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an RGB uint8 (H, W, 3) array."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def read_label(path: str | Path) -> np.ndarray:
    """Decode a label map (8-bit single-channel PNG, mode L or P) to a uint8 (H, W) array of ids."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            label = np.array(img) if mode in ("L", "P") else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read label {path}: {exc}") from None
    if label is None:
        raise DataError(
            f"label {path} must be an 8-bit single-channel image of class ids (PIL mode L or P), got mode {mode}"
        )
    return label


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """ADE20K convention: 0 ("other") becomes ignore (255), every other id k becomes k - 1."""
    out = label.astype(np.uint8, copy=True)
    out[label == 0] = 255
    out -= 1
    out[out == 254] = 255
    return out


class SegmentationDataset(Dataset):
    """(image, label) pairs with class metadata; see the module docstring for the item format.

    ``samples`` holds (image path, label path or None); a missing label yields an all-ignore map
    of the image size (for prediction-only sets). ``transform`` defaults to normalisation only.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, str | Path | None]],
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        *,
        reduce_zero_label: bool = False,
        transform: Transform | None = None,
        seed: int = 0,
        description: str = "dataset",
    ) -> None:
        self.description = description
        if len(samples) == 0:
            raise DataError(f"{description}: no samples")
        if not 1 <= len(class_names) <= 255:
            raise DataError(f"{description}: need 1..255 classes (255 is the ignore id), got {len(class_names)}")
        self.samples = [(Path(image), None if label is None else Path(label)) for image, label in samples]
        self.class_names = [str(name) for name in class_names]
        palette = default_palette(len(class_names)) if palette is None else palette
        self.palette = _check_palette(palette, len(class_names), description)
        self.reduce_zero_label = reduce_zero_label
        self.transform: Transform = transform if transform is not None else TestTransform(scale=None)
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.description}, {len(self)} samples, {self.num_classes} classes, "
            f"reduce_zero_label={self.reduce_zero_label}, transform={self.transform!r})"
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (see the module docstring)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator that item ``index`` uses in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def name(self, index: int) -> str:
        return self.samples[index][0].stem

    def load_image(self, index: int) -> np.ndarray:
        """The raw RGB uint8 image of sample ``index``."""
        return read_image(self.samples[index][0])

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw image and checked label (after ``reduce_zero_label``) of sample ``index``."""
        image = self.load_image(index)
        label_path = self.samples[index][1]
        if label_path is None:
            return image, np.full(image.shape[:2], self.ignore_index, np.uint8)
        label = read_label(label_path)
        if label.shape != image.shape[:2]:
            raise DataError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but image "
                f"{self.samples[index][0]} is {image.shape[1]}x{image.shape[0]}"
            )
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        bad = (label >= self.num_classes) & (label != self.ignore_index)
        if bad.any():
            values = sorted(int(v) for v in np.unique(label[bad]))
            raise DataError(
                f"label {label_path} holds class ids {values[:10]} outside 0..{self.num_classes - 1} "
                f"(255 = ignore){' after reduce_zero_label' if self.reduce_zero_label else ''}"
            )
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]
        image, label = self.load_sample(index)
        image_out, label_out = self.transform(image, label, self.rng(index))
        return {
            "image": torch.from_numpy(image_out),
            "label": torch.from_numpy(label_out),
            "name": self.name(index),
            "ori_size": (int(image.shape[0]), int(image.shape[1])),
            "index": index,
        }

    def validate(self, num_threads: int = 4, progress: bool = True) -> np.ndarray:
        """Load every sample once; raise one DataError listing all broken files.

        Returns the per-class pixel counts of the split (int64, length ``num_classes``), which
        also tells which classes never occur.
        """

        def check(index: int) -> np.ndarray | str:
            try:
                _, label = self.load_sample(index)
            except DataError as exc:
                return str(exc)
            return np.bincount(label.ravel(), minlength=256)[: self.num_classes]

        counts = np.zeros(self.num_classes, np.int64)
        errors: list[str] = []
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            results = pool.map(check, range(len(self)))
            bar = tqdm(results, total=len(self), desc=f"validating {self.description}", disable=not progress)
            for result in bar:
                if isinstance(result, str):
                    errors.append(result)
                else:
                    counts += result
        if errors:
            shown = "\n  ".join(errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise DataError(f"{self.description}: {len(errors)} of {len(self)} samples are broken:\n  {shown}{more}")
        return counts


def _check_palette(palette: Sequence[Sequence[int]], num_classes: int, where: str) -> list[list[int]]:
    if len(palette) < num_classes:
        raise DataError(f"{where}: palette has {len(palette)} colours for {num_classes} classes")
    out = []
    for i, colour in enumerate(palette[:num_classes]):
        rgb = [int(c) for c in colour]
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise DataError(f"{where}: palette entry {i} must be 3 ints in 0..255, got {list(colour)}")
        out.append(rgb)
    return out


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder {path} does not exist")
    return path


def _pair(images: list[Path], label_for: dict[Path, Path], where: str) -> list[tuple[Path, Path]]:
    """Pair every image with its label file; fail listing the images that have none."""
    if not images:
        raise DataError(f"{where}: no images found")
    missing = [f"{image} (expected {label_for[image]})" for image in images if not label_for[image].is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{where}: {len(missing)} image(s) without a label:\n  {shown}{more}")
    return [(image, label_for[image]) for image in images]


def _fixed_classes(name: str, expected: int, num_classes: int | None) -> None:
    if num_classes is not None and num_classes != expected:
        raise DataError(f"{name} has {expected} classes; got num_classes={num_classes}")


def _split_dir(name: str, split: str, aliases: dict[str, str]) -> str:
    if split in aliases:
        return aliases[split]
    if split in aliases.values():
        return split
    raise DataError(f"{name}: unknown split {split!r}; use one of {sorted(set(aliases) | set(aliases.values()))}")


class ADE20KDataset(SegmentationDataset):
    """ADEChallengeData2016: ``images/{training,validation}/*.jpg`` with ``annotations/.../*.png``.

    ``root`` is the ADEChallengeData2016 folder or its parent. Labels are reduced (0 -> ignore,
    k -> k - 1) to the 150 classes.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        *,
        transform: Transform | None = None,
        reduce_zero_label: bool = True,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        _fixed_classes("ADE20K", 150, num_classes)
        root = _require_dir(Path(root), "ADE20K root")
        if (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        sub = _split_dir("ADE20K", split, {"train": "training", "val": "validation"})
        image_dir = _require_dir(root / "images" / sub, "ADE20K image")
        label_dir = _require_dir(root / "annotations" / sub, "ADE20K annotation")
        images = sorted(image_dir.glob("*.jpg"))
        samples = _pair(images, {p: label_dir / f"{p.stem}.png" for p in images}, str(image_dir))
        super().__init__(
            samples,
            ADE20K_CLASSES,
            ADE20K_PALETTE,
            reduce_zero_label=reduce_zero_label,
            transform=transform,
            seed=seed,
            description=f"ADE20K {sub}",
        )


class CityscapesDataset(SegmentationDataset):
    """``leftImg8bit/{split}/CITY/*_leftImg8bit.png`` with ``gtFine/{split}/CITY/*_gtFine_labelTrainIds.png``.

    The train-id maps are made by the cityscapesscripts ``createTrainIdLabelImgs`` tool.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Transform | None = None,
        reduce_zero_label: bool = False,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        _fixed_classes("Cityscapes", 19, num_classes)
        root = _require_dir(Path(root), "Cityscapes root")
        sub = _split_dir("Cityscapes", split, {"training": "train", "validation": "val", "test": "test"})
        image_dir = _require_dir(root / "leftImg8bit" / sub, "Cityscapes image")
        label_dir = _require_dir(root / "gtFine" / sub, "Cityscapes label")
        suffix = "_leftImg8bit.png"
        images = sorted(image_dir.glob(f"*/*{suffix}"))
        label_for = {
            p: label_dir / p.parent.name / (p.name[: -len(suffix)] + "_gtFine_labelTrainIds.png") for p in images
        }
        super().__init__(
            _pair(images, label_for, str(image_dir)),
            CITYSCAPES_CLASSES,
            CITYSCAPES_PALETTE,
            reduce_zero_label=reduce_zero_label,
            transform=transform,
            seed=seed,
            description=f"Cityscapes {sub}",
        )


class COCOStuff10kDataset(SegmentationDataset):
    """COCO-Stuff (171 classes), mmseg layout: ``images/{train2014,test2014}/*.jpg`` with
    ``annotations/{train2014,test2014}/*_labelTrainIds.png``.

    Split ``train``/``training`` is train2014 and ``val``/``validation``/``test`` is test2014 (the
    10k benchmark); folder names such as ``train2017``/``val2017`` (COCO-Stuff-164k in the same
    layout) are accepted as is.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Transform | None = None,
        reduce_zero_label: bool = False,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        _fixed_classes("COCO-Stuff", 171, num_classes)
        root = _require_dir(Path(root), "COCO-Stuff root")
        aliases = {"train": "train2014", "training": "train2014"}
        aliases.update(dict.fromkeys(("val", "validation", "test"), "test2014"))
        sub = aliases.get(split, split)
        image_dir = _require_dir(root / "images" / sub, "COCO-Stuff image")
        label_dir = _require_dir(root / "annotations" / sub, "COCO-Stuff annotation")
        images = sorted(image_dir.glob("*.jpg"))
        label_for = {p: label_dir / f"{p.stem}_labelTrainIds.png" for p in images}
        super().__init__(
            _pair(images, label_for, str(image_dir)),
            COCO_STUFF_CLASSES,
            COCO_STUFF_PALETTE,
            reduce_zero_label=reduce_zero_label,
            transform=transform,
            seed=seed,
            description=f"COCO-Stuff {sub}",
        )


class FolderDataset(SegmentationDataset):
    """Generic layout for custom data::

        ROOT/images/{split}/NAME.{jpg,jpeg,png}
        ROOT/labels/{split}/NAME.png      8-bit class ids, 255 = ignore
        ROOT/classes.txt                  optional: line i is the name of class i
        ROOT/palette.txt                  optional: line i is "r g b" of class i

    The number of classes comes from classes.txt or ``num_classes`` (both: they must agree).
    With ``reduce_zero_label`` the files hold 0 = unlabelled and 1..K, and classes.txt lists the
    K classes after reduction.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Transform | None = None,
        reduce_zero_label: bool = False,
        num_classes: int | None = None,
        seed: int = 0,
    ) -> None:
        root = _require_dir(Path(root), "dataset root")
        class_names = _read_classes(root / "classes.txt", num_classes)
        palette = _read_palette(root / "palette.txt", len(class_names))
        image_dir = _require_dir(root / "images" / split, f"split {split!r} image")
        label_dir = _require_dir(root / "labels" / split, f"split {split!r} label")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        stems: dict[str, Path] = {}
        for image in images:
            if image.stem in stems:
                raise DataError(f"two images share the name {image.stem!r}: {stems[image.stem]} and {image}")
            stems[image.stem] = image
        label_for = {p: label_dir / f"{p.stem}.png" for p in images}
        super().__init__(
            _pair(images, label_for, str(image_dir)),
            class_names,
            palette,
            reduce_zero_label=reduce_zero_label,
            transform=transform,
            seed=seed,
            description=f"{root} {split}",
        )


def _read_classes(path: Path, num_classes: int | None) -> list[str]:
    if not path.is_file():
        if num_classes is None:
            raise DataError(f"{path} does not exist; write one class name per line or pass num_classes")
        return [f"class_{i}" for i in range(num_classes)]
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{path}: line {i + 1} is empty (line i names class i - 1)")
    if num_classes is not None and num_classes != len(names):
        raise DataError(f"{path} lists {len(names)} classes but num_classes={num_classes}")
    return names


def _read_palette(path: Path, num_classes: int) -> list[list[int]] | None:
    if not path.is_file():
        return None
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != num_classes:
        raise DataError(f"{path} has {len(rows)} colours for {num_classes} classes")
    palette = []
    for i, row in enumerate(rows):
        parts = row.replace(",", " ").split()
        try:
            rgb = [int(p) for p in parts]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise DataError(f"{path}: colour {i + 1} must be three integers 0..255 ('r g b'), got {row!r}")
        palette.append(rgb)
    return palette


DATASETS: dict[str, type[SegmentationDataset]] = {
    "ade20k": ADE20KDataset,
    "cityscapes": CityscapesDataset,
    "coco_stuff10k": COCOStuff10kDataset,
    "folder": FolderDataset,
}


def build_dataset(
    type: str, root: str | Path, split: str, transform: Transform | None = None, **kwargs: Any
) -> SegmentationDataset:
    """Dataset by type name; keyword arguments set to None are dropped (they mean "default")."""
    if type not in DATASETS:
        raise DataError(f"unknown dataset type {type!r}; choose from {sorted(DATASETS)}")
    options = {k: v for k, v in kwargs.items() if v is not None}
    return DATASETS[type](root, split, transform=transform, **options)
