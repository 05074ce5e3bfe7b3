"""detectron2's data path (semask.data.detectron2) against the library calls the official code makes.

Each reference below is the official step written out with the same call the official code makes
(PIL ``Image.resize`` for ``ResizeTransform.apply_image``, torch ``F.interpolate`` on float64 for
``apply_segmentation``, ``cv2.cvtColor`` on BGR for ``ColorAugSSDTransform``, torch ``F.pad`` and
the model's ``(x - pixel_mean) / pixel_std`` for the mapper and the model), on real photos from
scikit-image, and the outputs must be equal, not close. The ``numpy.random.Generator`` stands
in for the official global generators and is drawn in the official order.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import semask
from semask.data import Detectron2Pipeline, MMSegPipeline, ShortEdgeTestTransform, ShortEdgeTrainTransform
from semask.data.detectron2 import crop_window, resize_label, shortest_edge_size
from semask.data.pipelines import pipeline_for
from semask.data.transforms import TrainTransform

skdata = pytest.importorskip("skimage.data")

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
ADE_SHORT_EDGES = [int(x * 0.1 * 640) for x in range(5, 21)]  # Base-ADE20K / Swin-L res640 MIN_SIZE_TRAIN


def photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(getattr(skdata, name)())


def label_of(image: np.ndarray) -> np.ndarray:
    """A label map with a photo's structure: 150 grey-level classes, the brightest pixels ignored."""
    grey = image.astype(np.int64) @ np.array([299, 587, 114]) // 1000
    return np.where(grey > 235, 255, grey * 150 // 256).astype(np.uint8)


# ------------------------------------------------------------------ the official steps, by hand


def d2_output_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_transform (augmentation_impl.py), as written there."""
    scale = short * 1.0 / min(h, w)
    if h < w:
        newh, neww = short, scale * w
    else:
        newh, neww = scale * h, short
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def pil_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))  # ResizeTransform.apply_image


def torch_nearest(label_float64: np.ndarray, h: int, w: int) -> np.ndarray:
    x = torch.from_numpy(label_float64).view(*label_float64.shape, 1, 1).permute(2, 3, 0, 1)
    return F.interpolate(x, (h, w), mode="nearest", align_corners=None).permute(2, 3, 0, 1).view(h, w).numpy()


def official_color_aug(img_rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ColorAugSSDTransform(img_format="RGB").apply_image, with ``rng`` for ``random``."""

    def convert(img: np.ndarray, alpha: float = 1, beta: float = 0) -> np.ndarray:
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    def contrast(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return convert(img, alpha=float(rng.uniform(0.5, 1.5)))
        return img

    def saturation(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 1] = convert(img[:, :, 1], alpha=float(rng.uniform(0.5, 1.5)))
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    def hue(img: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            img[:, :, 0] = (img[:, :, 0].astype(int) + int(rng.integers(-18, 19))) % 180
            return cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
        return img

    img = np.ascontiguousarray(img_rgb[:, :, [2, 1, 0]])
    if rng.integers(2):
        img = convert(img, beta=float(rng.uniform(-32, 32)))
    if rng.integers(2):
        img = contrast(img)
        img = saturation(img)
        img = hue(img)
    else:
        img = saturation(img)
        img = hue(img)
        img = contrast(img)
    return np.ascontiguousarray(img[:, :, [2, 1, 0]])


def model_normalize(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """SeMaskMaskFormer.forward: ``(x - self.pixel_mean) / self.pixel_std`` with float32 buffers
    (``image``: the mapper's CHW uint8 tensor, or an HWC uint8 array to make it from)."""
    if isinstance(image, np.ndarray):
        image = torch.as_tensor(np.array(image.transpose(2, 0, 1)))
    mean = torch.Tensor(MEAN).view(-1, 1, 1)
    std = torch.Tensor(STD).view(-1, 1, 1)
    return ((image - mean) / std).numpy()


def official_train_sample(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    short_edges: list[int],
    max_size: int,
    crop: tuple[int, int],
    max_area: float,
    pad_size: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """MaskFormerSemanticDatasetMapper.__call__ + the model's normalisation, step by step."""
    sem_seg = label.astype("double")  # utils.read_image(...).astype("double")
    short = short_edges[int(rng.integers(len(short_edges)))]  # np.random.choice
    h, w = d2_output_shape(*image.shape[:2], short, max_size)
    image = pil_resize(image, h, w)
    sem_seg = torch_nearest(sem_seg, h, w)
    ch, cw = min(crop[0], h), min(crop[1], w)  # RandomCrop.get_crop_size("absolute")
    if max_area >= 1.0:
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    else:  # RandomCrop_CategoryAreaConstraint.get_transform
        for _ in range(10):
            y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            labels, cnt = np.unique(sem_seg[y0 : y0 + ch, x0 : x0 + cw], return_counts=True)
            cnt = cnt[labels != 255]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * max_area:
                break
    image, sem_seg = image[y0 : y0 + ch, x0 : x0 + cw], sem_seg[y0 : y0 + ch, x0 : x0 + cw]
    image = official_color_aug(image, rng)
    if rng.random() < 0.5:  # RandomFlip: HFlipTransform
        image, sem_seg = image[:, ::-1], sem_seg[:, ::-1]
    image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    sem_seg_t = torch.as_tensor(sem_seg.astype("long"))
    if pad_size is not None:
        padding = [0, pad_size - image_t.shape[-1], 0, pad_size - image_t.shape[-2]]
        image_t = F.pad(image_t, padding, value=128).contiguous()
        sem_seg_t = F.pad(sem_seg_t, padding, value=255).contiguous()
    return model_normalize(image_t), sem_seg_t.numpy()


# ------------------------------------------------------------------ sizes


def test_shortest_edge_size_rounds_and_caps_as_detectron2() -> None:
    assert shortest_edge_size((480, 640), 640, 2560) == (640, 853)  # 853.33 -> 853
    assert shortest_edge_size((333, 500), 1280, 2560) == (1280, 1922)  # 1921.92 -> 1922
    assert shortest_edge_size((100, 1000), 640, 2560) == (256, 2560)  # capped: the cap is fixed
    assert shortest_edge_size((1000, 100), 640, 2560) == (2560, 256)
    assert shortest_edge_size((1024, 2048), 1024, 2048) == (1024, 2048)
    assert shortest_edge_size((10, 20000), 640, 2560) == (1, 2560)  # 1.28 rows: fine; a side never reaches 0
    assert shortest_edge_size((1, 20000), 640, 64) == (1, 64)  # 0.0032 rows would round to 0
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(1, 3000, 2))
        short, cap = int(rng.integers(100, 2000)), int(rng.integers(200, 5000))
        assert shortest_edge_size((h, w), short, cap) == d2_output_shape(h, w, short, cap)
    with pytest.raises(ValueError, match="positive"):
        shortest_edge_size((0, 10), 640, 2560)


def test_label_resize_is_torch_nearest_on_float64() -> None:
    """The mapper resizes float64 label maps; torch's uint8 kernel would pick other pixels here."""
    label = label_of(photo("chelsea"))  # 300 x 451
    rng = np.random.default_rng(0)
    for h, w in [(1120, 1684), (640, 962), (600, 902), (213, 320), (300, 451), (2560, 3849), (97, 1000)]:
        ref = torch_nearest(label.astype("double"), h, w).astype(np.uint8)
        out = resize_label(label, (h, w))
        assert out.dtype == np.uint8 and np.array_equal(out, ref), (h, w)
        top, left = int(rng.integers(h // 2)), int(rng.integers(w // 2))
        window = resize_label(label, (h, w), (top, left, h // 2, w // 3))
        assert np.array_equal(window, ref[top : top + h // 2, left : left + w // 3])
    uint8_kernel = F.interpolate(torch.from_numpy(label)[None, None], (1120, 1684), mode="nearest")[0, 0].numpy()
    assert not np.array_equal(uint8_kernel, resize_label(label, (1120, 1684)))


# ------------------------------------------------------------------ training transform


@pytest.mark.parametrize("name", ["chelsea", "coffee", "astronaut"])
def test_train_transform_equals_the_official_mapper(name: str) -> None:
    """ADE20K recipe (short edges 320..1280, cap 2560, 640 crop, pad 640): every seed's sample
    equals the official mapper's, pixel for pixel. The seeds hit every colour step: none (0),
    brightness + contrast before saturation (1), contrast after it (2, 9), hue (4, 9, 10), contrast
    first of all three (10), and both flips."""
    image = photo(name)
    label = label_of(image)
    t = ShortEdgeTrainTransform(ADE_SHORT_EDGES, 2560, (640, 640), 1.0, True, 0.5, 640, 128, MEAN, STD, 255)
    for seed in (0, 1, 2, 4, 9, 10):
        out_image, out_label = t(image, label, np.random.default_rng(seed))
        ref_image, ref_label = official_train_sample(
            image, label, np.random.default_rng(seed), ADE_SHORT_EDGES, 2560, (640, 640), 1.0, 640
        )
        assert out_image.dtype == np.float32 and out_image.shape == (3, 640, 640)
        assert out_label.dtype == np.int64
        assert np.array_equal(out_image, ref_image), (name, seed)
        assert np.array_equal(out_label, ref_label), (name, seed)


def test_small_short_edge_pads_the_raw_image_with_128_and_the_label_with_255() -> None:
    image = photo("coffee")  # 400 x 600 -> short edge 320: 320 x 480, padded to 640 x 640
    label = label_of(image)
    t = ShortEdgeTrainTransform([320], 2560, (640, 640), 1.0, False, 0.0, 640, 128, MEAN, STD, 255)
    out_image, out_label = t(image, label, np.random.default_rng(0))
    expected = (128 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)  # pad 128, then normalise
    assert np.array_equal(out_image[:, 320:, :], np.broadcast_to(expected[:, None, None], (3, 320, 640)))
    assert np.all(out_label[:, 480:] == 255) and np.all(out_label[320:] == 255)
    resized = pil_resize(image, 320, 480)
    assert np.array_equal(out_image[:, :320, :480], model_normalize(resized))


def test_category_area_retry_and_cityscapes_crop() -> None:
    """SINGLE_CATEGORY_MAX_AREA < 1: up to 10 draws, the 10th kept; Cityscapes: 512x1024, no pad."""
    image = photo("astronaut")
    label = label_of(image)
    for max_area in (0.3, 0.05):
        t = ShortEdgeTrainTransform([512, 1024], 4096, (512, 1024), max_area, True, 0.5, None, 128, MEAN, STD, 255)
        for seed in range(3):
            out = t(image, label, np.random.default_rng(seed))
            ref = official_train_sample(
                image, label, np.random.default_rng(seed), [512, 1024], 4096, (512, 1024), max_area, None
            )
            assert np.array_equal(out[0], ref[0]) and np.array_equal(out[1], ref[1])
    uniform = np.zeros((50, 50), np.uint8)  # one class everywhere: every draw fails, the 10th is kept
    rng, again = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(9):
        again.integers(50 - 20 + 1), again.integers(50 - 20 + 1)
    assert crop_window((50, 50), (20, 20), rng, 0.5, label=uniform) == (
        int(again.integers(31)),
        int(again.integers(31)),
        20,
        20,
    )
    assert rng.random() == again.random()  # exactly 10 pairs of draws were used


def test_train_transform_checks_its_input() -> None:
    with pytest.raises(ValueError, match="at least the crop size"):
        ShortEdgeTrainTransform([640], 2560, (640, 640), pad_size=512)
    with pytest.raises(ValueError, match="8-bit RGB"):
        ShortEdgeTrainTransform([8], 64, (8, 8), mean=[0] * 4, std=[1] * 4)(
            np.zeros((16, 16, 4), np.float32), np.zeros((16, 16), np.uint8), np.random.default_rng(0)
        )
    four = ShortEdgeTrainTransform([8], 64, (8, 8), color_aug=False, mean=[0] * 4, std=[1] * 4)
    image, label = four(np.zeros((16, 16, 4), np.uint8), np.zeros((16, 16), np.uint8), np.random.default_rng(0))
    assert image.shape == (4, 8, 8) and label.shape == (8, 8)


# ------------------------------------------------------------------ test transform and aug test


class Recorder:
    """A model stand-in of the mask-classification family that records what it is fed."""

    def __init__(self, num_classes: int = 3) -> None:
        self.config = SimpleNamespace(model_type="semask_maskformer")
        self.inputs: list[torch.Tensor] = []
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor) -> Any:
        self.inputs.append(x.clone())
        return SimpleNamespace(logits=torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:]))


def test_single_scale_test_input_is_pil_short_edge_resize() -> None:
    """DatasetMapper(is_train=False): ResizeShortestEdge(640, 2560) with PIL, then the model's normalisation."""
    from semask.engine.inference import predict_image

    for name in ("chelsea", "coffee", "astronaut"):
        image = photo(name)
        recorder = Recorder()
        predict_image(recorder, image, MEAN, STD, (2560, 640))
        h, w = d2_output_shape(*image.shape[:2], 640, 2560)
        expected = model_normalize(pil_resize(image, h, w))
        assert len(recorder.inputs) == 1 and np.array_equal(recorder.inputs[0][0].numpy(), expected)
        assert np.array_equal(ShortEdgeTestTransform((2560, 640), MEAN, STD)(image, label_of(image))[0], expected)


def test_aug_test_resizes_the_test_resized_image_as_dataset_mapper_tta() -> None:
    """TEST.AUG: DatasetMapperTTA resizes the loader's (640, 2560) image to each size (max 4480), + flips."""
    from semask.engine.inference import predict_image

    sizes = [320, 480, 640, 800, 960, 1120]
    image = photo("chelsea")
    recorder = Recorder()
    predict_image(recorder, image, MEAN, STD, (2560, 640), sizes=sizes, max_size=4480, flip=True)
    base = pil_resize(image, *d2_output_shape(*image.shape[:2], 640, 2560))
    assert len(recorder.inputs) == 2 * len(sizes)
    for k, size in enumerate(sizes):
        view = pil_resize(base, *d2_output_shape(*base.shape[:2], size, 4480))
        expected = model_normalize(view)
        assert np.array_equal(recorder.inputs[2 * k][0].numpy(), expected), size
        flipped = model_normalize(view[:, ::-1])
        assert np.array_equal(recorder.inputs[2 * k + 1][0].numpy(), flipped), size


# ------------------------------------------------------------------ selection per family


def test_pipeline_follows_the_model_family() -> None:
    for name in ("semask_swin_t_maskformer", "semask_swin_t_mask2former", "semask_swin_t_mask2former_fapn"):
        assert isinstance(pipeline_for(semask.get_config(name)), Detectron2Pipeline)
    for name in ("semask_swin_t_fpn", "swin_t_fpn", "semask_mit_b0", "mit_b0"):
        assert isinstance(pipeline_for(semask.get_config(name)), MMSegPipeline)
    assert isinstance(pipeline_for(None), MMSegPipeline)  # any other callable


def test_trainer_builds_the_family_transform() -> None:
    from semask.config import ExperimentConfig
    from semask.engine.trainer import attach_train_transform

    d2 = {"short_edges": [320, 640], "max_size": 2560, "scale": None, "ratios": None, "pad_size": 640}
    cfg = ExperimentConfig.from_dict(
        {"model": {"name": "semask_swin_t_mask2former"}, "data": {**d2, "crop_size": [640, 640]}}
    )
    holder = SimpleNamespace(ignore_index=255)
    attach_train_transform(cfg, holder, semask.get_config(cfg.model.name))
    t = holder.transform
    assert isinstance(t, ShortEdgeTrainTransform)
    assert (t.short_edges, t.max_size, t.pad_size, t.pad_value, t.crop_size) == ((320, 640), 2560, 640, 128, (640, 640))
    fpn = ExperimentConfig.from_dict({"model": {"name": "semask_swin_t_fpn"}})
    attach_train_transform(fpn, holder, semask.get_config("semask_swin_t_fpn"))
    assert isinstance(holder.transform, TrainTransform)
    # a test protocol without training fields is a valid config; training it says what is missing
    bare = ExperimentConfig.from_dict({"model": {"name": "semask_swin_t_mask2former"}})
    with pytest.raises(ValueError, match=r"data.short_edges \(INPUT.MIN_SIZE_TRAIN\)"):
        attach_train_transform(bare, holder, semask.get_config("semask_swin_t_mask2former"))


def test_config_refuses_fields_the_family_does_not_read() -> None:
    from semask.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="data.short_edges, data.max_size belong to detectron2"):
        ExperimentConfig.from_dict({"data": {"short_edges": [512], "max_size": 2048, "scale": None, "ratios": None}})
    with pytest.raises(ConfigError, match="replaces scale, ratios and ratio_range"):
        ExperimentConfig.from_dict(
            {"model": {"name": "semask_swin_t_mask2former"}, "data": {"short_edges": [512], "max_size": 2048}}
        )
    with pytest.raises(ConfigError, match="pad_size"):
        ExperimentConfig.from_dict({"data": {"pad_size": 256}})


def test_explain_and_check_data_use_the_family_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import M2F_TINY

    from semask.data import check

    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_mask2former", num_classes=4, **M2F_TINY).eval()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    image = pil_resize(photo("coffee"), 100, 150)
    with torch.no_grad():
        semask.explain(model, image, scale=(2560, 48), top_k=1)
    expected = model_normalize(pil_resize(image, 48, 72))
    assert np.array_equal(seen[0][0].numpy(), expected)

    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        Image.fromarray(image).save(root / "images" / split / "a.png")
        Image.fromarray(label_of(image) % 4).save(root / "labels" / split / "a.png")
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    grids: list[Any] = []
    monkeypatch.setattr(check, "sample_grid", lambda dataset, transform, *a, **k: grids.append(transform) or tmp_path)
    overrides = [
        "model.name=semask_swin_t_mask2former",
        "data.short_edges=[48]",
        "data.max_size=256",
        "data.scale=null",
        "data.ratios=null",
        "data.crop_size=[32,32]",
    ]
    check.check_data(root, overrides, out_dir=tmp_path / "out", num_samples=1, progress=False, print_fn=lambda s: None)
    assert isinstance(grids[0], ShortEdgeTrainTransform) and grids[0].short_edges == (48,)
