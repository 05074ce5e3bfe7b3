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
Images are read upright: their EXIF orientation is applied (as photo viewers, and so most
annotation tools, show them); labels are used as stored, never rotated, and must match the
upright image's size (a label that fits only the stored, unrotated image is an error that says so).
16-bit greyscale images are scaled to 8 bits. Call :meth:`SegmentationDataset.check` for a fast
check of a whole split (training does, for both splits, before its first iteration).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..models.palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    default_palette,
)
from .transforms import IGNORE_INDEX, TestTransform, Transform

logger = logging.getLogger(__name__)

# Image file types, the same for training folders, evaluation and prediction (a GIF: its first
# frame). Other files in an image folder are listed in a warning, never skipped silently.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class DataError(ValueError):
    """Unusable dataset content; the message names the offending file or folder.

    Raised inside a DataLoader worker, torch re-raises it in the main process with the worker's
    whole traceback as the message; that becomes the original one-line message again.
    """

    def __init__(self, message: Any = "", *args: Any) -> None:
        if isinstance(message, str) and message.startswith("Caught DataError") and "Original Traceback" in message:
            _, found, original = message.rstrip().splitlines()[-1].partition("DataError: ")
            if found:
                message = original
        super().__init__(message, *args)


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_READABLE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_READABLE_MODES += _SIXTEEN_BIT
_MODES_HINT = "8-bit grey/colour/palette images, or 16-bit grey scaled to 8 bits"


def image_to_rgb(img: Image.Image, source: str | Path = "image") -> np.ndarray:
    """An upright RGB uint8 (H, W, 3) array of a PIL image.

    EXIF orientation is applied (the image is read as viewers show it). 16-bit greyscale
    (``I;16``; ``I`` with values in 0..65535) is scaled to 8 bits as ``round(v / 257)`` (65535 -> 255);
    other modes that hold no 8-bit picture (e.g. float ``F``) are refused with a DataError.
    """
    img = ImageOps.exif_transpose(img) or img
    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise DataError(
                f"{source}: mode {img.mode} pixel values {values.min()}..{values.max()} are outside the 16-bit "
                "range 0..65535; convert it to an 8-bit image"
            )
        grey = ((values + 128) // 257).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode not in _READABLE_MODES:
        raise DataError(f"{source} has PIL mode {img.mode}, which semask does not read ({_MODES_HINT})")
    return np.array(img.convert("RGB"))


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an upright RGB uint8 (H, W, 3) array (see :func:`image_to_rgb`)."""
    try:
        with Image.open(path) as img:
            return image_to_rgb(img, f"image {path}")
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _lossy_label_error(img: Image.Image, path: str | Path) -> DataError | None:
    """The error for a label file stored with lossy compression (JPEG, JPEG 2000, lossy WebP,
    JPEG-compressed TIFF), else None: the decoder invents ids at every region border (a JPEG of a
    label map changes a few percent of its pixels), often into other valid ids no check can see."""
    fmt = img.format or ""
    compression = str(img.info.get("compression", "")).lower()
    lossy = fmt in ("JPEG", "MPO", "JPEG2000") or (fmt == "TIFF" and "jpeg" in compression)
    if fmt == "WEBP":
        lossy = not _webp_is_lossless(Path(path))
    if not lossy:
        return None
    return DataError(
        f"label {path} is stored as {fmt}{' (JPEG-compressed)' if fmt == 'TIFF' else ''}, a lossy format: "
        "compression changes class ids along region borders; save labels as PNG (lossless)"
    )


def _webp_is_lossless(path: Path) -> bool:
    """Whether a WebP file holds a lossless image: its first image chunk is VP8L, not VP8."""
    with open(path, "rb") as handle:
        handle.seek(12)  # "RIFF" <size> "WEBP", then chunks: fourcc, little-endian size, data
        while len(header := handle.read(8)) == 8:
            fourcc, size = header[:4], int.from_bytes(header[4:], "little")
            if fourcc in (b"VP8 ", b"VP8L"):
                return fourcc == b"VP8L"
            handle.seek(size + (size & 1), os.SEEK_CUR)
    return False


def read_label(path: str | Path) -> np.ndarray:
    """Decode a label map (8-bit single-channel PNG, mode L or P) to a uint8 (H, W) array of ids."""
    try:
        with Image.open(path) as img:
            if (lossy := _lossy_label_error(img, path)) is not None:
                raise lossy
            mode = img.mode
            label = np.array(img) if mode in ("L", "P") else None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read label {path}: {exc}") from None
    if label is None:
        raise DataError(
            f"label {path} must be an 8-bit single-channel image of class ids (PIL mode L or P), got mode {mode}"
        )
    return label


def read_colour_label(
    path: str | Path, colours: dict[tuple[int, int, int], int], ignore_index: int, palette_file: str | Path
) -> np.ndarray:
    """Class ids of a label: 8-bit L/P files are ids already; RGB(A) colour masks are mapped
    pixel by pixel through ``colours`` ((r, g, b) -> id, from ``palette_file``). A colour that
    is not in the map is an error naming the colours, the label file and the palette file."""
    try:
        with Image.open(path) as img:
            if (lossy := _lossy_label_error(img, path)) is not None:
                raise lossy
            mode = img.mode
            if mode in ("L", "P"):
                return np.array(img)
            rgb = np.array(img.convert("RGB")) if mode in ("RGB", "RGBA") else None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read label {path}: {exc}") from None
    if rgb is None:
        raise DataError(f"label {path} must be class ids (mode L or P) or an RGB colour mask, got mode {mode}")
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lut_keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colours], np.int64)
    lut_ids = np.array(list(colours.values()), np.uint8)
    order = np.argsort(lut_keys)
    lut_keys, lut_ids = lut_keys[order], lut_ids[order]
    pos = np.clip(np.searchsorted(lut_keys, codes), 0, len(lut_keys) - 1)
    known = lut_keys[pos] == codes
    if not known.all():
        unknown = np.unique(codes[~known])
        shown = [((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255) for c in unknown[:8]]
        raise DataError(
            f"label {path} holds {len(unknown)} colour(s) not in {palette_file}: {shown}"
            f"{' ...' if len(unknown) > 8 else ''}; add them to the palette (one class per line) "
            "or set data.ignore_color for the unlabelled colour"
        )
    return lut_ids[pos]


def read_bands(path: str | Path, channels: int | None = None) -> np.ndarray:
    """An (H, W, C) array of an image's bands in its own pixel type, for ``in_channels`` != 3.

    ``.tif``/``.tiff`` files (multi-band GeoTIFF, 16-bit) are read with ``tifffile`` (the optional
    extra ``pip install 'semask[tiff]'``), other files with PIL (grey: 1 band, RGBA: 4). Planar
    (C, H, W) storage is transposed when ``channels`` says so. uint8, uint16 and float32 are kept;
    other integer and float types become float32. A band count other than ``channels`` is an error.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile
            except ImportError:
                raise DataError(
                    f"reading the TIFF {path} needs the tifffile package: pip install 'semask[tiff]'"
                ) from None
            array = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as img:
                array = np.array(img)
    except DataError:
        raise
    except Exception as exc:  # tifffile raises its own error types
        raise DataError(f"cannot read image {path}: {exc}") from None
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3 and channels is not None and array.shape[0] == channels and array.shape[2] != channels:
        array = np.ascontiguousarray(array.transpose(1, 2, 0))
    if array.ndim != 3:
        raise DataError(f"image {path} has shape {array.shape}; expected (H, W, bands)")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype not in (np.uint8, np.uint16, np.float32):
        array = array.astype(np.float32)
    if channels is not None and array.shape[2] != channels:
        raise DataError(f"image {path} has {array.shape[2]} band(s) but data.in_channels is {channels}")
    return array


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
    # colour -> class id for RGB label images (FolderDataset with palette.txt); None: ids only
    colour_labels: dict[tuple[int, int, int], int] | None = None
    colour_source = "palette.txt"
    in_channels = 3  # image bands; 3 = RGB read with PIL, else read_bands

    def read_label_file(self, path: Path) -> np.ndarray:
        """The (H, W) uint8 class ids of a label file: 8-bit ids, or colours mapped by ``colour_labels``."""
        if self.colour_labels is None:
            return read_label(path)
        return read_colour_label(path, self.colour_labels, self.ignore_index, self.colour_source)

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
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.description = description
        self.ignore_index = int(ignore_index)
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
        """The raw RGB uint8 image of sample ``index`` (``in_channels`` != 3: its bands, see :func:`read_bands`)."""
        if self.in_channels != 3:
            return read_bands(self.samples[index][0], self.in_channels)
        return read_image(self.samples[index][0])

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw image and checked label (after ``reduce_zero_label``) of sample ``index``."""
        image = self.load_image(index)
        label_path = self.samples[index][1]
        if label_path is None:
            return image, np.full(image.shape[:2], self.ignore_index, np.uint8)
        label = self.read_label_file(label_path)
        if label.shape != image.shape[:2]:
            _size_mismatch(label_path, label.shape[::-1], self.samples[index][0], image.shape[1::-1])
        return image, self._check_label_values(label, label_path)

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

    def check(self, full: bool = False, num_threads: int = 8, progress: bool = True) -> dict[str, int]:
        """Check every sample before training; raise one DataError listing all broken files.

        Headers only by default (fast, threads): each image opens, its stored data is complete
        (PNG chunk checksums; a JPEG without its end marker is decoded to make sure) and its mode
        is one :func:`read_image` reads; each label is an 8-bit L/P PNG whose size equals the
        image's size after EXIF orientation. ``full=True`` also decodes every label and checks
        its class ids (0..K-1 or 255, after ``reduce_zero_label``). Returns counts: ``samples``
        and ``rotated`` (images read rotated because of their EXIF orientation), and the (H, W)
        ``sizes`` of the images as they are read.
        """

        def one(index: int) -> str | tuple[bool, tuple[int, int]]:
            image_path, label_path = self.samples[index]
            try:
                if self.in_channels != 3:  # multi-band files: decoded by read_bands, not PIL
                    size, rotated = read_bands(image_path, self.in_channels).shape[1::-1], False
                else:
                    size, rotated = _check_image_file(image_path)
                if label_path is not None:
                    _check_label_file(label_path, size, image_path, colour=self.colour_labels is not None)
                    if full:
                        self._check_label_values(self.read_label_file(label_path), label_path)
            except DataError as exc:
                return str(exc)
            return rotated, (int(size[1]), int(size[0]))

        errors: list[str] = []
        rotated = 0
        sizes: list[tuple[int, int]] = []
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            results = pool.map(one, range(len(self)))
            desc = f"checking {self.description} ({'full' if full else 'headers'})"
            for result in tqdm(results, total=len(self), desc=desc, disable=not progress, leave=False):
                if isinstance(result, str):
                    errors.append(result)
                else:
                    rotated += int(result[0])
                    sizes.append(result[1])
        if errors:
            shown = "\n  ".join(errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise DataError(f"{self.description}: {len(errors)} of {len(self)} samples are broken:\n  {shown}{more}")
        return {"samples": len(self), "rotated": rotated, "sizes": sizes}

    def _check_label_values(self, label: np.ndarray, label_path: Path) -> np.ndarray:
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        bad = (label >= self.num_classes) & (label != self.ignore_index)
        if bad.any():
            values = sorted(int(v) for v in np.unique(label[bad]))
            raise DataError(
                f"label {label_path} holds class ids {values[:10]} outside 0..{self.num_classes - 1} "
                f"({self.ignore_index} = ignore){' after reduce_zero_label' if self.reduce_zero_label else ''}"
            )
        return label

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


_ROTATING = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored) from the header; a PNG's is read only when its
    eXIf chunk precedes the pixel data (else finding it would mean decoding the image)."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block: PIL's exif_transpose would ignore it too
        return 1


def _orientation_of(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return _exif_orientation(img)
    except Exception:
        return 1


def _check_image_file(path: Path) -> tuple[tuple[int, int], bool]:
    """(W, H) as :func:`read_image` will return it, and whether EXIF orientation rotates it;
    headers and stored-data completeness only (see :meth:`SegmentationDataset.check`)."""
    try:
        with Image.open(path) as img:
            size, mode, fmt = img.size, img.mode, img.format
            orientation = _exif_orientation(img)
        with Image.open(path) as img:  # verify() must come straight after open
            if mode not in _READABLE_MODES:
                raise DataError(f"image {path} has PIL mode {mode}, which semask does not read ({_MODES_HINT})")
            if fmt == "JPEG":
                with open(path, "rb") as handle:
                    handle.seek(-2, os.SEEK_END)
                    complete = handle.read(2) == b"\xff\xd9"
                if not complete:  # no end marker: decode to tell a truncated file from trailing data
                    img.load()
            else:
                img.verify()
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    rotated = orientation in _ROTATING
    return ((size[1], size[0]) if rotated else size), orientation != 1


def _check_label_file(path: Path, image_size: tuple[int, int], image_path: Path, colour: bool = False) -> None:
    """``colour``: RGB colour-mask labels are allowed too (mapped through palette.txt)."""
    modes = ("L", "P", "RGB", "RGBA") if colour else ("L", "P")
    try:
        with Image.open(path) as img:
            if (lossy := _lossy_label_error(img, path)) is not None:
                raise lossy
            size, mode = img.size, img.mode
            if mode in modes:
                img.verify()
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read label {path}: {exc}") from None
    if mode not in modes:
        raise DataError(
            f"label {path} must be an 8-bit single-channel image of class ids (PIL mode L or P), got mode {mode}"
        )
    if size != image_size:
        _size_mismatch(path, size, image_path, image_size)


def _size_mismatch(label_path: Path, label_wh: Any, image_path: Path, image_wh: Any) -> None:
    label_wh, image_wh = tuple(int(v) for v in label_wh), tuple(int(v) for v in image_wh)
    message = f"label {label_path} is {label_wh[0]}x{label_wh[1]} (WxH) but image {image_path} is "
    message += f"{image_wh[0]}x{image_wh[1]}"
    if label_wh == image_wh[::-1] and _orientation_of(image_path) in _ROTATING:
        message += (
            " after its EXIF orientation is applied (images are read upright, labels as stored): draw the "
            "label on the upright image, or remove the orientation tag from the image"
        )
    raise DataError(message)


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


def _match_pairs(images: list[Path], label_for: dict[Path, Path], where: str) -> list[tuple[Path, Path]]:
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
        samples = _match_pairs(images, {p: label_dir / f"{p.stem}.png" for p in images}, str(image_dir))
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
            _match_pairs(images, label_for, str(image_dir)),
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
    layout) are accepted as is. The 10k converter writes 0 = unlabelled and 1..171 = classes, so
    ``reduce_zero_label`` is on by default (as in the official SeMask COCO-Stuff-10k configs);
    164k labels (0..170, 255 = unlabelled) need ``reduce_zero_label=False``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transform: Transform | None = None,
        reduce_zero_label: bool = True,
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
            _match_pairs(images, label_for, str(image_dir)),
            COCO_STUFF_CLASSES,
            COCO_STUFF_PALETTE,
            reduce_zero_label=reduce_zero_label,
            transform=transform,
            seed=seed,
            description=f"COCO-Stuff {sub}",
        )


class FolderDataset(SegmentationDataset):
    """Generic layout for custom data::

        ROOT/images/{split}/NAME.{jpg,jpeg,png,bmp,tif,tiff,webp,gif}
        ROOT/labels/{split}/NAME.png      8-bit class ids (or RGB colours, see below)
        ROOT/classes.txt                  optional: line i is the name of class i
        ROOT/palette.txt                  optional: line i is "r g b" of class i

    The number of classes comes from classes.txt or ``num_classes`` (both: they must agree);
    at least 2 (binary segmentation is background + foreground). With ``reduce_zero_label``
    the files hold 0 = unlabelled and 1..K, and classes.txt lists the K classes after reduction.

    Options:

    * ``split``: a folder name as above; or, when ``ROOT/images/{split}`` does not exist, the
      list ``ROOT/splits/{split}.txt``; or a path to any ``.txt`` list (relative to ROOT or
      absolute). A list holds one NAME per line (a path under ``images/``, suffix optional),
      read from ``ROOT/images/NAME{img_suffix}`` and ``ROOT/labels/NAME{label_suffix}``.
    * ``img_suffix`` (default: any of the image types) / ``label_suffix`` (default ``.png``):
      the file name endings; NAME is the file name without them, e.g.
      ``_leftImg8bit.png`` / ``_gtFine_labelTrainIds.png``.
    * ``ignore_index`` (default 255): the label value that is not trained on or scored; it
      must not be a class id (0..K-1).
    * Colour masks: with palette.txt present, RGB label images are mapped colour -> class id
      (line i of palette.txt is class i); a colour not in the palette is an error naming the
      file, except ``ignore_color``, which maps to ``ignore_index``.
    * ``in_channels`` (default 3, RGB): other band counts read images with :func:`read_bands`
      (multi-band / 16-bit TIFF, grey or RGBA PNG) in their own pixel type.
    * ``skip_unlabelled``: leave out images without a label file instead of failing
      (``semask check-data`` lists them).
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
        ignore_index: int = IGNORE_INDEX,
        img_suffix: str | None = None,
        label_suffix: str = ".png",
        ignore_color: Sequence[int] | None = None,
        skip_unlabelled: bool = False,
        in_channels: int = 3,
    ) -> None:
        root = _require_dir(Path(root), "dataset root")
        class_names = _read_classes(root / "classes.txt", num_classes)
        if len(class_names) == 1:
            raise DataError(
                f"{root / 'classes.txt' if (root / 'classes.txt').is_file() else 'num_classes'}: one class is not "
                "supported; binary segmentation uses 2 classes (0 background, 1 foreground)"
            )
        if not 0 <= ignore_index <= 255 or ignore_index < len(class_names):
            raise DataError(
                f"{root}: ignore_index {ignore_index} must be in {len(class_names)}..255, above the class ids "
                f"0..{len(class_names) - 1}"
            )
        if reduce_zero_label and ignore_index != IGNORE_INDEX:
            raise DataError(f"{root}: reduce_zero_label marks unlabelled pixels 255; leave ignore_index at 255")
        palette = _read_palette(root / "palette.txt", len(class_names))
        pairs = _folder_samples(root, split, img_suffix, label_suffix, skip_unlabelled)
        super().__init__(
            pairs,
            class_names,
            palette,
            reduce_zero_label=reduce_zero_label,
            transform=transform,
            seed=seed,
            description=f"{root} {split}",
            ignore_index=ignore_index,
        )
        self.img_suffix, self.label_suffix = img_suffix, label_suffix
        if in_channels < 1:
            raise DataError(f"{root}: in_channels must be >= 1, got {in_channels}")
        self.in_channels = int(in_channels)
        colours = {tuple(int(v) for v in c): i for i, c in enumerate(palette or [])}
        if palette is not None and len(colours) != len(palette):  # ids only: colour masks would be ambiguous
            if ignore_color is not None:
                raise DataError(f"{root / 'palette.txt'}: two classes share a colour, so colour masks are ambiguous")
        elif palette is not None:
            if ignore_color is not None:
                key = tuple(int(v) for v in ignore_color)
                if key in colours:
                    raise DataError(f"ignore_color {list(key)} is the colour of class {colours[key]} in palette.txt")
                colours[key] = ignore_index  # type: ignore[index]
            self.colour_labels = colours  # type: ignore[assignment]
            self.colour_source = str(root / "palette.txt")
        elif ignore_color is not None:
            raise DataError(f"ignore_color is set but {root / 'palette.txt'} (the colour -> class map) does not exist")


def _strip_suffix(name: str, suffix: str | None) -> str | None:
    """NAME of a file name with this suffix (case-insensitive), or None when it does not end so."""
    if suffix is None:
        lower = name.lower()
        return next((name[: -len(s)] for s in IMAGE_SUFFIXES if lower.endswith(s)), None)
    return name[: -len(suffix)] if name.lower().endswith(suffix.lower()) and len(name) > len(suffix) else None


def warn_left_out(folder: Path, files: Sequence[str], what: str) -> None:
    """Log the ``files`` of ``folder`` that are left out because they are not ``what`` (the first
    10 named), so that none is skipped silently."""
    if files:
        shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
        logger.warning("%s: %d file(s) are not %s and are left out: %s", folder, len(files), what, shown)


def _folder_samples(
    root: Path, split: str, img_suffix: str | None, label_suffix: str, skip_unlabelled: bool = False
) -> list[tuple[Path, Path]]:
    """(image, label) pairs of a folder split or a split list (see :class:`FolderDataset`)."""
    images, label_for, where, _ = folder_candidates(root, split, img_suffix, label_suffix)
    if skip_unlabelled:
        images = [image for image in images if label_for[image].is_file()]
    return _match_pairs(images, label_for, where)


def folder_candidates(
    root: Path, split: str, img_suffix: str | None, label_suffix: str
) -> tuple[list[Path], dict[Path, Path], str, Path | None]:
    """The images of a folder split or split list, the label path each should have, a
    description of where they came from, and the split's label folder (None for a list)."""
    list_file = None
    if split.endswith(".txt"):
        list_file = Path(split) if Path(split).is_absolute() else root / split
        if not list_file.is_file():
            raise DataError(f"split list {list_file} does not exist")
    elif not (root / "images" / split).is_dir() and (root / "splits" / f"{split}.txt").is_file():
        list_file = root / "splits" / f"{split}.txt"
    if list_file is None:
        image_dir = _require_dir(root / "images" / split, f"split {split!r} image")
        label_dir = _require_dir(root / "labels" / split, f"split {split!r} label")
        names: dict[str, Path] = {}
        others: list[str] = []
        for path in sorted(p for p in image_dir.iterdir() if p.is_file()):
            name = _strip_suffix(path.name, img_suffix)
            if name is None:
                others += [] if path.name.startswith(".") else [path.name]
                continue
            if name in names:
                raise DataError(f"two images share the name {name!r}: {names[name]} and {path}")
            names[name] = path
        warn_left_out(image_dir, others, f"images of this dataset ({img_suffix or ' '.join(IMAGE_SUFFIXES)})")
        label_for = {path: label_dir / f"{name}{label_suffix}" for name, path in names.items()}
        return list(names.values()), label_for, str(image_dir), label_dir
    lines = [line.strip() for line in list_file.read_text(encoding="utf-8").splitlines()]
    images, label_for, missing = [], {}, []
    for name in dict.fromkeys(line for line in lines if line and not line.startswith("#")):
        base = _strip_suffix(name, img_suffix) or name
        candidates = [root / "images" / f"{base}{s}" for s in ([img_suffix] if img_suffix else IMAGE_SUFFIXES)]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            missing.append(f"{name} (looked for {candidates[0]}{' etc.' if len(candidates) > 1 else ''})")
            continue
        images.append(image)
        label_for[image] = root / "labels" / f"{base}{label_suffix}"
    if missing:
        shown = "\n  ".join(missing[:10])
        raise DataError(f"{list_file}: {len(missing)} listed name(s) have no image:\n  {shown}")
    return images, label_for, str(list_file), None


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
