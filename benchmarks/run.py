"""SeMask benchmark suite (not part of the tests).

    python benchmarks/run.py [--device cpu|cuda] [--quick]

Measures, for SeMask-T FPN and Swin-T FPN (K=150): inference latency at 512x512 (median
after warm-up), images/s at batch 8, peak memory, a training step at the paper's crop
(batch 2 on CPU, 8 on GPU), latency/memory over input sizes 256..2048, the machine's own
fp32 GEMM peak and each model's achieved FLOP/s as a fraction of it, onnxruntime CPU
latency beside PyTorch, a torch.profiler breakdown of where the time goes and (CPU) the peak
training memory with and without gradient checkpointing (benchmarks/train_memory.py). Writes
``benchmarks/results/<device>[_quick].{json,md,png}``.

Allocator: by default the suite runs as ``semask train``/``eval`` do, with glibc's malloc
tuned by re-executing (semask/engine/allocator.py): transparent huge pages where available,
and freed memory kept in the process. Otherwise the kernel faults in and clears the large
tensors again, 4 KiB at a time, on every call. ``--default-allocator`` measures without it;
the report always gives the 512x512 latency both ways (the other one in a child process,
since the setting is per process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from measure import configure_allocator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("semask_swin_t_fpn", "swin_t_fpn")
SIZES = (256, 512, 768, 1024, 2048)
QUICK_SIZES = (256, 512)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--quick", action="store_true", help=f"fewer repeats, sizes {QUICK_SIZES} only (about 2 minutes on 2 cores)"
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and onnxruntime (default 2)")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"scaling sizes (default {SIZES})")
    p.add_argument(
        "--amp",
        choices=("none", "bf16", "fp16"),
        default=None,
        help="autocast dtype (default: bf16 on cuda, none on cpu)",
    )
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd inference at 512x512")
    p.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--default-allocator", action="store_true", help="leave glibc malloc at its defaults")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--latency-probe", action="store_true", help=argparse.SUPPRESS)  # child process mode
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    allocator = configure_allocator(args.default_allocator or args.device == "cuda")
    import suite
    import torch

    torch.set_num_threads(args.threads)
    if args.latency_probe:
        print(json.dumps({**suite.latency_probe(args), "allocator": allocator}))
        return
    started = time.time()
    results = suite.run_suite(args)
    results["machine"]["allocator"] = allocator
    if args.device == "cpu":
        results["other_allocator"] = other_allocator_latency(args)
        import train_memory

        sizes = [512] if args.quick else [512, 1024]
        results["train_memory"] = train_memory.measure(args.models[0], sizes, batch=2)
        import data_pipeline

        results["data_pipeline"] = data_pipeline.suite_rows(quick=args.quick)
    results["wall_s"] = time.time() - started
    import report

    paths = report.write(results, args.out, f"{args.device}{'_quick' if args.quick else ''}")
    print(report.markdown(results))
    print("wrote " + ", ".join(str(p) for p in paths))


def other_allocator_latency(args: argparse.Namespace) -> dict[str, Any]:
    """512x512 latency in a child process with the other allocator setting."""
    cmd = [
        sys.executable,
        str(Path(__file__)),
        "--latency-probe",
        "--threads",
        str(args.threads),
        "--num-classes",
        str(args.num_classes),
        "--models",
        *args.models,
    ]
    cmd += ["--quick"] if args.quick else []
    cmd += [] if args.default_allocator else ["--default-allocator"]
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])  # with the allocator the child ran with


if __name__ == "__main__":
    main()
