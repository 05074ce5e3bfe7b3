"""Training and test pipelines with the exact semantics of mmsegmentation 0.x (spec section 6).

The official SeMask-FPN numbers come from mmseg 0.11, which works on OpenCV uint8 images. Each
step below reproduces what that code computes, in numpy and without OpenCV:

* **Resize** (``mmcv.imrescale``): the target scale ``(long, short)`` is first multiplied by the
  sampled ratio and truncated to ints, then the image is scaled by
  ``min(long / max(h, w), short / min(h, w))`` ("fit"), the new side being
  ``int(side * factor + 0.5)``. Images use OpenCV ``INTER_LINEAR`` semantics: half-pixel
  centres, borders clamped, *no* antialiasing when shrinking (PIL's bilinear filter widens its
  support when shrinking, which would blur training images differently from the reference).
  It is computed in float32 and rounded half up to uint8; OpenCV's 11-bit fixed-point weights
  can differ from that by one grey level on rare pixels. Labels use OpenCV ``INTER_NEAREST``:
  source index ``floor(dst * (src / dst))``, which is not PIL's centre-aligned nearest rule.
* **Random crop** (``RandomCrop``): offsets drawn uniformly in ``[0, max(H - ch, 0)]`` (rows
  first). While ``cat_max_ratio < 1`` the crop is redrawn when it holds a single class or one
  class covers ``>= cat_max_ratio`` of its non-ignored pixels; after 10 rejected crops the 11th
  draw is used unchecked, exactly as mmseg does. ``cat_max_ratio >= 1`` disables the check.
  The crop is chosen on the resized label and only that window of the image is interpolated,
  which gives the same pixels as resizing everything and cropping, at a fraction of the cost.
* **Flip**: horizontal, when ``rng.random() < flip_prob``.
* **Photometric distortion**: brightness, then contrast either before (mode 1) or after
  (mode 0) the HSV steps, then saturation, then hue, each applied with probability 1/2. Every
  step works on uint8 images and truncates (does not round) back to uint8 after clipping, like
  mmseg's ``convert``. Saturation and hue each convert to HSV and back with OpenCV's uint8
  formulas (H in 0..180, S and V in 0..255); HSV does not depend on channel order, so working
  on RGB instead of mmseg's BGR gives the same numbers. The hue shift is an integer drawn from
  ``[-18, 18)`` (numpy's exclusive upper bound, as in mmseg).
* **Normalise** with the RGB mean/std, **then pad** bottom/right to the crop size with 0 for the
  image (i.e. the mean colour) and the ignore index for the label.

All randomness comes from the ``numpy.random.Generator`` passed in, in the order mmseg draws
it, so a sample is a pure function of ``(image, label, rng state)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    """
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if min(scale) < 1:
        raise ValueError(f"scale must hold two positive edge lengths, got {scale}")
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def scaled(scale: tuple[int, int], ratio: float) -> tuple[int, int]:
    """``scale`` times ``ratio``, truncated to ints as mmseg does before fitting."""
    return int(scale[0] * ratio), int(scale[1] * ratio)


def resize_image(
    image: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Bilinear resize of an HxWxC uint8 image to ``size`` = (h, w), OpenCV INTER_LINEAR rules.

    ``window`` = (top, left, height, width) returns only that part of the resized image.
    """
    h, w = size
    if min(h, w) < 1:
        raise ValueError(f"cannot resize to {size}")
    top, left, height, width = (0, 0, h, w) if window is None else window
    if image.shape[:2] == (h, w):
        return image[top : top + height, left : left + width]
    y0, y1, wy = _linear_taps(image.shape[0], h, top, height)
    x0, x1, wx = _linear_taps(image.shape[1], w, left, width)
    rows = image[y0].astype(np.float32)
    below = image[y1].astype(np.float32)
    below -= rows
    below *= wy[:, None, None]
    rows += below
    out = rows[:, x0]
    right = rows[:, x1]
    right -= out
    right *= wx[None, :, None]
    out += right
    if image.dtype == np.float32:  # float bands are kept as they are
        return out
    out += 0.5  # values stay in the integer type's range: truncating x + 0.5 rounds half up
    return out.astype(image.dtype)


def _linear_taps(src: int, dst: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of output pixels start..start+count-1 (half-pixel centres)."""
    pos = np.maximum((np.arange(start, start + count, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
    first = np.minimum(pos.astype(np.intp), src - 1)
    return first, np.minimum(first + 1, src - 1), (pos - first).astype(np.float32)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW label map, OpenCV INTER_NEAREST rules."""
    h, w = label.shape
    if (h, w) == tuple(size):
        return label
    rows = _nearest_index(h, size[0])
    cols = _nearest_index(w, size[1])
    return label[rows[:, None], cols[None, :]]


def _nearest_index(src: int, dst: int) -> np.ndarray:
    # OpenCV computes the inverse of the (dst / src) scale in double precision and floors.
    inverse = 1.0 / (dst / src)
    return np.minimum(np.floor(np.arange(dst) * inverse).astype(np.int64), src - 1)


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

_HSV_SHIFT = 12
_DIVISORS = np.arange(1, 256, dtype=np.float64)
# OpenCV's fixed-point reciprocal tables (entry 0 is 0: grey pixels get S = 0 and H = 0).
_S_DIV = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / _DIVISORS)]).astype(np.int32)
_H_DIV = np.concatenate([[0], np.rint((180 << _HSV_SHIFT) / (6.0 * _DIVISORS))]).astype(np.int32)
_HALF = 1 << (_HSV_SHIFT - 1)
_H_SCALE = np.float32(6.0) / np.float32(180.0)
_INV_255 = np.float32(1.0) / np.float32(255.0)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV exactly as OpenCV's ``COLOR_RGB2HSV`` (H in 0..180)."""
    r, g, b = (image[..., c].astype(np.int32) for c in range(3))
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = np.take(_S_DIV, v)
    s *= diff
    s += _HALF
    s >>= _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h *= np.take(_H_DIV, diff)
    h += _HALF
    h >>= _HSV_SHIFT
    h[h < 0] += 180
    out = np.empty(image.shape, np.uint8)
    out[..., 0], out[..., 1], out[..., 2] = h, s, v
    return out


# OpenCV takes each output channel from one of v, v(1-s), v(1-s*f), v(1-s(1-f)) depending on the
# 60-degree sector of the hue (f = fractional position inside it). Written as v(1 - s*k) with
# k = A + B*f, these tables give (A, B) per channel (rows r, g, b) and sector (columns); the
# float32 operations are then the same as OpenCV's.
_SECTOR_A = np.array([[0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0]], np.float32)
_SECTOR_B = np.array([[0, 1, 0, 0, -1, 0], [-1, 0, 0, 1, 0, 0], [0, 0, -1, 0, 0, 1]], np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (H in 0..180) -> uint8 RGB exactly as OpenCV's ``COLOR_HSV2RGB`` (float32 maths)."""
    h = hsv[..., 0].astype(np.float32) * _H_SCALE
    s = hsv[..., 1].astype(np.float32) * _INV_255
    v = hsv[..., 2].astype(np.float32) * _INV_255
    h[h >= 6] -= 6
    start = np.floor(h)
    frac = h - start
    sector = start.astype(np.intp)
    out = np.empty(hsv.shape, np.uint8)
    for c in range(3):
        k = np.take(_SECTOR_A[c], sector)
        k += np.take(_SECTOR_B[c], sector) * frac
        k *= s
        value = np.float32(1) - k
        value *= v
        value *= np.float32(255)
        out[..., c] = np.rint(value, out=value)  # values lie in [0, 255]: no clipping needed
    return out


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
        hsv = rgb_to_hsv(image)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        image = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(image)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
        image = hsv_to_rgb(hsv)
    if mode == 0:
        image = contrast(image)
    return image


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 (3, H, W) ``(image - mean) / std``."""
    out = image.astype(np.float32)
    out -= np.asarray(mean, dtype=np.float32)
    out /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


_PIXEL_TYPES = (np.uint8, np.uint16, np.float32)  # 8-bit RGB; multi-band/16-bit/float imagery


def _check_image(image: np.ndarray, label: np.ndarray | None, channels: int = 3) -> None:
    if image.dtype not in _PIXEL_TYPES or image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(
            f"expected an HxWx{channels} uint8 image ({'RGB' if channels == 3 else 'bands'}; uint16 and float32 "
            f"are read too), got {image.dtype} array of shape {image.shape}; mean/std give {channels} channel(s)"
        )
    if label is not None and label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image size {image.shape[:2]}")


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
    of ``ratios`` (pick one uniformly, as on ADE20K) and ``ratio_range`` (uniform in
    ``[lo, hi)``, as on Cityscapes); use ``ratios=[1.0]`` for a fixed scale. ``crop_size`` is
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
        if not len(mean) or len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per input channel each (std > 0), got {mean!r}, {std!r}")
        self.crop_size = None if crop_size is None else as_pair(crop_size, "crop_size")
        self.scale = as_pair(scale, "scale")
        self.ratio_range = None if ratio_range is None else (float(ratio_range[0]), float(ratio_range[1]))
        self.ratios = None if ratios is None else tuple(float(r) for r in ratios)
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = photometric
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
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
        label = resize_label(label, size)
        window = (0, 0, *size)
        if self.crop_size is not None:
            top, left = crop_offsets(label, self.crop_size, rng, self.cat_max_ratio, self.ignore_index)
            window = (top, left, min(self.crop_size[0], size[0]), min(self.crop_size[1], size[1]))
            label = label[top : top + window[2], left : left + window[3]]
        image = resize_image(image, size, window)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            if image.dtype != np.uint8 or image.shape[2] != 3:
                raise ValueError(
                    f"the photometric distortion works on 8-bit RGB images, not {image.shape[2]}-channel "
                    f"{image.dtype} ones; set data.photometric: false"
                )
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
        if not len(mean) or len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per input channel each (std > 0), got {mean!r}, {std!r}")
        self.scale = None if scale is None else as_pair(scale, "scale")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def resize(self, image: np.ndarray, ratio: float = 1.0) -> np.ndarray:
        """The test resize at ``ratio`` times the scale (multi-scale testing resizes the original)."""
        if self.scale is None:
            h, w = image.shape[:2]
            size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        else:
            size = rescale_size(image.shape[:2], scaled(self.scale, ratio))
        return resize_image(image, size)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        _check_image(image, label, len(self.mean))
        return normalize(self.resize(image), self.mean, self.std), label.astype(np.int64)

    def __repr__(self) -> str:
        return f"TestTransform(scale={self.scale})"
