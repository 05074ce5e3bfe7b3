"""The long CLI commands re-run themselves with glibc's transparent-huge-page malloc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semask.engine import hugepages
from semask.engine.hugepages import TUNABLE, hugepage_environment, thp_mode

NEW_GLIBC = (2, 36)


def test_environment_adds_the_tunable_only_where_it_helps() -> None:
    assert hugepage_environment({"A": "1"}, NEW_GLIBC, "madvise") == {"A": "1", "GLIBC_TUNABLES": TUNABLE}
    kept = hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, NEW_GLIBC, "madvise")
    assert kept == {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{TUNABLE}"}
    assert hugepage_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, NEW_GLIBC, "madvise") is None
    assert hugepage_environment({"SEMASK_HUGEPAGES": "0"}, NEW_GLIBC, "madvise") is None
    assert hugepage_environment({}, (2, 34), "madvise") is None  # the tunable came with glibc 2.35
    assert hugepage_environment({}, None, "madvise") is None  # musl, macOS, Windows
    assert hugepage_environment({}, NEW_GLIBC, "never") is None
    assert hugepage_environment({}, NEW_GLIBC, "always") is None  # the kernel backs large mappings itself
    assert hugepage_environment({}, NEW_GLIBC, None) is None


def test_thp_mode_is_the_bracketed_word(tmp_path: Path) -> None:
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    assert thp_mode(tmp_path / "enabled") == "madvise"
    assert thp_mode(tmp_path / "missing") is None


# A child that re-executes itself, then reports the variable and its page faults for 256 MiB.
CHILD = """
import os, resource
from semask.engine.hugepages import reexec_with_hugepages
reexec_with_hugepages()
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(64 * 2**20).fill_(1.0)
print(os.environ.get("GLIBC_TUNABLES"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_child(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SEMASK_HUGEPAGES")}
    return subprocess.run(
        [sys.executable, "-c", CHILD], env={**environ, **env}, capture_output=True, text=True, timeout=120, check=True
    )


@pytest.mark.skipif(
    sys.platform != "linux" or hugepages.hugepage_environment({}, hugepages.glibc_version(), thp_mode()) is None,
    reason="needs Linux, glibc >= 2.35 and transparent huge pages in madvise mode",
)
def test_reexec_sets_the_tunable_once_and_faults_512x_less() -> None:
    on = run_child()
    assert on.stderr.count(f"running with {TUNABLE}") == 1  # one re-execution, no loop
    tunables, faults_on = on.stdout.split()
    assert tunables == TUNABLE
    off = run_child(SEMASK_HUGEPAGES="0")
    assert "running with" not in off.stderr
    tunables, faults_off = off.stdout.split()
    assert tunables == "None"
    # 256 MiB: 65,536 faults of 4 KiB pages by default; huge pages need ~128 (2 MiB each)
    assert int(faults_off) > 60_000 and int(faults_on) < int(faults_off) // 20
