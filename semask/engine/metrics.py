"""mIoU, mAcc, aAcc, mDice, mFscore, mPrecision, mRecall as mmsegmentation computes them (spec section 7).

Per image, pixels whose label is the ignore index are dropped, then per-class intersection,
prediction and label pixel counts are added to split-wide totals (never averaged per image).
Predicted ids outside 0..K-1 are not counted (mmseg's histogram drops them). At the end
``IoU_c = I_c / (P_c + L_c - I_c)``, ``Acc_c = I_c / L_c``, ``aAcc = sum(I) / sum(L)``; mIoU and
mAcc are NaN-means, so a class absent from both predictions and labels is skipped, while a
class predicted but never labelled scores IoU 0 (its Acc is NaN). Values are percentages;
rounding to 2 decimals happens only when formatting. Also per class: ``Dice = 2I / (P + L)``,
``Precision = I / P``, ``Recall = I / L``, ``Fscore = 2PR / (P + R)`` (beta 1), NaN-averaged the
same way. A K x K confusion matrix (rows ground truth, columns prediction) is kept beside them.

Label values other than 0..K-1 and the ignore index raise an error here instead of being
dropped silently: they mean ``num_classes`` or ``reduce_zero_label`` is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.datasets import reduce_zero_label as reduce_zero_label_map


class IoUAccumulator:
    """Running per-class pixel counts over a split.

    ``counts`` is an int64 (3, K) array of [intersection, prediction, label] pixels; add
    another process's counts with :meth:`add_counts` (e.g. after an all-reduce). ``confusion``
    is the int64 (K, K) matrix of [ground truth, prediction] pixels over the same pixels.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = np.zeros((3, num_classes), np.int64)
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def reset(self) -> None:
        self.counts[:] = 0
        self.confusion[:] = 0

    def update(self, pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> None:
        """Add one image (H, W) or a batch (B, H, W) of predicted and true class ids."""
        if tuple(pred.shape) != tuple(label.shape):
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match label shape {tuple(label.shape)}")
        k = self.num_classes
        if isinstance(pred, torch.Tensor) or isinstance(label, torch.Tensor):
            pred_t = torch.as_tensor(pred).reshape(-1).long()
            label_t = torch.as_tensor(label, device=pred_t.device).reshape(-1).long()
            label_t, pred_t = self._valid(label_t, pred_t)
            parts = (label_t[pred_t == label_t], pred_t[(pred_t >= 0) & (pred_t < k)], label_t)
            areas = [torch.bincount(x, minlength=k).cpu().numpy() for x in parts]
            inside = (pred_t >= 0) & (pred_t < k)
            pairs = torch.bincount(label_t[inside] * k + pred_t[inside], minlength=k * k).cpu().numpy()
        else:
            pred_n = np.asarray(pred).reshape(-1).astype(np.int64, copy=False)
            label_n = np.asarray(label).reshape(-1).astype(np.int64, copy=False)
            label_n, pred_n = self._valid(label_n, pred_n)
            parts = (label_n[pred_n == label_n], pred_n[(pred_n >= 0) & (pred_n < k)], label_n)
            areas = [np.bincount(x, minlength=k) for x in parts]
            inside = (pred_n >= 0) & (pred_n < k)
            pairs = np.bincount(label_n[inside] * k + pred_n[inside], minlength=k * k)
        self.counts += np.stack(areas).astype(np.int64)
        self.confusion += pairs.reshape(k, k).astype(np.int64)

    def _valid(self, label: Any, pred: Any) -> tuple[Any, Any]:
        """Drop ignored pixels; reject label ids outside 0..K-1."""
        valid = label != self.ignore_index
        label, pred = label[valid], pred[valid]
        if len(label) > 0:
            low, high = int(label.min()), int(label.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"label ids must be 0..{self.num_classes - 1} or {self.ignore_index} (ignore), "
                    f"found {low}..{high}; check num_classes and reduce_zero_label"
                )
        return label, pred

    def add_counts(self, counts: np.ndarray | torch.Tensor, confusion: np.ndarray | torch.Tensor | None = None) -> None:
        """Add (3, K) counts (and a (K, K) confusion matrix) from another accumulator."""
        counts = np.asarray(torch.as_tensor(counts).cpu(), dtype=np.int64)
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts must have shape {self.counts.shape}, got {counts.shape}")
        if confusion is not None:
            confusion = np.asarray(torch.as_tensor(confusion).cpu(), dtype=np.int64)
            if confusion.shape != self.confusion.shape:
                raise ValueError(f"confusion must have shape {self.confusion.shape}, got {confusion.shape}")
            self.confusion += confusion
        self.counts += counts

    def compute(self) -> dict[str, Any]:
        """Percent metrics: ``aAcc`` and the ``m``-means (floats), per-class lists, ``confusion_matrix``.

        Means: mIoU, mAcc, mDice, mFscore, mPrecision, mRecall; per class: IoU, Acc, Dice,
        Fscore, Precision, Recall. The confusion matrix is a nested list of pixel counts.
        """
        intersect, area_pred, area_label = self.counts.astype(np.float64)
        union = area_pred + area_label - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union * 100
            acc = intersect / area_label * 100
            a_acc = intersect.sum() / area_label.sum() * 100 if area_label.sum() else float("nan")
            dice = 2 * intersect / (area_pred + area_label) * 100
            precision = intersect / area_pred * 100
            recall = acc
            fscore = 2 * precision * recall / (precision + recall)
        per_class = {"IoU": iou, "Acc": acc, "Dice": dice, "Fscore": fscore, "Precision": precision, "Recall": recall}
        result: dict[str, Any] = {"aAcc": float(a_acc)}
        result.update({f"m{name}": _nanmean(values) for name, values in per_class.items()})
        result.update({name: [float(v) for v in values] for name, values in per_class.items()})
        result["confusion_matrix"] = self.confusion.tolist()
        return result


def compute_metrics(
    pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int = 255
) -> dict[str, Any]:
    """The metrics of one image (H, W) or batch (B, H, W) of class ids: :meth:`IoUAccumulator.compute`
    of a fresh accumulator (for a whole split, :meth:`IoUAccumulator.update` per image: per-image
    means are not the split's)."""
    accumulator = IoUAccumulator(num_classes, ignore_index)
    accumulator.update(pred, label)
    return accumulator.compute()


def confusion_matrix(
    pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """(K, K) int64 pixel counts, rows ground truth, columns prediction; ignored pixels skipped."""
    accumulator = IoUAccumulator(num_classes, ignore_index)
    accumulator.update(pred, label)
    return accumulator.confusion


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _fmt(value: float) -> str:
    return "nan" if np.isnan(value) else f"{value:.2f}"


_EXTRA_KEYS = ("Dice", "Fscore", "Precision", "Recall")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], first_width: int | None = None) -> list[str]:
    """Markdown rows; a ``first_width`` column is left-aligned (class names), the rest right-aligned."""
    widths = [max(6, len(h)) for h in header]
    if first_width is not None:
        widths[0] = first_width

    def line(cells: Sequence[str]) -> str:
        out = [
            f"{c:<{w}}" if first_width is not None and i == 0 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(out) + " |"

    rule = ["-" * (w + 2) if first_width is not None and i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)]
    return [line(header), "|" + "|".join(rule) + "|"] + [line(r) for r in rows]


def format_table(result: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """Markdown, 2 decimals: per-class IoU/Acc, per-class Dice/Fscore/Precision/Recall, their
    means, and last the aAcc/mIoU/mAcc summary.

    The Dice block is left out when ``result`` lacks it (a JSON written before it existed).
    """
    iou, acc = result["IoU"], result["Acc"]
    if class_names is None:
        class_names = [str(i) for i in range(len(iou))]
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} classes")
    width = max([len("Class")] + [len(name) for name in class_names])
    lines = _table(["Class", "IoU", "Acc"], [[n, _fmt(i), _fmt(a)] for n, i, a in zip(class_names, iou, acc)], width)
    if all(k in result for k in _EXTRA_KEYS):
        rows = [[n, *(_fmt(result[k][c]) for k in _EXTRA_KEYS)] for c, n in enumerate(class_names)]
        lines += ["", *_table(["Class", *_EXTRA_KEYS], rows, width)]
        lines += ["", *_table([f"m{k}" for k in _EXTRA_KEYS], [[_fmt(result[f"m{k}"]) for k in _EXTRA_KEYS]])]
    lines += ["", *_table(["aAcc", "mIoU", "mAcc"], [[_fmt(result[k]) for k in ("aAcc", "mIoU", "mAcc")]])]
    return "\n".join(lines)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    normalize_rows: bool = False,
) -> Path:
    """Write a PNG heatmap of a (K, K) confusion matrix (rows ground truth, columns prediction).

    ``normalize_rows`` divides each row by its sum (rows with no pixels stay 0), so a cell is
    the fraction of that ground-truth class predicted as the column class. Written atomically.
    """
    fig = confusion_figure(matrix, class_names, normalize_rows)
    from ..models.io import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def normalize_confusion_rows(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall of that ground-truth class per column); empty rows stay 0."""
    values = np.asarray(matrix, dtype=np.float64)
    totals = values.sum(axis=1, keepdims=True)
    return np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)


def confusion_figure(
    matrix: Sequence[Sequence[float]] | np.ndarray, class_names: Sequence[str], normalize_rows: bool = False
) -> Any:
    """The matplotlib Figure that :func:`plot_confusion_matrix` saves (class names as tick labels)."""
    from matplotlib.figure import Figure  # the object API needs no backend / pyplot state

    values = np.asarray(matrix, dtype=np.float64)
    k = len(class_names)
    if values.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {values.shape} but there are {k} class names")
    if normalize_rows:
        values = normalize_confusion_rows(values)
    size = max(4.0, 0.35 * k + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(k), list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(k), list(class_names), fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize_rows else ""))
    if k <= 30:  # write the numbers into the cells while they stay readable
        top = values.max() if values.size else 0
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalize_rows else f"{int(values[i, j])}"
                colour = "white" if top and values[i, j] > top / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color=colour)
    fig.tight_layout()
    return fig


def _index_pngs(folder: Path, suffix: str, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob(f"*{suffix}")):
        key = path.name[: -len(suffix)]
        if key in files:
            raise ValueError(f"two {what} files map to the key {key!r}: {files[key]} and {path}")
        files[key] = path
    if not files:
        raise FileNotFoundError(f"no {what} files ending in {suffix!r} under {folder}")
    return files


def _read_ids(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode not in ("L", "P"):
            raise ValueError(f"{path} must be an 8-bit single-channel PNG of class ids, got mode {img.mode}")
        return np.array(img)


def score_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    num_classes: int,
    reduce_zero_label: bool = False,
    ignore_index: int = 255,
    pred_suffix: str = ".png",
    gt_suffix: str = ".png",
) -> dict[str, Any]:
    """Score a folder of predicted id PNGs against a folder of ground-truth PNGs.

    Files are matched by name minus the suffix, searching subfolders too (for Cityscapes:
    ``pred_suffix="_leftImg8bit.png", gt_suffix="_gtFine_labelTrainIds.png"``). Every ground
    truth needs a prediction and vice versa. ``reduce_zero_label`` applies the ADE20K reduction
    to the ground truth only (0 -> 255, k -> k - 1), as mmseg 0.x does when it scores raw
    annotation files.
    """
    preds = _index_pngs(Path(pred_dir), pred_suffix, "prediction")
    gts = _index_pngs(Path(gt_dir), gt_suffix, "ground-truth")
    missing = sorted(set(gts) - set(preds))
    extra = sorted(set(preds) - set(gts))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ground truth(s) without a prediction, e.g. {gts[missing[0]]}")
        if extra:
            parts.append(f"{len(extra)} prediction(s) without a ground truth, e.g. {preds[extra[0]]}")
        raise ValueError(f"{pred_dir} vs {gt_dir}: " + "; ".join(parts))
    accumulator = IoUAccumulator(num_classes, ignore_index)
    for key in sorted(gts):
        pred, gt = _read_ids(preds[key]), _read_ids(gts[key])
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction {preds[key]} is {pred.shape[1]}x{pred.shape[0]} but ground truth "
                f"{gts[key]} is {gt.shape[1]}x{gt.shape[0]} (WxH)"
            )
        if reduce_zero_label:
            gt = reduce_zero_label_map(gt)
        try:
            accumulator.update(pred, gt)
        except ValueError as exc:
            raise ValueError(f"{gts[key]}: {exc}") from None
    return accumulator.compute()
