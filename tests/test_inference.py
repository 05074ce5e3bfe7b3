"""Tests for semask.engine.inference: whole/slide, multi-scale, flip and the image helper."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import semask
from semask.data.transforms import normalize
from semask.engine.inference import predict_image, slide_windows

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


class ConvModel(nn.Module):
    """Stand-in segmenter: one conv, logits at input size. ``kernel=1`` is per-pixel."""

    def __init__(self, num_classes: int = 4, kernel: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, kernel, padding=kernel // 2)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        self.sizes.append(tuple(x.shape[-2:]))
        return SimpleNamespace(logits=self.conv(x))


class WindowMeanModel(nn.Module):
    """Every pixel of a window gets the window's mean input value: exposes the overlap averaging."""

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        mean = x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, 1, *x.shape[-2:])
        return SimpleNamespace(logits=torch.cat([mean, torch.zeros_like(mean)], dim=1))  # softmax: sigmoid(mean)


def test_slide_window_grid():
    # H = 100, crop 48, stride 32: grids = (100 - 48 + 31) // 32 + 1 = 3, last one moved to end at 100.
    rows = sorted({(y1, y2) for y1, y2, _, _ in slide_windows((100, 40), 48, 32)})
    assert rows == [(0, 48), (32, 80), (52, 100)]
    assert slide_windows((30, 40), (48, 64), (32, 32)) == [(0, 30, 0, 40)]  # smaller than the crop
    for h, w, crop, stride in [(512, 683, 512, 341), (1024, 2048, 769, 513), (97, 101, 33, 20), (64, 64, 64, 1)]:
        windows = slide_windows((h, w), crop, stride)
        per_axis = [max(math.ceil((n - crop) / stride), 0) + 1 for n in (h, w)]
        assert len(windows) == per_axis[0] * per_axis[1]
        covered = np.zeros((h, w), bool)
        for y1, y2, x1, x2 in windows:
            assert (y2 - y1, x2 - x1) == (min(crop, h), min(crop, w))
            assert y1 % stride == 0 or y2 == h
            assert x1 % stride == 0 or x2 == w
            covered[y1:y2, x1:x2] = True
        assert covered.all()


def _probabilities(model, image: np.ndarray, **options) -> torch.Tensor:
    """predict_image's (K, H, W) probabilities, at the original size (no resize) unless told."""
    options.setdefault("scale", None)
    return torch.from_numpy(predict_image(model, image, MEAN, STD, return_probabilities=True, **options)[1])


def _normalized(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(normalize(image, MEAN, STD))[None]


def test_slide_runs_one_forward_per_window_and_averages_overlaps():
    model = ConvModel().eval()
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    options = {"mode": "slide", "crop_size": (40, 50), "stride": (25, 30)}
    predict_image(model, image, MEAN, STD, scale=None, **options)
    windows = slide_windows((70, 90), (40, 50), (25, 30))
    assert len(model.sizes) == len(windows) == 3 * 3
    assert set(model.sizes) == {(40, 50)}

    probs = _probabilities(WindowMeanModel().eval(), image, **options)
    x = _normalized(image)[0, 0]
    total, count = torch.zeros(70, 90), torch.zeros(70, 90)
    for y1, y2, x1, x2 in windows:
        total[y1:y2, x1:x2] += x[y1:y2, x1:x2].mean()
        count[y1:y2, x1:x2] += 1
    torch.testing.assert_close(probs[0], torch.sigmoid(total / count))  # softmax of (m, 0) is sigmoid(m)

    pointwise = ConvModel(kernel=1).eval()  # no context: overlapping windows agree exactly
    slide = _probabilities(pointwise, image, mode="slide", crop_size=32, stride=20)
    torch.testing.assert_close(slide, _probabilities(pointwise, image))


def test_slide_equals_whole_when_the_crop_covers_the_image():
    model = ConvModel().eval()
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    whole = _probabilities(model, image)
    slide = _probabilities(model, image, mode="slide", crop_size=64, stride=32)
    assert torch.equal(whole, slide)


def test_flip_averages_softmax_of_both_orientations():
    image = np.random.default_rng(2).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    pointwise = ConvModel(kernel=1).eval()  # flip-equivariant: flipping changes nothing
    torch.testing.assert_close(_probabilities(pointwise, image, flip=True), _probabilities(pointwise, image))
    model = ConvModel().eval()  # a 3x3 kernel is not mirror-symmetric
    x = _normalized(image)
    with torch.no_grad():
        plain = model(x).logits.softmax(1)[0]
        mirrored = model(x.flip(-1)).logits.softmax(1).flip(-1)[0]
    assert not torch.allclose(plain, mirrored, atol=1e-3)
    torch.testing.assert_close(_probabilities(model, image, flip=True), (plain + mirrored) / 2)


def test_multiscale_averages_probabilities_at_the_original_size():
    model = ConvModel(num_classes=5).eval()
    image = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    probs = _probabilities(model, image, scales=(0.5, 1.25))
    # scale=None: sides times the ratio, rounded half up: 37 * 0.5 = 18.5 -> 19, 53 * 0.5 -> 27; 1.25: 46, 66
    assert model.sizes == [(19, 27), (46, 66)]
    assert probs.shape == (5, 37, 53)
    torch.testing.assert_close(probs.sum(0), torch.ones(37, 53))
    half, large = _probabilities(model, image, scales=(0.5,)), _probabilities(model, image, scales=(1.25,))
    torch.testing.assert_close(probs, (half + large) / 2)
    assert (half - large).abs().max() > 1e-2  # the two scales do disagree, so the mean is not trivial


def test_predict_image_resizes_the_original_per_ratio():
    model = ConvModel().eval()
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    label = predict_image(model, image, MEAN, STD, (2048, 512), scales=(0.5, 1.0), flip=True)
    # ratio 0.5 fits (1024, 256): factor 256/300, 400 -> 341.33 -> 341; ratio 1 fits (2048, 512): 683.
    assert model.sizes == [(256, 341), (256, 341), (512, 683), (512, 683)]
    assert label.shape == (300, 400) and label.dtype == np.int64 and set(np.unique(label)) <= {0, 1, 2, 3}
    plain = predict_image(model, image, MEAN, STD, scale=None)
    with torch.no_grad():
        logits = model(_normalized(image)).logits
    np.testing.assert_array_equal(plain, logits.argmax(1)[0].numpy())


def test_bad_calls_raise_clear_errors():
    model = ConvModel()
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="training mode"):
        predict_image(model, image, MEAN, STD)
    model.eval()
    with pytest.raises(ValueError, match="slide mode needs crop_size and stride"):
        predict_image(model, image, MEAN, STD, mode="slide", crop_size=4)
    with pytest.raises(ValueError, match="mode must be"):
        predict_image(model, image, MEAN, STD, mode="tiles")
    with pytest.raises(ValueError, match="expected num_classes=3"):
        predict_image(model, image, MEAN, STD, num_classes=3)
    with pytest.raises(ValueError, match="scales"):
        predict_image(model, image, MEAN, STD, scales=())
    with pytest.raises(TypeError, match="returned Tensor; expected an object with a .logits"):
        predict_image(lambda x: x, image, MEAN, STD)
    with pytest.raises(ValueError, match="uint8 RGB"):
        predict_image(model, np.zeros((4, 4, 3), np.float32), MEAN, STD)
    with pytest.raises(ValueError, match="uint8 RGB"):
        predict_image(model, image[..., 0], MEAN, STD)


def test_real_semask_model_whole_slide_and_predict():
    model = semask.create_model(
        "semask_swin_t_fpn",
        num_classes=5,
        embed_dim=32,
        depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8),
        window_size=7,
        decoder_channels=32,
    ).eval()
    image = np.random.default_rng(4).integers(0, 256, (90, 122, 3), dtype=np.uint8)
    windows = slide_windows((90, 122), 64, 48)  # larger than the crop: 2 x 3 overlapping windows
    assert len(windows) == 6
    slide = _probabilities(model, image, mode="slide", crop_size=64, stride=48)
    x = _normalized(image)
    total, count = torch.zeros(5, 90, 122), torch.zeros(1, 90, 122)
    with torch.inference_mode():
        for y1, y2, x1, x2 in windows:
            total[:, y1:y2, x1:x2] += model(x[..., y1:y2, x1:x2]).logits[0]
            count[:, y1:y2, x1:x2] += 1
    torch.testing.assert_close(slide, (total / count).softmax(0), rtol=1e-3, atol=1e-3)
    whole = _probabilities(model, image)
    assert (slide - whole).abs().max() > 1e-3  # windows see less context than the whole image
    rgb = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    label = predict_image(model, rgb, model.config.mean, model.config.std, scale=(64, 48))
    assert label.shape == (45, 61) and label.max() < 5


def test_predict_and_evaluate_give_the_model_back_in_the_callers_mode(tmp_path) -> None:
    from conftest import TINY

    from semask.config import EvalConfig
    from semask.data import make_context_dataset
    from semask.data.datasets import build_dataset
    from semask.engine.evaluate import evaluate

    model = semask.create_model("semask_swin_t_fpn", num_classes=5, **TINY).train()
    image = np.zeros((40, 48, 3), np.uint8)
    semask.predict(model, image)
    assert model.training  # the caller's training mode is restored
    data = make_context_dataset(tmp_path, num_train=0, num_val=1, size=48, seed=0)
    dataset = build_dataset("folder", data, "val", num_classes=5)
    evaluate(model, dataset, EvalConfig(scale=None), progress=False)
    assert model.training
    with pytest.raises(ValueError, match="slide mode needs crop_size"):
        evaluate(model, dataset, EvalConfig(scale=None, mode="slide", crop_size=None), progress=False)
    assert model.training  # also when the evaluation fails


def test_predict_a_list_of_paths_pil_and_grey_arrays(tmp_path) -> None:
    from conftest import TINY
    from PIL import Image

    names = ["sky", "sea", "land", "boat", "car"]
    model = semask.create_model("semask_swin_t_fpn", num_classes=5, class_names=names, **TINY).eval()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (36, 30), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    inputs = [tmp_path / "a.png", Image.fromarray(grey), grey, rgb]
    results = semask.predict(model, inputs, return_probabilities=True)
    assert [r.labels.shape for r in results] == [(40, 52), (36, 30), (36, 30), (40, 52)]
    np.testing.assert_array_equal(results[0].labels, semask.predict(model, rgb))
    np.testing.assert_array_equal(results[1].labels, results[2].labels)  # grey PIL == grey array
    np.testing.assert_array_equal(results[2].labels, semask.predict(model, np.repeat(grey[..., None], 3, 2)))
    for r in results:
        assert r.class_names == names and r.probabilities.shape == (5, *r.labels.shape)
        np.testing.assert_allclose(r.probabilities.sum(0), 1.0, atol=1e-5)
        np.testing.assert_array_equal(r.probabilities.argmax(0), r.labels)
        assert sum(r.shares().values()) == pytest.approx(1.0) and set(r.shares()) <= set(names)
    assert semask.predict(model, [rgb])[0].probabilities is None
    with pytest.raises(ValueError, match="return_probabilities needs a list"):
        semask.predict(model, rgb, return_probabilities=True)


@pytest.fixture(params=["semask_swin_t_fpn", "semask_mit_b0", "semask_swin_t_mask2former"])
def any_family(request):  # a tiny model of each family, random non-trivial weights
    from conftest import M2F_TINY, MIT_TINY, TINY, randomize

    settings = {"semask_swin_t_fpn": TINY, "semask_mit_b0": MIT_TINY, "semask_swin_t_mask2former": M2F_TINY}
    torch.manual_seed(0)
    return request.param, randomize(semask.create_model(request.param, num_classes=6, **settings[request.param]))


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # printed by mkldnn.flags()
def test_batched_windows_equal_one_window_at_a_time(any_family, one_thread) -> None:
    """Windows batched ``window_batch`` at a time: bit-identical where every op is batch-invariant.

    With oneDNN off, Swin-FPN and Mask2Former run batch-invariant kernels on a CPU and every
    path (whole-image accumulator, the bounded band argmax, flip + multi-scale probabilities)
    equals one window at a time bit for bit, for batches that do and do not divide the window
    count. With oneDNN on (the default), and for MiT's strided spatial-reduction conv in any case,
    a batch of one takes another convolution kernel than a batch of several, which sums in
    another order: float32 rounding, logits within 1e-4 relative of their range.
    """
    from semask.engine.inference import _forward, _slide_argmax

    image = np.random.default_rng(5).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    x = _normalized(image)
    crop, stride = (40, 48), (25, 21)
    options = {"mode": "slide", "crop_size": crop, "stride": stride, "scale": None}
    assert len(slide_windows((70, 90), crop, stride)) == 3 * 3
    name, model = any_family
    exact = name != "semask_mit_b0"
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        one = _forward(model, x, "slide", crop, stride, 6, window_batch=1)
        one_labels = _slide_argmax(model, x, crop, stride, 6, window_batch=1)
        one_probs = _probabilities(model, image, flip=True, scales=(1.0, 0.8), window_batch=1, **options)
        probs = _probabilities(model, image, flip=True, scales=(1.0, 0.8), window_batch=4, **options)
        assert torch.equal(probs, one_probs) if exact else (probs - one_probs).abs().max() < 1e-4
        for batch in (4, 20):  # 4 does not divide the 9 windows; 20 is more than there are
            logits = _forward(model, x, "slide", crop, stride, 6, window_batch=batch)
            labels = _slide_argmax(model, x, crop, stride, 6, window_batch=batch)
            if exact:
                assert torch.equal(logits, one) and torch.equal(labels, one_labels), batch
            else:
                torch.testing.assert_close(logits, one, rtol=0, atol=1e-4 * float(one.abs().max()))
    with torch.inference_mode():  # oneDNN convolutions: float32 rounding apart
        one = _forward(model, x, "slide", crop, stride, 6, window_batch=1)
        logits = _forward(model, x, "slide", crop, stride, 6, window_batch=4)
        torch.testing.assert_close(logits, one, rtol=0, atol=1e-4 * float(one.abs().max()))
        assert (one.argmax(1) != logits.argmax(1)).float().mean() < 1e-3
    assert float(one.std()) > 0.1  # logits that differ from pixel to pixel: the comparison is not vacuous


def test_window_batch_counts_forward_passes_and_is_checked() -> None:
    from semask.engine.inference import auto_window_batch

    model = ConvModel().eval()
    image = np.random.default_rng(6).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    options = {"mode": "slide", "crop_size": (40, 50), "stride": (25, 30), "scale": None}  # 9 windows
    for batch, passes in ((1, 9), (4, 3), (9, 1), (50, 1)):
        model.sizes.clear()
        predict_image(model, image, MEAN, STD, window_batch=batch, **options)
        assert len(model.sizes) == passes
    with pytest.raises(ValueError, match="window_batch must be >= 1"):
        predict_image(model, image, MEAN, STD, window_batch=0, **options)
    windows = slide_windows((70, 90), (40, 50), (25, 30))
    assert auto_window_batch(torch.zeros(1, 3, 70, 90), 4, windows) == 1  # a CPU: one window at a time
