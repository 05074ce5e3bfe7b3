"""Segmentation metrics, the public names: mmsegmentation's definitions, accumulated over a split.

* :class:`IoUAccumulator`: ``update(pred, label)`` per image (numpy or torch class ids, ignored
  pixels skipped), ``compute()`` -> mIoU, mAcc, aAcc, mDice, mFscore, mPrecision, mRecall
  (percent), the per-class lists and the confusion matrix. Per-class intersection and union are
  summed over the split before dividing, so the result is the split's, not a mean of images'.
* :func:`compute_metrics` / :func:`confusion_matrix`: the same for one image or batch.
* :func:`score_folders`: predicted id PNGs against ground-truth PNGs (``semask score``).
* :func:`format_table`, :func:`plot_confusion_matrix`, :func:`normalize_confusion_rows`.

These are the objects ``semask eval``, the trainer's validation and ``semask score`` use; the
implementations live in :mod:`semask.engine.metrics`.

Example::

    from semask.metrics import IoUAccumulator
    acc = IoUAccumulator(num_classes=19)
    for pred, label in pairs:
        acc.update(pred, label)
    print(acc.compute()["mIoU"])
"""

from .engine.metrics import (
    IoUAccumulator,
    compute_metrics,
    confusion_matrix,
    format_table,
    normalize_confusion_rows,
    plot_confusion_matrix,
    score_folders,
)

__all__ = [
    "IoUAccumulator",
    "compute_metrics",
    "confusion_matrix",
    "format_table",
    "normalize_confusion_rows",
    "plot_confusion_matrix",
    "score_folders",
]
