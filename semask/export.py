"""Export: an ONNX graph of a model's logits (:func:`export_onnx`, optional extra
``pip install semask[onnx]``), and a Hugging Face SegFormer folder (:func:`export_hf`).

The exported graph maps ``pixel_values`` (B, C, H, W) float32, RGB in 0-255 normalised as
``(x - mean) / std``, to ``logits`` (B, K, H, W) at the input size. A static export takes
exactly the traced size (B = 1); ``dynamic=True`` any batch, height and width. What the graph
needs beside the pixels travels in the file's ``metadata_props`` (:data:`METADATA_KEYS`, JSON
strings): ``mean``, ``std``, ``class_names``, ``palette``, ``protocol`` (the model's test protocol,
:class:`semask.config.EvalConfig` fields: how ``semask predict`` resizes images before the graph
and the logits after it), ``resize`` (the family's test resize of ``protocol.scale``: ``"mmseg"``,
a keep-ratio fit of (long, short), or ``"detectron2"``, short edge ``min(scale)`` with the long
edge at most ``max(scale)``), ``num_classes``, ``in_channels``. Losses and the semantic-prior branch
are training aids and are left out. The model is traced with ``torch.export`` (the dynamo ONNX
exporter); when onnxruntime is installed the file is run once and compared with PyTorch. The
exporter's own log lines and warnings are silenced; one summary line is logged (logger
``semask.export``, level INFO).

The Hugging Face folder (``config.json`` with ``id2label`` / ``label2id``, ``model.safetensors``,
``preprocessor_config.json``) loads with transformers'
``SegformerForSemanticSegmentation.from_pretrained`` and with :func:`semask.load`; SegFormer models
only (:func:`semask.models.mit.convert.to_hf_segformer` says what is refused and why).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from .data.pipelines import pipeline_for
from .models.io import atomic_write
from .models.mit.convert import to_hf_segformer

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
# Largest |onnxruntime - torch| accepted by the built-in check, relative to max |logits|.
VERIFY_RTOL = 1e-4
# Loggers of the exporter stack, held at ERROR during an export (torch.onnx alone logs a line
# per optimizer pass; symbolic shapes log every guard when the root logger is at INFO).
_NOISY_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnx", "onnxruntime")


METADATA_KEYS = ("mean", "std", "class_names", "palette", "protocol", "resize", "num_classes", "in_channels")


def onnx_metadata(model: nn.Module) -> dict[str, str]:
    """The ``metadata_props`` of ``model``'s ONNX file: :data:`METADATA_KEYS` as JSON strings
    (unnamed classes get their ids as names, no palette the default colours)."""
    config = model.config  # type: ignore[union-attr]
    values = {
        "mean": list(config.mean),
        "std": list(config.std),
        "class_names": config.names(),
        "palette": config.colours(),
        "protocol": getattr(config, "protocol", None),
        "resize": pipeline_for(config).name,  # how protocol.scale resizes: "mmseg" fit or "detectron2" short edge
        "num_classes": config.num_classes,
        "in_channels": getattr(config, "in_channels", 3),
    }
    return {key: json.dumps(values[key]) for key in METADATA_KEYS}


class ExportError(RuntimeError):
    """The exported graph could not be produced or does not reproduce the PyTorch model."""


class LogitsOnly(nn.Module):
    """``pixel_values -> model(pixel_values).logits``: the single-output graph ONNX needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values).logits


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    size: tuple[int, int] = (512, 512),
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    optimize: bool = True,
) -> Path:
    """Write ``model``'s logits graph to ``path`` (a single .onnx file) and return the path.

    ``size`` (H, W) is the input size of the traced example; with ``dynamic=True`` batch,
    height and width are symbolic and the file accepts any size (the example size is
    moved to a "generic" one so that every padding and resizing branch is traced).
    ``verify`` runs the file with onnxruntime, if installed, and raises
    :class:`ExportError` when it disagrees with PyTorch. ``optimize`` runs the onnxscript
    graph optimizer (constant folding, pattern rewrites; onnxruntime optimizes again when it
    loads the file, so ``False`` gives a larger file that runs alike and exports faster).
    """
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise ImportError("ONNX export needs the optional dependencies: pip install 'semask[onnx]'") from None
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be two positive ints (H, W), got {size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dynamic:
        h, w = generic_size(h), generic_size(w)
    device = next(model.parameters()).device
    # torch.export treats a size-1 dimension as static, so a dynamic batch is traced with 2 images.
    channels = getattr(getattr(model, "config", None), "in_channels", 3)
    example = torch.randn(
        2 if dynamic else 1, channels, h, w, device=device, generator=torch.Generator(device).manual_seed(0)
    )
    was_training = model.training
    wrapper = LogitsOnly(model).eval()
    start = time.perf_counter()
    try:
        dynamic_shapes = None
        if dynamic:
            dim = torch.export.Dim.DYNAMIC
            dynamic_shapes = {"pixel_values": {0: dim, 2: dim, 3: dim}}
        with torch.no_grad(), _quiet_exporter(), _symbolic_tracing() if dynamic else contextlib.nullcontext():
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=["pixel_values"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=optimize,
                verbose=False,
            )
            if program is None:
                raise ExportError("torch.onnx.export returned no program")
            program.model.metadata_props.update(onnx_metadata(model))
            atomic_write(path, lambda tmp: program.save(str(tmp)))
        err = check_onnx(path, wrapper, example) if verify else None
    finally:
        model.train(was_training)
    shape = "B x 3 x H x W (dynamic)" if dynamic else f"1 x 3 x {h} x {w}"
    checked = "not verified" if err is None else f"onnxruntime max |diff| {err:.2g}"
    logger.info(
        "exported %s: %s -> logits, opset %d, %.1f MB, %.1f s, %s",
        path,
        shape,
        opset,
        path.stat().st_size / 2**20,
        time.perf_counter() - start,
        checked,
    )
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hold the exporter stack's loggers at ERROR and drop its warnings for the duration."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _NOISY_LOGGERS]
    loggers = [logging.getLogger(n) for n in {*_NOISY_LOGGERS, *names}]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _symbolic_tracing() -> Iterator[None]:
    """Trace symbolic sizes without the fake-tensor dispatch cache: rebuilding a cached output
    re-simplifies every size expression, and a dynamic export runs about 2x faster without it
    (a static one is faster with it)."""
    config = torch._dynamo.config
    if not hasattr(config, "fake_tensor_cache_enabled"):
        yield
        return
    with config.patch(fake_tensor_cache_enabled=False):
        yield


def generic_size(n: int) -> int:
    """The smallest size >= ``n`` that is not a multiple of 4 and stays odd at strides 4-32
    and off multiples of 7 and 12, so that no "pad only if needed" branch is skipped."""

    def generic(m: int) -> bool:
        if m % 4 == 0:
            return False
        s = -(-m // 4)
        for _ in range(4):
            if s % 2 == 0 or s % 7 == 0 or s % 12 == 0:
                return False
            s = -(-s // 2)
        return True

    n = max(n, 33)
    while not generic(n):
        n += 1
    return n


def check_onnx(path: Path, model: nn.Module, example: Tensor) -> float | None:
    """Run ``path`` with onnxruntime on ``example`` and compare with ``model``; None if no onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"pixel_values": example.cpu().numpy()})[0])
    with torch.no_grad():
        want = model(example).float().cpu()
    if got.shape != want.shape:
        raise ExportError(f"{path}: onnxruntime logits have shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    err = float((got - want).abs().max())
    scale = float(want.abs().max()) or 1.0
    if err > VERIFY_RTOL * scale:
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {err:.3g} (max |logits| {scale:.3g})")
    return err


def export_hf(model: nn.Module, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``model`` as a Hugging Face SegFormer folder and return it (module docstring).

    ``preprocessor_config.json`` makes transformers' ``SegformerImageProcessor`` normalise with
    the model's mean and std and keep the image size (its resize is to a fixed square, which is
    not the model's test protocol; resize first as ``config.json["semask"]["protocol"]`` says).
    """
    from safetensors.torch import save_file

    config, weights = to_hf_segformer(model)
    out = Path(out_dir)
    if out.is_file():
        raise ValueError(f"{out} is a file; a Hugging Face model is a folder")
    processor = {
        "image_processor_type": "SegformerImageProcessor",
        "do_resize": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [m / 255 for m in config["semask"]["mean"]],
        "image_std": [v / 255 for v in config["semask"]["std"]],
        "do_reduce_labels": False,
    }
    atomic_write(out / "model.safetensors", lambda tmp: save_file(weights, tmp, metadata={"format": "pt"}))
    for name, content in (("config.json", config), ("preprocessor_config.json", processor)):
        atomic_write(out / name, lambda tmp, c=content: Path(tmp).write_text(json.dumps(c, indent=2) + "\n"))
    logger.info("exported a Hugging Face SegFormer folder to %s (%d tensors)", out, len(weights))
    return out
