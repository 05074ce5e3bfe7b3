"""Issue 26: predict at scale: ranks of torchrun share the inputs, a killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, randomize
from PIL import Image

import semask
from semask.cli import main
from semask.engine.predict import DONE_DIR, LOCK_NAME, OUTPUT_KINDS, predict_folder

pytestmark = pytest.mark.usefixtures("one_thread")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SEMASK_MALLOC": "0"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = randomize(semask.create_model("semask_swin_t_fpn", num_classes=5, **TINY))
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def _images(folder: Path, count: int, size: tuple[int, int] = (40, 56), unreadable: str | None = None) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        h, w = size[0] + 8 * (i % 3), size[1] - 8 * (i % 2)  # a few sizes
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    if unreadable is not None:
        data = (folder / "img00.png").read_bytes()
        (folder / unreadable).write_bytes(data[: len(data) // 2])  # a truncated PNG
    return folder


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output PNG (relative path -> bytes)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes() for kind in OUTPUT_KINDS for p in sorted((out / kind).iterdir())
    }


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every output: a rewritten file (atomic rename) gets a new inode."""
    return {
        p.relative_to(out).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for kind in OUTPUT_KINDS
        for p in (out / kind).iterdir()
    }


def _torchrun(*args: str, nproc: int = 2, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run([*cmd, "-m", "semask.cli", *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def test_two_gloo_ranks_write_what_one_process_writes(model_dir: Path, tmp_path: Path, capsys) -> None:
    """2 ranks on a CPU, resuming a folder that holds two complete images, one input unreadable:
    byte-identical outputs to one process, each rank predicting every second remaining image,
    the complete ones untouched, and one summary (with the unreadable file's name) from rank 0."""
    images = _images(tmp_path / "in", 7, unreadable="img03.png")  # replaces img03 by a truncated file
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    assert main(["predict", str(model_dir), str(images), "--out", str(single), "--scale", "0"]) == 1
    assert "1 of 7 image(s) could not be read" in capsys.readouterr().err
    assert (
        main(["predict", str(model_dir), str(images / "img00.png"), str(images / "img05.png"), "--out", str(ranks)])
        == 0
    )
    before = _stamps(ranks)
    done = _torchrun("predict", str(model_dir), str(images), "--out", str(ranks), "--skip-existing")
    assert done.returncode != 0, done.stdout[-3000:] + done.stderr[-3000:]  # the unreadable image fails the run
    assert _outputs(ranks) == _outputs(single) and len(_outputs(single)) == 3 * 6
    assert {k: v for k, v in _stamps(ranks).items() if k in before} == before  # complete images not rewritten
    assert done.stdout.count("6 image(s): class ids in") == 1  # rank 0 reports, for all ranks
    message = f"1 of 7 image(s) could not be read or segmented and were skipped (4 predicted into {ranks}, 2 skipped as"
    assert done.stderr.count(message) == 1, done.stderr[-3000:]
    assert done.stderr.count(f"cannot read image {images / 'img03.png'}") == 1
    todo = ["img01", "img02", "img03", "img04", "img06"]  # sorted, less the complete ones; img03 fails on rank 0
    for rank in (0, 1):
        mine = sorted(p.stem for p in (ranks / DONE_DIR).glob("*.json") if json.loads(p.read_text())["rank"] == rank)
        assert mine == sorted([s for s in todo[rank::2] if s != "img03"] + (["img00", "img05"] if rank == 0 else []))
    assert not (ranks / LOCK_NAME).exists()


def test_a_second_run_is_refused_by_every_rank(model_dir: Path, tmp_path: Path) -> None:
    images, out = _images(tmp_path / "in", 2), tmp_path / "out"
    out.mkdir()
    hold = "import sys, time; from pathlib import Path; from semask.engine.predict import output_lock\n"
    hold += "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)"
    other = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=ENV, cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        assert other.stdout is not None and other.stdout.readline() == b"held\n"  # a live predict holds the folder
        done = _torchrun("predict", str(model_dir), str(images), "--out", str(out))
    finally:
        other.kill()
        other.wait()
    assert done.returncode != 0
    assert done.stderr.count(f"another semask predict is running in {out}: process {other.pid}") == 2  # each rank
    assert not any((out / "labels").glob("*.png"))


def test_a_killed_predict_resumes_where_it_stopped(model_dir: Path, tmp_path: Path, caplog) -> None:
    """SIGKILL a real ``semask predict`` once some images are complete; ``--skip-existing``
    then predicts only the others, and the folder equals that of a clean run."""
    images = _images(tmp_path / "in", 40, size=(160, 200))
    clean, out = tmp_path / "clean", tmp_path / "resumed"
    cmd = [sys.executable, "-m", "semask.cli", "predict", str(model_dir), str(images), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((out / DONE_DIR).glob("*.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]  # killed mid-run, not finished
    complete = sorted(p.stem for p in (out / DONE_DIR).glob("*.json"))
    assert 3 <= len(complete) < 40
    assert (out / LOCK_NAME).exists()  # left by the killed process: taken over, as its process is gone
    before = {k: v for k, v in _stamps(out).items() if Path(k).stem in complete}
    with caplog.at_level("INFO", logger="semask"):
        assert main(["predict", str(model_dir), str(images), "--out", str(out), "--skip-existing"]) == 0
    assert f"{40 - len(complete)} predicted into {out}, {len(complete)} skipped as complete" in caplog.text
    assert {k: v for k, v in _stamps(out).items() if k in before} == before  # not recomputed
    assert main(["predict", str(model_dir), str(images), "--out", str(clean)]) == 0
    assert _outputs(out) == _outputs(clean) and len(_outputs(clean)) == 3 * 40
    assert not [p for p in out.rglob("*.tmp")]  # partial writes of the killed run are gone


def test_partial_or_foreign_outputs_never_count_as_complete(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """After a complete run, a second run with other settings completes img00 and stops between
    img01's label PNG and its overlay. ``skip_existing`` with the first settings then predicts
    again img00 (made with other settings), img01 (partial), img02 (its input changed) and img03
    (an output deleted); only img04 is skipped, and the folder equals a clean run's."""
    from semask.data import visualize

    model = semask.load(model_dir)
    images, out = _images(tmp_path / "in", 5), tmp_path / "out"
    first = predict_folder(model, [images], out, progress=False, scale=None)
    assert [e["image"].name for e in first] == [f"img{i:02d}.png" for i in range(5)]
    real_save_png = visualize.save_png

    def stopped_at_the_overlay_of_img01(path, array):
        if Path(path).parent.name == "overlay" and Path(path).stem == "img01":
            raise KeyboardInterrupt  # Ctrl-C (or a kill) between the label PNG and the overlay
        return real_save_png(path, array)

    monkeypatch.setattr(visualize, "save_png", stopped_at_the_overlay_of_img01)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(model, [images], out, progress=False, scale=(24, 24))
    monkeypatch.undo()
    assert not (out / DONE_DIR / "img01.json").exists() and (out / "labels" / "img01.png").exists()
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(images / "img02.png")  # the input changed
    (out / "color" / "img03.png").unlink()  # an output was deleted
    before = _stamps(out)
    again = predict_folder(model, [images], out, progress=False, scale=None, skip_existing=True)
    after = _stamps(out)
    assert sorted({Path(k).stem for k in after if after[k] != before.get(k)}) == ["img00", "img01", "img02", "img03"]
    assert [e["image"].name for e in again] == [f"img{i:02d}.png" for i in range(5)]  # the skipped one included
    clean = tmp_path / "clean"
    predict_folder(model, [images], clean, progress=False, scale=None)
    assert _outputs(out) == _outputs(clean)


def test_extra_outputs_are_part_of_a_complete_image(model_dir: Path, tmp_path: Path) -> None:
    """Extra kinds (``--save-priors``) count: a missing extra file, or a run that asks for
    another set of kinds, predicts the image again."""
    model = semask.load(model_dir)
    images, out = _images(tmp_path / "in", 3), tmp_path / "out"
    calls: list[str] = []

    def notes(image: Path, folder: Path) -> list[Path]:
        calls.append(image.stem)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image.stem}_a.txt").write_text("a")
        (folder / f"{image.stem}_b.txt").write_text("b")
        return [folder / f"{image.stem}_a.txt", folder / f"{image.stem}_b.txt"]

    options = dict(progress=False, scale=None, skip_existing=True)
    predict_folder(model, [images], out, extra_outputs={"notes": notes}, **options)
    assert calls == ["img00", "img01", "img02"]
    predict_folder(model, [images], out, extra_outputs={"notes": notes}, **options)
    assert calls == ["img00", "img01", "img02"]  # all complete: nothing predicted again
    (out / "notes" / "img01_b.txt").unlink()
    predict_folder(model, [images], out, extra_outputs={"notes": notes}, **options)
    assert calls[3:] == ["img01"]
    before = _stamps(out)
    predict_folder(model, [images], out, **options)  # no extra kinds: another run, every image again
    assert all(before[k] != v for k, v in _stamps(out).items())


@pytest.mark.parametrize(
    "setting, message", [({"window_batch": 0}, "window_batch must be >= 1"), ({"sizes": [32]}, "sizes needs")]
)
def test_a_bad_setting_is_one_error_before_any_image(model_dir: Path, tmp_path: Path, setting, message) -> None:
    """Review finding 1: a setting that fits no image was reported as a failure of every image,
    after each image's completion record had been deleted."""
    from semask.engine.predict import UnreadableImagesError

    model = semask.load(model_dir)
    images, out = _images(tmp_path / "in", 2), tmp_path / "out"
    predict_folder(model, [images], out, progress=False, scale=None)
    records = {p.name: p.read_bytes() for p in (out / DONE_DIR).iterdir()}
    before = _stamps(out)
    for skip_existing in (False, True):
        with pytest.raises(ValueError, match=message) as info:
            predict_folder(model, [images], out, progress=False, scale=None, skip_existing=skip_existing, **setting)
        assert not isinstance(info.value, UnreadableImagesError)
        assert {p.name: p.read_bytes() for p in (out / DONE_DIR).iterdir()} == records and len(records) == 2
        assert _stamps(out) == before


def test_out_of_memory_skips_the_image_and_a_model_error_stops_the_run(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Review finding 5: only an image the model cannot segment (too small for its encoder, out of
    memory) is skipped; any other error (here a bug in the model) stops the run at once."""
    from semask.engine.predict import UnreadableImagesError

    model = semask.load(model_dir)
    images, out = _images(tmp_path / "in", 3), tmp_path / "out"  # img01 is 48x48
    real = model.forward
    error: list[BaseException] = [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")]

    def forward(x, *args, **kwargs):
        if tuple(x.shape[-2:]) == (48, 48):
            raise error[0]
        return real(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(UnreadableImagesError) as info:
        predict_folder(model, [images], out, progress=False, scale=None)
    assert [(p.name, reason) for p, reason in info.value.failed] == [
        (
            "img01.png",
            f"cannot segment {images / 'img01.png'} (48x48 pixels): out of memory: CUDA out of memory. "
            "Tried to allocate 2.00 GiB",
        )
    ]
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["img00.png", "img02.png"]
    error[0] = ValueError("a bug in the model")
    with pytest.raises(ValueError, match="a bug in the model") as info:
        predict_folder(model, [images], tmp_path / "out2", progress=False, scale=None)
    assert not isinstance(info.value, UnreadableImagesError)
    assert sorted(p.name for p in (tmp_path / "out2" / "labels").iterdir()) == ["img00.png"]  # stopped at once


def test_a_malformed_completion_record_counts_as_incomplete(model_dir: Path, tmp_path: Path) -> None:
    """Review finding 4: a record without a valid ``files`` list crashed ``skip_existing``."""
    model = semask.load(model_dir)
    images, out = _images(tmp_path / "in", 4), tmp_path / "out"
    predict_folder(model, [images], out, progress=False, scale=None)
    changes = {
        "img00": lambda r: r.pop("files"),
        "img01": lambda r: r.update(files=7),
        "img02": lambda r: r.update(files=[3]),
    }
    for stem, change in changes.items():
        path = out / DONE_DIR / f"{stem}.json"
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))
    before = _stamps(out)
    again = predict_folder(model, [images], out, progress=False, scale=None, skip_existing=True)
    after = _stamps(out)
    assert sorted({Path(k).stem for k in after if after[k] != before[k]}) == ["img00", "img01", "img02"]
    assert len(again) == 4


def test_outputs_come_back_in_the_order_of_the_inputs(model_dir: Path, tmp_path: Path) -> None:
    """Review finding 17: files named one by one keep their order (a folder's files are sorted)."""
    model = semask.load(model_dir)
    images = _images(tmp_path / "in", 3)
    order = [images / "img02.png", images / "img00.png", images / "img01.png"]
    written = predict_folder(model, order, tmp_path / "out", progress=False, scale=None)
    assert [e["image"] for e in written] == order
