"""The Semantic-FPN / MiT data path against the OpenCV calls mmseg 0.x makes, on real photos, byte for byte.

The reference below is written from mmseg's pipeline (SeMask-FPN/mmseg/datasets/pipelines/
transforms.py with mmcv 1.3's imrescale / imnormalize / impad) step by step on BGR images, as
LoadImageFromFile gives them: the same numpy rng draws, cv2.resize, cv2.cvtColor, cv2.copyMakeBorder.
Our transforms work in RGB; every image and label they produce must be identical.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image

from semask.data import TestTransform, TrainTransform
from semask.data.datasets import read_image
from semask.data.transforms import normalize
from semask.engine.inference import predict_image
from semask.models.outputs import SegmentationOutput

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def _photos() -> dict[str, np.ndarray]:
    """Real photographs shipped with matplotlib and (the test extra) scikit-image, RGB uint8."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
        photos = {"grace_hopper": np.asarray(img.convert("RGB"))}
    try:
        from skimage import data
    except ImportError:
        return photos
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photos[name] = getattr(data, name)()
    return photos


PHOTOS = _photos()


def _label(photo: np.ndarray) -> np.ndarray:
    """A label map with the photo's structure: 8 classes from green, a class-0 band on the left (so
    crops dominated by one class, and the retry rule, happen) and an ignored block."""
    label = (photo[..., 1] // 32).astype(np.uint8)
    label[:, : photo.shape[1] * 2 // 5] = 0
    label[: photo.shape[0] // 8, -photo.shape[1] // 6 :] = 255
    return label


def _imrescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.rescale_size: (w, h) fitting the (long, short) scale, each side int(x * f + 0.5)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def _imnormalize(bgr: np.ndarray) -> np.ndarray:
    """mmcv.imnormalize(to_rgb=True) as OpenCV 4.5 (the official runs) computes it: float32 image,
    BGR -> RGB, cv2.subtract / cv2.multiply with float64 scalars (mean, 1 / std), rounded to
    float32 (OpenCV 5 uses float32 scalars here and differs by one ulp on some values)."""
    rgb = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2RGB)
    mean = np.float64(np.array(MEAN, np.float32))
    stdinv = 1 / np.float64(np.array(STD, np.float32))
    return ((rgb.astype(np.float64) - mean) * stdinv).astype(np.float32)


def mmseg_train(
    rgb: np.ndarray, label: np.ndarray, rng: np.random.Generator, settings: dict[str, Any], seen: Counter
) -> tuple[np.ndarray, np.ndarray]:
    """LoadImageFromFile (BGR) -> Resize -> RandomCrop -> RandomFlip -> PhotoMetricDistortion ->
    Normalize -> Pad, as mmseg 0.x; ``seen`` counts the random branches taken."""
    img = np.ascontiguousarray(rgb[..., ::-1])
    # Resize.random_sample_ratio: a tuple is a uniform range, a list is picked from
    if isinstance(settings["ratios"], tuple):
        lo, hi = settings["ratios"]
        ratio = rng.random() * (hi - lo) + lo
    else:
        ratio = settings["ratios"][rng.integers(len(settings["ratios"]))]
    scale = int(settings["scale"][0] * ratio), int(settings["scale"][1] * ratio)
    size = _imrescale_size(*img.shape[:2], scale)
    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    seg = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    # RandomCrop with the cat_max_ratio retry loop
    ch, cw = settings["crop"]

    def bbox() -> tuple[int, int]:
        return int(rng.integers(0, max(img.shape[0] - ch, 0) + 1)), int(rng.integers(0, max(img.shape[1] - cw, 0) + 1))

    y, x = bbox()
    if settings["cat_max_ratio"] < 1:
        for _ in range(10):
            values, counts = np.unique(seg[y : y + ch, x : x + cw], return_counts=True)
            counts = counts[values != 255]
            if len(counts) > 1 and np.max(counts) / np.sum(counts) < settings["cat_max_ratio"]:
                break
            seen["crop retry"] += 1
            y, x = bbox()
    img, seg = img[y : y + ch, x : x + cw], seg[y : y + ch, x : x + cw]
    # RandomFlip
    if rng.random() < 0.5:
        seen["flip"] += 1
        img, seg = np.flip(img, axis=1), np.flip(seg, axis=1).copy()

    # PhotoMetricDistortion on BGR
    def convert(a: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
        return np.clip(a.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def contrast(a: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            seen["contrast"] += 1
            return convert(a, alpha=rng.uniform(0.5, 1.5))
        return a

    if rng.integers(2):
        seen["brightness"] += 1
        img = convert(img, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1:
        img = contrast(img)
    if rng.integers(2):
        seen["saturation"] += 1
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        seen["hue"] += 1
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + rng.integers(-18, 18)) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0:
        img = contrast(img)
    # Normalize, then Pad (mmcv.impad: cv2.copyMakeBorder bottom/right, 0 for the image, 255 for the label)
    out = _imnormalize(img)
    pad_h, pad_w = ch - out.shape[0], cw - out.shape[1]
    seen["pad"] += pad_h > 0 or pad_w > 0
    out = cv2.copyMakeBorder(out, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
    seg = cv2.copyMakeBorder(seg, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=255)
    return out.transpose(2, 0, 1), seg


SETTINGS = {  # the official pipelines (smaller Cityscapes scale: same code, faster test)
    "semask_ade20k": dict(scale=(2048, 512), ratios=RATIOS, crop=(512, 512), cat_max_ratio=1.0),
    "semask_t_ade20k": dict(scale=(2048, 512), ratios=RATIOS, crop=(512, 512), cat_max_ratio=0.75),
    "range_cityscapes_like": dict(scale=(1024, 512), ratios=(0.5, 2.0), crop=(384, 384), cat_max_ratio=0.75),
}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_train_transform_equals_the_mmseg_pipeline_on_photos(setting: str) -> None:
    s = SETTINGS[setting]
    ranged = isinstance(s["ratios"], tuple)
    ours = TrainTransform(
        crop_size=s["crop"],
        scale=s["scale"],
        ratios=None if ranged else s["ratios"],
        ratio_range=s["ratios"] if ranged else None,
        cat_max_ratio=s["cat_max_ratio"],
        mean=MEAN,
        std=STD,
    )
    seen: Counter = Counter()
    for name, photo in PHOTOS.items():
        label = _label(photo)
        for seed in range(4):
            image, target = ours(photo, label, np.random.default_rng(seed))
            ref_image, ref_target = mmseg_train(photo, label, np.random.default_rng(seed), s, seen)
            np.testing.assert_array_equal(image, ref_image, err_msg=f"{name} seed {seed}")
            np.testing.assert_array_equal(target, ref_target, err_msg=f"{name} seed {seed}")
            assert image.dtype == np.float32 and target.dtype == np.int64
    # every random branch of the pipeline was exercised (with all the photos installed)
    if len(PHOTOS) > 1:
        expected = {"flip", "brightness", "contrast", "saturation", "hue", "pad"}
        expected |= {"crop retry"} if s["cat_max_ratio"] < 1 else set()
        assert expected <= set(seen), seen


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_test_resize_equals_mmcv_imrescale_at_every_aug_test_ratio(name: str) -> None:
    """MultiScaleFlipAug: (int(2048 r), int(512 r)) then Resize(keep_ratio) = mmcv.imrescale, then Normalize."""
    photo = PHOTOS[name]
    transform = TestTransform((2048, 512), MEAN, STD)
    bgr = np.ascontiguousarray(photo[..., ::-1])
    for ratio in RATIOS:
        scale = int(2048 * ratio), int(512 * ratio)
        reference = cv2.resize(bgr, _imrescale_size(*bgr.shape[:2], scale), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(transform.resize(photo, ratio), reference[..., ::-1])
    image, _ = transform(photo, _label(photo))
    reference = cv2.resize(bgr, _imrescale_size(*bgr.shape[:2], (2048, 512)), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(image, _imnormalize(reference).transpose(2, 0, 1))


def test_normalisation_equals_mmcv_for_every_byte() -> None:
    """(x - mean) / std in float32 equals mmcv's imnormalize arithmetic for all 256 values of each channel."""
    values = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, axis=2)
    np.testing.assert_array_equal(normalize(values, MEAN, STD), _imnormalize(values[..., ::-1]).transpose(2, 0, 1))


class _Capture(torch.nn.Module):
    """Records the inputs the inference path feeds a model; predicts class 0 everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        self.inputs.append(x.clone())
        return SegmentationOutput(logits=torch.zeros(x.shape[0], 2, x.shape[2] // 4, x.shape[3] // 4))


@pytest.mark.parametrize("name", sorted(PHOTOS)[:2])
def test_eval_and_predict_feed_the_model_the_official_test_input(name: str) -> None:
    """predict_image (eval, predict, serve) resizes and normalises exactly as mmseg's test pipeline."""
    photo = PHOTOS[name]
    model = _Capture().eval()
    predict_image(model, photo, MEAN, STD, (2048, 512), scales=(0.75, 1.0), flip=True)
    bgr = np.ascontiguousarray(photo[..., ::-1])
    expected = []
    for ratio in (0.75, 1.0):
        size = _imrescale_size(*bgr.shape[:2], (int(2048 * ratio), int(512 * ratio)))
        x = _imnormalize(cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)).transpose(2, 0, 1)
        expected += [x, x[:, :, ::-1]]  # each scale, then its mirror
    assert len(model.inputs) == len(expected)
    for got, want in zip(model.inputs, expected):
        np.testing.assert_array_equal(got[0].numpy(), want)


def test_decoded_jpeg_equals_opencv_imdecode() -> None:
    """The datasets decode with PIL; mmseg's LoadImageFromFile with cv2.imdecode: the same pixels."""
    for name, photo in PHOTOS.items():
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, format="JPEG", quality=90)
        ours = read_image(io.BytesIO(buf.getvalue()))
        theirs = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
