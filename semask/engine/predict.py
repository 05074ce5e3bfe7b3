"""Prediction on new images: one image to a class-id map, or a folder to PNGs and overlays."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import EvalConfig, ExperimentConfig
from ..data.datasets import IMAGE_SUFFIXES, warn_left_out  # one list for training folders, eval and predict
from .distributed import DistInfo, all_gather_objects, broadcast_object

logger = logging.getLogger(__name__)


def load_rgb(image: str | os.PathLike[str] | Image.Image | np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a file path, a PIL image or such an array."""
    if isinstance(image, (str, os.PathLike)):
        from ..data.datasets import read_image

        return read_image(image)
    if isinstance(image, Image.Image):  # upright and 8-bit, as a file path would be read
        from ..data.datasets import image_to_rgb

        return image_to_rgb(image, "the PIL image")
    array = np.asarray(image)
    if array.dtype == np.uint8 and array.ndim == 2:  # grayscale: the grey value in R, G and B
        return np.repeat(array[..., None], 3, axis=2)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"expected an image path, a PIL image or an (H, W, 3) RGB or (H, W) grey uint8 array, got "
            f"{array.dtype} array of shape {array.shape}"
        )
    return array


def load_input(image: str | os.PathLike[str] | Image.Image | np.ndarray, in_channels: int = 3) -> np.ndarray:
    """What a model with ``in_channels`` inputs takes: :func:`load_rgb` for 3, else the (H, W, C)
    bands of a file (:func:`semask.data.datasets.read_bands`) or of an array."""
    if in_channels == 3:
        return load_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        from ..data.datasets import read_bands

        return read_bands(image, in_channels)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] != in_channels:
        raise ValueError(f"the model takes {in_channels} band(s); got an array of shape {array.shape}")
    return array


def preview_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB picture of model input ``image`` for overlays: RGB uint8 as is; otherwise the
    first three bands (one band: grey), each stretched from its min..max to 0..255."""
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return image
    bands = image[..., :3].astype(np.float64)
    if bands.shape[2] < 3:
        bands = np.repeat(bands[..., :1], 3, axis=2)
    low, high = bands.min(axis=(0, 1)), bands.max(axis=(0, 1))
    scaled = (bands - low) / np.where(high > low, high - low, 1.0) * 255.0
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def load_model_any(spec: str | os.PathLike[str]) -> tuple[nn.Module, ExperimentConfig | None]:
    """A model (eval mode) from anything :func:`semask.models.load` reads, plus the run settings
    that come with it: a training checkpoint's config, or a registered checkpoint's dataset and
    test protocol (so ``semask eval semask_swin_t_fpn.ade20k --data-root R`` runs the paper's test).
    A checkpoint written before models recorded their protocol gets its config's ``eval``.
    """
    import dataclasses

    from ..models.loader import load_with_meta

    model, meta = load_with_meta(spec)
    if "config" in meta:
        run = ExperimentConfig.from_dict(meta["config"], source=f"{spec} (embedded config)")
        if model.config.protocol is None:
            model.config = dataclasses.replace(model.config, protocol=run.eval.to_dict())
        return model, run
    pretrained = meta.get("pretrained_cfg")
    if pretrained is not None and pretrained.dataset is not None:
        run = {
            "model": {"name": pretrained.preset},
            "data": {"type": pretrained.dataset, "val_split": "val", "num_classes": pretrained.num_classes},
            "eval": dict(pretrained.eval),
        }
        return model, ExperimentConfig.from_dict(run, source=f"{spec} (registered test protocol)")
    return model, None


ImageInput = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """One image's result: class ids at its size, the class names, and (on request) probabilities."""

    labels: np.ndarray  # (H, W) int64 class ids
    class_names: list[str]
    probabilities: np.ndarray | None = None  # (K, H, W) float32, with return_probabilities=True

    def shares(self) -> dict[str, float]:
        """Fraction of the pixels of each class present, largest first."""
        ids, counts = np.unique(self.labels, return_counts=True)
        order = np.argsort(-counts)
        return {self.class_names[int(ids[k])]: float(counts[k]) / self.labels.size for k in order}


class _FromModel:
    """The default of :func:`predict`'s protocol keywords: the model's own test protocol."""

    def __repr__(self) -> str:
        return "FROM_MODEL"


FROM_MODEL: Any = _FromModel()
#: Without a recorded protocol: the image at its original size, in one piece.
NATIVE = EvalConfig(scale=None)


def model_protocol(model: nn.Module, default: EvalConfig = NATIVE, **given: Any) -> EvalConfig:
    """The test protocol of ``model`` (``config.protocol``; ``default`` if it records none) with the
    ``given`` :class:`EvalConfig` fields that are not :data:`FROM_MODEL` put in."""
    import dataclasses

    base = EvalConfig.of_model(model, default)
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not FROM_MODEL})


def predict(
    model: nn.Module,
    image: ImageInput | Sequence[ImageInput],
    *,
    scale: tuple[int, int] | None = FROM_MODEL,
    mode: str = FROM_MODEL,
    crop_size: tuple[int, int] | None = FROM_MODEL,
    stride: tuple[int, int] | None = FROM_MODEL,
    scales: Sequence[float] = FROM_MODEL,
    flip: bool = FROM_MODEL,
    sizes: Sequence[int] | None = FROM_MODEL,
    max_size: int | None = FROM_MODEL,
    window_batch: int | None = FROM_MODEL,
    return_probabilities: bool = False,
) -> np.ndarray | list[Prediction]:
    """Segment one image, or a list of them.

    One image (a path, a PIL image, an (H, W, 3) RGB or (H, W) grey uint8 array) gives its
    (H, W) int64 class ids at the original size. A list (or tuple) gives one :class:`Prediction`
    per image, with the class names and, with ``return_probabilities``, the (K, H, W) class
    probabilities at the original size (K x H x W floats per image: memory grows with both).

    The image is normalised with ``model.config.mean/std`` and segmented with the model's test
    protocol (``model.config.protocol``: what the trainer evaluated with, or a released model's
    paper protocol; without one, the original size in one piece), so the ids equal what
    ``semask predict`` writes and ``semask eval`` scores. Keywords replace single settings:
    ``scale`` = (long, short) resizes the image first with the family's test resize (e.g.
    (2048, 512) for ADE20K FPN models: fit; (2560, 640) for mask classification: short edge 640,
    long <= 2560; ``None``: the original size), ``mode``/``crop_size``/``stride`` whole or
    sliding-window inference, ``scales``/``flip`` multi-scale + flip testing (``sizes``/``max_size``:
    short-edge sizes instead of ratios, the mask-classification protocol), ``window_batch``
    sliding windows per forward pass (``None``: sized to memory). The model runs on the device of
    its parameters, in eval mode (the caller's mode is restored).
    """
    from .inference import eval_mode, predict_image

    config = model.config  # type: ignore[union-attr]
    protocol = model_protocol(
        model,
        scale=scale,
        mode=mode,
        crop_size=crop_size,
        stride=stride,
        scales=scales,
        flip=flip,
        sizes=sizes,
        max_size=max_size,
        window_batch=window_batch,
    )
    options = {**protocol.predict_options(), "num_classes": config.num_classes}
    scale = options.pop("scale")
    many = isinstance(image, (list, tuple))
    if return_probabilities and not many:
        raise ValueError("return_probabilities needs a list of images (it returns Prediction objects)")
    names = config.names()
    results = []
    with eval_mode(model):
        for item in image if many else [image]:
            pixels = load_input(item, getattr(config, "in_channels", 3))
            out = predict_image(
                model, pixels, config.mean, config.std, scale, return_probabilities=return_probabilities, **options
            )  # type: ignore[arg-type]
            labels, probs = out if return_probabilities else (out, None)
            results.append(Prediction(labels, names, probs))
    return results if many else results[0].labels


def collect_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files from paths that are files or folders (searched recursively), sorted per folder.

    A file named twice (itself and through its folder, or by two spellings of its path) is kept
    once, where it first appears.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file())
            files = [p for p in inside if p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under folder {path}")
            others = [  # never skipped silently (hidden files and folders aside: .semask-predict/, .DS_Store)
                str(p.relative_to(path))
                for p in inside
                if p.suffix.lower() not in IMAGE_SUFFIXES
                and not any(s.startswith(".") for s in p.relative_to(path).parts)
            ]
            warn_left_out(path, others, f"image types semask reads ({' '.join(IMAGE_SUFFIXES)})")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"input image {path} does not exist")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    found = list(unique.values())
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems and stems[path.stem] != path:
            raise ValueError(f"two inputs share the output name {path.stem!r}: {stems[path.stem]} and {path}")
        stems[path.stem] = path
    return found


LOCK_NAME = ".semask-predict.lock"


@contextlib.contextmanager
def output_lock(out_dir: Path, info: DistInfo | None = None) -> Iterator[None]:
    """Hold ``out_dir/.semask-predict.lock`` while predicting into it, for all ranks under ``torchrun``
    (:func:`.lock.lock_for_ranks`): another live predict there is refused with a message naming it; a
    lock nobody holds any more (kill -9, a host that went down) is taken over."""
    from .lock import lock_for_ranks

    with lock_for_ranks(out_dir, LOCK_NAME, "semask predict", "--out", info) or contextlib.nullcontext():
        yield


class UnreadableImagesError(ValueError):
    """Some inputs of :func:`predict_folder` could not be read or segmented; the others were written.

    ``written`` lists the written files (as :func:`predict_folder` returns them), ``failed``
    the (image path, reason) pairs.
    """

    def __init__(self, message: str, written: list[dict[str, Path]], failed: list[tuple[Path, str]]) -> None:
        super().__init__(message)
        self.written = written
        self.failed = failed


#: Per-image completion markers (``NAME.json``) under the output folder.
DONE_DIR = ".semask-predict"
#: Output kinds :func:`predict_folder` always writes, one PNG per image in a folder of that name.
OUTPUT_KINDS = ("labels", "color", "overlay")
#: How long the ranks of a distributed predict wait for each other (the slowest shard, at the end).
DISTRIBUTED_TIMEOUT = timedelta(hours=24)

#: An extra output: ``writer(image_path, folder)`` writes the image's files into ``folder`` and returns them.
ExtraWriter = Callable[[Path, Path], list[Path]]


def predict_folder(
    model: nn.Module,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    alpha: float = 0.5,
    progress: bool = True,
    strict: bool = False,
    skip_existing: bool = False,
    extra_outputs: Mapping[str, ExtraWriter] | None = None,
    info: DistInfo | None = None,
    **options: Any,
) -> list[dict[str, Path]]:
    """Predict every image of ``inputs`` (files or folders) and write, per image NAME:

    ``labels/NAME.png`` (class ids, 8-bit), ``color/NAME.png`` (palette colours) and
    ``overlay/NAME.png`` (colours blended over the image with opacity ``alpha``), plus, for each
    ``extra_outputs`` entry KIND, what its writer puts into ``KIND/``. ``options`` go to
    :func:`predict` (scale, mode, crop_size, stride, scales, flip, window_batch); a setting that
    fits no image is refused before any. Returns, in the order of :func:`collect_images`, the
    files of every image whose outputs are complete at the end.

    Each file is written atomically (temporary file + rename), so an interrupted or concurrent
    run never leaves a truncated PNG. After an image's files, ``.semask-predict/NAME.json``
    records that they are complete (and removed before they are rewritten). With
    ``skip_existing``, an image whose record matches this run (model weights, classes, protocol,
    alpha, output kinds, autocast dtype; the input file's size and modification time) and whose
    files all exist is not predicted again, so a killed run continues where it stopped. An image
    that cannot be read, or that the model cannot segment (e.g. a 10x20000 strip too thin for its
    encoder, or one that runs out of memory: :class:`~semask.models.UnsegmentableImageError`), is
    skipped and the others are predicted; at the end
    an :class:`UnreadableImagesError` lists the skipped ones (``strict=True``: the first such
    image stops the run at once).

    Under ``torchrun`` (``info``, world size > 1) the input list (less the complete
    images) is split over the ranks, every ``world_size``-th image to each; each rank writes its
    own images and the returned list and errors cover all ranks.
    """
    from tqdm import tqdm

    from ..data.datasets import DataError
    from ..data.visualize import colorize, overlay, save_label_png, save_png
    from ..models.io import atomic_write
    from .checkpoint import remove_stale_temporaries
    from .inference import UnsegmentableImageError, image_error

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    options = model_protocol(model, **options).predict_options()  # checked once, before any image
    config = model.config  # type: ignore[union-attr]
    palette = config.colours()
    out_dir = Path(out_dir)
    extra_outputs = dict(extra_outputs or {})
    images = collect_images(inputs)  # the same list on every rank: each takes its share of it
    folders = [*OUTPUT_KINDS, *extra_outputs, DONE_DIR]
    for sub in folders:
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    key = run_key(model, alpha, sorted(extra_outputs), options)
    with output_lock(out_dir, info):  # a second predict into this folder would mix two models' files
        plan: tuple[list[Path], list[Path]] | None = None
        if rank == 0:
            for sub in folders:  # partial writes of a killed run
                remove_stale_temporaries(out_dir / sub)
            done = {p for p in images if skip_existing and _complete(out_dir, p, key)}
            plan = ([p for p in images if p not in done], [p for p in images if p in done])
        todo, skipped = broadcast_object(plan, info) if info is not None else plan  # type: ignore[misc]
        written: list[dict[str, Path]] = []
        failed: list[tuple[Path, str]] = []
        error: BaseException | None = None
        try:
            for path in tqdm(todo[rank::world], desc="predict", unit="img", disable=not progress or rank != 0):
                marker = out_dir / DONE_DIR / f"{path.stem}.json"
                marker.unlink(missing_ok=True)  # the files are about to change: not complete until rewritten
                image = None
                try:
                    image = load_input(path, getattr(config, "in_channels", 3))
                    with torch.inference_mode():
                        label = predict(model, image, **options)
                except (DataError, UnsegmentableImageError) as exc:  # this image: unreadable, or unsegmentable
                    reason = str(exc) if image is None else image_error(path, image, exc)
                    if strict:
                        raise DataError(reason) from exc
                    failed.append((path, reason))
                    continue
                files = {
                    "image": path,
                    "labels": save_label_png(out_dir / "labels" / f"{path.stem}.png", label),
                    "color": save_png(out_dir / "color" / f"{path.stem}.png", colorize(label, palette)),
                    "overlay": save_png(
                        out_dir / "overlay" / f"{path.stem}.png", overlay(preview_rgb(image), label, palette, alpha)
                    ),
                }
                extra = [f for kind, writer in extra_outputs.items() for f in writer(path, out_dir / kind)]
                record = {"key": key, **_source(path), "rank": rank}
                record["files"] = [f.relative_to(out_dir).as_posix() for f in extra]
                atomic_write(marker, lambda tmp, r=record: Path(tmp).write_text(json.dumps(r, indent=1) + "\n"))
                written.append(files)
        except Exception as exc:  # re-raised below, once every rank has finished
            error = exc
        if info is not None and info.distributed:
            ranks = all_gather_objects(
                (written, failed, None if error is None else (type(error).__name__, str(error))), info
            )
            written = [entry for part in ranks for entry in part[0]]
            failed = sorted(f for part in ranks for f in part[1])
            errors = [(r, part[2]) for r, part in enumerate(ranks) if part[2] is not None]
            if error is None and errors:
                r, (kind, message) = errors[0]
                error = RuntimeError(f"rank {r} of the distributed predict stopped: {kind}: {message}")
        if error is not None:
            raise error
    done = {e["image"]: e for e in written + [_entry(out_dir, p) for p in skipped]}
    entries = [done[p] for p in images if p in done]
    summary = f"{len(written)} predicted into {out_dir}"
    summary += f", {len(skipped)} skipped as complete from an earlier run" if skipped else ""
    if failed:
        lines = "\n  ".join(reason for _, reason in failed)
        raise UnreadableImagesError(
            f"{len(failed)} of {len(images)} image(s) could not be read or segmented and were skipped "
            f"({summary}):\n  {lines}",
            entries,
            failed,
        )
    if rank == 0:
        logger.info("predict: %s", summary)
    return entries


def run_key(model: nn.Module, alpha: float, extra_kinds: Sequence[str], options: Mapping[str, Any]) -> str:
    """What makes two runs' outputs of one image equal: a sha256 of the weights and buffers, the
    model config, the protocol ``options``, ``alpha``, the extra output kinds, the autocast dtype
    in effect and the semask version. ``window_batch`` is left out: it changes float rounding
    only (:func:`semask.engine.inference.predict_image`), and a resumed run may need another."""
    from importlib import metadata

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    device = _parameter_device(model).type
    amp = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else None
    try:
        version = metadata.version("semask")
    except metadata.PackageNotFoundError:
        version = None
    settings = {
        "config": model.config.to_dict(),  # type: ignore[operator]
        "options": {k: v for k, v in options.items() if k != "window_batch"},
        "alpha": alpha,
        "outputs": [*OUTPUT_KINDS, *extra_kinds],
        "autocast": amp,
        "semask": version,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _parameter_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _source(path: Path) -> dict[str, Any]:
    """The input file as the completion record identifies it: a replaced image is predicted again."""
    stat = path.stat()
    return {"image": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _complete(out_dir: Path, path: Path, key: str) -> bool:
    """Whether ``path``'s outputs in ``out_dir`` are complete and made by a run with ``key``."""
    try:
        record = json.loads((out_dir / DONE_DIR / f"{path.stem}.json").read_text())
        same = record["key"] == key and {k: record[k] for k in ("image", "size", "mtime_ns")} == _source(path)
        files = [out_dir / kind / f"{path.stem}.png" for kind in OUTPUT_KINDS] + [out_dir / f for f in record["files"]]
    except (OSError, ValueError, KeyError, TypeError):  # unreadable or malformed: not complete
        return False
    return same and all(f.is_file() for f in files)


def _entry(out_dir: Path, path: Path) -> dict[str, Path]:
    return {"image": path, **{kind: out_dir / kind / f"{path.stem}.png" for kind in OUTPUT_KINDS}}
