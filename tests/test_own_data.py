"""Own data: in_channels != 3, ignore_index, colour masks, split lists, suffixes, check-data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semask.data import FolderDataset
from semask.data.datasets import IMAGE_SUFFIXES, DataError, read_bands
from semask.data.transforms import TrainTransform
from semask.models.layers import adapt_input_conv


def write_folder(
    root: Path,
    labels: dict[str, np.ndarray],
    split: str = "train",
    classes: tuple[str, ...] = ("a", "b", "c"),
    image_suffix: str = ".png",
    label_suffix: str = ".png",
) -> Path:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for name, label in labels.items():
        h, w = label.shape[:2]
        image = np.full((h, w, 3), 40, np.uint8)
        Image.fromarray(image).save(root / "images" / split / f"{name}{image_suffix}")
        Image.fromarray(label).save(root / "labels" / split / f"{name}{label_suffix}")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


# ----------------------------------------------------------------------------- in_channels


def test_adapt_input_conv_by_hand() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(2, 3, 1, 1)
    assert adapt_input_conv(w, 1).flatten().tolist() == [6.0, 15.0]  # sum over RGB
    assert adapt_input_conv(w, 3) is w
    four = adapt_input_conv(w, 4).flatten()  # R G B R, times 3/4
    assert four.tolist() == pytest.approx([0.75, 1.5, 2.25, 0.75, 3.0, 3.75, 4.5, 3.0])
    six = adapt_input_conv(w, 6).flatten()  # R G B R G B, times 1/2: equal bands respond as RGB did
    assert six.tolist() == pytest.approx([0.5, 1.0, 1.5, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 2.0, 2.5, 3.0])
    assert adapt_input_conv(w, 12).shape == (2, 12, 1, 1)
    with pytest.raises(ValueError, match="only adapt RGB"):
        adapt_input_conv(torch.zeros(2, 4, 1, 1), 5)


TINY_SWIN = dict(
    embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, decoder_channels=16, num_classes=3
)


def test_swin_with_four_bands_adapts_imagenet_weights(tmp_path: Path) -> None:
    import semask
    from semask.models.swin import load_swin_imagenet

    rgb = semask.create_model("swin_t_fpn", **TINY_SWIN)
    bands = semask.create_model("swin_t_fpn", **TINY_SWIN, in_channels=4, mean=[1, 2, 3, 4], std=[5, 6, 7, 8])
    assert bands.backbone.patch_embed.proj.weight.shape[1] == 4
    imagenet = {k: v.clone() for k, v in rgb.backbone.state_dict().items()}
    imagenet["head.weight"] = torch.zeros(10, 128)  # an ImageNet classifier, dropped
    load_swin_imagenet(bands.backbone, imagenet, "fake")
    expected = adapt_input_conv(rgb.backbone.patch_embed.proj.weight, 4)
    assert torch.equal(bands.backbone.patch_embed.proj.weight, expected)
    assert torch.equal(
        bands.backbone.layers[0].blocks[0].mlp.fc1.weight, rgb.backbone.layers[0].blocks[0].mlp.fc1.weight
    )
    out = bands.eval()(torch.zeros(1, 4, 32, 32))
    assert out.logits.shape == (1, 3, 32, 32)


def test_mit_with_one_band_adapts_imagenet_weights() -> None:
    import semask
    from semask.models.mit.convert import load_mit_imagenet

    small = dict(embed_dims=[8, 16, 32, 32], depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 4], num_classes=3)
    small["decoder_channels"] = 16
    rgb = semask.create_model("segformer_b0", **small)
    grey = semask.create_model("segformer_b0", **small, in_channels=1, mean=[100.0], std=[50.0])
    load_mit_imagenet(grey.backbone, dict(rgb.backbone.state_dict()), "fake")
    assert torch.equal(
        grey.backbone.patch_embed1.proj.weight, rgb.backbone.patch_embed1.proj.weight.sum(1, keepdim=True)
    )
    assert grey.eval()(torch.zeros(1, 1, 32, 32)).logits.shape == (1, 3, 32, 32)


def test_mean_std_must_have_one_value_per_channel() -> None:
    import semask

    with pytest.raises(ValueError, match="in_channels=4 needs mean and std with one value per channel"):
        semask.create_model("swin_t_fpn", **TINY_SWIN, in_channels=4)
    from semask.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="in_channels=4 needs mean and std with one value per channel"):
        ExperimentConfig.from_dict({"model": {"overrides": {"in_channels": 4}}, "data": {"photometric": False}})
    four = {"in_channels": 4, "mean": [0.0] * 4, "std": [1.0] * 4}
    with pytest.raises(ConfigError, match="in_channels=4: the photometric distortion .* set data.photometric: false"):
        ExperimentConfig.from_dict({"model": {"overrides": four}, "data": {"type": "folder"}})
    with pytest.raises(ConfigError, match="data.in_channels=3 but the model takes 4"):
        ExperimentConfig.from_dict({"model": {"overrides": four}, "data": {"in_channels": 3, "photometric": False}})
    cfg = ExperimentConfig.from_dict({"model": {"overrides": four}, "data": {"type": "folder", "photometric": False}})
    assert cfg.data.in_channels == 4 and cfg.data.dataset_kwargs()["in_channels"] == 4
    assert ExperimentConfig.from_dict(ExperimentConfig().to_dict()).data.in_channels == 3  # ADE20K round trip


def test_read_bands_reads_multiband_and_planar_tiffs(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile", reason="tifffile (the [tiff] extra) is not installed")
    bands = np.arange(5 * 6 * 4, dtype=np.uint16).reshape(5, 6, 4) * 300
    tifffile.imwrite(tmp_path / "hwc.tif", bands, photometric="minisblack")
    tifffile.imwrite(tmp_path / "chw.tif", bands.transpose(2, 0, 1).copy(), photometric="minisblack")
    assert np.array_equal(read_bands(tmp_path / "hwc.tif", 4), bands)
    assert np.array_equal(read_bands(tmp_path / "chw.tif", 4), bands)
    assert read_bands(tmp_path / "hwc.tif", 4).dtype == np.uint16
    with pytest.raises(DataError, match="has 4 band.*data.in_channels is 12"):
        read_bands(tmp_path / "hwc.tif", 12)


def test_train_transform_resizes_and_pads_uint16_bands() -> None:
    image = np.full((4, 4, 4), 1000, np.uint16)
    image[:, :, 3] = 60000
    label = np.zeros((4, 4), np.uint8)
    t = TrainTransform(
        crop_size=(6, 6),
        scale=(8, 8),
        ratios=[1.0],
        cat_max_ratio=1.0,
        flip_prob=0.0,
        photometric=False,
        mean=[1000, 0, 0, 0],
        std=[1, 1, 1, 1000],
        ignore_index=200,
    )
    chw, lab = t(image, label, np.random.default_rng(0))
    assert chw.shape == (4, 6, 6) and lab.shape == (6, 6)
    assert np.allclose(chw[0], 0.0) and np.allclose(chw[3], 60.0)  # no 8-bit clipping of 16-bit bands
    with pytest.raises(ValueError, match="set data.photometric: false"):
        TrainTransform(scale=(8, 8), ratios=[1.0], mean=[0] * 4, std=[1] * 4)(image, label, np.random.default_rng(0))


@pytest.mark.slow
def test_four_band_tiff_dataset_trains_evaluates_and_predicts(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile", reason="tifffile (the [tiff] extra) is not installed")
    from semask.config import ExperimentConfig
    from semask.engine.evaluate import evaluate
    from semask.engine.predict import load_model_any, predict_folder
    from semask.engine.trainer import train

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for i in range(n):
            label = (rng.random((32, 32)) > 0.5).astype(np.uint8)
            bands = rng.integers(0, 4000, (32, 32, 4)).astype(np.uint16) + label[..., None].astype(np.uint16) * 3000
            tifffile.imwrite(tmp_path / "images" / split / f"{i}.tif", bands, photometric="minisblack")
            Image.fromarray(label).save(tmp_path / "labels" / split / f"{i}.png")
    (tmp_path / "classes.txt").write_text("background\nfield\n")
    overrides = dict(TINY_SWIN, num_classes=2, in_channels=4, mean=[3500.0] * 4, std=[1500.0] * 4)
    cfg = ExperimentConfig.from_dict(
        {
            "model": {"name": "semask_swin_t_fpn", "overrides": overrides},
            "data": {
                "type": "folder",
                "root": str(tmp_path),
                "train_split": "train",
                "val_split": "val",
                "crop_size": [32, 32],
                "scale": [32, 32],
                "ratios": [1.0],
                "photometric": False,
                "num_workers": 0,
            },
            "schedule": {"iters": 2, "warmup_iters": 1},
            "train": {"batch_size": 2, "device": "cpu", "log_interval": 1, "eval_interval": 2, "ckpt_interval": 2},
            "eval": {"scale": [32, 32]},
        }
    )
    summary = train(cfg, tmp_path / "work", progress=False)
    assert summary["metrics"]["mIoU"] >= 0
    model, _ = load_model_any(tmp_path / "work" / "checkpoints" / "latest.pth")
    assert model.config.in_channels == 4
    val = FolderDataset(tmp_path, "val", in_channels=4)
    result = evaluate(model, val, cfg.eval, progress=False)
    assert sum(map(sum, result["confusion_matrix"])) == 2 * 32 * 32
    written = predict_folder(model, [tmp_path / "images" / "val"], tmp_path / "pred", progress=False)
    assert len(written) == 2
    with Image.open(written[0]["labels"]) as img:
        assert img.size == (32, 32)


# ----------------------------------------------------------------------------- labels


def test_ignore_index_is_kept_through_loading_padding_and_metrics(tmp_path: Path) -> None:
    label = np.array([[0, 1, 100], [2, 100, 1]], np.uint8)
    write_folder(tmp_path, {"x": label})
    ds = FolderDataset(tmp_path, "train", ignore_index=100)
    assert ds.ignore_index == 100
    assert np.array_equal(ds.load_sample(0)[1], label)
    ds.transform = TrainTransform(
        crop_size=(4, 4),
        scale=(3, 2),
        ratios=[1.0],
        cat_max_ratio=1.0,
        flip_prob=0.0,
        photometric=False,
        ignore_index=ds.ignore_index,
    )
    padded = ds[0]["label"].numpy()
    assert padded.shape == (4, 4) and (padded[2:] == 100).all() and (padded[:, 3:] == 100).all()
    from semask.engine.metrics import IoUAccumulator

    acc = IoUAccumulator(3, ds.ignore_index)
    acc.update(np.zeros_like(label), label)
    assert acc.compute()["confusion_matrix"] == [[1, 0, 0], [2, 0, 0], [1, 0, 0]]  # the 100s are not counted
    (tmp_path / "labels" / "train" / "x.png").unlink()
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "labels" / "train" / "x.png")
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(tmp_path / "images" / "train" / "x.png")
    with pytest.raises(DataError, match=r"class ids \[255\] outside 0..2 \(100 = ignore\)"):
        ds.load_sample(0)
    with pytest.raises(DataError, match="ignore_index 1 must be in 3..255"):
        FolderDataset(tmp_path, "train", ignore_index=1)


def test_colour_mask_labels_map_through_the_palette(tmp_path: Path) -> None:
    colours = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [0, 0, 0]]], np.uint8)
    write_folder(tmp_path, {"x": colours})
    (tmp_path / "palette.txt").write_text("10 20 30\n40 50 60\n70 80 90\n")
    with pytest.raises(DataError, match=r"x.png holds 1 colour\(s\) not in .*palette.txt: \[\(0, 0, 0\)\]"):
        FolderDataset(tmp_path, "train").load_sample(0)
    ds = FolderDataset(tmp_path, "train", ignore_color=(0, 0, 0))
    assert ds.load_sample(0)[1].tolist() == [[0, 1], [2, 255]]
    assert ds.check(full=True)["samples"] == 1  # the header check accepts RGB labels here


def test_split_lists_and_suffixes(tmp_path: Path) -> None:
    (tmp_path / "images" / "city").mkdir(parents=True)
    (tmp_path / "labels" / "city").mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "city" / f"{name}_leftImg8bit.png")
        Image.fromarray(np.ones((2, 2), np.uint8)).save(
            tmp_path / "labels" / "city" / f"{name}_gtFine_labelTrainIds.png"
        )
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("city/a\ncity/c\n")
    (tmp_path / "mine.txt").write_text("# comment\ncity/b_leftImg8bit.png\n")
    opts = dict(img_suffix="_leftImg8bit.png", label_suffix="_gtFine_labelTrainIds.png")
    ds = FolderDataset(tmp_path, "train", **opts)
    assert [p.name for p, _ in ds.samples] == ["a_leftImg8bit.png", "c_leftImg8bit.png"]
    assert ds.samples[0][1] == tmp_path / "labels" / "city" / "a_gtFine_labelTrainIds.png"
    assert [p.name for p, _ in FolderDataset(tmp_path, "mine.txt", **opts).samples] == ["b_leftImg8bit.png"]
    (tmp_path / "splits" / "val.txt").write_text("city/zzz\n")
    with pytest.raises(DataError, match=r"val.txt: 1 listed name\(s\) have no image"):
        FolderDataset(tmp_path, "val", **opts)


def test_the_same_image_types_everywhere(tmp_path: Path) -> None:
    from semask.engine import predict

    assert predict.IMAGE_SUFFIXES is IMAGE_SUFFIXES
    assert {".tif", ".tiff", ".bmp", ".webp", ".jpg", ".png"} <= set(IMAGE_SUFFIXES)
    write_folder(tmp_path, {"a": np.zeros((2, 2), np.uint8)}, image_suffix=".bmp")
    write_folder(tmp_path, {"b": np.zeros((2, 2), np.uint8)}, image_suffix=".tif")
    assert [p.suffix for p, _ in FolderDataset(tmp_path, "train").samples] == [".bmp", ".tif"]


def test_one_class_folder_is_rejected(tmp_path: Path) -> None:
    write_folder(tmp_path, {"a": np.zeros((2, 2), np.uint8)}, classes=("road",))
    with pytest.raises(DataError, match="one class is not supported; binary segmentation uses 2 classes"):
        FolderDataset(tmp_path, "train")


# ----------------------------------------------------------------------------- check-data


def test_check_data_reports_every_problem_and_the_class_histogram(tmp_path: Path) -> None:
    from semask.cli import main
    from semask.data.check import check_data

    good = np.array([[0, 0, 1], [1, 255, 0]], np.uint8)  # 3 x class 0, 2 x class 1, 1 ignored
    write_folder(tmp_path, {"g1": good, "g2": good})
    write_folder(tmp_path, {"v": np.zeros((2, 3), np.uint8)}, split="val")
    # broken: a label of the wrong size, an out-of-range id, an orphan label, an image without label
    Image.fromarray(np.full((2, 3, 3), 9, np.uint8)).save(tmp_path / "images" / "train" / "bad_size.png")
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "labels" / "train" / "bad_size.png")
    Image.fromarray(np.full((2, 3, 3), 9, np.uint8)).save(tmp_path / "images" / "train" / "bad_id.png")
    Image.fromarray(np.full((2, 3), 7, np.uint8)).save(tmp_path / "labels" / "train" / "bad_id.png")
    Image.fromarray(np.zeros((2, 3), np.uint8)).save(tmp_path / "labels" / "train" / "orphan.png")
    Image.fromarray(np.full((2, 3, 3), 9, np.uint8)).save(tmp_path / "images" / "train" / "lonely.png")
    printed: list[str] = []
    result = check_data(tmp_path, out_dir=tmp_path / "out", num_samples=4, progress=False, print_fn=printed.append)
    text = "\n".join(printed)
    assert not result["ok"]
    train, val = result["reports"]
    assert (train.split, val.split) == ("train", "val")
    assert len(train.problems) == 2
    assert any("bad_size.png is 3x3 (WxH) but image" in p for p in train.problems)
    assert any("bad_id.png holds class ids [7] outside 0..2" in p for p in train.problems)
    assert [p.name for p in train.orphan_labels] == ["orphan.png"]
    assert [p.name for p in train.unlabelled_images] == ["lonely.png"]
    assert train.pixels.tolist() == [6, 4, 0] and train.images.tolist() == [2, 2, 0]  # the two good pairs
    assert val.pixels.tolist() == [6, 0, 0]
    assert "| 0  | a" not in text and "|  1 | b         |" in text.replace("b        ", "b        ")
    assert "warning: train: 1 class(es) never occur: 2 c" in text
    assert "warning: val: 2 class(es) never occur: 1 b, 2 c" in text
    assert "label without an image:" in text and "image without a label:" in text
    with Image.open(result["grid"]) as grid:
        assert grid.size[0] > 0
    assert main(["check-data", str(tmp_path), "--samples", "0", "--no-progress"]) == 1


def test_check_data_on_clean_demo_data_passes(tmp_path: Path) -> None:
    from semask.cli import main
    from semask.data import make_context_dataset

    root = make_context_dataset(tmp_path / "d", num_train=4, num_val=2, size=32, seed=0)
    printed: list[str] = []
    from semask.data.check import check_data

    result = check_data(
        root, ["data.crop_size=[32,32]", "data.scale=[64,32]"], num_samples=4, progress=False, print_fn=printed.append
    )
    assert result["ok"] and result["table"].splitlines()[0].startswith("| id | class")
    # the table sums to every pixel of the split: 4 images of 32x32
    train = result["reports"][0]
    assert int(train.pixels.sum()) + train.ignored == 4 * 32 * 32 == train.total
    with Image.open(result["grid"]) as grid:
        assert grid.size == (2 * 32 + 4, 2 * 32 + 4)  # 2x2 cells of the 32x32 crop, 4-pixel gaps
    assert main(["check-data", str(root), "--samples", "0", "--no-progress"]) == 0
