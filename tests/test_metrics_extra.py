"""mDice / mFscore / mPrecision / mRecall and the confusion matrix against hand computations."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semask.engine.metrics import (
    IoUAccumulator,
    confusion_figure,
    format_table,
    normalize_confusion_rows,
    plot_confusion_matrix,
)

# K = 3; the last pixel is ignored. Valid (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0).
LABEL = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 2]], np.int64)


def test_extra_metrics_match_a_hand_computation() -> None:
    acc = IoUAccumulator(3)
    acc.update(PRED, LABEL)
    r = acc.compute()
    # intersections I = (1, 2, 0), predicted P = (2, 3, 0), labelled L = (2, 2, 1)
    assert r["IoU"] == pytest.approx([100 / 3, 200 / 3, 0.0])
    assert r["Dice"] == pytest.approx([50.0, 80.0, 0.0])  # 2I / (P + L)
    assert r["Precision"][:2] == pytest.approx([50.0, 200 / 3]) and math.isnan(r["Precision"][2])  # I / P
    assert r["Recall"] == pytest.approx([50.0, 100.0, 0.0])  # I / L
    assert r["Fscore"][:2] == pytest.approx([50.0, 80.0]) and math.isnan(r["Fscore"][2])  # 2PR / (P + R)
    assert r["mDice"] == pytest.approx(130 / 3)
    assert r["mPrecision"] == pytest.approx((50 + 200 / 3) / 2)  # NaN class skipped, as mmseg's nanmean
    assert r["mRecall"] == pytest.approx(50.0)
    assert r["mFscore"] == pytest.approx(65.0)
    assert r["aAcc"] == pytest.approx(60.0)
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    table = format_table(r, ["a", "b", "c"])
    assert "mDice" in table and "43.33" in table and "65.00" in table


def test_torch_and_numpy_inputs_and_a_custom_ignore_index_agree() -> None:
    a = IoUAccumulator(3)
    a.update(PRED, LABEL)
    b = IoUAccumulator(3, ignore_index=7)
    label7 = LABEL.copy()
    label7[label7 == 255] = 7
    b.update(torch.from_numpy(PRED), torch.from_numpy(label7.astype(np.int64)))
    assert b.compute()["confusion_matrix"] == a.compute()["confusion_matrix"]
    assert np.array_equal(a.counts, b.counts)
    # the confusion matrix and the counts describe the same pixels: diagonal = I, column sums = P, row sums = L
    m = np.array(a.confusion)
    assert np.array_equal(np.diag(m), a.counts[0])
    assert np.array_equal(m.sum(0), a.counts[1]) and np.array_equal(m.sum(1), a.counts[2])


def test_add_counts_sums_the_confusion_too() -> None:
    a, b = IoUAccumulator(3), IoUAccumulator(3)
    a.update(PRED, LABEL)
    b.add_counts(a.counts, a.confusion)
    b.add_counts(a.counts, a.confusion)
    assert b.compute()["confusion_matrix"] == [[2, 2, 0], [0, 4, 0], [2, 0, 0]]


def test_row_normalisation_and_heatmap(tmp_path: Path) -> None:
    matrix = [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert normalize_confusion_rows(matrix).tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    fig = confusion_figure(matrix, ["sea", "land", "boat"], normalize_rows=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sea", "land", "boat"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sea", "land", "boat"]
    assert ax.get_xlabel() == "prediction" and ax.get_ylabel() == "ground truth"
    assert np.allclose(ax.images[0].get_array(), normalize_confusion_rows(matrix))
    raw = plot_confusion_matrix(matrix, ["sea", "land", "boat"], tmp_path / "raw.png")
    norm = plot_confusion_matrix(matrix, ["sea", "land", "boat"], tmp_path / "norm.png", normalize_rows=True)
    with Image.open(raw) as a, Image.open(norm) as b:
        assert a.format == "PNG" and a.size == b.size
        assert not np.array_equal(np.array(a), np.array(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["norm.png", "raw.png"]  # no temp files left
    with pytest.raises(ValueError, match="2 class names"):
        plot_confusion_matrix(matrix, ["a", "b"], tmp_path / "bad.png")


class _Constant(torch.nn.Module):
    """Predicts class (x + y) % 3 at pixel (y, x): a fixed, input-independent segmentation."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(num_classes=3, mean=(0.0,) * 3, std=(1.0,) * 3)

    def forward(self, x: torch.Tensor):
        from semask.models.outputs import SegmentationOutput

        h, w = x.shape[-2:]
        ids = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 3
        logits = torch.nn.functional.one_hot(ids, 3).permute(2, 0, 1)[None].float().expand(x.shape[0], -1, -1, -1)
        return SegmentationOutput(logits=logits + self.w)


def _dataset(root: Path):
    from semask.data import FolderDataset

    rng = np.random.default_rng(0)
    for split in ("val",):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.png")
            label = rng.integers(0, 3, (8, 10)).astype(np.uint8)
            label[0, :3] = 255
            Image.fromarray(label).save(root / "labels" / split / f"{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return FolderDataset(root, "val")


_DDP_SCRIPT = """
import json, sys
import torch
sys.path.insert(0, {tests!r})
from test_metrics_extra import _Constant
from semask.data import FolderDataset
from semask.config import EvalConfig
from semask.engine.distributed import init_distributed, cleanup_distributed
from semask.engine.evaluate import evaluate
info = init_distributed("cpu")
ds = FolderDataset({root!r}, "val")
r = evaluate(_Constant(), ds, EvalConfig(scale=None), info=info, progress=False)
if info.is_main:
    open({out!r}, "w").write(json.dumps(r["confusion_matrix"]))
cleanup_distributed()
"""


@pytest.mark.slow
def test_ddp_evaluation_sums_the_confusion_matrix_over_ranks(tmp_path: Path) -> None:
    from semask.config import EvalConfig
    from semask.engine.evaluate import evaluate

    ds = _dataset(tmp_path / "data")
    expected = evaluate(_Constant(), ds, EvalConfig(scale=None), progress=False)["confusion_matrix"]
    assert sum(map(sum, expected)) == 5 * (80 - 3)  # every non-ignored pixel once
    script = tmp_path / "ddp_eval.py"
    out = tmp_path / "confusion.json"
    tests_dir = str(Path(__file__).parent)
    script.write_text(_DDP_SCRIPT.format(tests=tests_dir, root=str(tmp_path / "data"), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(out.read_text()) == expected


def test_evaluate_writes_the_confusion_matrix_as_json_and_png(tmp_path: Path) -> None:
    from semask.config import EvalConfig
    from semask.engine.evaluate import evaluate

    ds = _dataset(tmp_path / "data")
    r = evaluate(
        _Constant(),
        ds,
        EvalConfig(scale=None),
        progress=False,
        out_json=tmp_path / "eval.json",
        confusion_png=tmp_path / "cm.png",
        normalize_confusion=True,
    )
    # hand count: the predicted id at (y, x) is (x + y) % 3; compare with each label file
    expected = np.zeros((3, 3), np.int64)
    for i in range(5):
        label = np.array(Image.open(tmp_path / "data" / "labels" / "val" / f"{i}.png"))
        pred = (np.arange(8)[:, None] + np.arange(10)[None, :]) % 3
        for g, p in zip(label.ravel(), pred.ravel()):
            if g != 255:
                expected[g, p] += 1
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["confusion_matrix"] == expected.tolist() == r["confusion_matrix"]
    assert saved["mDice"] == pytest.approx(r["mDice"]) and "mFscore" in saved
    with Image.open(tmp_path / "cm.png") as img:
        assert img.format == "PNG"
