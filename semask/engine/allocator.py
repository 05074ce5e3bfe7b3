"""glibc's malloc tuned for PyTorch's CPU tensors: the long commands re-run themselves with it.

PyTorch's CPU allocator is plain ``malloc``. By default glibc returns the free top of its heap
to the kernel (past a threshold that grows to at most 64 MiB) and maps every block over its
mmap threshold (growing from 128 KiB to at most 32 MiB) fresh, so each training step (and each
large inference) has the kernel fault in and clear its memory again, 4 KiB at a time: with the
literal full-size loss about 900,000 faults and 3.6 s of kernel time per SeMask-T step
(512x512, batch 2, a 2-core VM). Two settings:

* ``glibc.malloc.hugetlb=1`` (glibc >= 2.35, Linux THP in ``madvise`` mode; in ``always`` mode
  the kernel does it already): malloc on transparent huge pages, ~500x fewer faults.
* ``glibc.malloc.trim_threshold`` 1 TiB with ``glibc.malloc.mmap_threshold`` at glibc's own
  32 MiB ceiling: the heap keeps its freed memory for the next step instead of returning it,
  the way PyTorch's CUDA caching allocator keeps GPU memory. Blocks are placed as by default
  once glibc's own thresholds have grown, so the heap fragments no more than it would; RSS
  stays near its peak instead of falling between steps.
  Kernel time per SeMask-T training step 1.5 s with glibc's defaults, 0.5 s with both settings,
  at the same peak RSS (2,917 vs 2,923 MiB); evaluating 24 ADE20K-sized images peaks 6 % higher
  than on huge pages alone (README, "Performance").

The tunables are read when a process starts, so ``semask train``/``eval``/``demo`` re-execute
themselves once with them. ``SEMASK_MALLOC=0`` keeps glibc's defaults, and so does malloc
tuning of the user's own (any of these tunables, or ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_MMAP_THRESHOLD_``). Library users set the variable themselves before starting Python.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

KEEP_FREED = "glibc.malloc.trim_threshold=1099511627776:glibc.malloc.mmap_threshold=33554432"
HUGE_PAGES = "glibc.malloc.hugetlb=1"
OPT_OUT = "SEMASK_MALLOC"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
#: The commands whose run time (minutes to days) dwarfs a second interpreter start (~2 s).
LONG_COMMANDS = ("train", "eval", "demo")
_USERS_OWN = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold", "glibc.malloc.hugetlb")


def thp_mode(path: Path = THP_MODE) -> str | None:
    """The kernel's THP mode ("always", "madvise", "never"), None where it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def glibc_version() -> tuple[int, int] | None:
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return None
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def tuned_environment(
    environ: Mapping[str, str], glibc: tuple[int, int] | None, mode: str | None
) -> dict[str, str] | None:
    """``environ`` with the tunables added, or None where they are set already, turned off,
    tuned by the user, or unknown to this libc (tunables came with glibc 2.26)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or any(name in tunables for name in _USERS_OWN):
        return None
    if "MALLOC_TRIM_THRESHOLD_" in environ or "MALLOC_MMAP_THRESHOLD_" in environ:
        return None
    if glibc is None or glibc < (2, 26):
        return None
    ours = KEEP_FREED + (f":{HUGE_PAGES}" if glibc >= (2, 35) and mode == "madvise" else "")
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{ours}" if tunables else ours}


def reexec_with_tuned_malloc() -> None:
    """Replace this process by the same command with the tunables set, where they apply (Linux only)."""
    if sys.platform != "linux":
        return
    env = tuned_environment(os.environ, glibc_version(), thp_mode())
    if env is None:
        return
    print(f"semask: running with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} ({OPT_OUT}=0 turns this off)", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
