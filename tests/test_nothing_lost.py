"""Issue 23: file modes, degenerate image sizes, lossy label files and the smaller start-up checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import tiny_config

import semask
from semask.cli import main
from semask.data import make_context_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def umask_022():  # type: ignore[no-untyped-def]
    before = os.umask(0o022)
    yield
    os.umask(before)


def _modes(*roots: Path) -> dict[str, int]:
    """Permission bits of every regular file under ``roots`` (symlinks such as latest.pth skipped)."""
    found = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found[str(path)] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_every_file_we_write_gets_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    """model.safetensors was written 0600 under umask 022 (the safetensors writer replaces the
    atomic writer's file with its own 0600 one); so were check-data's sample grid and the npz of
    an explanation. Every artifact type is written here and must be 0644."""
    from semask.data.check import check_data
    from semask.engine.evaluate import evaluate
    from semask.engine.predict import predict_folder
    from semask.engine.report import write_report
    from semask.engine.trainer import train
    from semask.explain import explain
    from semask.hub.download import record_hash

    data = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=32, seed=3)
    work = tmp_path / "work"
    train(tiny_config(data, "schedule.iters=2", "train.eval_interval=2", "train.ckpt_interval=1"), work, progress=False)
    model = semask.load(work / "model")
    model.save_pretrained(tmp_path / "single.safetensors")
    images = sorted((data / "images" / "val").iterdir())
    predict_folder(model, images, tmp_path / "pred", progress=False, scale=None)
    val = semask.data.build_dataset("folder", data, "val")
    evaluate(
        model,
        val,
        tiny_config(data).eval,
        progress=False,
        out_json=tmp_path / "eval" / "eval.json",
        confusion_png=tmp_path / "eval" / "confusion.png",
        pred_dir=tmp_path / "eval" / "labels",
    )
    found = explain(model, images[0], top_k=2, scale=None)
    found.save(tmp_path / "explain")
    found.save_heatmaps(tmp_path / "explain" / "heatmaps", "x")
    check_data(data, out_dir=tmp_path / "check", num_samples=2, progress=False, print_fn=lambda *_: None)
    write_report(tmp_path / "REPORT.md", "t", {"a": 1}, images=[work / "loss.png"])
    args = ["score", str(tmp_path / "pred" / "labels"), str(data / "labels" / "val"), "--num-classes", "5"]
    assert main([*args, "--out", str(tmp_path / "score.json")]) == 0
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "w.pth").write_bytes(b"weights")
    record_hash(tmp_path / "cache" / "w.pth")

    modes = _modes(work, tmp_path / "single.safetensors", tmp_path / "pred", tmp_path / "eval", tmp_path / "explain")
    modes.update(_modes(tmp_path / "check", tmp_path / "REPORT.md", tmp_path / "score.json", tmp_path / "cache"))
    wrong = {path: oct(mode) for path, mode in modes.items() if mode != 0o644}
    assert not wrong, wrong
    kinds = {Path(p).suffix for p in modes}
    assert {".pth", ".safetensors", ".json", ".png", ".npz", ".yaml", ".jsonl", ".log", ".md", ".sha256"} <= kinds
    assert str(work / "model" / "model.safetensors") in modes and str(work / "checkpoints" / "best.pth") in modes


def test_the_mode_follows_the_umask(tmp_path: Path) -> None:
    before = os.umask(0o027)
    try:
        model = semask.create_model(
            "semask_swin_t_fpn", num_classes=3, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]
        )
        path = model.save_pretrained(tmp_path / "m")
    finally:
        os.umask(before)
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == {0o640}


# ----------------------------------------------------------------------------- lossy label files


def _lossy_labels(tmp_path: Path) -> Path:
    """A folder dataset whose labels are JPEGs: some ids decode as other valid ids."""
    data = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=48, seed=3)
    for png in sorted((data / "labels").glob("*/*.png")):
        ids = np.array(Image.open(png))
        Image.fromarray(ids).save(png.with_suffix(".jpg"), quality=95)
        decoded = np.array(Image.open(png.with_suffix(".jpg")))
        assert ((decoded != ids) & (decoded < 5) & (ids < 5)).any()  # ids turned into other valid ids
        png.unlink()
    return data


def test_lossy_label_files_are_refused_by_check_data_and_before_training(tmp_path: Path, capsys) -> None:
    from semask.engine.trainer import train

    data = _lossy_labels(tmp_path)
    bad = data / "labels" / "val" / "00000.jpg"
    assert main(["check-data", str(data), "data.label_suffix=.jpg", "--samples", "0", "--no-progress"]) == 1
    assert f"label {bad} is stored as JPEG, a lossy format" in capsys.readouterr().out
    cfg = tiny_config(data, "schedule.iters=2", "data.label_suffix=.jpg")
    with pytest.raises(semask.data.DataError, match=f"label {bad} is stored as JPEG, a lossy format") as info:
        train(cfg, tmp_path / "work", progress=False)
    assert "4 of 4 samples are broken" in str(info.value) and "2 of 2 samples are broken" in str(info.value)
    assert not (tmp_path / "work" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("fmt", "options", "refused"),
    [
        ("WEBP", {"lossless": True}, False),
        ("WEBP", {"quality": 90}, True),
        ("TIFF", {"compression": "jpeg"}, True),
        ("TIFF", {"compression": "tiff_lzw"}, False),
        ("PNG", {}, False),
    ],
)
def test_which_label_formats_are_lossy(tmp_path: Path, fmt: str, options: dict, refused: bool) -> None:
    from semask.data.datasets import read_label

    ids = (np.arange(32 * 32).reshape(32, 32) // 97 % 5).astype(np.uint8)
    path = tmp_path / f"label.{fmt.lower()}"
    Image.fromarray(np.repeat(ids[..., None], 3, 2) if fmt == "WEBP" else ids).save(path, format=fmt, **options)
    if refused:
        with pytest.raises(semask.data.DataError, match="a lossy format"):
            read_label(path)
    else:  # read (a WebP decodes as RGB: refused for its mode, not as lossy)
        try:
            assert np.array_equal(read_label(path), ids)
        except semask.data.DataError as exc:
            assert fmt == "WEBP" and "mode RGB" in str(exc)


# ----------------------------------------------------------------------------- start-up checks


def test_a_failed_start_leaves_nothing_that_blocks_the_same_command(tmp_path: Path, capsys) -> None:
    from semask.config import dump_config

    data = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=32, seed=3)
    for label in (data / "labels" / "train").iterdir():
        label.unlink()  # every training image lacks its label
    config = dump_config(tiny_config(data, "schedule.iters=2"), tmp_path / "c.yaml")
    argv = ["train", str(config), "--work-dir", str(tmp_path / "work"), "--no-progress"]
    assert main(argv) == 1
    assert "4 image(s) without a label" in capsys.readouterr().err
    assert not (tmp_path / "work" / "config.yaml").exists()
    make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=32, seed=3)  # the data is fixed
    assert main(argv) == 0  # the same command now runs, instead of "already holds a training run"


def test_resume_refuses_fewer_iterations_than_the_checkpoint(tmp_path: Path, capsys) -> None:
    from semask.config import dump_config

    data = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=32, seed=3)
    config = dump_config(tiny_config(data, "schedule.iters=3", "train.eval_interval=3"), tmp_path / "c.yaml")
    work = tmp_path / "work"
    assert main(["train", str(config), "--work-dir", str(work), "--no-progress"]) == 0
    summary = (work / "summary.json").read_text()
    assert main(["train", str(config), "--work-dir", str(work), "--resume", "schedule.iters=2"]) == 1
    err = capsys.readouterr().err
    assert "iter_00000003.pth is at iteration 3, past schedule.iters=2" in err
    assert "set schedule.iters >= 3" in err and (work / "summary.json").read_text() == summary


# ----------------------------------------------------------------------------- degenerate image sizes


@pytest.fixture(scope="module")
def strip_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Swin-FPN (any size works once resizes keep >= 1 pixel) and a tiny SeMask-MiT, whose
    spatial-reduction attention cannot take a 10-pixel-high image: saved model folders."""
    import torch
    from conftest import MIT_TINY, NAMED_TINY

    root = tmp_path_factory.mktemp("strip_models")
    torch.manual_seed(0)
    fpn = semask.create_model("semask_swin_t_fpn", **NAMED_TINY).save_pretrained(root / "fpn")
    names = NAMED_TINY["class_names"]
    mit = semask.create_model("semask_mit_b0", num_classes=4, class_names=names, **MIT_TINY).save_pretrained(
        root / "mit"
    )
    return {"fpn": fpn, "mit": mit}


def _strip_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for name, shape in (("a", (48, 64)), ("b", (10, 20000)), ("c", (40, 40))):
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    return root / "images"


def test_a_degenerate_image_is_a_per_image_error_in_predict(strip_models, tmp_path: Path, capsys) -> None:
    images = _strip_folder(tmp_path)
    out = tmp_path / "fpn_out"  # the resize keeps 1 pixel: predicted at its own size
    assert main(["predict", str(strip_models["fpn"]), str(images), "--out", str(out), "--scale", "64x64"]) == 0
    assert np.array(Image.open(out / "labels" / "b.png")).shape == (10, 20000)
    out = tmp_path / "mit_out"
    assert main(["predict", str(strip_models["mit"]), str(images), "--out", str(out), "--scale", "64x64"]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 image(s) could not be read or segmented and were skipped (2 predicted" in err
    reason = (
        "a 1x16 stage map is smaller than its spatial-reduction ratio 8; the input image is too small for this model"
    )
    assert f"cannot segment {images / 'b.png'} (20000x10 pixels): {reason}\n" in err
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.png", "c.png"]  # the images after it too


def test_a_degenerate_image_is_a_per_image_error_in_eval_and_explain(strip_models, tmp_path: Path, capsys) -> None:
    images = _strip_folder(tmp_path / "data")
    (tmp_path / "data" / "labels").mkdir()
    for path in images.iterdir():
        shape = np.array(Image.open(path)).shape[:2]
        Image.fromarray((np.arange(shape[1]) % 4 * np.ones(shape)).astype(np.uint8)).save(
            tmp_path / "data" / "labels" / path.name
        )
    (tmp_path / "data" / "classes.txt").write_text("sea\nland\nboat\ncar\n")
    (tmp_path / "data" / "splits").mkdir()
    (tmp_path / "data" / "splits" / "val.txt").write_text("a\nb\nc\n")
    args = ["--data-type", "folder", "--data-root", str(tmp_path / "data"), "--split", "val", "--num-workers", "0"]
    assert main(["eval", str(strip_models["fpn"]), *args, "--scale", "64x64"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(strip_models["mit"]), *args, "--scale", "64x64", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 image(s) could not be segmented and are left out of the metrics above" in err
    assert f"cannot segment {images / 'b.png'} (20000x10 pixels)" in err
    import json

    assert len(json.loads(out.read_text())["skipped"]) == 1
    argv = ["explain", str(strip_models["mit"]), str(images / "b.png"), "--out", str(tmp_path / "x"), "--scale", "0"]
    assert main(argv) == 1
    assert f"semask explain: error: cannot segment {images / 'b.png'} (20000x10 pixels)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- smaller checks


@pytest.mark.parametrize("setting", [{"window_size": 0}, {"semantic_window_size": 0}])
def test_a_zero_window_is_a_clear_error(setting: dict) -> None:
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name} must be >= 1"):  # was a ZeroDivisionError in the forward
        semask.create_model("semask_swin_t_fpn", num_classes=3, **setting)
    if name == "semantic_window_size":
        with pytest.raises(ValueError, match=f"{name} must be >= 1"):
            semask.create_model("semask_mit_b0", num_classes=3, **setting)


def test_the_api_refuses_one_class_with_the_yaml_hint() -> None:
    from semask.config import BINARY_HINT

    with pytest.raises(ValueError) as info:
        semask.create_model("semask_swin_t_fpn", num_classes=1)
    assert str(info.value) == BINARY_HINT.format(where="num_classes")


def test_gif_images_are_read_and_other_files_are_listed(tmp_path: Path, caplog) -> None:
    from semask.data import FolderDataset
    from semask.engine.predict import collect_images

    data = make_context_dataset(tmp_path / "data", num_train=0, num_val=2, size=32, seed=3)
    image = data / "images" / "val" / "00001.png"
    Image.open(image).save(image.with_suffix(".gif"))
    image.unlink()
    (data / "images" / "val" / "notes.txt").write_text("not an image")
    (data / "images" / "val" / ".DS_Store").write_bytes(b"")
    dataset = FolderDataset(data, "val")
    assert [p.name for p, _ in dataset.samples] == ["00000.png", "00001.gif"]  # was silently left out
    dataset.check(progress=False)
    assert dataset[1]["image"].shape == (3, 32, 32)
    assert "1 file(s) are not images of this dataset" in caplog.text and "notes.txt" in caplog.text
    caplog.clear()
    assert [p.name for p in collect_images([data / "images" / "val"])] == ["00000.png", "00001.gif"]
    assert "1 file(s) are not image types semask reads" in caplog.text and "notes.txt" in caplog.text
    assert ".DS_Store" not in caplog.text


def test_val_labels_are_decoded_before_the_first_iteration(tmp_path: Path) -> None:
    from semask.engine.trainer import train

    data = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=32, seed=3)
    label = np.array(Image.open(data / "labels" / "val" / "00001.png"))
    label[3, 3] = 7  # an id the 5-class dataset does not have, which the header check cannot see
    Image.fromarray(label).save(data / "labels" / "val" / "00001.png")
    cfg = tiny_config(data, "schedule.iters=2", "train.eval_interval=2")  # data.check: headers (the default)
    with pytest.raises(semask.data.DataError, match=r"val/00001.png holds class ids \[7\] outside 0\.\.4"):
        train(cfg, tmp_path / "work", progress=False)
    assert not (tmp_path / "work" / "metrics.jsonl").exists()  # found before iteration 1


def test_a_crop_far_larger_than_every_image_is_warned_about(tmp_path: Path, caplog, capsys) -> None:
    from semask.data.check import check_data
    from semask.engine.trainer import train

    data = make_context_dataset(tmp_path / "data", num_train=4, num_val=2, size=32, seed=3)
    # 32x32 images, resized to fit [64, 64] x at most 1.25 = 80x80: a 256x256 crop is >= 90 % padding
    cfg = tiny_config(data, "schedule.iters=2", "train.eval_interval=2", "data.crop_size=[256,256]")
    train(cfg, tmp_path / "work", progress=False)
    expected = "data.crop_size 256x256 is far larger than every training image after the resize"
    assert expected in caplog.text and "the largest is 80x80" in caplog.text
    found = check_data(data, ["data.crop_size=[256,256]", "data.scale=[64,64]"], num_samples=0, progress=False)
    assert any(expected in w for w in found["warnings"])
    caplog.clear()
    train(tiny_config(data, "schedule.iters=2", "train.eval_interval=2"), tmp_path / "fits", progress=False)
    assert "far larger" not in caplog.text  # the tiny config's 48x48 crop of 80x80 images: no warning
