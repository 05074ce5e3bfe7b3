"""The ``semask`` command line end to end on a tiny synthetic dataset (in-process ``main(argv)``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import tiny_config

import semask
from semask.cli import main
from semask.config import dump_config
from semask.data import colorize, make_context_dataset
from semask.engine.predict import load_model_any, predict


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy 2-core box
    two spinning OpenMP threads per process slow training down several times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short training run through ``semask train`` shared by the tests below (48x72 images,
    tested resized to fit 64x64: the protocol is not the original size)."""
    root = tmp_path_factory.mktemp("cli")
    data = make_context_dataset(root / "data", num_train=8, num_val=3, size=(48, 72), seed=1)
    config = dump_config(
        tiny_config(data, "schedule.iters=4", "train.eval_interval=2", "train.ckpt_interval=2"), root / "tiny.yaml"
    )
    work = root / "work"
    assert main(["train", str(config), "--work-dir", str(work), "--no-progress"]) == 0
    return {"root": root, "data": data, "config": config, "work": work}


def test_train_writes_the_run_folder_and_resume_extends_it(
    trained: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    work = trained["work"]
    for name in (
        "config.yaml",
        "train.log",
        "metrics.jsonl",
        "summary.json",
        "loss.png",
        "miou.png",
        "model/model.safetensors",
        "model/config.json",
        "checkpoints/best.pth",
        "checkpoints/latest.pth",
    ):
        assert (work / name).exists(), name
    # bare --resume followed by an override: continue the same run to 6 iterations
    resumed = trained["root"] / "resumed"
    assert main(["train", str(trained["config"]), "--work-dir", str(resumed), "--no-progress"]) == 0
    assert (
        main(
            [
                "train",
                str(trained["config"]),
                "--work-dir",
                str(resumed),
                "--no-progress",
                "--resume",
                "schedule.iters=6",
            ]
        )
        == 0
    )
    iters = [
        json.loads(line)["iter"]
        for line in (resumed / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "train"
    ]
    assert iters == [1, 2, 3, 4, 5, 6]
    assert "resuming from" in (resumed / "train.log").read_text()


def test_one_model_gives_one_answer_everywhere(trained: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    """The trainer's final val record, ``semask eval`` of the final checkpoint, ``semask eval W/model``,
    ``semask predict W/model`` + ``semask score`` agree exactly, and ``semask.predict(semask.load(W/model),
    image)`` equals the CLI's PNG: the model records its test protocol (issue 24: 38.40 / 38.40 / 38.74 /
    38.06 before, as ``eval W/model`` used the default resize and ``predict`` the original size)."""
    root, work, data = trained["root"], trained["work"], trained["data"]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in records if r["type"] == "val"][-1]
    assert final["iter"] == 4 and len([r for r in records if r["type"] == "val"]) == 2  # an earlier eval too
    protocol = json.loads((work / "model" / "config.json").read_text())["protocol"]
    assert protocol["mode"] == "whole" and protocol["scale"] == [64, 64]

    def miou(name: str) -> float:
        return json.loads((root / name).read_text())["mIoU"]

    def run(*argv: str) -> None:
        assert main(list(argv)) == 0, argv

    run("eval", str(work / "checkpoints" / "latest.pth"), "--out", str(root / "ckpt.json"), "--num-workers", "0")
    model_dir = str(work / "model")
    run("eval", model_dir, "--data-type", "folder", "--data-root", str(data), "--num-workers", "0",
        "--pred-dir", str(root / "evalpred"), "--out", str(root / "model.json"))  # fmt: skip
    images = data / "images" / "val"
    run("predict", model_dir, str(images), "--out", str(root / "out"), "--alpha", "0.6")
    run("score", str(root / "out" / "labels"), str(data / "labels" / "val"), "--num-classes", "5",
        "--out", str(root / "score.json"))  # fmt: skip
    assert final["mIoU"] == miou("ckpt.json") == miou("model.json") == miou("score.json")
    assert json.loads((root / "score.json").read_text())["IoU"] == pytest.approx(
        json.loads((root / "model.json").read_text())["IoU"], nan_ok=True, rel=0, abs=0
    )
    model = semask.load(work / "model")
    for image in sorted(images.iterdir()):
        ids = np.array(Image.open(root / "out" / "labels" / image.name))
        assert ids.shape == (48, 72)
        assert np.array_equal(ids, np.array(Image.open(root / "evalpred" / image.name)))
        assert np.array_equal(predict(model, image), ids)
        overlay = np.array(Image.open(root / "out" / "overlay" / image.name))
        assert overlay.shape == np.array(Image.open(image)).shape
        assert np.array_equal(
            np.array(Image.open(root / "out" / "color" / image.name)), colorize(ids, model.config.palette)
        )
    # the protocol is what decides: the original size gives other ids (so the checks above can fail)
    first = sorted(images.iterdir())[0]
    native = predict(model, first, scale=None)
    assert not np.array_equal(native, predict(model, first))
    run("predict", model_dir, str(first), "--out", str(root / "native"), "--scale", "0")
    assert np.array_equal(np.array(Image.open(root / "native" / "labels" / first.name)), native)


def test_a_checkpoint_without_a_recorded_protocol_uses_its_config(trained: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(trained["work"] / "checkpoints" / "latest.pth", weights_only=False)
    assert state["model_config"].pop("protocol") == state["config"]["eval"]
    torch.save(state, tmp_path / "old.pth")  # as written before models recorded their protocol
    model, run = load_model_any(tmp_path / "old.pth")
    assert model.config.protocol == run.eval.to_dict() == state["config"]["eval"]


def test_eval_predict_and_score_agree(trained: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root, work = trained["root"], trained["work"]
    summary = json.loads((work / "summary.json").read_text())

    # a training checkpoint carries its data and protocol: eval needs nothing else
    assert (
        main(["eval", str(work / "checkpoints" / "best.pth"), "--out", str(root / "best.json"), "--num-workers", "0"])
        == 0
    )
    best = json.loads((root / "best.json").read_text())
    assert best["mIoU"] == pytest.approx(summary["best"]["value"], abs=1e-9)
    assert "| sea" in capsys.readouterr().out

    # config + exported model, saving predictions, then score them against the label files
    assert (
        main(
            [
                "eval",
                str(trained["config"]),
                "--checkpoint",
                str(work / "model"),
                "--pred-dir",
                str(root / "pred"),
                "--out",
                str(root / "final.json"),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    final = json.loads((root / "final.json").read_text())
    assert final["mIoU"] == pytest.approx(summary["metrics"]["mIoU"], abs=1e-9)

    # the Python API takes a path, a PIL image or an array and gives the same ids
    model = semask.load(work / "model")
    first = sorted((trained["data"] / "images" / "val").iterdir())[0]
    ids = np.array(Image.open(root / "pred" / first.name))
    for image in (first, Image.open(first), np.array(Image.open(first).convert("RGB"))):
        assert np.array_equal(predict(model, image), ids)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB or \(H, W\) grey uint8 array, got float32"):
        predict(model, np.zeros((8, 8), np.float32))

    # multi-scale + flip runs and changes the protocol recorded in the JSON
    assert (
        main(
            [
                "eval",
                str(work / "checkpoints" / "best.pth"),
                "--aug-test",
                "--out",
                str(root / "ms.json"),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    protocol = json.loads((root / "ms.json").read_text())["protocol"]
    assert protocol["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and protocol["flip"] is True


def test_eval_of_a_work_dir_tests_and_names_its_final_checkpoint(
    trained: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """The official numbers are the final iteration's: eval of a work dir (or its config.yaml) takes
    that checkpoint and names it, on the console and in the JSON; best.pth is named as not final."""
    root, work = trained["root"], trained["work"]
    summary = json.loads((work / "summary.json").read_text())
    final = str((work / "checkpoints" / "iter_00000004.pth").resolve())
    for target in (work, work / "config.yaml"):
        assert main(["eval", str(target), "--out", str(root / "dir.json"), "--num-workers", "0"]) == 0
        out = capsys.readouterr().out
        assert f"checkpoint: {final} (iteration 4 of 4: the final weights" in out
        result = json.loads((root / "dir.json").read_text())
        assert result["checkpoint"] == {"path": final, "iteration": 4, "final": True}
        assert result["mIoU"] == pytest.approx(summary["metrics"]["mIoU"], abs=1e-9)
    assert (
        main(["eval", str(work / "checkpoints" / "best.pth"), "--out", str(root / "b.json"), "--num-workers", "0"]) == 0
    )
    best = json.loads((root / "b.json").read_text())["checkpoint"]
    assert best["iteration"] == summary["best"]["iteration"] and best["final"] == (best["iteration"] == 4)
    assert best["path"] == str((work / "checkpoints" / "best.pth").resolve())


def test_user_errors_are_one_line_messages(trained: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(trained["config"]), "train.batch_sise=2"]) == 1
    assert "train.batch_sise" in capsys.readouterr().err
    assert main(["eval", str(trained["config"])]) == 1
    assert "needs --checkpoint" in capsys.readouterr().err
    image = trained["data"] / "images" / "val" / "00000.png"
    assert main(["predict", str(trained["root"] / "no_model"), str(image), "--out", "o"]) == 1
    assert "no_model is neither a registered name nor an existing file or folder" in capsys.readouterr().err
    assert main(["score", str(trained["root"] / "nothing"), str(trained["data"]), "--num-classes", "5"]) == 1
    assert "nothing does not exist" in capsys.readouterr().err


def test_info_reports_the_official_parameter_count(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "semask_swin_t_fpn", "--num-classes", "150", "--size", "64x64"]) == 0
    assert "34,655,748" in capsys.readouterr().out  # spec section 1, SeMask-T FPN, K=150


def test_export_onnx(trained: dict[str, Path]) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    out = trained["root"] / "model.onnx"
    assert (
        main(["export", str(trained["work"] / "model"), "--format", "onnx", "--size", "64x64", "--out", str(out)]) == 0
    )
    session = onnxruntime.InferenceSession(str(out))
    x = np.zeros((1, 3, 64, 64), np.float32)
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert logits.shape == (1, 5, 64, 64)


def test_demo_quick(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "val mIoU" in out and str(tmp_path / "demo" / "REPORT.md") in out
    report = (tmp_path / "demo" / "REPORT.md").read_text()
    assert "val mIoU / mAcc / aAcc" in report and "![loss](work/loss.png)" in report
    metrics = json.loads((tmp_path / "demo" / "eval.json").read_text())
    assert metrics["num_images"] == 6
    assert metrics["mIoU"] == pytest.approx(float(np.nanmean(np.array(metrics["IoU"], dtype=float))))
    assert f"{metrics['mIoU']:.2f}" in report  # the report shows the evaluated number
    assert len(list((tmp_path / "demo" / "predictions" / "overlay").glob("*.png"))) == 6
