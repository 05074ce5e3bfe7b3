"""Issue 12: nothing lost, nothing silently wrong (resume checks, data checks, image reading,
prediction outputs and memory, clear errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MIT_TINY
from PIL import Image
from test_train import tiny_config

import semask
from semask.cli import main
from semask.config import dump_config
from semask.data import DataError, FolderDataset, make_context_dataset, read_image
from semask.engine.checkpoint import TrainingCheckpointError
from semask.engine.predict import load_rgb
from semask.engine.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 2-iteration run (checkpoint at iteration 2) and its YAML config."""
    root = tmp_path_factory.mktemp("robust")
    data = make_context_dataset(root / "data", num_train=6, num_val=2, size=64, seed=1)
    cfg = tiny_config(data, "schedule.iters=2", "train.eval_interval=2", "train.ckpt_interval=2")
    config = dump_config(cfg, root / "tiny.yaml")
    work = root / "work"
    train(cfg, work, progress=False)
    return {"root": root, "data": data, "config": config, "work": work}


def _copy_run(run: dict[str, Path], name: str) -> Path:
    work = run["root"] / name
    shutil.copytree(run["work"], work)
    return work


# ----------------------------------------------------------------------------- 1. resume checks


def test_resume_refuses_a_config_that_changes_the_training(run: dict[str, Path], capsys) -> None:
    work = _copy_run(run, "resume_refused")
    saved_yaml = (work / "config.yaml").read_text()
    argv = ["train", str(run["config"]), "--work-dir", str(work), "--no-progress", "--resume", "schedule.iters=4"]
    assert main([*argv, "optim.lr=0.5", "schedule.warmup_iters=1", "model.overrides.drop_path_rate=0.0"]) == 1
    err = capsys.readouterr().err
    assert "3 setting(s) differ" in err
    assert "optim.lr: 0.001 in the checkpoint, 0.5 now" in err
    assert "schedule.warmup_iters: 2 in the checkpoint, 1 now" in err
    assert "model.overrides:" in err
    listed = [line.split(":")[0].strip() for line in err.splitlines()[1:]]
    assert listed == ["model.overrides", "optim.lr", "schedule.warmup_iters"]  # schedule.iters may change
    assert (work / "config.yaml").read_text() == saved_yaml  # the folder still describes its weights
    assert sorted(p.name for p in (work / "checkpoints").glob("iter_*.pth")) == ["iter_00000002.pth"]

    # a changed batch size says so, instead of a data-position error deep in the sampler
    with pytest.raises(TrainingCheckpointError, match=r"batch size changed \(2 -> 4\)"):
        train(tiny_config(run["data"], "schedule.iters=4", "train.batch_size=4"), work, resume=True, progress=False)


def test_resume_allows_the_documented_settings(run: dict[str, Path]) -> None:
    work = _copy_run(run, "resume_allowed")
    changed = ("train.log_interval=2", "train.keep_last=1", "data.num_workers=0", "eval.mode=slide", "eval.flip=true")
    summary = train(tiny_config(run["data"], "schedule.iters=3", *changed), work, resume=True, progress=False)
    assert summary["iterations"] == 3
    assert "log_interval: 2" in (work / "config.yaml").read_text()


# ----------------------------------------------------------------------------- 2. data checked before training


def _fresh_data(tmp_path: Path, name: str = "data") -> Path:
    return make_context_dataset(tmp_path / name, num_train=4, num_val=2, size=32, seed=3)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_training_checks_both_splits_before_the_first_iteration(tmp_path: Path) -> None:
    data = _fresh_data(tmp_path)
    _truncate(data / "images" / "val" / "00001.png")  # would surface only at the first evaluation
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(data / "labels" / "train" / "00002.png")
    cfg = tiny_config(data, "schedule.iters=2", "train.eval_interval=2")
    with pytest.raises(DataError) as exc:
        train(cfg, tmp_path / "work", progress=False)
    message = str(exc.value)
    assert f"label {data / 'labels' / 'train' / '00002.png'} is 32x16 (WxH) but image" in message
    assert f"cannot read image {data / 'images' / 'val' / '00001.png'}" in message
    assert not (tmp_path / "work" / "metrics.jsonl").exists()  # not one iteration ran


def test_full_check_decodes_labels_for_their_class_ids(tmp_path: Path) -> None:
    data = _fresh_data(tmp_path)
    label = np.array(Image.open(data / "labels" / "val" / "00000.png"))
    label[0, 0] = 200  # a class id the 5-class dataset does not have
    Image.fromarray(label).save(data / "labels" / "val" / "00000.png")
    dataset = FolderDataset(data, "val")
    found = dataset.check(progress=False)  # headers cannot see values
    assert (found["samples"], found["rotated"], found["sizes"]) == (2, 0, [(32, 32), (32, 32)])
    with pytest.raises(DataError, match=r"00000.png holds class ids \[200\] outside 0\.\.4 "):
        dataset.check(full=True, progress=False)
    with pytest.raises(DataError, match=r"class ids \[200\]"):
        train(tiny_config(data, "schedule.iters=2", "data.check=full"), tmp_path / "w", progress=False)


def test_a_broken_file_in_a_dataloader_worker_is_a_one_line_error(tmp_path: Path) -> None:
    data = _fresh_data(tmp_path)
    _truncate(data / "images" / "train" / "00000.png")
    cfg = tiny_config(data, "schedule.iters=2", "data.check=none", "data.num_workers=1", "train.batch_size=4")
    with pytest.raises(DataError) as exc:
        train(cfg, tmp_path / "work", progress=False)
    message = str(exc.value)
    assert message.startswith(f"cannot read image {data / 'images' / 'train' / '00000.png'}: ")
    assert "\n" not in message and "Traceback" not in message


def test_a_truncated_jpeg_is_found_by_the_header_check(tmp_path: Path) -> None:
    data = _fresh_data(tmp_path)
    for stem in ("00000", "00001"):  # one intact JPEG, one cut short
        png = data / "images" / "val" / f"{stem}.png"
        Image.open(png).save(png.with_suffix(".jpg"), quality=95)
        png.unlink()
    _truncate(data / "images" / "val" / "00001.jpg")
    with pytest.raises(DataError) as exc:
        FolderDataset(data, "val").check(progress=False)
    assert "1 of 2 samples are broken" in str(exc.value) and "00001.jpg" in str(exc.value)


# ----------------------------------------------------------------------------- 3. 16-bit and EXIF orientation


def test_16_bit_grey_images_are_scaled_to_8_bits(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 257], [25700, 32896, 65279, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = read_image(tmp_path / "deep.png")
    expected = np.array([[0, 0, 1, 1], [100, 128, 254, 255]], np.uint8)  # round(v / 257)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert (rgb == expected[..., None]).all()
    Image.fromarray(np.full((2, 2), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match="float.tif has PIL mode F, which semask does not read"):
        read_image(tmp_path / "float.tif")


def _rotated_jpeg(path: Path, stored: np.ndarray) -> None:
    """``stored`` pixels with EXIF orientation 6 (viewers turn it 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, quality=100, subsampling=0, exif=exif)


def test_exif_orientation_is_applied_to_images_not_labels(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide, 16 high; bright left half
    stored[:, :16] = 250
    _rotated_jpeg(tmp_path / "photo.jpg", stored)
    upright = read_image(tmp_path / "photo.jpg")
    assert upright.shape == (32, 16, 3)  # turned clockwise: the left half is now on top
    assert upright[:16].mean() > 240 and upright[16:].mean() < 10
    with Image.open(tmp_path / "photo.jpg") as img:  # a PIL image given to predict is turned alike
        assert np.array_equal(load_rgb(img), upright)

    # a dataset: the label drawn on the upright image fits; one drawn on the stored pixels is refused
    root = tmp_path / "set"
    for sub in ("images/train", "labels/train"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("dark\nbright\n")
    shutil.copy(tmp_path / "photo.jpg", root / "images" / "train" / "a.jpg")
    fits = np.zeros((32, 16), np.uint8)
    fits[:16] = 1
    Image.fromarray(fits).save(root / "labels" / "train" / "a.png")
    dataset = FolderDataset(root, "train")
    assert dataset.check(progress=False) == {"samples": 1, "rotated": 1, "sizes": [(32, 16)]}  # (H, W) upright
    image, label = dataset.load_sample(0)
    assert image.shape[:2] == label.shape and np.array_equal(label, fits)
    Image.fromarray(fits.T.copy()).save(root / "labels" / "train" / "a.png")
    for call in (lambda: dataset.check(progress=False), lambda: dataset.load_sample(0)):
        with pytest.raises(DataError, match="after its EXIF orientation is applied"):
            call()


# ----------------------------------------------------------------------------- 4. predict outputs


def _images(run: dict[str, Path], folder: Path, broken: str = "b") -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(("a", broken, "c")):
        shutil.copy(run["data"] / "images" / "val" / f"{i % 2:05d}.png", folder / f"{name}.png")
    _truncate(folder / f"{broken}.png")
    return folder


def test_predict_skips_an_unreadable_image_and_fails_at_the_end(run: dict[str, Path], capsys) -> None:
    images, out = _images(run, run["root"] / "in_skip"), run["root"] / "out_skip"
    model = str(run["work"] / "model")
    assert main(["predict", model, str(images), "--out", str(out), "--scale", "0"]) == 1
    captured = capsys.readouterr()
    assert "2 image(s): class ids in" in captured.out
    assert "1 of 3 image(s) could not be read or segmented and were skipped (2 predicted" in captured.err
    assert f"cannot read image {images / 'b.png'}" in captured.err
    for sub in ("labels", "color", "overlay"):
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a.png", "c.png"]  # no temporary files left

    strict = run["root"] / "out_strict"
    assert main(["predict", model, str(images), "--out", str(strict), "--scale", "0", "--strict"]) == 1
    assert f"cannot read image {images / 'b.png'}" in capsys.readouterr().err
    assert sorted(p.name for p in (strict / "labels").iterdir()) == ["a.png"]  # stopped at b, c not started


def test_predict_outputs_are_replaced_atomically(run: dict[str, Path], monkeypatch) -> None:
    from semask.engine.predict import predict_folder

    model = semask.load(run["work"] / "model")
    images, out = run["root"] / "in_atomic", run["root"] / "out_atomic"
    images.mkdir()
    shutil.copy(run["data"] / "images" / "val" / "00000.png", images / "a.png")
    predict_folder(model, [images], out, progress=False, scale=None)
    before = {sub: (out / sub / "a.png").read_bytes() for sub in ("labels", "color", "overlay")}

    real_save = Image.Image.save

    def dies_halfway(self, fp, *args, **kwargs):  # a kill / full disk in the middle of a PNG
        real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(Path(fp).read_bytes()[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", dies_halfway)
    with pytest.raises(OSError, match="(?i)no space left on the device to write .*a.png"):
        predict_folder(model, [images], out, progress=False, scale=None)
    monkeypatch.undo()
    for sub, data in before.items():  # the earlier outputs are whole, no half-written file took their place
        assert (out / sub / "a.png").read_bytes() == data
        assert sorted(p.name for p in (out / sub).iterdir()) == ["a.png"]
    assert np.array(Image.open(out / "labels" / "a.png")).shape == (64, 64)


def test_two_predicts_into_one_folder_are_refused(run: dict[str, Path], tmp_path: Path) -> None:
    import subprocess
    import sys

    from semask.engine.predict import LOCK_NAME, predict_folder

    model = semask.load(run["work"] / "model")
    image = run["data"] / "images" / "val" / "00000.png"
    out = tmp_path / "out"
    out.mkdir()
    hold = "import sys, time; from pathlib import Path; from semask.engine.predict import output_lock\n"
    hold += "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, cwd=tmp_path)
    try:
        assert other.stdout is not None and other.stdout.readline() == b"held\n"  # another predict is writing here
        with pytest.raises(FileExistsError, match=f"another semask predict is running in {out}: process {other.pid}"):
            predict_folder(model, [image], out, progress=False, scale=None)
        assert not (out / "labels" / "00000.png").exists()
    finally:
        other.kill()
        other.wait()
    assert (out / LOCK_NAME).exists()
    # the same lock left by a process that is gone (kill -9) is taken over, and released afterwards
    predict_folder(model, [image], out, progress=False, scale=None)
    assert (out / "labels" / "00000.png").is_file() and not (out / LOCK_NAME).exists()


def test_predict_and_export_options_are_checked_before_the_model_loads(tmp_path: Path, capsys) -> None:
    missing_model = str(tmp_path / "no_model")  # would fail to load: the option error must come first
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert main(["predict", missing_model, str(image), "--out", str(tmp_path / "o"), "--alpha", "2"]) == 1
    assert "--alpha must be between 0 and 1" in capsys.readouterr().err
    assert main(["export", missing_model, "--size", "64x64", "--out", str(tmp_path)]) == 1
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- 5. bounded prediction memory


class _QuarterResLogits(torch.nn.Module):
    """K=150 logits at 1/4 of the input size from a fixed random conv (no ties in practice)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 150, 4, stride=4)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.conv(x))


@pytest.mark.parametrize(
    "mode, scale",
    [("slide", None), ("slide", (96, 56)), ("whole", (96, 56)), ("whole", None)],
)
def test_bounded_prediction_equals_the_full_softmax_path(mode, scale, monkeypatch) -> None:
    from semask.data.transforms import TestTransform, normalize
    from semask.engine import inference

    model = _QuarterResLogits().eval()
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    mean, std = (120.0, 110.0, 100.0), (60.0, 50.0, 40.0)
    options = dict(mode=mode, crop_size=(32, 40), stride=(20, 24), num_classes=150)
    x = torch.from_numpy(normalize(TestTransform(scale, mean, std).resize(image, 1.0), mean, std))[None]
    with torch.inference_mode():  # the unbounded path: softmax of all K classes at the original size
        full = inference._average_probabilities(model, [x], False, (70, 90), mode, (32, 40), (20, 24), 150)
    expected = full.argmax(dim=1)[0].numpy()
    assert full.shape == (1, 150, 70, 90) and len(np.unique(expected)) > 20
    monkeypatch.setattr(inference, "RESIZE_CHUNK_ELEMENTS", 7 * 70 * 90)  # 7 classes per chunk: 22 chunks
    got = inference.predict_image(model, image, mean, std, scale, **options)
    assert got.dtype == np.int64 and np.array_equal(got, expected)
    if mode == "slide" and scale is None:  # several bands: 70 rows, crop 32, stride 20 -> windows at rows 0, 20, 38
        assert sorted({w[0] for w in inference.slide_windows((70, 90), (32, 40), (20, 24))}) == [0, 20, 38]


# ----------------------------------------------------------------------------- 6. clear errors


def test_broken_weight_files_are_named_with_the_reason(run: dict[str, Path], tmp_path: Path, capsys) -> None:
    import os

    model_dir = run["work"] / "model"
    image = run["data"] / "images" / "val" / "00000.png"
    truncated = tmp_path / "cut"
    shutil.copytree(model_dir, truncated)
    (truncated / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:1000])
    broken_json = tmp_path / "json"
    shutil.copytree(model_dir, broken_json)
    (broken_json / "config.json").write_text('{"model_type": ')
    (tmp_path / "empty.pth").write_bytes(b"")

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": RunsCode()}, tmp_path / "evil.pth")
    expected = {
        truncated: f"{truncated / 'model.safetensors'} is not a readable .safetensors file",
        broken_json: f"{broken_json / 'config.json'} is not valid JSON",
        tmp_path / "empty.pth": "empty.pth is empty (0 bytes)",
        tmp_path / "evil.pth": "evil.pth refused: it would run code when unpickled (it pickles a call of",
    }
    for model, message in expected.items():
        assert main(["predict", str(model), str(image), "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "weights_only=False" not in err and "weights_only" not in err


def test_mmseg_meta_with_numpy_scalars_loads(run: dict[str, Path], tmp_path: Path) -> None:
    import io

    from safetensors.torch import load_file

    from semask.models.io import read_checkpoint

    state = load_file(run["work"] / "model" / "model.safetensors")
    meta = {"iter": np.int64(80000), "mIoU": np.float64(0.42), "hist": np.arange(3), "CLASSES": ("a", "b")}
    torch.save({"state_dict": state, "meta": meta}, tmp_path / "new.pth")
    buffer = io.BytesIO()  # as numpy 1.x wrote them (every released file): numpy.core, not numpy._core
    torch.save({"state_dict": state, "meta": meta}, buffer, _use_new_zipfile_serialization=False)
    old = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    (tmp_path / "old.pth").write_bytes(old)
    for name in ("new.pth", "old.pth"):
        tensors, found = read_checkpoint(tmp_path / name)
        assert found["iter"] == 80000 and found["mIoU"] == 0.42 and list(found["hist"]) == [0, 1, 2]
        assert sorted(tensors) == sorted(state)


def test_a_full_disk_during_a_checkpoint_write_names_the_file(run: dict[str, Path], monkeypatch, capsys) -> None:
    from semask.engine import checkpoint

    work = _copy_run(run, "full_disk")
    (work / "checkpoints" / ".iter_00000002.pth.abc123.tmp").write_bytes(b"partial")  # from a killed run
    before = {name: (work / "checkpoints" / name).read_bytes() for name in ("iter_00000002.pth", "best.pth")}

    def no_space(obj, tmp_path):
        Path(tmp_path).write_bytes(b"x" * 100)  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    argv = ["train", str(run["config"]), "--work-dir", str(work), "--no-progress", "--resume", "schedule.iters=4"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    target = work / "checkpoints" / "best.pth"  # the evaluation at iteration 4 is the first to save
    assert f"could not write checkpoint {target}: [Errno 28] No space left on device" in err
    assert f"The earlier checkpoints in {work / 'checkpoints'} are intact (best.pth, iter_00000002.pth" in err
    assert len(err.strip().splitlines()) == 1
    assert {name: (work / "checkpoints" / name).read_bytes() for name in before} == before
    assert not list((work / "checkpoints").glob(".*.tmp"))  # the stale one removed on start, the new one too
    assert "removed" in (work / "train.log").read_text()


def test_devices_are_checked(run: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = str(run["data"] / "images" / "val" / "00000.png")
    model = str(run["work"] / "model")
    assert main(["predict", model, image, "--out", str(tmp_path), "--device", "gpu"]) == 1
    assert "unknown --device 'gpu'; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["predict", model, image, "--out", str(tmp_path), "--device", "cuda"]) == 1
        assert "--device cuda: " in capsys.readouterr().err
    assert main(["predict", model, image, "--out", str(tmp_path), "--device", "meta"]) == 1
    assert "semask runs on cpu or cuda" in capsys.readouterr().err


def test_eval_of_a_model_on_a_folder_dataset_uses_its_val_split(run: dict[str, Path], tmp_path: Path) -> None:
    base = ["eval", str(run["work"] / "model"), "--data-type", "folder", "--data-root", str(run["data"])]
    base += ["--num-workers", "0", "--out"]
    assert main([*base, str(tmp_path / "default.json")]) == 0
    assert main([*base, str(tmp_path / "val.json"), "--split", "val"]) == 0
    default, val = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("default", "val"))
    assert default["IoU"] == val["IoU"] and default["aAcc"] == val["aAcc"]


def test_bugs_in_semask_show_a_traceback_user_lookups_do_not(monkeypatch, capsys) -> None:
    import semask.models.summary

    assert main(["info", "no_such_model"]) == 1  # a KeyError of the registry: the user's typo
    assert "unknown model 'no_such_model'" in capsys.readouterr().err

    def buggy(*args, **kwargs):
        return {}["missing"]  # a KeyError in our own code

    monkeypatch.setattr(semask.models.summary, "describe", buggy)
    with pytest.raises(KeyError, match="missing"):
        main(["info", "semask_swin_t_fpn"])
    monkeypatch.setattr(semask.models.summary, "describe", lambda *a: len(None))
    with pytest.raises(TypeError):
        main(["info", "semask_swin_t_fpn"])


# ----------------------------------------------------------------------------- 7. the README's command lines


def _readme_command_lines() -> list[str]:
    """Lines starting with ``semask `` in the code blocks of README.md's "Command line" section."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Command line", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("semask "):
                lines.append(line)
    return lines


HEAVY_COMMANDS = ("info", "export")  # build a full Swin-T / trace an ONNX graph: ~35 s of CPU together


def _run_readme_lines(run: dict[str, Path], tmp_path: Path, monkeypatch, heavy: bool) -> list[str]:
    """Run the README's command lines (the heavy ones or the others) in ``tmp_path`` with tiny
    stand-ins for what a user supplies (config, data, model, images, ground truth); what the
    commands themselves create (runs/t/...) must exist where the README says. Returns the commands run."""
    import shlex

    from semask.models.pretrained import is_pretrained_name

    monkeypatch.chdir(tmp_path)
    shutil.copytree(run["work"] / "model", tmp_path / "model_dir")
    if heavy:  # a SegFormer (all-MLP head) for the Hugging Face export line
        semask.create_model("mit_b0", num_classes=3, decode_head="nvlabs", **MIT_TINY).save_pretrained(
            tmp_path / "segformer_dir"
        )
    for i, name in enumerate(("img1", "img2")):
        Image.open(run["data"] / "images" / "val" / f"{i:05d}.png").save(tmp_path / f"{name}.jpg", quality=95)
    (tmp_path / "gt_dir").mkdir()
    for i, name in enumerate(("img1", "img2")):  # ADE-style ground truth: 0 = ignore, k + 1 = class k
        label = np.array(Image.open(run["data"] / "labels" / "val" / f"{i:05d}.png")).astype(np.uint8) + 1
        Image.fromarray(label).save(tmp_path / "gt_dir" / f"{name}.png")
    stand_ins = {
        "semask_swin_t_fpn_ade20k": str(run["config"]),
        "CONFIG": str(run["config"]),
        "data.root=/data/ADEChallengeData2016": f"data.root={run['data']}",
        "512x512": "64x64",
    }
    ran = []
    for line in _readme_command_lines():
        tokens = shlex.split(line.replace("[", "").replace("]", ""))  # optional parts included
        if any(is_pretrained_name(tok) for tok in tokens):
            continue  # registered weights are downloaded (network, 100+ MB): tests/test_download.py covers them
        if (tokens[1] in HEAVY_COMMANDS) != heavy:
            continue
        argv = [stand_ins.get(tok, tok) for tok in tokens[1:] if tok != "--dynamic"]  # static export: faster
        if argv[0] == "train":
            argv.append("--no-progress")
        if argv[0] == "eval":
            argv += ["--num-workers", "0"]
        assert main(argv) == 0, line
        ran.append(argv[0])
    return ran


def test_readme_command_lines_run(run: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    ran = _run_readme_lines(run, tmp_path, monkeypatch, heavy=False)
    assert {"train", "eval", "predict", "score"} <= set(ran)
    assert ran.count("train") == 2  # a run and its --resume
    assert (tmp_path / "runs" / "t" / "checkpoints" / "latest.pth").exists()
    assert sorted(p.name for p in (tmp_path / "preds" / "labels").iterdir()) == ["img1.png", "img2.png"]


@pytest.mark.slow
def test_readme_heavy_command_lines_run(run: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    ran = _run_readme_lines(run, tmp_path, monkeypatch, heavy=True)
    assert sorted(ran) == ["export", "export", "info"]
    assert (tmp_path / "model_dir.onnx").is_file()
    assert {p.name for p in (tmp_path / "hf_dir").iterdir()} >= {"config.json", "model.safetensors"}
