"""The long CLI commands re-run themselves with glibc's malloc tuned (semask/engine/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semask.engine import allocator
from semask.engine.allocator import HUGE_PAGES, KEEP_FREED, thp_mode, tuned_environment

NEW_GLIBC = (2, 36)


def test_environment_adds_the_tunables_only_where_they_apply() -> None:
    both = f"{KEEP_FREED}:{HUGE_PAGES}"
    assert tuned_environment({"A": "1"}, NEW_GLIBC, "madvise") == {"A": "1", "GLIBC_TUNABLES": both}
    kept = tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, NEW_GLIBC, "madvise")
    assert kept == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{both}"}
    # huge pages only where glibc has the tunable and the kernel leaves them to madvise
    for glibc, mode in (((2, 34), "madvise"), (NEW_GLIBC, "never"), (NEW_GLIBC, "always"), (NEW_GLIBC, None)):
        assert tuned_environment({}, glibc, mode) == {"GLIBC_TUNABLES": KEEP_FREED}
    # the user's own choices, the opt-out, and libcs without tunables are left alone
    for environ in (
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"SEMASK_MALLOC": "0"},
    ):
        assert tuned_environment(environ, NEW_GLIBC, "madvise") is None
    assert tuned_environment({}, (2, 25), "madvise") is None
    assert tuned_environment({}, None, "madvise") is None  # musl, macOS, Windows


def test_thp_mode_is_the_bracketed_word(tmp_path: Path) -> None:
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    assert thp_mode(tmp_path / "enabled") == "madvise"
    assert thp_mode(tmp_path / "missing") is None


# A child that re-executes itself, then reports the variable and the page faults of a "step"
# that allocates and frees 256 MiB in 16 MiB tensors: the first step, and the third.
CHILD = """
import os, resource
from semask.engine.allocator import reexec_with_tuned_malloc
reexec_with_tuned_malloc()
import torch
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(4 * 2**20).fill_(1.0) for _ in range(16)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [step() for _ in range(3)]
print(os.environ.get("GLIBC_TUNABLES"), faults[0], faults[2])
"""


def run_child(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SEMASK_MALLOC")}
    return subprocess.run(
        [sys.executable, "-c", CHILD], env={**environ, **env}, capture_output=True, text=True, timeout=120, check=True
    )


@pytest.mark.skipif(
    sys.platform != "linux" or tuned_environment({}, allocator.glibc_version(), thp_mode()) is None,
    reason="needs Linux and glibc >= 2.26",
)
def test_reexec_sets_the_tunables_once_and_keeps_freed_memory() -> None:
    on = run_child()
    assert on.stderr.count("semask: running with GLIBC_TUNABLES=") == 1  # one re-execution, no loop
    tunables, first_on, third_on = on.stdout.split()
    assert tunables == tuned_environment({}, allocator.glibc_version(), thp_mode())["GLIBC_TUNABLES"]
    off = run_child(SEMASK_MALLOC="0")
    assert "running with" not in off.stderr
    tunables, first_off, _ = off.stdout.split()
    assert tunables == "None"
    # 256 MiB in 4 KiB pages is 65,536 faults (by default glibc trims the heap's top, so later
    # steps usually fault again too); tuned, the third step reuses what the first faulted in
    if thp_mode() != "always":  # there the kernel backs the default mappings with huge pages itself
        assert int(first_off) > 60_000
    assert int(third_on) < 1_000
    if HUGE_PAGES in tunables:  # 2 MiB pages: ~128 faults for the first step
        assert int(first_on) < int(first_off) // 20
