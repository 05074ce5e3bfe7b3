"""Transparent huge pages for glibc's malloc: the long commands re-run themselves with them.

PyTorch's CPU allocator is plain ``malloc``. Tensors over glibc's mmap threshold (32 MiB at
most) are mapped fresh and unmapped on free, so a training step faults its large activations
in again 4 KiB at a time (with the literal full-size loss about 900,000 faults and 3.6 s of
kernel time per SeMask-T step at 512x512, batch 2, on a 2-core VM). glibc >= 2.35 can back
malloc with transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) when Linux THP
is in ``madvise`` mode: 30-65x fewer faults, the same numbers and the same peak memory (README,
"Performance"). In ``always`` mode the kernel does this by itself and the tunable does nothing.

The tunable is read when a process starts, so ``semask train``/``eval``/``demo`` re-execute
themselves once with it set; ``SEMASK_HUGEPAGES=0`` keeps the default allocator. Library users
set the variable themselves before starting Python.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "SEMASK_HUGEPAGES"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
#: The commands whose run time (minutes to days) dwarfs a second interpreter start (~2 s).
LONG_COMMANDS = ("train", "eval", "demo")


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


def hugepage_environment(
    environ: Mapping[str, str], glibc: tuple[int, int] | None, mode: str | None
) -> dict[str, str] | None:
    """``environ`` with the tunable added, or None where it is set already, turned off or useless."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or "glibc.malloc.hugetlb" in tunables:
        return None
    if glibc is None or glibc < (2, 35) or mode != "madvise":  # "always": the kernel does it already
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def reexec_with_hugepages() -> None:
    """Replace this process by the same command with the tunable set, where it helps (Linux only)."""
    if sys.platform != "linux":
        return
    env = hugepage_environment(os.environ, glibc_version(), thp_mode())
    if env is None:
        return
    print(f"semask: running with {TUNABLE} (transparent huge pages; {OPT_OUT}=0 turns this off)", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
