"""benchmarks/gpu_check.py must not rot before a GPU is lent: its CPU dry run passes every check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_dry_run_passes_every_check(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry-run", "--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_check_cpu_dry_run.json").read_text())
    statuses = {name: check["status"] for name, check in report["checks"].items()}
    expected = {
        "gemm",
        "banded_ce",
        "deform_attn/mask2former",
        "deform_attn/mask2former_msfapn",
        "channels_last",
        "ddp",
        "syncbn_kernels",
        "train/fpn/fp32",
        "train/fpn/fp32/ckpt",
        "train/mit/fp32",
        "train/mask2former/fp32",
        "eval_amp",
        "window_batch",
        "mfu/semask_swin_t_fpn",
        "mfu/semask_swin_l_fpn",
    }
    assert set(statuses) == expected
    assert statuses.pop("syncbn_kernels") == "skip"  # CUDA only
    assert set(statuses.values()) == {"pass"}, statuses
    checks = report["checks"]
    assert checks["banded_ce"]["grad_rel"] < 1e-4 and checks["ddp"]["backend"] == "gloo"
    assert checks["ddp"]["stop_group"] == {"backend": "gloo", "side": False} and checks["ddp"]["stop_agreed"] == [15, 0]
    assert checks["train/fpn/fp32/ckpt"]["loss_1_vs_no_ckpt_rel"] < 1e-3
    assert checks["mfu/semask_swin_t_fpn"]["mfu"] > 0 and checks["mfu/semask_swin_t_fpn"]["images_per_s"] > 0
    markdown = (tmp_path / "gpu_check_cpu_dry_run.md").read_text()
    assert "| `train/mask2former/fp32` | pass |" in markdown and "## Training-step MFU" in markdown
