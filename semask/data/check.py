"""``semask check-data``: look at a dataset before training on it.

For every split it reads every (image, label) pair in a thread pool (with a progress bar) and
reports, all at once: unreadable files, image/label size mismatches, label values outside
``0..K-1`` (and not the ignore index), images without a label and labels without an image.
Then it prints a per-class table of pixel counts (and shares) and of the number of images each
class occurs in, warns about classes that never occur in a split, and draws a grid of N
training samples after the training augmentation with their labels overlaid (what mmseg's
``browse_dataset`` shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .datasets import DataError, FolderDataset, SegmentationDataset, folder_candidates


def label_statistics(dataset: SegmentationDataset, num_threads: int = 8, progress: bool = True) -> dict[str, Any]:
    """Per-class counts over a split's labels (read once, in threads; images are not decoded).

    Returns ``pixels`` and ``images`` (int64, length K: labelled pixels of each class, images
    containing it), ``ignored`` (pixels with the ignore index) and ``total`` (all pixels).
    Raises the first :class:`DataError` of a broken label.
    """
    k = dataset.num_classes

    def one(index: int) -> tuple[np.ndarray, int, int]:
        path = dataset.samples[index][1]
        if path is None:
            return np.zeros(k, np.int64), 0, 0
        label = dataset._check_label_values(dataset.read_label_file(path), path)
        counts = np.bincount(label.ravel(), minlength=256)
        return counts[:k].astype(np.int64), int(counts[dataset.ignore_index]), int(label.size)

    pixels, images = np.zeros(k, np.int64), np.zeros(k, np.int64)
    ignored = total = 0
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        results = pool.map(one, range(len(dataset)))
        for counts, ign, size in tqdm(
            results, total=len(dataset), desc=f"counting {dataset.description}", disable=not progress, leave=False
        ):
            pixels += counts
            images += counts > 0
            ignored += ign
            total += size
    return {"pixels": pixels, "images": images, "ignored": ignored, "total": total}


def crop_padding_warning(sizes: Sequence[tuple[int, int]], data: Any) -> str | None:
    """A warning when ``data.crop_size`` is far larger than every training image after the
    training resize at its largest ratio: more than half of every crop is then padding, which the
    loss ignores (training still runs, mmseg pads the same way, so this is not an error; but it is
    most often a crop meant for another dataset, or a ``data.scale`` left at the recipe's). mmseg's
    path only: detectron2's (``data.short_edges``) never crops beyond the resized image."""
    from .transforms import rescale_size, scaled

    if data.crop_size is None or data.scale is None or not sizes:
        return None
    ratio = max(data.ratios) if data.ratios else data.ratio_range[1]
    resized = [rescale_size(size, scaled(data.scale, ratio)) for size in sizes]
    largest = max(resized, key=lambda hw: hw[0] * hw[1])
    crop_h, crop_w = data.crop_size
    if crop_h * crop_w < 2 * largest[0] * largest[1]:
        return None
    return (
        f"data.crop_size {crop_h}x{crop_w} is far larger than every training image after the resize "
        f"(data.scale {list(data.scale)} at ratio {ratio:g}; the largest is {largest[0]}x{largest[1]}): more than "
        "half of every crop is padding the loss ignores; lower data.crop_size or raise data.scale"
    )


@dataclass
class SplitReport:
    """What :func:`check_split` found in one split."""

    split: str
    samples: int
    problems: list[str] = field(default_factory=list)
    good: list[int] = field(default_factory=list)  # indices of the pairs without problems
    unlabelled_images: list[Path] = field(default_factory=list)
    orphan_labels: list[Path] = field(default_factory=list)
    pixels: np.ndarray | None = None
    images: np.ndarray | None = None
    ignored: int = 0
    total: int = 0
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) of the readable images

    @property
    def ok(self) -> bool:
        return not (self.problems or self.unlabelled_images or self.orphan_labels)


def check_split(dataset: SegmentationDataset, num_threads: int = 8, progress: bool = True) -> SplitReport:
    """Decode every pair of ``dataset``; collect every problem instead of stopping at the first."""
    k = dataset.num_classes
    report = SplitReport(split=dataset.description, samples=len(dataset))

    def one(index: int) -> str | tuple[np.ndarray, int, int]:
        try:
            _, label = dataset.load_sample(index)  # readable, sizes match, values in range
        except DataError as exc:
            return str(exc)
        if dataset.samples[index][1] is None:
            return f"{dataset.samples[index][0]}: no label file"
        counts = np.bincount(label.ravel(), minlength=256)
        return counts[:k].astype(np.int64), int(counts[dataset.ignore_index]), int(label.size), label.shape

    pixels, images = np.zeros(k, np.int64), np.zeros(k, np.int64)
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        results = pool.map(one, range(len(dataset)))
        bar = tqdm(results, total=len(dataset), desc=f"checking {dataset.description}", disable=not progress)
        for index, result in enumerate(bar):
            if isinstance(result, str):
                report.problems.append(result)
                continue
            report.good.append(index)
            counts, ignored, size, shape = result
            report.sizes.append((int(shape[0]), int(shape[1])))
            pixels += counts
            images += counts > 0
            report.ignored += ignored
            report.total += size
    report.pixels, report.images = pixels, images
    return report


def folder_orphans(
    root: str | Path, split: str, img_suffix: str | None = None, label_suffix: str = ".png"
) -> tuple[list[Path], list[Path]]:
    """(images without a label file, label files without an image) of a folder-dataset split.

    Labels are looked for only in a split's own label folder (a split list shares ``labels/``
    with other splits, so its unlisted labels are not orphans)."""
    images, label_for, _, label_dir = folder_candidates(Path(root), split, img_suffix, label_suffix)
    unlabelled = [image for image in images if not label_for[image].is_file()]
    orphans: list[Path] = []
    if label_dir is not None:
        expected = {label_for[image] for image in images}
        orphans = sorted(
            p for p in label_dir.iterdir() if p.is_file() and p.name.endswith(label_suffix) and p not in expected
        )
    return unlabelled, orphans


def histogram_table(class_names: Sequence[str], reports: Sequence[SplitReport]) -> str:
    """Markdown table: per class, pixels (share of the labelled pixels) and images, per split."""
    header = ["id", "class"]
    for r in reports:
        header += [f"{r.split} pixels", "%", "images"]
    rows = []
    for c, name in enumerate(class_names):
        row = [str(c), name]
        for r in reports:
            assert r.pixels is not None and r.images is not None
            labelled = int(r.pixels.sum())
            share = 100.0 * r.pixels[c] / labelled if labelled else 0.0
            row += [f"{int(r.pixels[c]):,}", f"{share:.2f}", f"{int(r.images[c])}/{r.samples}"]
        rows.append(row)
    ignored = ["", "(ignored)"]
    for r in reports:
        share = 100.0 * r.ignored / r.total if r.total else 0.0
        ignored += [f"{r.ignored:,}", f"{share:.2f}", ""]
    rows.append(ignored)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def absent_class_warnings(class_names: Sequence[str], reports: Sequence[SplitReport]) -> list[str]:
    """One line per split that lacks some classes entirely."""
    out = []
    for r in reports:
        assert r.pixels is not None
        missing = [f"{c} {class_names[c]}" for c in np.flatnonzero(r.pixels == 0)]
        if missing:
            out.append(f"warning: {r.split}: {len(missing)} class(es) never occur: {', '.join(missing)}")
    return out


def sample_grid(
    dataset: SegmentationDataset,
    transform: Any,
    mean: Sequence[float],
    std: Sequence[float],
    path: str | Path,
    num: int = 16,
    seed: int = 0,
    alpha: float = 0.5,
    indices: Sequence[int] | None = None,
) -> Path:
    """Write a PNG grid of ``num`` training samples after ``transform`` (the training
    augmentation): each cell is the augmented image with its label overlaid (ignored pixels
    and padding show the image). Samples are spread evenly over the split; written atomically."""
    from .visualize import overlay

    pool = list(range(len(dataset))) if indices is None else list(indices)
    count = min(num, len(pool))
    if count < 1:
        raise ValueError(f"need num >= 1 and at least one readable sample, got num={num}, {len(pool)} sample(s)")
    chosen = [pool[i] for i in np.linspace(0, len(pool) - 1, count).round().astype(int).tolist()]
    cells = []
    for index in chosen:
        image, label = dataset.load_sample(index)
        chw, lab = transform(image, label, np.random.default_rng([seed, index]))
        rgb = chw[:3].transpose(1, 2, 0) * np.asarray(std[:3], np.float32) + np.asarray(mean[:3], np.float32)
        if len(mean) != 3:  # bands: the first three (or the one), each stretched min..max to 0..255
            if rgb.shape[2] < 3:
                rgb = np.repeat(rgb[..., :1], 3, axis=2)
            low, high = rgb.min(axis=(0, 1)), rgb.max(axis=(0, 1))
            rgb = (rgb - low) / np.where(high > low, high - low, 1.0) * 255.0
        rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        lab = np.where(lab == dataset.ignore_index, 255, lab).astype(np.uint8)
        cells.append(overlay(np.ascontiguousarray(rgb), lab, dataset.palette, alpha))
    h = max(c.shape[0] for c in cells)
    w = max(c.shape[1] for c in cells)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    gap = 4
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, cell in enumerate(cells):
        y, x = (i // cols) * (h + gap), (i % cols) * (w + gap)
        grid[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
    from .visualize import save_png

    return save_png(path, grid)


def check_data(
    target: str | Path,
    overrides: Sequence[str] = (),
    out_dir: str | Path | None = None,
    num_samples: int = 16,
    num_threads: int = 8,
    progress: bool = True,
    print_fn: Any = print,
) -> dict[str, Any]:
    """Check a dataset given by an experiment YAML (its ``data`` section, both splits) or by a
    folder-dataset ROOT (every split under ``ROOT/images`` and ``ROOT/splits``). Prints the
    report; writes ``augmented_samples.png`` into ``out_dir`` (default: beside a YAML file, or
    ``ROOT/check``). Returns the split reports, the table, the warnings and the grid path."""
    from ..config import DataConfig, ExperimentConfig, load_config

    target = Path(target)
    if target.suffix in (".yaml", ".yml"):
        cfg = load_config(target, list(overrides))
        default_out = target.parent / f"{target.stem}_check"
    elif target.is_dir():
        cfg = ExperimentConfig.from_dict(
            {"data": {"type": "folder", "root": str(target), "train_split": "train", "val_split": None}},
            str(target),
            list(overrides),
        )
        default_out = target / "check"
    else:
        raise FileNotFoundError(f"{target} is neither an experiment YAML nor a dataset folder")
    data: DataConfig = cfg.data
    splits = [data.train_split] + ([data.val_split] if data.val_split else [])
    if target.is_dir():
        splits = _folder_splits(target) or splits
    kwargs = data.dataset_kwargs()
    reports, datasets = [], []
    for split in splits:
        unlabelled: list[Path] = []
        orphans: list[Path] = []
        if data.type == "folder":
            unlabelled, orphans = folder_orphans(data.root, split, data.img_suffix, data.label_suffix)
            dataset = FolderDataset(data.root, split, skip_unlabelled=True, **_folder_kwargs(kwargs))
        else:
            from .datasets import build_dataset

            dataset = build_dataset(data.type, data.root, split, **kwargs)
        report = check_split(dataset, num_threads, progress)
        report.split = split
        report.unlabelled_images, report.orphan_labels = unlabelled, orphans
        reports.append(report)
        datasets.append(dataset)
    class_names = datasets[0].class_names
    lines = [f"dataset {data.root} ({data.type}), {len(class_names)} classes, ignore index {datasets[0].ignore_index}"]
    for r in reports:
        lines.append(f"split {r.split}: {r.samples} pairs, {'ok' if r.ok else 'PROBLEMS'}")
        lines += [f"  error: {p}" for p in r.problems[:50]]
        if len(r.problems) > 50:
            lines.append(f"  ... and {len(r.problems) - 50} more errors")
        lines += [f"  image without a label: {p}" for p in r.unlabelled_images[:20]]
        lines += [f"  label without an image: {p}" for p in r.orphan_labels[:20]]
        hidden = len(r.unlabelled_images) + len(r.orphan_labels) - min(20, len(r.unlabelled_images))
        hidden -= min(20, len(r.orphan_labels))
        if hidden > 0:
            lines.append(f"  ... and {hidden} more unpaired files")
    table = histogram_table(class_names, reports)
    warnings = absent_class_warnings(class_names, reports)
    crop = crop_padding_warning(reports[0].sizes, data)
    warnings += [f"warning: {crop}"] if crop else []
    out = Path(out_dir) if out_dir is not None else default_out
    grid = None
    if num_samples > 0 and reports[0].good:
        from ..models import get_config
        from .pipelines import pipeline_for

        model_config = get_config(cfg.model.name, **cfg.model.overrides)  # its family's data path and mean/std
        mean, std = model_config.mean, model_config.std
        transform = pipeline_for(model_config).train_transform(data, mean, std, datasets[0].ignore_index)
        grid = sample_grid(
            datasets[0],
            transform,
            mean,
            std,
            out / "augmented_samples.png",
            num=num_samples,
            seed=cfg.train.seed,
            indices=reports[0].good,
        )
    note = (
        "(% of the labelled pixels of the split; for (ignored): of all its pixels. images: how many contain the class)"
    )
    for text in [*lines, "", table, note, "", *warnings]:
        print_fn(text)
    if grid is not None:
        print_fn(f"{min(num_samples, len(reports[0].good))} augmented {splits[0]} samples with labels: {grid}")
    return {"reports": reports, "table": table, "warnings": warnings, "grid": grid, "ok": all(r.ok for r in reports)}


def _folder_splits(root: Path) -> list[str]:
    """Splits of a folder dataset: sub-folders of ROOT/images that have a label folder, then
    the lists ROOT/splits/*.txt; training first."""
    found = []
    if (root / "images").is_dir():
        found += sorted(
            p.name for p in (root / "images").iterdir() if p.is_dir() and (root / "labels" / p.name).is_dir()
        )
    if (root / "splits").is_dir():
        found += sorted(p.stem for p in (root / "splits").glob("*.txt") if p.stem not in found)
    return sorted(found, key=lambda s: (s not in ("train", "training"), s))


def _folder_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}
