"""Training checkpoints: atomic writes, safe (``weights_only``) loads, keep-last-N and best.

A training checkpoint is a dict of tensors and plain Python values only, so
``torch.load(path, weights_only=True)`` reads it without unpickling any code. It holds
everything an exact resume needs: model, optimiser, scheduler, AMP scaler, iteration,
data position (epoch + batches consumed) and the RNG states of every rank.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "semask-train-checkpoint"
VERSION = 1
REQUIRED_KEYS = (
    "model",
    "model_config",
    "optimizer",
    "scheduler",
    "scaler",
    "iteration",
    "epoch",
    "offset",
    "rng",
    "config",
)
_ITER_NAME = re.compile(r"^iter_(\d+)\.pth$")


class TrainingCheckpointError(ValueError):
    """A training checkpoint that cannot be read or does not fit; the message names the file."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, ...); the message names the file and says
    that the files written before are intact (writes are atomic)."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the target dir, fsync, then ``os.replace``.

    A crash mid-write leaves the previous file intact instead of a truncated one; a failed
    write (a full disk: ``OSError`` errno 28, or torch's ``RuntimeError`` "file write failed")
    removes the temp file and raises :class:`CheckpointWriteError` naming ``path``.
    """
    from ..models.io import atomic_write

    path = Path(path)
    try:
        return atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except (OSError, RuntimeError) as exc:
        kept = sorted(p.name for p in path.parent.glob("*.pth"))
        reason = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc  # the OS's own words
        error = CheckpointWriteError(
            f"could not write checkpoint {path}: {reason}. The earlier checkpoints in {path.parent} are intact "
            f"({', '.join(kept) or 'none yet'}); free some space and continue with --resume"
        )
        error.errno = getattr(exc, "errno", None) or errno.EIO
        raise error from exc


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.*.tmp`` files an interrupted :func:`atomic_save` left in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.glob(".*.tmp") if p.is_file() or p.is_symlink())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True`` and check its layout."""
    path = Path(path)
    if not path.is_file():
        raise TrainingCheckpointError(f"training checkpoint {path} does not exist")
    from ..models.io import torch_load
    from ..models.strict import CheckpointError

    try:  # says why: an empty file, a truncated write, pickled code we refuse to run
        state = torch_load(path)
    except CheckpointError as exc:
        raise TrainingCheckpointError(f"cannot read training checkpoint {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = sorted(state)[:10] if isinstance(state, dict) else type(state).__name__
        raise TrainingCheckpointError(
            f"{path} is not a semask training checkpoint (top-level keys: {found}); for an official "
            "or exported model use semask.load / model.pretrained instead"
        )
    if state.get("version") != VERSION:
        raise TrainingCheckpointError(f"{path} has checkpoint version {state.get('version')}, expected {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise TrainingCheckpointError(f"{path} is missing the entries {missing}")
    return state


def final_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint of a run's ``checkpoints/`` folder (``latest.pth`` resolved): after a
    finished run, the final-iteration weights, which the official numbers are reported for."""
    return CheckpointManager(directory, keep_last=1).resolve_resume(True)


def describe_weights(path: str | Path, total_iters: int | None = None) -> dict[str, Any]:
    """Which weights an evaluation tests: the resolved path and, for a training checkpoint, its
    iteration and whether it is the run's final one (``total_iters``; best.pth usually is not).
    Reads the checkpoint memory-mapped, so its tensors are not loaded."""
    resolved = Path(path).resolve() if Path(path).exists() else None
    info: dict[str, Any] = {"path": str(resolved or path), "iteration": None, "final": None}
    if resolved is None or not resolved.is_file() or resolved.suffix != ".pth":
        return info
    from ..models.io import torch_load
    from ..models.strict import CheckpointError

    try:
        state = torch_load(resolved, mmap=True)
    except CheckpointError:
        return info
    if isinstance(state, dict) and state.get("format") == FORMAT:
        info["iteration"] = int(state["iteration"])
        if total_iters is not None:
            info["final"] = info["iteration"] == total_iters
    return info


def model_from_state(state: dict[str, Any], source: str) -> nn.Module:
    """Rebuild the model a training checkpoint holds (architecture from ``model_config``), strictly."""
    from ..models.loader import model_from_config_and_state

    return model_from_config_and_state(state["model_config"], state["model"], source)


# ----------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU + CUDA), numpy and ``random`` as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"].tolist()), py_state["gauss"]))


# ----------------------------------------------------------------------------- manager


class CheckpointManager:
    """Writes ``iter_XXXXXXXX.pth`` every save, keeps the newest ``keep_last``, points ``latest.pth``
    at the newest and keeps ``best.pth`` for the best validation score.

    Only the main process writes; the others call nothing here.
    """

    def __init__(self, directory: str | Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    @property
    def latest_path(self) -> Path:
        return self.directory / "latest.pth"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pth"

    def iteration_checkpoints(self) -> list[Path]:
        """``iter_*.pth`` files sorted by iteration."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _ITER_NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, state: dict[str, Any]) -> Path:
        path = atomic_save(state, self.directory / f"iter_{state['iteration']:08d}.pth")
        self._point_latest(path)
        for old in self.iteration_checkpoints()[: -self.keep_last]:
            old.unlink()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        return atomic_save(state, self.best_path)

    def _point_latest(self, target: Path) -> None:
        """Swap the ``latest.pth`` symlink atomically; copy where symlinks are not allowed."""
        tmp = self.directory / f".latest.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target.name, tmp)
        except OSError:
            shutil.copyfile(target, tmp)
        os.replace(tmp, self.latest_path)

    def resolve_resume(self, resume: bool | str | Path) -> Path | None:
        """``True`` -> ``latest.pth`` in this directory (None when there is none yet); a path -> that file."""
        if resume is False or resume is None:
            return None
        if resume is True:
            if self.latest_path.exists():
                return self.latest_path.resolve()
            found = self.iteration_checkpoints()
            return found[-1] if found else None
        path = Path(resume)
        if not path.is_file():
            raise TrainingCheckpointError(f"resume checkpoint {path} does not exist")
        return path
