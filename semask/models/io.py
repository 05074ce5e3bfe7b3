"""Weight files, read and written without running code: ``.pth`` / ``.bin`` through
``torch.load(weights_only=True)`` (numpy scalars of an mmseg ``meta`` admitted), detectron2
``.pkl`` through an unpickler of arrays only, ``.safetensors``; our model format (a folder or one
file) written atomically. Which model a file holds is the loader's question (:mod:`.loader`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .strict import CheckpointError

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "semask_config"


# ----------------------------------------------------------------------------- reading files
def _numpy_safe_globals() -> list[Any]:
    """numpy types official mmseg files hold in ``meta`` (scalars, small arrays); plain data, no code."""
    from numpy.dtypes import Float32DType, Float64DType, Int32DType, Int64DType

    core = getattr(np, "_core", None) or np.core
    return [
        core.multiarray.scalar,
        core.multiarray._reconstruct,
        # files written with numpy 1.x (every released mmseg checkpoint) name the old module path
        (core.multiarray.scalar, "numpy.core.multiarray.scalar"),
        (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        Float32DType,
        Float64DType,
        Int32DType,
        Int64DType,
    ]


def torch_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` admitting numpy data, with errors that say what the file is.
    ``mmap``: tensors stay on disk until touched (to read a checkpoint's small entries only)."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted download or copy")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        first = str(err).split("\n")[0].split(". ")[0]
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):
            found = re.search(r"GLOBAL (\S+)", str(err))  # the callable it would call, e.g. posix.system
            what = f"it pickles a call of {found.group(1)}" if found else first
            raise CheckpointError(f"{path} refused: it would run code when unpickled ({what})") from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or another format: {err})"
        ) from None


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and builtin containers only: a model-zoo ``.pkl`` needs no more."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("collections", "OrderedDict"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_pkl(path: Path) -> Any:
    """A detectron2 model-zoo ``.pkl``: plain pickle of numpy arrays, read without running code."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(io.BufferedReader(f), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} refused: it would run code when unpickled (it needs {err})") from None
    except (EOFError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable pickle (truncated? {err})") from None


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable .safetensors file (truncated? {err})") from None


def _tensors(obj: dict[str, Any]) -> dict[str, Tensor]:
    return {
        k: v if isinstance(v, Tensor) else torch.from_numpy(np.asarray(v))
        for k, v in obj.items()
        if isinstance(v, (Tensor, np.ndarray))
    }


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, meta) of a weights file: ``.safetensors``, ``.pkl``, or a ``.pth`` / ``.bin`` that is
    an mmseg dict (``state_dict`` + ``meta``), a detectron2 / training dict (``model``) or bare."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    obj = read_pkl(path) if path.suffix == ".pkl" else torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not contain a state dict (found {type(obj).__name__})")
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), dict) else {}
    for ours in ("model_config", "config"):  # a semask training checkpoint: the model's and the run's config
        if isinstance(obj.get(ours), dict) and isinstance(obj.get("model"), dict):
            meta[ours] = obj[ours]
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state_dict = _tensors(obj)
    if not state_dict:
        raise CheckpointError(f"{path} contains no tensors (top-level keys: {sorted(obj)[:10]})")
    return state_dict, meta


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """``write(tmp_path)`` into a temporary file beside ``path``, fsync, rename: a crash, a second
    writer or a full disk never leaves half a file under ``path``, and an older file there stays
    intact. The one atomic writer of the package (weights, checkpoints, PNGs, ONNX, hashes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600, and some writers (safetensors) replace the file with their own 0600 one:
        # give what is there the mode any new file gets (0666 less the umask)
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise OSError(
                err.errno, f"no space left on the device to write {path}; an earlier {path.name} (if any) is intact"
            ) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only set it, which would
    race with threads creating files); from ``/proc/self/status`` where Linux (>= 4.7) has it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o077)  # the strictest value in the short moment it is set
    os.umask(umask)
    return umask


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Weights + config; ``path`` ending in ``.safetensors`` gives one file, else a folder."""
    path = Path(path)
    config = json.dumps(model.config.to_dict(), indent=2)  # type: ignore[operator]
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={CONFIG_METADATA_KEY: config}))
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
    atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config))
    return path
