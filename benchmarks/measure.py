"""Measurement primitives for the benchmark suite: timers, peak memory, GEMM peak, FLOP counts.

Kept free of model knowledge so each number in the report has exactly one definition.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

TUNED_MALLOC = "glibc malloc tuned as semask train/eval run it (semask/engine/allocator.py)"
DEFAULT_MALLOC = "default glibc malloc"


def configure_allocator(default: bool) -> str:
    """Re-run this process with glibc's malloc tuned, as ``semask train``/``eval`` run, unless
    ``default``; returns what it runs with."""
    from semask.engine.allocator import KEEP_FREED, reexec_with_tuned_malloc

    if not default:
        reexec_with_tuned_malloc()
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if KEEP_FREED in tunables:
        return TUNED_MALLOC
    own = [f"{k}={v}" for k, v in os.environ.items() if k == "GLIBC_TUNABLES" or k.startswith("MALLOC_")]
    return f"glibc malloc with {' '.join(own)}" if own else DEFAULT_MALLOC


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs after warm-up; the median is the reported figure."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    def as_dict(self) -> dict[str, float | list[float]]:
        return {"median_s": self.median, "best_s": self.best, "runs_s": self.times}


def time_fn(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, between: Callable[[], None] | None = None
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` timed runs (device synchronised);
    ``between`` (untimed) runs before each timed run."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if between is not None:
            between()
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(times)


# ----------------------------------------------------------------------------- memory
def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory during a block: RSS (CPU) or max allocated (CUDA), in MiB.

    ``baseline_mib`` is the level when the block started (model and inputs already
    resident), so ``peak_mib - baseline_mib`` is what the computation itself needed.
    """

    kind: str
    baseline_mib: float = 0.0
    peak_mib: float = 0.0

    @property
    def increase_mib(self) -> float:
        return self.peak_mib - self.baseline_mib

    def as_dict(self) -> dict[str, float | str]:
        return {
            "kind": self.kind,
            "peak_mib": self.peak_mib,
            "baseline_mib": self.baseline_mib,
            "increase_mib": self.increase_mib,
        }


def release_free_memory() -> None:
    """Return the allocator's cached free pages to the OS (glibc), so that RSS counts live data only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Peak memory of the block; on CPU free cached memory is released first, so the first
    run inside the block pays the page faults: use it as a warm-up, not as a timed run."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = PeakMemory("cuda max_memory_allocated", torch.cuda.memory_allocated(device) / 2**20)
        yield result
        torch.cuda.synchronize(device)
        result.peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        return
    release_free_memory()
    if not _reset_peak_rss():
        raise RuntimeError(
            "cannot reset the peak RSS (/proc/self/clear_refs); Linux is required for CPU memory numbers"
        )
    result = PeakMemory("cpu peak RSS (VmHWM)", _read_status_kib("VmRSS") / 1024)
    yield result
    result.peak_mib = _read_status_kib("VmHWM") / 1024


# ----------------------------------------------------------------------------- GEMM peak
def gemm_peak_flops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 5
) -> dict[str, float]:
    """Best achieved FLOP/s of an n x n x n matmul: the machine's practical dense peak.

    The best (not the median) run is used because it is the closest to what the
    hardware can do; other processes on a shared machine only ever slow a run down.
    """
    n = n or (4096 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = time_fn(lambda: torch.mm(a, b), device, warmup=1, repeats=repeats)
    flops = 2.0 * n**3
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "peak_flops": flops / timing.best,
        "median_flops": flops / timing.median,
    }


class GemmProbe:
    """One large matmul timed between the runs of a measurement.

    On a shared or throttled machine the achievable rate drifts; the ratio of a model's
    FLOP/s to the GEMM FLOP/s measured in the same seconds is robust to that drift,
    while the fraction of the best GEMM run (the headline figure) is the conservative one.
    """

    def __init__(self, device: torch.device, n: int | None = None) -> None:
        self.device = device
        self.n = n or (4096 if device.type == "cpu" else 8192)
        self.a = torch.randn(self.n, self.n, device=device)
        self.b = torch.randn(self.n, self.n, device=device)
        self.rates: list[float] = []

    def __call__(self) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        torch.mm(self.a, self.b)
        synchronize(self.device)
        self.rates.append(2.0 * self.n**3 / (time.perf_counter() - start))


# ----------------------------------------------------------------------------- FLOPs
def count_forward_flops(build: Callable[[], torch.nn.Module], shape: tuple[int, ...]) -> int:
    """Full FLOPs (2 per multiply-accumulate of every matmul/conv/attention) of one forward.

    Counted on the meta device, so it costs no compute even at 2048x2048.
    """
    with torch.device("meta"):
        model = build().eval()
        x = torch.empty(shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def machine_info(device: torch.device, threads: int) -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "device": device.type,
        "threads": threads,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
