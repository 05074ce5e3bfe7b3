"""Training and test pipelines of the Semantic-FPN and MiT families, as mmsegmentation 0.x computes them.

The official SeMask-FPN numbers come from mmseg 0.11 (``SeMask-FPN/mmseg/datasets/pipelines/
transforms.py`` with mmcv 1.3), which works on OpenCV uint8 images; SegFormer's pipeline is the
same code. Each step below makes the OpenCV call that code makes, so every augmented pixel is the
official one (tests compare against the cv2 calls on real photos):

* **Resize** (``mmcv.imrescale``): the target scale ``(long, short)`` is first multiplied by the
  sampled ratio and truncated to ints, then the image is scaled by
  ``min(long / max(h, w), short / min(h, w))`` ("fit"), the new side being
  ``int(side * factor + 0.5)``; then ``cv2.resize`` with ``INTER_LINEAR`` (images; no
  antialiasing when shrinking) or ``INTER_NEAREST`` (labels). The whole image is resized, then
  cropped, as mmseg does.
* **Random crop** (``RandomCrop``): offsets drawn uniformly in ``[0, max(H - ch, 0)]`` (rows
  first). While ``cat_max_ratio < 1`` the crop is redrawn when it holds a single class or one
  class covers ``>= cat_max_ratio`` of its non-ignored pixels; after 10 rejected crops the 11th
  draw is used unchecked, exactly as mmseg does. ``cat_max_ratio >= 1`` disables the check.
* **Flip**: horizontal, when ``rng.random() < flip_prob``.
* **Photometric distortion**: brightness, then contrast either before (mode 1) or after
  (mode 0) the HSV steps, then saturation, then hue, each applied with probability 1/2.
  Brightness and contrast are mmseg's ``convert`` (float32 affine map, clip, truncate to
  uint8); saturation and hue convert with ``cv2.cvtColor`` on uint8 (H in 0..180). mmseg works
  on BGR images (``mmcv.bgr2hsv`` / ``hsv2bgr``); ``COLOR_RGB2HSV`` of the RGB image gives the
  same HSV bytes and ``COLOR_HSV2RGB`` the same pixels in RGB order, and the per-channel
  brightness/contrast maps do not depend on the order. The hue shift is an integer drawn from
  ``[-18, 18)`` (numpy's exclusive upper bound, as in mmseg).
* **Normalise** with the RGB mean/std in float32, ``(x - mean) / std``, **then pad** bottom/right
  to the crop size with 0 for the image (i.e. the mean colour) and the ignore index for the
  label (mmseg's order: ``Normalize`` before ``Pad(pad_val=0, seg_pad_val=255)``).

OpenCV versions: on real photos, ``cv2.resize`` (both interpolations) and the HSV conversions of
OpenCV 4.5.1 (what mmcv 1.3 ran in 2021) and 5.1 give identical bytes (checked ad hoc with both
wheels), so no pin is needed. mmcv's ``imnormalize`` (``cv2.subtract`` / ``cv2.multiply`` by
``1 / std``) gives exactly ``(x - mean) / std`` in float32 on OpenCV 4.5 but differs by one float32
ulp on about a quarter of the values on OpenCV 5.1, so normalisation stays in numpy, which
equals the official one.

All randomness comes from the ``numpy.random.Generator`` passed in, in the order mmseg draws
it, so a sample is a pure function of ``(image, label, rng state)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ..models.base import IMAGENET_MEAN, IMAGENET_STD, MS_RATIOS
from ..models.loss import IGNORE_INDEX

ADE20K_RATIOS: tuple[float, ...] = MS_RATIOS

# A transform maps (RGB uint8 HxWx3 image, HxW label, rng) to a normalised float32 (3, h, w)
# image and an int64 (h, w) label.
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- geometry


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[int, int]:
    """(h, w) after a keep-ratio resize that fits ``scale`` = (long edge, short edge) bounds.

    The edge order inside ``scale`` does not matter: the larger number bounds the long side.
    A side is at least 1 pixel (mmcv would give 0 for the short side of a 10x20000 image).
    """
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if min(scale) < 1:
        raise ValueError(f"scale must hold two positive edge lengths, got {scale}")
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def scaled(scale: tuple[int, int], ratio: float) -> tuple[int, int]:
    """``scale`` times ``ratio``, truncated to ints as mmseg does before fitting."""
    return int(scale[0] * ratio), int(scale[1] * ratio)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` of an HxWxC image to ``size`` = (h, w) with ``INTER_LINEAR`` (mmcv's bilinear)."""
    h, w = size
    if min(h, w) < 1:
        raise ValueError(f"cannot resize to {size}")
    if image.shape[:2] == (h, w):
        return image
    out = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == image.ndim else out[..., None]  # OpenCV drops a single channel axis


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` of an HxW label map to ``size`` = (h, w) with ``INTER_NEAREST`` (mmcv's nearest)."""
    if label.shape == tuple(size):
        return label
    if label.dtype == np.int64:  # OpenCV has no 64-bit integers; class ids fit in 32 bits
        return cv2.resize(label.astype(np.int32), size[::-1], interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return cv2.resize(label, size[::-1], interpolation=cv2.INTER_NEAREST)


def crop_offsets(
    label: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[int, int]:
    """(top, left) of a ``crop_size`` = (h, w) crop of ``label``, redrawn by the class-ratio rule."""
    h, w = label.shape
    ch, cw = crop_size

    def draw() -> tuple[int, int]:
        top = int(rng.integers(0, max(h - ch, 0) + 1))
        left = int(rng.integers(0, max(w - cw, 0) + 1))
        return top, left

    top, left = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            counts = np.bincount(label[top : top + ch, left : left + cw].ravel())
            if ignore_index < counts.size:
                counts[ignore_index] = 0
            counts = counts[counts > 0]
            if counts.size > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    return top, left


# --------------------------------------------------------------------------- colour


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg's convert: float32 affine map, clip, then truncate to uint8.
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg 0.x ``PhotoMetricDistortion`` on a uint8 RGB image (see the module docstring)."""
    image = np.ascontiguousarray(image)  # OpenCV needs positive strides (a flipped view has none)

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _convert(img, alpha=rng.uniform(*contrast_range))
        return img

    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1:
        image = contrast(image)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0:
        image = contrast(image)
    return image


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """HxWxC image -> contiguous float32 (C, H, W) ``(image - mean) / std``: the float32 arithmetic of
    mmcv's ``imnormalize`` and of detectron2's model on its CHW tensor. The raw image is made
    channel-first before the arithmetic, so numpy runs long loops per channel instead of 3-long ones
    per pixel (the same values, about 8x faster)."""
    out = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    out -= np.asarray(mean, dtype=np.float32)[:, None, None]
    out /= np.asarray(std, dtype=np.float32)[:, None, None]
    return out


_PIXEL_TYPES = (np.uint8, np.uint16, np.float32)  # 8-bit RGB; multi-band/16-bit/float imagery


def _check_image(image: np.ndarray, label: np.ndarray | None, channels: int = 3) -> None:
    if image.dtype not in _PIXEL_TYPES or image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(
            f"expected an HxWx{channels} uint8 image ({'RGB' if channels == 3 else 'bands'}; uint16 and float32 "
            f"are read too), got {image.dtype} array of shape {image.shape}; mean/std give {channels} channel(s)"
        )
    if label is not None and label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image size {image.shape[:2]}")


def mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A transform's ``mean`` and ``std`` as float tuples, one value per input channel each (std > 0)."""
    if not len(mean) or len(mean) != len(std) or min(std) <= 0:
        raise ValueError(f"mean and std need one value per input channel each (std > 0), got {mean!r}, {std!r}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def check_colour_input(image: np.ndarray, step: str) -> None:
    """The colour augmentations (both data paths) convert to HSV: 8-bit RGB only."""
    if image.dtype != np.uint8 or image.shape[2] != 3:
        raise ValueError(
            f"{step} works on 8-bit RGB images, not {image.shape[2]}-channel {image.dtype} ones; "
            "set data.photometric: false"
        )


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as an (h, w) pair of positive ints (one int means both); errors name ``name``."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------- pipelines


class TrainTransform:
    """Resize by a random ratio, crop, flip, photometric distortion, normalise, pad.

    ``scale`` is the (long, short) base scale that the sampled ratio multiplies. Give exactly one
    of ``ratios`` (pick one uniformly: the SeMask fork's list ``ratio_range``) and ``ratio_range``
    (uniform in ``[lo, hi)``: mmseg's tuple); use ``ratios=[1.0]`` for a fixed scale. ``crop_size`` is
    (h, w); ``None`` skips cropping and padding.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int] | None = (512, 512),
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] | None = None,
        ratios: Sequence[float] | None = ADE20K_RATIOS,
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if (ratios is None) == (ratio_range is None):
            raise ValueError(f"give exactly one of ratios ({ratios!r}) and ratio_range ({ratio_range!r})")
        if ratios is not None and (len(ratios) == 0 or min(ratios) <= 0):
            raise ValueError(f"ratios must be a non-empty list of positive numbers, got {ratios!r}")
        if ratio_range is not None and not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (lo, hi) with 0 < lo <= hi, got {ratio_range!r}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.mean, self.std = mean_std(mean, std)
        self.crop_size = None if crop_size is None else as_pair(crop_size, "crop_size")
        self.scale = as_pair(scale, "scale")
        self.ratio_range = None if ratio_range is None else (float(ratio_range[0]), float(ratio_range[1]))
        self.ratios = None if ratios is None else tuple(float(r) for r in ratios)
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = photometric
        self.ignore_index = ignore_index

    def sample_ratio(self, rng: np.random.Generator) -> float:
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            return float(rng.random() * (hi - lo) + lo)
        assert self.ratios is not None
        return self.ratios[int(rng.integers(len(self.ratios)))]

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check_image(image, label, len(self.mean))
        size = rescale_size(image.shape[:2], scaled(self.scale, self.sample_ratio(rng)))
        image, label = resize_image(image, size), resize_label(label, size)
        if self.crop_size is not None:
            top, left = crop_offsets(label, self.crop_size, rng, self.cat_max_ratio, self.ignore_index)
            image = image[top : top + self.crop_size[0], left : left + self.crop_size[1]]
            label = label[top : top + self.crop_size[0], left : left + self.crop_size[1]]
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            check_colour_input(image, "the photometric distortion")
            image = photometric_distortion(image, rng)
        chw = normalize(image, self.mean, self.std)
        label = label.astype(np.int64)
        if self.crop_size is not None:
            pad_h = self.crop_size[0] - label.shape[0]
            pad_w = self.crop_size[1] - label.shape[1]
            if pad_h > 0 or pad_w > 0:
                chw = np.pad(chw, ((0, 0), (0, pad_h), (0, pad_w)))
                label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        return chw, np.ascontiguousarray(label)

    def __repr__(self) -> str:
        ratios = f"ratio_range={self.ratio_range}" if self.ratio_range else f"ratios={list(self.ratios or ())}"
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale={self.scale}, {ratios}, "
            f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, photometric={self.photometric})"
        )


class TestTransform:
    """Keep-ratio resize of the image to fit ``scale`` (``None``: no resize), then normalise.

    The label is returned at its original size, because metrics are computed at the original
    resolution (the logits are resized back instead). The rng argument is accepted for a common
    signature and not used.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        scale: tuple[int, int] | None = (2048, 512),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.mean, self.std = mean_std(mean, std)
        self.scale = None if scale is None else as_pair(scale, "scale")

    def resize(self, image: np.ndarray, ratio: float = 1.0) -> np.ndarray:
        """The test resize at ``ratio`` times the scale (multi-scale testing resizes the original)."""
        if self.scale is None:
            h, w = image.shape[:2]
            size = (max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5)))
        else:
            size = rescale_size(image.shape[:2], scaled(self.scale, ratio))
        return resize_image(image, size)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        _check_image(image, label, len(self.mean))
        return normalize(self.resize(image), self.mean, self.std), label.astype(np.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"
