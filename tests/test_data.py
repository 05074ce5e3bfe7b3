"""Tests for semask.data: palettes, datasets, mmseg-exact transforms, synthetic data, visualisation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from semask.data import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    CONTEXT_CLASSES,
    ADE20KDataset,
    CityscapesDataset,
    COCOStuff10kDataset,
    DataError,
    FolderDataset,
    TestTransform,
    TrainTransform,
    build_dataset,
    colorize,
    default_palette,
    make_context_dataset,
    overlay,
    read_label,
    save_label_png,
)
from semask.data.transforms import crop_offsets, photometric_distortion, rescale_size, resize_label

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------- palettes


def _check_colours(palette, n):
    assert len(palette) == n
    for colour in palette:
        assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)


def test_benchmark_palettes_have_one_unique_colour_per_class():
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == 150
    assert len(CITYSCAPES_CLASSES) == len(set(CITYSCAPES_CLASSES)) == 19
    assert len(COCO_STUFF_CLASSES) == len(set(COCO_STUFF_CLASSES)) == 171
    _check_colours(ADE20K_PALETTE, 150)
    _check_colours(CITYSCAPES_PALETTE, 19)
    _check_colours(COCO_STUFF_PALETTE, 171)
    assert len(set(CITYSCAPES_PALETTE)) == 19
    assert len(set(COCO_STUFF_PALETTE)) == 171
    # The standard ADE20K palette repeats exactly one colour: road (6) and skyscraper (48).
    repeated = {c: n for c, n in Counter(ADE20K_PALETTE).items() if n > 1}
    assert repeated == {(140, 140, 140): 2}
    assert ADE20K_CLASSES[6] == "road" and ADE20K_CLASSES[48] == "skyscraper"
    assert ADE20K_PALETTE[0] == (120, 120, 120) and ADE20K_CLASSES[0] == "wall"
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_CLASSES[18] == "bicycle"


def test_default_palette_is_the_voc_map_without_black():
    palette = default_palette(1000)
    assert palette == default_palette(1000)
    assert len({tuple(c) for c in palette}) == 1000
    assert [0, 0, 0] not in palette
    # PASCAL VOC colour map entries 1, 2, 3, 4, 7, 8 (well-known values).
    assert palette[0] == [128, 0, 0] and palette[1] == [0, 128, 0] and palette[2] == [128, 128, 0]
    assert palette[3] == [0, 0, 128] and palette[6] == [128, 128, 128] and palette[7] == [64, 0, 0]
    assert default_palette(5) == palette[:5]
    with pytest.raises(ValueError):
        default_palette(-1)


# --------------------------------------------------------------------------- geometry


def test_rescale_size_fits_the_scale_like_mmcv():
    assert rescale_size((512, 683), (2048, 512)) == (512, 683)
    # ratio 0.5 of (2048, 512): factor min(1024/683, 256/512) = 0.5; 341.5 rounds half up to 342.
    assert rescale_size((512, 683), (1024, 256)) == (256, 342)
    # Very wide image: the long-side bound wins, factor 2048/1000 = 2.048.
    assert rescale_size((100, 1000), (2048, 512)) == (205, 2048)
    assert rescale_size((100, 1000), (512, 2048)) == (205, 2048)  # edge order does not matter
    assert rescale_size((1024, 2048), (1024, 512)) == (512, 1024)
    assert rescale_size((10, 20000), (64, 64)) == (1, 64)  # mmcv's rule gives 0 rows: a side keeps >= 1 pixel
    assert TestTransform(None).resize(np.zeros((1, 9, 3), np.uint8), 0.25).shape == (1, 2, 3)


def test_resize_label_uses_opencv_nearest_floor_rule():
    label = np.arange(10, dtype=np.uint8)[None].repeat(3, 0)
    out = resize_label(label, (3, 4))
    # dst x -> floor(x * 10 / 4): 0, 2, 5, 7 (PIL's centred rule would give 1, 3, 6, 8).
    np.testing.assert_array_equal(out[0], [0, 2, 5, 7])
    up = resize_label(np.array([[1, 2], [3, 4]], np.uint8), (3, 5))
    np.testing.assert_array_equal(up, [[1, 1, 1, 2, 2], [1, 1, 1, 2, 2], [3, 3, 3, 4, 4]])


def _reference_crop(label, crop, rng, cat_max_ratio, ignore=255):
    """mmseg 0.x RandomCrop.get_crop_bbox + retry loop, written out independently."""
    h, w = label.shape

    def bbox():
        oy = rng.integers(0, max(h - crop[0], 0) + 1)
        ox = rng.integers(0, max(w - crop[1], 0) + 1)
        return oy, ox

    box = bbox()
    if cat_max_ratio < 1:
        for _ in range(10):
            seg = label[box[0] : box[0] + crop[0], box[1] : box[1] + crop[1]]
            values, counts = np.unique(seg, return_counts=True)
            counts = counts[values != ignore]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = bbox()
    return box


def test_crop_offsets_follow_the_class_ratio_rule_draw_for_draw():
    label = np.zeros((60, 80), np.uint8)
    label[:, 60:] = 1  # most crops on the left see only class 0
    label[:5] = 255
    passed = 0
    for seed in range(40):
        top, left = crop_offsets(label, (20, 20), np.random.default_rng(seed), 0.75)
        assert (top, left) == _reference_crop(label, (20, 20), np.random.default_rng(seed), 0.75)
        crop = label[top : top + 20, left : left + 20]
        counts = np.bincount(crop[crop != 255].ravel(), minlength=2)
        passed += counts.max() / counts.sum() < 0.75
    assert passed >= 30  # the rule pushes most crops onto the class boundary
    # cat_max_ratio >= 1: a single draw, no retries.
    rng = np.random.default_rng(0)
    crop_offsets(label, (20, 20), rng, 1.0)
    fresh = np.random.default_rng(0)
    fresh.integers(0, 41), fresh.integers(0, 61)
    assert rng.integers(1 << 30) == fresh.integers(1 << 30)


# --------------------------------------------------------------------------- colour


class ScriptedRng:
    """Stands in for numpy's Generator and replays (method, value) pairs in order."""

    def __init__(self, script):
        self.script = list(script)

    def _next(self, method):
        name, value = self.script.pop(0)
        assert name == method, f"expected a call to {name}, got {method}"
        return value

    def integers(self, *args):
        return self._next("integers")

    def uniform(self, *args):
        return self._next("uniform")

    def random(self):
        return self._next("random")


def test_photometric_distortion_order_and_uint8_truncation():
    image = np.array([[[10, 100, 250], [0, 128, 255]]], np.uint8)
    # brightness on (+10.7), mode 1 -> contrast first (x1.2), saturation off, hue off.
    rng = ScriptedRng(
        [
            ("integers", 1),
            ("uniform", 10.7),
            ("integers", 1),
            ("integers", 1),
            ("uniform", 1.2),
            ("integers", 0),
            ("integers", 0),
        ]
    )
    out = photometric_distortion(image, rng)
    bright = np.clip(image.astype(np.float32) + 10.7, 0, 255).astype(np.uint8)  # 20, 110, 255(clip)
    expected = np.clip(bright.astype(np.float32) * 1.2, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0].tolist() == [24, 132, 255]  # 20.7 -> 20 -> 24.0; 110.7 -> 110 -> 132.0
    assert rng.script == []
    # mode 0: saturation and hue run first, contrast last; hue wraps modulo 180.
    rng = ScriptedRng(
        [
            ("integers", 0),
            ("integers", 0),
            ("integers", 1),
            ("uniform", 0.5),
            ("integers", 1),
            ("integers", -18),
            ("integers", 1),
            ("uniform", 0.8),
        ]
    )
    out = photometric_distortion(image, rng)
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = (hsv[..., 1].astype(np.float32) * 0.5).astype(np.uint8)
    step = cv2.cvtColor(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), cv2.COLOR_RGB2HSV)
    step[..., 0] = (step[..., 0].astype(int) - 18) % 180
    expected = (cv2.cvtColor(step, cv2.COLOR_HSV2RGB).astype(np.float32) * 0.8).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert rng.script == []


# --------------------------------------------------------------------------- pipelines


def test_train_transform_pads_small_images_and_is_deterministic():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (40, 60), dtype=np.uint8)
    t = TrainTransform(crop_size=(64, 64), scale=(60, 40), ratios=[1.0], mean=MEAN, std=STD)
    img, lab = t(image, label, np.random.default_rng(0))
    assert img.shape == (3, 64, 64) and img.dtype == np.float32
    assert lab.shape == (64, 64) and lab.dtype == np.int64
    assert (lab[40:] == 255).all() and (lab[:, 60:] == 255).all()
    assert (img[:, 40:] == 0).all() and (img[:, :, 60:] == 0).all()
    assert set(np.unique(lab[:40, :60])) <= {0, 1, 2}
    again = t(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(img, again[0])
    np.testing.assert_array_equal(lab, again[1])
    other = [t(image, label, np.random.default_rng(s))[0] for s in range(1, 6)]
    assert any(not np.array_equal(img, o) for o in other)


def test_train_transform_keeps_image_and_label_aligned():
    # Left third red = class 0, middle green = class 1, right blue = class 2.
    image = np.zeros((60, 90, 3), np.uint8)
    label = np.zeros((60, 90), np.uint8)
    for c in range(3):
        image[:, 30 * c : 30 * (c + 1), c] = 255
        label[:, 30 * c : 30 * (c + 1)] = c
    t = TrainTransform(
        crop_size=(48, 48), scale=(120, 80), ratios=[0.75, 1.0, 1.25], photometric=False, mean=(0, 0, 0), std=(1, 1, 1)
    )
    flips = 0
    for seed in range(30):
        img, lab = t(image, label, np.random.default_rng(seed))
        pure = img.max(axis=0) == 255
        channel = img.argmax(axis=0)
        valid = pure & ((img == 255).sum(axis=0) == 1) & (lab != 255)
        np.testing.assert_array_equal(channel[valid], lab[valid])
        row = lab[0][lab[0] != 255]
        flips += bool(row[0] > row[-1])
    assert 5 <= flips <= 25  # flip probability 0.5


def test_train_transform_ratio_options():
    with pytest.raises(ValueError, match="exactly one"):
        TrainTransform(ratio_range=(0.5, 2.0))  # ratios keeps its default list
    with pytest.raises(ValueError, match="exactly one"):
        TrainTransform(ratios=None)
    t = TrainTransform(ratios=None, ratio_range=(0.5, 2.0))
    values = [t.sample_ratio(np.random.default_rng(s)) for s in range(200)]
    assert 0.5 <= min(values) < 0.6 and 1.9 < max(values) < 2.0
    t = TrainTransform()
    assert {t.sample_ratio(np.random.default_rng(s)) for s in range(200)} == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75}


def test_test_transform_resizes_image_only():
    rng = np.random.default_rng(6)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (300, 400), dtype=np.uint8)
    img, lab = TestTransform(scale=(2048, 512), mean=MEAN, std=STD)(image, label, None)
    assert img.shape == (3, 512, 683)  # factor min(2048/400, 512/300) = 1.7067
    np.testing.assert_array_equal(lab, label)
    img, _ = TestTransform(scale=None, mean=MEAN, std=STD)(image, label)
    assert img.shape == (3, 300, 400)
    np.testing.assert_allclose(img[:, 7, 9], (image[7, 9] - np.array(MEAN)) / np.array(STD), rtol=1e-6)


def test_training_fields_are_checked_before_the_work_dir_or_the_data(tmp_path):
    """A config without its family's training fields (mask-classification: data.short_edges/max_size;
    mmseg: data.scale) loads, as testing does not read them; train() refuses it naming the field before
    it creates the work dir or reads the data (here: a data root that does not exist)."""
    from semask.config import ExperimentConfig
    from semask.data.pipelines import pipeline_for
    from semask.engine.trainer import train
    from semask.models import get_config

    missing = {
        "semask_swin_t_mask2former": ({}, r"data.short_edges \(INPUT.MIN_SIZE_TRAIN\)"),
        "semask_swin_t_fpn": ({"scale": None}, r"data.scale \(the \(long, short\) base scale"),
    }
    for name, (data, message) in missing.items():
        cfg = ExperimentConfig.from_dict({"model": {"name": name}, "data": {**data, "root": str(tmp_path / "none")}})
        pipeline = pipeline_for(get_config(name))
        pipeline.check(cfg.data)  # a test-only config
        with pytest.raises(ValueError, match=message):
            pipeline.check(cfg.data, training=True)
        with pytest.raises(ValueError, match=message):
            train(cfg, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- datasets


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_ade20k_reader_reduces_zero_label(tmp_path):
    root = tmp_path / "ade" / "ADEChallengeData2016"
    label = np.array([[0, 1, 150, 7]], np.uint8).repeat(3, 0)
    for split, name in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001")):
        _write(root / "images" / split / f"{name}.jpg", _rgb(3, 4))
        _write(root / "annotations" / split / f"{name}.png", label)
    ds = ADE20KDataset(tmp_path / "ade", "val")  # parent folder and split alias both work
    item = ds[0]
    assert item["name"] == "ADE_val_00000001" and item["ori_size"] == (3, 4) and item["index"] == 0
    assert item["label"].dtype == torch.int64 and item["image"].shape == (3, 3, 4)
    np.testing.assert_array_equal(item["label"][0].numpy(), [255, 0, 149, 6])
    assert ds.num_classes == 150 and ds.palette[0] == [120, 120, 120]
    assert len(ADE20KDataset(root, "training")) == 1
    with pytest.raises(DataError, match="150 classes"):
        ADE20KDataset(root, "training", num_classes=19)
    with pytest.raises(DataError, match="unknown split"):
        ADE20KDataset(root, "trainval")


def test_cityscapes_and_coco_stuff_layouts(tmp_path):
    city = tmp_path / "cityscapes"
    _write(city / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png", _rgb(4, 8))
    _write(
        city / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png",
        np.array([[0, 18, 255, 5] * 2] * 4, np.uint8),
    )
    ds = CityscapesDataset(city, "val")
    assert ds.num_classes == 19 and ds[0]["name"] == "lindau_000000_000019_leftImg8bit"
    np.testing.assert_array_equal(ds[0]["label"][0].numpy(), [0, 18, 255, 5] * 2)

    coco = tmp_path / "coco"
    _write(coco / "images/test2014/COCO_val2014_000000000139.jpg", _rgb(5, 6))
    # the official 10k converter's ids: 0 = unlabelled, 1..171 = classes (reduce_zero_label by default)
    coco_label = np.array([[0, 1, 171, 100, 50, 7]] * 5, np.uint8)
    _write(coco / "annotations/test2014/COCO_val2014_000000000139_labelTrainIds.png", coco_label)
    ds = COCOStuff10kDataset(coco, "val")
    assert ds.num_classes == 171
    np.testing.assert_array_equal(ds[0]["label"][0].numpy(), [255, 0, 170, 99, 49, 6])
    with pytest.raises(DataError, match=r"class ids \[171\] outside 0..170"):  # 164k ids are used as stored
        COCOStuff10kDataset(coco, "val", reduce_zero_label=False)[0]
    with pytest.raises(DataError, match="train2014"):
        COCOStuff10kDataset(coco, "train")


def _folder(tmp_path: Path, n=3, classes=("a", "b", "c")) -> Path:
    root = tmp_path / "custom"
    for i in range(n):
        _write(root / "images" / "train" / f"img{i}.jpg", _rgb(seed=i))
        _write(root / "labels" / "train" / f"img{i}.png", np.full((12, 16), i % len(classes), np.uint8))
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_folder_dataset_reads_classes_palette_and_validates(tmp_path):
    root = _folder(tmp_path)
    (root / "palette.txt").write_text("255 0 0\n0,255,0\n0 0 255\n")
    ds = build_dataset("folder", root, "train", num_classes=None, reduce_zero_label=None)
    assert isinstance(ds, FolderDataset) and ds.class_names == ["a", "b", "c"]
    assert ds.palette == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    np.testing.assert_array_equal(ds.validate(progress=False), [192, 192, 192])  # one 12x16 image each
    with pytest.raises(DataError, match="num_classes=4"):
        FolderDataset(root, "train", num_classes=4)
    (root / "palette.txt").write_text("255 0 0\n0 255\n0 0 255\n")
    with pytest.raises(DataError, match="palette.txt: colour 2"):
        FolderDataset(root, "train")
    (root / "palette.txt").unlink()
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt does not exist"):
        FolderDataset(root, "train")
    ds = FolderDataset(root, "train", num_classes=3)
    assert ds.class_names == ["class_0", "class_1", "class_2"] and len(ds.palette) == 3
    with pytest.raises(DataError, match="unknown dataset type"):
        build_dataset("voc", root, "train")


def test_dataset_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path / "nowhere", "train", num_classes=2)
    root = _folder(tmp_path)
    with pytest.raises(DataError, match=r"split 'val' image folder .* does not exist"):
        FolderDataset(root, "val")
    (root / "images" / "empty").mkdir()
    (root / "labels" / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        FolderDataset(root, "empty")
    _write(root / "images" / "train" / "lonely.png", _rgb())
    with pytest.raises(DataError, match=r"1 image\(s\) without a label:\n  .*lonely.png"):
        FolderDataset(root, "train")
    (root / "images" / "train" / "lonely.png").unlink()

    # Corrupt image, size mismatch and out-of-range ids surface on load and in validate().
    (root / "images" / "train" / "img0.jpg").write_bytes(b"not a jpeg at all")
    _write(root / "labels" / "train" / "img1.png", np.zeros((5, 5), np.uint8))
    _write(root / "labels" / "train" / "img2.png", np.full((12, 16), 7, np.uint8))
    ds = FolderDataset(root, "train")
    with pytest.raises(DataError, match="cannot read image .*img0.jpg"):
        ds[0]
    with pytest.raises(DataError, match=r"label .*img1.png is 5x5 \(WxH\) but image .*img1.jpg is 16x12"):
        ds[1]
    with pytest.raises(DataError, match=r"img2.png holds class ids \[7\] outside 0..2"):
        ds[2]
    with pytest.raises(DataError, match=r"3 of 3 samples are broken") as info:
        ds.validate(num_threads=2, progress=False)
    assert all(name in str(info.value) for name in ("img0.jpg", "img1.png", "img2.png"))
    _write(root / "labels" / "train" / "img2.png", np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(DataError, match="img2.png must be an 8-bit single-channel .* got mode RGB"):
        ds[2]


def test_augmentation_stream_is_a_function_of_seed_epoch_and_index(tmp_path):
    root = _folder(tmp_path, n=4)
    transform = TrainTransform(crop_size=(8, 8), scale=(16, 12), ratios=[0.75, 1.0, 1.5])
    ds = FolderDataset(root, "train", transform=transform, seed=3)
    first = [ds[i]["image"] for i in range(4)]
    assert all(torch.equal(a, ds[i]["image"]) for i, a in enumerate(first))
    twin = FolderDataset(root, "train", transform=transform, seed=3)
    assert all(torch.equal(a, twin[i]["image"]) for i, a in enumerate(first))
    ds.set_epoch(1)
    assert not all(torch.equal(a, ds[i]["image"]) for i, a in enumerate(first))
    twin.set_epoch(1)
    loader = torch.utils.data.DataLoader(twin, batch_size=2, num_workers=2, shuffle=False)
    batched = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(batched, torch.stack([ds[i]["image"] for i in range(4)]))
    assert ds[-1]["index"] == 3


def test_read_label_keeps_palette_indices(tmp_path):
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    image = Image.new("P", (2, 2))
    image.putdata(ids.ravel().tolist())
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (253 * 3))
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), ids)


# --------------------------------------------------------------------------- synthetic


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Balanced accuracy of the best single threshold separating samples a from samples b."""
    values = np.concatenate([a, b])
    is_a = np.concatenate([np.ones(len(a)), np.zeros(len(b))])[np.argsort(values, kind="stable")]
    below_a = np.concatenate([[0], np.cumsum(is_a)]) / len(a)  # fraction of a below each cut
    below_b = np.concatenate([[0], np.cumsum(1 - is_a)]) / len(b)
    balanced = (below_a + (1 - below_b)) / 2
    return float(max(balanced.max(), (1 - balanced).max()))


def test_context_dataset_is_deterministic_and_context_dependent(tmp_path):
    a = make_context_dataset(tmp_path / "a", num_train=40, num_val=4, size=64, seed=7)
    b = make_context_dataset(tmp_path / "b", num_train=6, num_val=4, size=64, seed=7)
    c = make_context_dataset(tmp_path / "c", num_train=2, num_val=0, size=64, seed=8)
    for split, name in (("train", "00001"), ("val", "00003")):
        for kind in ("images", "labels"):
            file = Path(kind) / split / f"{name}.png"
            assert (a / file).read_bytes() == (b / file).read_bytes()
    assert (a / "images/train/00001.png").read_bytes() != (c / "images/train/00001.png").read_bytes()

    ds = FolderDataset(a, "train")
    assert ds.class_names == list(CONTEXT_CLASSES) == ["sea", "land", "boat", "car", "buoy"]
    assert (ds.validate(progress=False) > 0).all()
    pixels: dict[int, list[np.ndarray]] = {k: [] for k in range(5)}
    for i in range(len(ds)):
        image, label = ds.load_sample(i)
        for k in range(5):
            pixels[k].append(image[label == k].reshape(-1, 3).astype(np.float64))
    px = {k: np.concatenate(v) for k, v in pixels.items()}
    # No colour channel separates boat from car pixels, while sea and land separate easily:
    # telling a boat from a car needs the surrounding region.
    for channel in range(3):
        assert _best_threshold_accuracy(px[2][:, channel], px[3][:, channel]) < 0.7
    assert _best_threshold_accuracy(px[0][:, 2], px[1][:, 2]) > 0.95
    assert px[4][:, 0].mean() > 180 and px[4][:, 1].mean() < 80  # buoys are plainly red


# --------------------------------------------------------------------------- visualisation


def test_colorize_and_overlay():
    palette = [[10, 20, 30], [200, 100, 0]]
    label = np.array([[0, 1], [255, 1]])
    colours = colorize(label, palette)
    np.testing.assert_array_equal(colours, [[[10, 20, 30], [200, 100, 0]], [[0, 0, 0], [200, 100, 0]]])
    image = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(image, label, palette, alpha=0.25)
    np.testing.assert_array_equal(out[0, 0], np.floor(0.75 * 100 + 0.25 * np.array([10, 20, 30]) + 0.5))
    np.testing.assert_array_equal(out[1, 0], [100, 100, 100])  # ignore shows the image
    np.testing.assert_array_equal(overlay(image, label, palette, alpha=1.0)[0], colours[0])
    with pytest.raises(ValueError, match="ids 0..2 but the palette has 2 colours"):
        colorize(np.array([[2, 0]]), palette)
    with pytest.raises(ValueError, match="does not match image size"):
        overlay(np.zeros((3, 2, 3), np.uint8), label, palette)


def test_save_label_png_round_trip(tmp_path):
    label = np.array([[0, 3], [254, 255]], np.int64)
    path = save_label_png(tmp_path / "sub" / "x.png", label)
    np.testing.assert_array_equal(read_label(path), label)
    with pytest.raises(ValueError, match="8-bit PNG labels hold 0..255"):
        save_label_png(tmp_path / "y.png", np.array([[256]]))
