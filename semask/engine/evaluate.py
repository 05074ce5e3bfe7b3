"""Evaluation on a labelled split with the mmseg protocol (spec sections 6-7).

Every image is resized with ``eval.scale`` (times each ratio for multi-scale; the model family's
test resize, :mod:`semask.data.pipelines`), segmented whole or with a sliding window, and its
prediction compared with the label at the ORIGINAL resolution; per-class counts are summed over
the split (and over processes under DDP).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import EvalConfig
from ..models.io import atomic_write
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, shard_range
from .signals import ignore_stop_signals, worker_pool


class _RawSamples(Dataset):
    """(index, raw RGB uint8 image, checked label) of chosen dataset items, so workers decode in parallel."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        index = self.indices[i]
        image, label = self.dataset.load_sample(index)
        return index, image, label


def evaluate(
    model: nn.Module,
    dataset: Any,
    eval_cfg: EvalConfig | None = None,
    *,
    info: DistInfo | None = None,
    num_workers: int = 0,
    pred_dir: str | Path | None = None,
    out_json: str | Path | None = None,
    confusion_png: str | Path | None = None,
    normalize_confusion: bool = False,
    progress: bool = True,
    checkpoint: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc (percent) and per-class IoU / Acc of ``model`` on ``dataset``.

    ``eval_cfg`` is the test protocol (default: :class:`EvalConfig`, the ADE20K single-scale one).

    ``dataset`` is a :class:`semask.data.SegmentationDataset` (raw samples come from its
    ``load_sample``, so its own transform is not used). The model runs on the device of its
    parameters, in eval mode. ``pred_dir`` also saves the predicted class ids as PNGs named
    like the images (for ``semask score``); ``out_json`` writes the returned dict (with the
    ``confusion_matrix``, rows ground truth, columns prediction); ``confusion_png`` draws that
    matrix as a heatmap with the class names on the axes (``normalize_confusion``: each row
    divided by its pixel count). Pixels labelled ``dataset.ignore_index`` are not counted.
    ``checkpoint`` (which weights were tested: path, training iteration, whether final) is
    recorded in the result.
    Under DDP (``info``) every process takes a contiguous share and the counts are summed.
    An image the model cannot segment (too thin for its encoder, out of memory) is left out and
    listed in ``skipped``, one line naming it and why; the metrics are those of the others.
    """
    from ..data.visualize import save_label_png
    from .inference import UnsegmentableImageError, eval_mode, image_error, predict_image
    from .metrics import IoUAccumulator, format_table

    eval_cfg = EvalConfig() if eval_cfg is None else eval_cfg
    config = model.config  # type: ignore[union-attr]
    if config.num_classes != dataset.num_classes:
        raise ValueError(f"the model predicts {config.num_classes} classes but the dataset has {dataset.num_classes}")
    is_main = info is None or info.is_main
    indices = list(range(len(dataset))) if info is None else shard_range(len(dataset), info)
    loader = DataLoader(
        _RawSamples(dataset, indices),
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=ignore_stop_signals,  # a stop signal is the trainer's to handle
        generator=torch.Generator(),  # never touch the global RNG (its state is checkpointed)
    )
    accumulator = IoUAccumulator(config.num_classes, getattr(dataset, "ignore_index", 255))
    start = time.perf_counter()
    from tqdm import tqdm

    skipped: list[str] = []
    with eval_mode(model), worker_pool(loader) as samples:
        for index, image, label in tqdm(
            samples, total=len(indices), desc="eval", unit="img", disable=not (progress and is_main)
        ):
            try:
                pred = predict_image(
                    model,
                    image.numpy(),
                    config.mean,
                    config.std,
                    num_classes=config.num_classes,
                    **eval_cfg.predict_options(),
                )
            except UnsegmentableImageError as exc:  # this image (e.g. a 10x20000 strip), not the run
                skipped.append(image_error(dataset.samples[int(index)][0], image.numpy(), exc))
                continue
            accumulator.update(pred, label.numpy())
            if pred_dir is not None:
                save_label_png(Path(pred_dir) / f"{dataset.name(int(index))}.png", pred)
    if info is not None:
        summed = all_reduce_sum({"counts": accumulator.counts, "confusion": accumulator.confusion}, info)
        accumulator.counts = summed["counts"].astype(np.int64)
        accumulator.confusion = summed["confusion"].astype(np.int64)
        skipped = [line for lines in all_gather_objects(skipped, info) for line in lines]
    result = accumulator.compute()
    result.update(
        num_images=len(dataset),
        skipped=skipped,  # images the model could not segment: left out of every metric
        class_names=list(dataset.class_names),
        protocol={
            "mode": eval_cfg.mode,
            "scale": eval_cfg.scale,
            "scales": list(eval_cfg.scales),
            "flip": eval_cfg.flip,
            **({"crop_size": eval_cfg.crop_size, "stride": eval_cfg.stride} if eval_cfg.mode == "slide" else {}),
            **({"sizes": list(eval_cfg.sizes), "max_size": eval_cfg.max_size} if eval_cfg.sizes else {}),
        },
        seconds=time.perf_counter() - start,
        table=format_table(result, dataset.class_names),
    )
    if checkpoint is not None:
        result["checkpoint"] = checkpoint
    if out_json is not None and is_main:
        text = json.dumps(to_jsonable(result), indent=2) + "\n"
        atomic_write(out_json, lambda tmp: Path(tmp).write_text(text))
    if confusion_png is not None and is_main:
        from .metrics import plot_confusion_matrix

        plot_confusion_matrix(
            result["confusion_matrix"], dataset.class_names, confusion_png, normalize_rows=normalize_confusion
        )
    return result


def to_jsonable(obj: Any) -> Any:
    """NaN/inf -> None and tuples -> lists, so the output is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return to_jsonable(obj.item())
    return obj
