"""detectron2's data path: what the mask-classification models (SeMask MaskFormer, Mask2Former,
-FaPN, -MSFaPN) were trained and tested on, pixel for pixel.

The official SeMask code trains them with ``MaskFormerSemanticDatasetMapper`` (Mask2Former
``mask2former/data/dataset_mappers/mask_former_semantic_dataset_mapper.py``) and tests them with
detectron2's ``DatasetMapper`` and ``DatasetMapperTTA``. Each step here makes the library call that
code makes (PIL, torch, OpenCV), in its order:

* **Resize** (``ResizeShortestEdge``, ``detectron2/data/transforms/augmentation_impl.py``): the
  short edge goes to ``short_edge``; if the long edge would exceed ``max_size`` (a fixed cap, not
  scaled with the short edge) both are scaled down to fit; each side is rounded with
  ``int(x + 0.5)``. ``ResizeTransform`` (``transform.py``) resizes uint8 images with PIL's
  bilinear filter (``Image.fromarray(img).resize((w, h), Image.BILINEAR)``, which widens its
  support when shrinking) and other arrays with torch's bilinear ``F.interpolate``; the mapper
  reads label maps as float64 and ``apply_segmentation`` resizes them with torch
  ``F.interpolate(mode="nearest")`` (float64 matters: torch's uint8 kernel picks other source
  pixels for some sizes); here the float64 kernel's source index per row and column is read off
  a resized index ramp and only the crop window is gathered (the same pixels, tested).
* **Crop** (``RandomCrop_CategoryAreaConstraint("absolute", crop, max_area, 255)``): a
  ``min(crop, image)`` window, rows offset first. With ``max_area >= 1`` one draw; otherwise up
  to 10 draws, stopping at the first window that has more than one non-ignored class and no
  class covering ``max_area`` or more of them (the 10th draw is kept if none does).
* **Colour** (``ColorAugSSDTransform``, ``projects/PointRend/point_rend/color_augmentation.py``):
  brightness ``+U(-32, 32)`` with p = 1/2; then either contrast, saturation, hue or saturation,
  hue, contrast (p = 1/2 each order), each applied with p = 1/2: contrast ``x U(0.5, 1.5)``,
  saturation ``x U(0.5, 1.5)`` on OpenCV's uint8 HSV S channel, hue ``+ randint(-18, 18)``
  (both ends included) modulo 180 on H. Each step works on float32, clips to 0..255 and truncates
  to uint8. The official code swaps to BGR for ``COLOR_BGR2HSV``; OpenCV's ``COLOR_RGB2HSV`` on
  RGB gives the same HSV bytes (tested), so the image stays RGB here.
* **Flip** horizontally with p = 1/2 (``RandomFlip``).
* **Pad** the uint8 image with 128 and the label with the ignore index, bottom and right, to
  exactly ``pad_size`` x ``pad_size`` (the mapper's ``INPUT.SIZE_DIVISIBILITY``: 640 on ADE20K,
  off on Cityscapes), *then* normalise (the model subtracts the mean and divides by the std).

Test: ``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)`` with PIL, normalise; the model pads to
a multiple of 32 with zeros itself. The multi-scale test (``DatasetMapperTTA``) resizes the image
the test loader already resized, again with ``ResizeShortestEdge(size, TEST.AUG.MAX_SIZE)``.

Randomness comes from the ``numpy.random.Generator`` passed in, drawn in the official order (the
official code uses numpy's and Python's global generators), so a sample is a pure function of
``(image, label, rng state)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models.base import IMAGENET_MEAN, IMAGENET_STD
from ..models.loss import IGNORE_INDEX
from .transforms import TestTransform, _check_image, _convert, as_pair, check_colour_input, mean_std, normalize


def shortest_edge_size(size: tuple[int, int], short_edge: int, max_size: int) -> tuple[int, int]:
    """(h, w) after ``ResizeShortestEdge(short_edge, max_size)`` of an image of ``size`` (h, w)."""
    h, w = size
    if min(h, w) < 1 or short_edge < 1 or max_size < 1:
        raise ValueError(f"need a positive image size, short edge and max size, got {size}, {short_edge}, {max_size}")
    scale = short_edge * 1.0 / min(h, w)
    new_h, new_w = (short_edge, scale * w) if h < w else (scale * h, short_edge)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))  # a side keeps >= 1 pixel (a 10x20000 strip)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``ResizeTransform.apply_image``: PIL bilinear for uint8 (per band unless RGB), torch bilinear
    (``align_corners=False``, float32) for uint16 / float32 bands."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    if image.dtype == np.uint8:
        if image.shape[2] == 3:
            return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        bands = [
            np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize((w, h), Image.BILINEAR))
            for c in range(image.shape[2])
        ]
        return np.stack(bands, axis=2)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def nearest_index(src: int, dst: int) -> np.ndarray:
    """For each of ``dst`` outputs, the source index torch's ``F.interpolate(mode="nearest")`` copies
    along an axis of ``src`` pixels: the float64 kernel's own answer, read off a resized index ramp
    (a 2-D nearest resize takes rows and columns independently)."""
    ramp = torch.arange(src, dtype=torch.float64).view(1, 1, src, 1)
    return F.interpolate(ramp, size=(dst, 1), mode="nearest").view(dst).numpy().astype(np.intp)


def resize_label(
    label: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """``ResizeTransform.apply_segmentation`` of the mapper's float64 label (torch nearest), in the
    label's dtype; ``window`` = (top, left, height, width) returns only that part (same pixels,
    without building the whole resized map)."""
    top, left, h, w = (0, 0, *size) if window is None else window
    rows = nearest_index(label.shape[0], size[0])[top : top + h]
    cols = nearest_index(label.shape[1], size[1])[left : left + w]
    return label[rows[:, None], cols[None, :]]


def crop_window(
    size: tuple[int, int],
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    max_area: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    label: np.ndarray | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of ``RandomCrop_CategoryAreaConstraint("absolute", crop_size,
    max_area)`` in an image of ``size`` (h, w); ``max_area < 1`` checks the windows of ``label``
    (the resized label map)."""
    h, w = size
    ch, cw = min(crop_size[0], h), min(crop_size[1], w)

    def draw() -> tuple[int, int]:
        return int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))

    if max_area >= 1.0:
        return (*draw(), ch, cw)
    if label is None or label.shape != tuple(size):
        raise ValueError(f"max_area={max_area} < 1 checks the crop on the resized label map of size {size}")
    for _ in range(10):
        top, left = draw()
        classes, counts = np.unique(label[top : top + ch, left : left + cw], return_counts=True)
        counts = counts[classes != ignore_index]
        if len(counts) > 1 and np.max(counts) < np.sum(counts) * max_area:
            break
    return top, left, ch, cw


def color_aug_ssd(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """``ColorAugSSDTransform.apply_image`` on a uint8 RGB image (see the module docstring)."""

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, alpha=float(rng.uniform(*contrast_range)))
        return img

    def saturation(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=float(rng.uniform(*saturation_range)))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    def hue(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + int(rng.integers(-hue_delta, hue_delta + 1))) % 180
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return img

    if rng.integers(2):
        image = _convert(image, beta=float(rng.uniform(-brightness_delta, brightness_delta)))
    if rng.integers(2):
        return hue(saturation(contrast(image)))
    return contrast(hue(saturation(image)))


class ShortEdgeTrainTransform:
    """``MaskFormerSemanticDatasetMapper`` for training: short-edge resize, crop, SSD colour
    augmentation, flip, pad the raw image, normalise (module docstring).

    ``short_edges`` is ``INPUT.MIN_SIZE_TRAIN`` (one picked uniformly per sample), ``max_size``
    ``INPUT.MAX_SIZE_TRAIN``, ``crop_size`` (h, w) ``INPUT.CROP.SIZE`` (``None``: no crop),
    ``max_area`` ``INPUT.CROP.SINGLE_CATEGORY_MAX_AREA``, ``color_aug`` ``INPUT.COLOR_AUG_SSD``,
    ``pad_size`` ``INPUT.SIZE_DIVISIBILITY`` (``None``: no padding).
    """

    def __init__(
        self,
        short_edges: Sequence[int],
        max_size: int,
        crop_size: int | tuple[int, int] | None = (640, 640),
        max_area: float = 1.0,
        color_aug: bool = True,
        flip_prob: float = 0.5,
        pad_size: int | None = None,
        pad_value: int = 128,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if not short_edges or min(short_edges) < 1 or max_size < 1:
            raise ValueError(f"need positive short edges and max size, got {list(short_edges)}, {max_size}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.mean, self.std = mean_std(mean, std)
        self.crop_size = None if crop_size is None else as_pair(crop_size, "crop_size")
        if pad_size is not None and (pad_size < 1 or (self.crop_size is not None and max(self.crop_size) > pad_size)):
            raise ValueError(f"pad_size must be positive and at least the crop size {self.crop_size}, got {pad_size}")
        if not 0 <= pad_value <= 255:
            raise ValueError(f"pad_value is a raw 8-bit pixel value (0..255), got {pad_value}")
        self.short_edges = tuple(int(s) for s in short_edges)
        self.max_size = int(max_size)
        self.max_area = float(max_area)
        self.color_aug = color_aug
        self.flip_prob = float(flip_prob)
        self.pad_size = pad_size
        self.pad_value = int(pad_value)
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check_image(image, label, len(self.mean))
        short_edge = self.short_edges[int(rng.integers(len(self.short_edges)))]
        size = shortest_edge_size(image.shape[:2], short_edge, self.max_size)
        window = (0, 0, *size)
        if self.crop_size is not None:
            whole = resize_label(label, size) if self.max_area < 1.0 else None  # the area check looks at it
            window = crop_window(size, self.crop_size, rng, self.max_area, self.ignore_index, whole)
        top, left, h, w = window
        label = resize_label(label, size, window)
        image = resize_image(image, size)[top : top + h, left : left + w]
        if self.color_aug:
            check_colour_input(image, "the SSD colour augmentation")
            image = color_aug_ssd(image, rng)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        label = label.astype(np.int64)
        if self.pad_size is not None:
            pad = ((0, self.pad_size - label.shape[0]), (0, self.pad_size - label.shape[1]))
            image = np.pad(image, (*pad, (0, 0)), constant_values=self.pad_value)
            label = np.pad(label, pad, constant_values=self.ignore_index)
        return normalize(image, self.mean, self.std), np.ascontiguousarray(label)

    def __repr__(self) -> str:
        return (
            f"ShortEdgeTrainTransform(short_edges={list(self.short_edges)}, max_size={self.max_size}, "
            f"crop_size={self.crop_size}, max_area={self.max_area}, color_aug={self.color_aug}, "
            f"flip_prob={self.flip_prob}, pad_size={self.pad_size}, pad_value={self.pad_value})"
        )


class ShortEdgeTestTransform(TestTransform):
    """detectron2's test resize: ``ResizeShortestEdge(min(scale), max(scale))`` with PIL, then
    normalise (``scale`` = (``MAX_SIZE_TEST``, ``MIN_SIZE_TEST``) in either order; ``None``: the
    original size). The label is returned at its original size, as metrics are computed there."""

    def __init__(
        self,
        scale: tuple[int, int] | None = (2560, 640),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(scale, mean, std)  # only the default differs: detectron2's ADE20K test scale

    def resize(self, image: np.ndarray, ratio: float = 1.0) -> np.ndarray:
        """The test resize; a ``ratio`` other than 1 multiplies both bounds (truncated), a multi-scale
        test of our own (the official one is :meth:`views` with sizes)."""
        if self.scale is None:
            h, w = image.shape[:2]
            return resize_image(image, (max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))))
        short, long = int(min(self.scale) * ratio), int(max(self.scale) * ratio)
        return resize_image(image, shortest_edge_size(image.shape[:2], short, long))

    def views(self, image: np.ndarray, sizes: Sequence[int], max_size: int) -> Iterator[np.ndarray]:
        """``DatasetMapperTTA``'s inputs without the flips: the test-resized image resized again to
        each short edge in ``sizes`` (long edge at most ``max_size``)."""
        base = self.resize(image)
        for size in sizes:
            yield resize_image(base, shortest_edge_size(base.shape[:2], int(size), max_size))
