"""Multi-process training helpers for ``torchrun`` (env:// rendezvous).

One process per device; ``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK. Without them
everything here degrades to a single process, so the trainer has one code path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # the gloo group of small CPU-side collectives (agree_stop): the default group when that is gloo,
    # else a gloo group of the same processes (an NCCL all-reduce would sync CPU and GPU every step); None: one process
    cpu_group: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto", timeout: timedelta | None = None) -> DistInfo:
    """Join the process group described by the torchrun environment (if any) and pick the device.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda". The backend is NCCL on CUDA and
    Gloo on CPU, so multi-process training also runs (slowly) without GPUs. ``timeout``: how long
    a collective waits for the slowest rank before it fails (None: torch's default, 30 minutes for
    Gloo, during which the other ranks of a stopped or hung one would wait without a word).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but CUDA is not available here; use train.device=cpu or auto")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    elif device == "cpu":
        torch_device = torch.device("cpu")
    else:
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    cpu_group = None
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if torch_device.type == "cuda" else "gloo", init_method="env://", timeout=timeout
            )
        cpu_group = gloo_group(timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device, cpu_group=cpu_group)


def gloo_group(timeout: timedelta | None = None) -> Any:
    """A gloo group of every process of the default group: that group itself when its backend is
    gloo, else a new one (a collective: every process calls this, once, at start-up), as
    detectron2/utils/comm.py's ``_get_global_gloo_group`` does for its CPU-side gathers."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo", timeout=timeout)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def prepare_model(model: nn.Module, info: DistInfo, sync_bn: bool) -> nn.Module:
    """Move to the device; with several CUDA processes convert BN to SyncBN and wrap in DDP."""
    model = model.to(info.device)
    if not info.distributed:
        return model
    if sync_bn and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BN running stats) to every rank.

    Without SyncBN each rank updates its statistics from its own batches; DDP re-broadcasts them
    only at the next forward. Evaluating right after training, every rank must use rank 0's
    model, the one that is checkpointed.
    """
    if not info.distributed:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer.data, src=0)


def all_reduce_sum(values: dict[str, np.ndarray], info: DistInfo) -> dict[str, np.ndarray]:
    """Sum arrays (e.g. per-class intersection/union counts) over ranks, in float64 so counts stay exact."""
    if not info.distributed:
        return values
    out = {}
    for key, value in values.items():
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float64), device=_comm_device(info))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        out[key] = tensor.cpu().numpy()
    return out


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over ranks (a NaN on any rank makes the result NaN everywhere)."""
    if not info.distributed:
        return tensor
    tensor = tensor.detach().clone().to(_comm_device(info))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / info.world_size


def agree_stop(signum: int, info: DistInfo) -> int:
    """The stop signal any rank has received (0: none), the same on every rank, so that all stop
    at the same step whichever of them got the signal. Runs every step, so over ``info.cpu_group``:
    a CPU tensor, no CUDA sync."""
    if info.cpu_group is None:
        return signum
    flag = torch.tensor([signum], dtype=torch.int64)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=info.cpu_group)
    return int(flag.item())


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.distributed:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device(info: DistInfo) -> torch.device:
    return info.device if info.device.type == "cuda" else torch.device("cpu")


class ShardedBatchSampler(Sampler[list[int]]):
    """Deterministic per-rank batches: shuffle with (seed, epoch), shard, batch, drop the remainder.

    Every rank draws the same permutation and takes every ``world_size``-th index, like
    ``DistributedSampler``. ``set_epoch(epoch, offset)`` starts an epoch after ``offset``
    batches, which is how a resumed run skips what it already trained on without loading it.
    """

    def __init__(self, dataset_len: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        per_rank = dataset_len // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"the training set has {dataset_len} samples, fewer than one batch per process "
                f"(batch_size={batch_size} x {world_size} processes)"
            )
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.offset = 0

    def set_epoch(self, epoch: int, offset: int = 0) -> None:
        if not 0 <= offset <= len(self):
            raise ValueError(f"batch offset {offset} outside an epoch of {len(self)} batches")
        self.epoch = epoch
        self.offset = offset

    def __len__(self) -> int:
        return (self.dataset_len // self.world_size) // self.batch_size

    def epoch_indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.dataset_len, generator=generator).tolist()
        usable = (self.dataset_len // self.world_size) * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        indices = self.epoch_indices()
        for b in range(self.offset, len(self)):
            yield indices[b * self.batch_size : (b + 1) * self.batch_size]


def shard_range(n: int, info: DistInfo) -> list[int]:
    """Indices of an evaluation set for this rank: contiguous, disjoint, covering all ``n``."""
    per = math.ceil(n / info.world_size)
    return list(range(info.rank * per, min(n, (info.rank + 1) * per)))
