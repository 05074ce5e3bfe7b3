"""Reading and writing weights: our safetensors format and the official ``.pth`` files.

Nothing here unpickles code: ``.pth`` files are read with ``torch.load(weights_only=True)``
and our own format is safetensors + JSON.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..models.base import CheckpointError, load_state_dict_strict
from ..models.registry import build_model, config_class, converters

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_CONFIG_METADATA_KEY = "semask_config"


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, meta) from a ``.pth`` (mmseg dict, ``{'model': ...}`` or bare) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} holds Python objects other than tensors and plain data; semask refuses to "
            f"unpickle them (torch.load weights_only=True). Details: {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # truncated or non-torch file
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {err}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not contain a state dict (found {type(obj).__name__})")
    meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state_dict = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state_dict:
        raise CheckpointError(f"{path} contains no tensors")
    return state_dict, meta


def load_official_checkpoint(path: str | os.PathLike[str], **overrides: Any) -> nn.Module:
    """Build the model an official checkpoint describes and load it strictly.

    The architecture is inferred from tensor shapes; ``overrides`` (any config field)
    win over inference. Class names and palette come from the file's ``meta``.
    """
    state_dict, meta = read_checkpoint(path)
    for _family, detect, convert in converters():
        if detect(state_dict):
            return convert(state_dict, meta, source=str(path), **overrides)
    sample = ", ".join(sorted(state_dict)[:5])
    raise CheckpointError(f"{path} matches no known official checkpoint layout (first keys: {sample})")


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file in the same folder and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save weights + config. ``path`` ending in ``.safetensors`` gives one file, else a folder."""
    path = Path(path)
    config = json.dumps(model.config.to_dict(), indent=2)  # type: ignore[union-attr,operator]
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={_CONFIG_METADATA_KEY: config}))
        return path
    _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp))
    _atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config))
    return path


def config_from_dict(data: dict[str, Any]) -> Any:
    data = dict(data)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise CheckpointError("config has no 'model_type'")
    return config_class(model_type).from_dict(data)


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a model saved by :func:`save_model` (folder or single ``.safetensors`` file), strictly."""
    path = Path(path)
    if path.is_dir():
        config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        for needed in (config_file, weights_file):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} is missing; is {path} a folder written by semask.save_model?")
        config = json.loads(config_file.read_text())
        state_dict, _ = read_checkpoint(weights_file)
    else:
        state_dict, meta = read_checkpoint(path)
        if _CONFIG_METADATA_KEY not in meta:
            raise CheckpointError(
                f"{path} has no semask config; for official .pth files use semask.load_official_checkpoint"
            )
        config = json.loads(meta[_CONFIG_METADATA_KEY])
    model = build_model(config_from_dict(config))
    load_state_dict_strict(model, state_dict, str(path))
    return model.to(map_location).eval()
