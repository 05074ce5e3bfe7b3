"""Whole-image, sliding-window, multi-scale and flip inference, as mmsegmentation 0.x does it.

* **whole**: one forward pass on the full (already resized) image.
* **slide** (crop c, stride s per axis): ``grids = max(H - c + s - 1, 0) // s + 1`` windows
  per axis, starting at ``i * s``; a window that would cross the border is shifted back so
  that it ends on it. Logits are summed and divided by the number of windows covering each
  pixel. As in mmseg 0.x, windows are *not* padded: when the image is smaller than the crop,
  the one window is the whole image, so slide then equals whole.
* Logits are bilinearly resized (``align_corners=False``) to the original image size. With
  several scales and/or flip, :func:`predict_image` averages the *softmax probabilities* at the
  original size over every (scale, flip) pair, the flipped ones flipped back (mmseg's
  ``aug_test``); each scale resizes the original uint8 image to fit ``scale * ratio``, exactly as
  the protocol does. The resize itself is the model family's (:mod:`semask.data.pipelines`): the
  mask-classification models get detectron2's short-edge resize with PIL, as they were tested.

Memory: :func:`predict_image` with one scale and no flip never holds K x H x W scores at the
original size. Slide mode at the original size (``scale=None``) sums windows into a band of
``crop height`` rows and reduces finished rows to their argmax; otherwise the logits at the
model's input size (bounded by ``scale``) are resized to the original size a few classes at a
time with a running argmax. The class ids equal those of argmax(softmax(resized logits)) except
where two classes' scores tie to float32 rounding (softmax can round distinct logits to equal
probabilities; the logits' argmax then takes the larger one, softmax's the lower id). Multi-scale
and flip testing average probabilities at the original size and do need K x H x W floats.

The model is any callable mapping a (B, 3, h, w) tensor to an object with a ``.logits``
(B, K, h', w') tensor; logits at another size than the input are resized to the input size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import EvalConfig
from ..data.pipelines import pipeline_for
from ..data.transforms import as_pair, normalize
from ..models.base import SeMaskModel
from ..models.outputs import UnsegmentableImageError

Model = Callable[[Tensor], Any]
Mode = Literal["whole", "slide"]


def slide_windows(
    size: tuple[int, int], crop_size: int | Sequence[int], stride: int | Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """The (y1, y2, x1, x2) windows that slide inference visits on an image of ``size`` (h, w)."""
    h, w = size
    ch, cw = as_pair(crop_size, "crop_size")
    sh, sw = as_pair(stride, "stride")
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    windows = []
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
            windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return windows


def _resize(tensor: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)


def _logits(model: Model, x: Tensor, num_classes: int | None) -> Tensor:
    out = model(x)
    logits = getattr(out, "logits", None)
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model returned {type(out).__name__}; expected an object with a .logits tensor")
    if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"model logits must be (B={x.shape[0]}, K, h, w), got {tuple(logits.shape)}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"model predicts {logits.shape[1]} classes, expected num_classes={num_classes}")
    return _resize(logits.float(), tuple(x.shape[-2:]))


def _window_logits(
    model: Model,
    x: Tensor,
    windows: Sequence[tuple[int, int, int, int]],
    num_classes: int | None,
    window_batch: int | None,
) -> Iterator[tuple[tuple[int, int, int, int], Tensor]]:
    """Each window of ``x`` with its logits, in order; ``window_batch`` windows go through the
    model in one batch (``None``: :func:`auto_window_batch`). Every window has the same size
    (:func:`slide_windows` shifts border windows back), so they stack."""
    if window_batch is None:
        window_batch = auto_window_batch(x, num_classes, windows)
    b = x.shape[0]
    for start in range(0, len(windows), window_batch):
        group = windows[start : start + window_batch]
        crops = [x[..., y1:y2, x1:x2] for y1, y2, x1, x2 in group]
        logits = _logits(model, crops[0] if len(crops) == 1 else torch.cat(crops), num_classes)
        for i, window in enumerate(group):
            yield window, logits[i * b : (i + 1) * b]


#: Free memory that :func:`auto_window_batch` lets the windows' logits take, as a fraction.
WINDOW_MEMORY_FRACTION = 0.25
#: Bytes per logit of a window in :func:`auto_window_batch`: its float32 logits at the crop
#: size, their stride-4 source and the model's activations, taken together as four copies.
WINDOW_BYTES_PER_LOGIT = 16
#: Upper bound of :func:`auto_window_batch`: beyond it a GPU gains nothing measurable.
MAX_WINDOW_BATCH = 16


def auto_window_batch(x: Tensor, num_classes: int | None, windows: Sequence[tuple[int, int, int, int]]) -> int:
    """Windows per forward pass when the caller gives none.

    On a GPU, as many as fit ``WINDOW_MEMORY_FRACTION`` of the free device memory at
    ``WINDOW_BYTES_PER_LOGIT`` bytes per logit (K x crop pixels per window), at most
    ``MAX_WINDOW_BATCH`` and never more than there are windows. On a CPU one: three 512x512
    windows of SeMask-T (K=150) in one batch took 1.14x the time of one at a time with 2 threads
    and 1.32x with 1 thread, and 430 MiB more memory (``benchmarks/window_batch.py``).
    """
    if x.device.type != "cuda" or len(windows) < 2:
        return 1
    y1, y2, x1, x2 = windows[0]
    per_window = x.shape[0] * (num_classes or 150) * (y2 - y1) * (x2 - x1) * WINDOW_BYTES_PER_LOGIT
    free, _ = torch.cuda.mem_get_info(x.device)
    return max(1, min(len(windows), MAX_WINDOW_BATCH, int(free * WINDOW_MEMORY_FRACTION) // per_window))


def _forward(
    model: Model,
    x: Tensor,
    mode: Mode,
    crop_size: Any,
    stride: Any,
    num_classes: int | None,
    window_batch: int | None = None,
) -> Tensor:
    """Logits at the size of ``x`` from whole or sliding-window inference."""
    if mode == "whole":
        return _logits(model, x, num_classes)
    h, w = x.shape[-2:]
    total: Tensor | None = None
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    windows = slide_windows((h, w), crop_size, stride)
    for (y1, y2, x1, x2), window in _window_logits(model, x, windows, num_classes, window_batch):
        if total is None:
            total = x.new_zeros((x.shape[0], window.shape[1], h, w), dtype=torch.float32)
        total[..., y1:y2, x1:x2] += window
        count[..., y1:y2, x1:x2] += 1
    assert total is not None  # there is always at least one window
    return total / count


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode for the block, then back in the mode the caller had it in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _softmax(logits: Tensor) -> Tensor:
    return logits.softmax(dim=1)


def _average_probabilities(
    model: Model,
    inputs: Iterable[Tensor],
    flip: bool,
    out_size: tuple[int, int],
    mode: Mode,
    crop_size: Any,
    stride: Any,
    num_classes: int | None,
    window_batch: int | None = None,
) -> Tensor:
    """Mean softmax at ``out_size`` over every input, each also mirrored when ``flip``.

    A :class:`SeMaskModel` says what its probabilities are (``model.probabilities``: the mask
    classification models' class x mask scores are averaged as they are, as their official test
    does); any other callable's logits get a softmax.
    """
    to_probabilities = model.probabilities if isinstance(model, SeMaskModel) else _softmax
    total: Tensor | None = None
    n = 0
    for x in inputs:
        for mirrored in (False, True) if flip else (False,):
            x_in = x.flip(-1) if mirrored else x
            logits = _forward(model, x_in, mode, crop_size, stride, num_classes, window_batch)
            probs = to_probabilities(_resize(logits, out_size))
            probs = probs.flip(-1) if mirrored else probs
            total = probs if total is None else total + probs
            n += 1
    assert total is not None
    return total / n


def image_error(source: Any, image: np.ndarray, exc: UnsegmentableImageError) -> str:
    """One line for an image the model could not segment, naming it, its size and why."""
    h, w = image.shape[:2]
    return f"cannot segment {source} ({w}x{h} pixels): {exc}"


@contextlib.contextmanager
def out_of_memory_is_unsegmentable() -> Iterator[None]:
    """Raise running out of device memory on one image as :class:`UnsegmentableImageError` (a
    smaller image may still fit), so that callers skip that image and nothing else."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise UnsegmentableImageError(f"out of memory: {exc}") from exc


def _model_device(model: Model) -> torch.device:
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
    return torch.device("cpu")


@torch.inference_mode()
def predict_image(
    model: Model,
    image_rgb_uint8: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[int, int] | None = (2048, 512),
    *,
    mode: Mode = "whole",
    crop_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    num_classes: int | None = None,
    sizes: Sequence[int] | None = None,
    max_size: int | None = None,
    window_batch: int | None = None,
    return_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Class-id map (H, W) int64 of one RGB uint8 image, at its original size (with
    ``return_probabilities``, also the (K, H, W) float32 probabilities it is the argmax of).

    The image is resized the way the model's family was tested (:func:`semask.data.pipelines.pipeline_for`:
    mmseg's keep-ratio fit of ``scale`` = (long, short), or detectron2's short edge ``min(scale)``
    with the long edge at most ``max(scale)``, PIL bilinear), once per ratio in ``scales``
    (``scale=None``: the original size times the ratio), normalised with ``mean``/``std`` (RGB,
    0-255) and run on the model's device; the argmax of the averaged probabilities is returned.
    ``sizes`` (with ``max_size``) replace the ratios: short edges, long edge at most ``max_size``
    (the mask-classification models' multi-scale test, which resizes the ``scale``-resized image
    again as detectron2's ``DatasetMapperTTA`` does; other families fit the original image).
    ``window_batch``: sliding windows per forward pass (``None``: :func:`auto_window_batch`);
    the result is that of one window at a time wherever the model is batch-invariant.
    :class:`UnsegmentableImageError`: this image cannot be segmented (too small for the encoder,
    out of memory); any other error is about the call or the model.
    """
    if isinstance(model, nn.Module) and model.training:
        raise ValueError("the model is in training mode (dropout, batch-norm updates); call model.eval() first")
    EvalConfig(  # the settings' checks (one place for them)
        mode=mode,
        crop_size=crop_size,  # type: ignore[arg-type]
        stride=stride,  # type: ignore[arg-type]
        scale=scale,
        scales=list(scales),
        flip=flip,
        sizes=None if sizes is None else list(sizes),
        max_size=max_size,
        window_batch=window_batch,
    )
    image = np.asarray(image_rgb_uint8)
    bands = len(mean)  # 3 for RGB models; in_channels for multi-band ones (uint16/float32 allowed)
    if bands == 3 and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3):
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {image.dtype} of shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16, np.float32) or image.ndim != 3 or image.shape[2] != bands:
        raise ValueError(
            f"image must be an (H, W, {bands}) array of uint8, uint16 or float32 bands, got {image.dtype} "
            f"of shape {image.shape}"
        )
    device = _model_device(model)
    if sizes is not None:
        scales = tuple(sizes)
    pipeline = pipeline_for(getattr(model, "config", None))  # the family's test resize
    resized = pipeline.test_views(image, scale, ratios=scales, sizes=sizes, max_size=max_size)
    inputs = (torch.from_numpy(normalize(x, mean, std))[None].to(device) for x in resized)
    size = (image.shape[0], image.shape[1])
    with out_of_memory_is_unsegmentable():
        if len(scales) == 1 and not flip and not return_probabilities:  # memory bounded (module docstring, "Memory")
            x = next(iter(inputs))
            if mode == "slide" and tuple(x.shape[-2:]) == size:
                return _slide_argmax(model, x, crop_size, stride, num_classes, window_batch).cpu().numpy()
            logits = _forward(model, x, mode, crop_size, stride, num_classes, window_batch)
            return _resized_argmax(logits, size).cpu().numpy()
        probs = _average_probabilities(model, inputs, flip, size, mode, crop_size, stride, num_classes, window_batch)
        labels = probs.argmax(dim=1)[0].cpu().numpy()
        return (labels, probs[0].float().cpu().numpy()) if return_probabilities else labels


#: Elements (float32) of one class chunk in :func:`_resized_argmax`: 2**25 = 128 MiB.
RESIZE_CHUNK_ELEMENTS = 2**25


def _resized_argmax(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(H, W) argmax over classes of ``logits`` (1, K, h, w) bilinearly resized to ``size``.

    The resize runs on a few classes at a time (each class is resized exactly as in one call)
    and keeps a running maximum, so memory is ``RESIZE_CHUNK_ELEMENTS`` floats plus two (H, W)
    maps instead of K x H x W. Ties go to the lower class id, as ``argmax`` does.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits[0].argmax(dim=0)
    num_classes = logits.shape[1]
    chunk = max(1, min(num_classes, RESIZE_CHUNK_ELEMENTS // (size[0] * size[1])))
    best_value: Tensor | None = None
    best_index: Tensor | None = None
    for start in range(0, num_classes, chunk):
        part = _resize(logits[:, start : start + chunk], size)[0]
        index = part.argmax(dim=0)
        value = part.gather(0, index[None])[0]
        if best_value is None or best_index is None:
            best_value, best_index = value, index
            continue
        better = value > best_value
        best_value = torch.where(better, value, best_value)
        best_index = torch.where(better, index + start, best_index)
    assert best_index is not None
    return best_index


def _slide_argmax(
    model: Model, x: Tensor, crop_size: Any, stride: Any, num_classes: int | None, window_batch: int | None = None
) -> Tensor:
    """(H, W) argmax of sliding-window logits of one image (B = 1), band by band.

    Windows are visited in the order :func:`_forward` visits them and summed into an
    accumulator of only ``crop height`` rows: once a row of windows starts below a pixel row,
    no later window covers it, so that row is averaged, reduced to its argmax and its memory
    reused. Per pixel the sums are the same additions in the same order as the whole-image
    accumulator, so the averages are bit-identical. With ``window_batch`` > 1 the logits of
    that many windows are held at once (computed in one batch, summed one by one in order).
    """
    h, w = x.shape[-2:]
    windows = slide_windows((h, w), crop_size, stride)
    rows = min(as_pair(crop_size, "crop_size")[0], h)
    out = torch.empty((h, w), dtype=torch.int64, device=x.device)
    total: Tensor | None = None
    count = x.new_zeros((rows, w), dtype=torch.float32)
    base = 0  # image row of the accumulator's first row
    for (y1, y2, x1, x2), logits in _window_logits(model, x, windows, num_classes, window_batch):
        window = logits[0]
        if total is None:
            total = x.new_zeros((window.shape[0], rows, w), dtype=torch.float32)
        if y1 > base:  # rows base..y1 are complete: reduce them, shift the rest up
            done = y1 - base
            _band_argmax(total, count, done, out[base:y1])
            keep = rows - done
            for row in range(keep):  # shift up in place, row by row (no second buffer)
                total[:, row] = total[:, row + done]
            total[:, keep:] = 0
            count[:keep] = count[done:].clone()
            count[keep:] = 0
            base = y1
        total[:, y1 - base : y2 - base, x1:x2] += window
        count[y1 - base : y2 - base, x1:x2] += 1
    assert total is not None  # there is always at least one window
    _band_argmax(total, count, h - base, out[base:])
    return out


def _band_argmax(total: Tensor, count: Tensor, rows: int, out: Tensor, step: int = 16) -> None:
    """``out[:rows] = argmax(total[:, :rows] / count[:rows])``, ``step`` rows at a time (small temporaries)."""
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        out[start:stop] = (total[:, start:stop] / count[start:stop]).argmax(dim=0)
