"""Tests for semask.engine.metrics against hand-computed numbers and a brute-force loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from semask.engine.metrics import IoUAccumulator, format_table, score_folders

# Two 3x3 images, K = 4 (class 3 never appears). 255 = ignore; 7 is an out-of-range prediction.
LABEL_A = np.array([[0, 0, 1], [1, 1, 2], [255, 2, 2]])
PRED_A = np.array([[0, 1, 1], [1, 1, 2], [0, 2, 7]])
LABEL_B = np.array([[0, 0, 0], [1, 255, 2], [2, 2, 2]])
PRED_B = np.array([[0, 0, 2], [1, 1, 2], [2, 0, 2]])
# By hand, over the 16 non-ignored pixels:
#   intersection  c0: 1 + 2 = 3   c1: 3 + 1 = 4   c2: 2 + 3 = 5
#   label area    c0: 2 + 3 = 5   c1: 3 + 1 = 4   c2: 3 + 4 = 7
#   pred area     c0: 1 + 3 = 4   c1: 4 + 1 = 5   c2: 2 + 4 = 6   (the 7 is dropped)
#   union         c0: 6           c1: 5           c2: 8           c3: 0 -> NaN
HAND = {
    "IoU": [50.0, 80.0, 62.5, math.nan],
    "Acc": [60.0, 100.0, 500 / 7, math.nan],
    "mIoU": (50.0 + 80.0 + 62.5) / 3,
    "mAcc": (60.0 + 100.0 + 500 / 7) / 3,
    "aAcc": 75.0,  # 12 / 16
}


def _assert_result(result, expected):
    for key in ("aAcc", "mIoU", "mAcc"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    for key in ("IoU", "Acc"):
        np.testing.assert_allclose(result[key], expected[key], atol=1e-9, equal_nan=True)


def test_hand_computed_example():
    acc = IoUAccumulator(4)
    acc.update(PRED_A, LABEL_A)
    acc.update(PRED_B, LABEL_B)
    np.testing.assert_array_equal(acc.counts, [[3, 4, 5, 0], [4, 5, 6, 0], [5, 4, 7, 0]])
    _assert_result(acc.compute(), HAND)


def test_torch_numpy_and_batched_updates_agree():
    acc = IoUAccumulator(4)
    acc.update(torch.from_numpy(np.stack([PRED_A, PRED_B])), torch.from_numpy(np.stack([LABEL_A, LABEL_B])))
    _assert_result(acc.compute(), HAND)
    mixed = IoUAccumulator(4)
    mixed.update(torch.from_numpy(PRED_A).to(torch.uint8), LABEL_A.astype(np.uint8))
    mixed.update(PRED_B.astype(np.int32), torch.from_numpy(LABEL_B))
    np.testing.assert_array_equal(mixed.counts, acc.counts)


def test_predicted_but_unlabelled_class_scores_zero_iou():
    acc = IoUAccumulator(3)
    acc.update(np.array([[0, 1]]), np.array([[0, 0]]))
    result = acc.compute()
    # c0: I 1, P 1, L 2 -> IoU 50, Acc 50; c1: I 0, P 1, L 0 -> IoU 0, Acc NaN; c2 absent -> NaN.
    np.testing.assert_allclose(result["IoU"], [50.0, 0.0, math.nan], equal_nan=True)
    assert result["mIoU"] == pytest.approx(25.0)
    assert result["mAcc"] == pytest.approx(50.0)
    assert result["aAcc"] == pytest.approx(50.0)


def _brute_force(preds, labels, k, ignore=255):
    inter, pred_area, label_area = [0] * k, [0] * k, [0] * k
    for pred, label in zip(preds, labels):
        for p, t in zip(pred.ravel().tolist(), label.ravel().tolist()):
            if t == ignore:
                continue
            label_area[t] += 1
            if 0 <= p < k:
                pred_area[p] += 1
                if p == t:
                    inter[t] += 1
    iou, acc = [], []
    for c in range(k):
        union = pred_area[c] + label_area[c] - inter[c]
        iou.append(100.0 * inter[c] / union if union else math.nan)
        acc.append(100.0 * inter[c] / label_area[c] if label_area[c] else math.nan)

    def nanmean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return sum(xs) / len(xs)

    return {
        "IoU": iou,
        "Acc": acc,
        "mIoU": nanmean(iou),
        "mAcc": nanmean(acc),
        "aAcc": 100.0 * sum(inter) / sum(label_area),
    }


def test_matches_brute_force_loop_on_random_data():
    rng = np.random.default_rng(0)
    k = 7
    preds, labels = [], []
    for _ in range(5):
        h, w = rng.integers(5, 20, 2)
        label = rng.integers(0, k - 1, (h, w))  # class k-1 never labelled
        label[rng.random((h, w)) < 0.2] = 255
        pred = np.where(rng.random((h, w)) < 0.5, label, rng.integers(-2, k + 3, (h, w)))
        pred[label == 255] = rng.integers(0, k, int((label == 255).sum()))
        preds.append(pred)
        labels.append(label)
    acc = IoUAccumulator(k)
    for pred, label in zip(preds, labels):
        acc.update(pred, label)
    _assert_result(acc.compute(), _brute_force(preds, labels, k))


def test_add_counts_merges_accumulators_and_errors():
    a, b, total = IoUAccumulator(4), IoUAccumulator(4), IoUAccumulator(4)
    a.update(PRED_A, LABEL_A)
    b.update(PRED_B, LABEL_B)
    total.add_counts(torch.from_numpy(a.counts))
    total.add_counts(b.counts)
    _assert_result(total.compute(), HAND)
    with pytest.raises(ValueError, match="label ids must be 0..3 or 255"):
        a.update(np.array([[0, 4]]), np.array([[0, 4]]))
    with pytest.raises(ValueError, match="does not match label shape"):
        a.update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="counts must have shape"):
        a.add_counts(np.zeros((3, 5)))
    empty = IoUAccumulator(2).compute()
    assert math.isnan(empty["mIoU"]) and math.isnan(empty["aAcc"])


def test_format_table_markdown():
    acc = IoUAccumulator(4)
    acc.update(PRED_A, LABEL_A)
    acc.update(PRED_B, LABEL_B)
    table = format_table(acc.compute(), ["wall", "sky", "tree", "boat"])
    lines = table.splitlines()
    assert lines[0].split("|")[1:4] == [" Class ", "    IoU ", "    Acc "]
    assert "| sky   |  80.00 | 100.00 |" in lines
    assert "| boat  |    nan |    nan |" in lines
    assert lines[-1] == "|  75.00 |  64.17 |  77.14 |"
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        format_table(acc.compute(), ["a", "b", "c"])


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_score_folders_with_reduce_zero_label(tmp_path):
    # Ground truth in ADE20K file convention: 0 = unlabelled, class c stored as c + 1.
    for name, pred, label in (("a", PRED_A, LABEL_A), ("b", PRED_B, LABEL_B)):
        raw = np.where(label == 255, 0, label + 1)
        _save(tmp_path / "gt" / f"{name}.png", raw)
        _save(tmp_path / "pred" / f"{name}.png", np.where(pred == 7, 200, pred))  # 200: out of range
    _assert_result(score_folders(tmp_path / "pred", tmp_path / "gt", 4, reduce_zero_label=True), HAND)


def test_score_folders_suffixes_and_errors(tmp_path):
    _save(tmp_path / "gt" / "city" / "x_gtFine_labelTrainIds.png", LABEL_A.clip(0, 255))
    _save(tmp_path / "pred" / "x_leftImg8bit.png", PRED_A.clip(0, 3))
    result = score_folders(
        tmp_path / "pred", tmp_path / "gt", 4, pred_suffix="_leftImg8bit.png", gt_suffix="_gtFine_labelTrainIds.png"
    )
    assert result["aAcc"] == pytest.approx(100 * 6 / 8)  # 6 of A's 8 valid pixels right
    _save(tmp_path / "gt2" / "a.png", LABEL_A)
    _save(tmp_path / "gt2" / "b.png", LABEL_B)
    _save(tmp_path / "pred2" / "a.png", np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"1 ground truth\(s\) without a prediction, e.g. .*b.png"):
        score_folders(tmp_path / "pred2", tmp_path / "gt2", 4)
    _save(tmp_path / "pred2" / "b.png", PRED_B)
    with pytest.raises(ValueError, match=r"prediction .*a.png is 4x3 but ground truth .*a.png is 3x3"):
        score_folders(tmp_path / "pred2", tmp_path / "gt2", 4)
    _save(tmp_path / "pred2" / "c.png", PRED_B)
    with pytest.raises(ValueError, match=r"1 prediction\(s\) without a ground truth, e.g. .*c.png"):
        score_folders(tmp_path / "pred2", tmp_path / "gt2", 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score_folders(tmp_path / "nope", tmp_path / "gt2", 4)
    (tmp_path / "pred2" / "c.png").unlink()
    _save(tmp_path / "pred2" / "a.png", PRED_A.clip(0, 3))
    with pytest.raises(ValueError, match=r"gt2.*a.png: label ids must be 0..1 or 255"):
        score_folders(tmp_path / "pred2", tmp_path / "gt2", 2)


def test_public_metrics_module_is_the_one_eval_uses():
    import semask
    from semask.engine import metrics as engine_metrics

    for name in semask.metrics.__all__:  # the same objects semask eval, the trainer and score use
        assert getattr(semask.metrics, name) is getattr(engine_metrics, name), name
    # image A alone, by hand: c0 I=1 U=2, c1 I=3 U=4, c2 I=2 U=3 (the 7 and the ignored pixel dropped)
    result = semask.metrics.compute_metrics(PRED_A, LABEL_A, 4)
    assert result["IoU"][:3] == pytest.approx([50.0, 75.0, 200 / 3], abs=1e-9) and math.isnan(result["IoU"][3])
    matrix = semask.metrics.confusion_matrix(torch.as_tensor(PRED_A), torch.as_tensor(LABEL_A), 4)
    np.testing.assert_array_equal(matrix, [[1, 1, 0, 0], [0, 3, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
    assert result["confusion_matrix"] == matrix.tolist()
