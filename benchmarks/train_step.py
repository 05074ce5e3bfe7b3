"""Training-step time with torch's default and with fused AdamW, alternating in one process.

One step = forward with labels (L1 + 0.4 L2), backward, AdamW step, at 512x512 batch 2,
K=150 (``--model``, default SeMask-T FPN). Variants, each its own copy of the same weights:

* ``adamw``: ``torch.optim.AdamW`` with torch's default CPU implementation (a per-tensor loop);
* ``fused_adamw``: the trainer's :func:`semask.engine.trainer.build_optimizer` choice
  (``fused=True``).

The losses are the models' own: both cross-entropies from the stride-4 maps, band by band
(semask/models/upsampled_ce.py; ``benchmarks/baseline_ab.py`` times them against the
literal full-size loss of an earlier commit).

Rounds rotate the order; reported are medians and the median of per-round ratios to
``adamw``. A GEMM probe between steps gives the achieved FLOP/s (3 x forward FLOPs per image,
the usual fwd + bwd convention) as a fraction of the GEMM rate of the same minutes.
``--memory`` adds the peak RSS of one step per variant, each in a fresh subprocess. The
process runs on glibc's malloc tuned as ``semask train`` runs it (``--default-allocator``:
glibc's default; benchmarks/measure.py). Usage:
    python benchmarks/train_step.py --rounds 3 --memory
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from measure import GemmProbe, configure_allocator, count_forward_flops, gemm_peak_flops, peak_memory  # noqa: E402
from report import table  # noqa: E402

import semask  # noqa: E402

VARIANTS = ("adamw", "fused_adamw")


def make(model: torch.nn.Module, variant: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = copy.deepcopy(model).train()
    fused = True if variant == "fused_adamw" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=fused)
    return model, optimizer


def step(model, optimizer, x, labels) -> None:
    optimizer.zero_grad(set_to_none=True)
    model(x, labels, upsample_logits=False).loss.backward()  # as the trainer calls it
    optimizer.step()


def inputs(batch: int, size: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, classes, (batch, size, size))
    labels[:, :32] = 255  # some ignored pixels, as in padded crops
    return x, labels


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, optimizer = make(semask.create_model(args.model, num_classes=args.num_classes), args.child)
    x, labels = inputs(args.batch, args.size, args.num_classes)
    with peak_memory(torch.device("cpu")) as mem:  # VmHWM reset here: the step's own peak
        step(model, optimizer, x, labels)
    print(
        json.dumps(
            {"variant": args.child, "peak_rss_mib": round(mem.peak_mib), "before_step_mib": round(mem.baseline_mib)}
        )
    )


def memory_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--batch", str(args.batch)]
        cmd += ["--size", str(args.size), "--threads", str(args.threads), "--num-classes", str(args.num_classes)]
        cmd += ["--default-allocator"] if args.default_allocator else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="semask_swin_t_fpn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory", action="store_true", help="also peak RSS per variant (fresh subprocesses)")
    p.add_argument("--default-allocator", action="store_true", help="leave glibc malloc at its defaults")
    p.add_argument("--profile", action="store_true", help="only profile one fused-AdamW step (where the time goes)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    allocator = configure_allocator(args.default_allocator)
    if args.child:
        child(args)
        return
    torch.set_num_threads(args.threads)
    memory = memory_rows(args) if args.memory else []  # first, while this process is still small
    torch.manual_seed(0)
    base = semask.create_model(args.model, num_classes=args.num_classes)
    if args.profile:
        from profile_ops import profile_inference

        run = make(base, "fused_adamw")
        x, labels = inputs(args.batch, args.size, args.num_classes)
        step(*run, x, labels)  # warm-up
        report = profile_inference(lambda: step(*run, x, labels), torch.device("cpu"))
        total = report["total_self_ms"]
        for name, ms in report["categories_ms"].items():
            print(f"{name:40s} {ms:8.0f} ms {ms / total:6.1%}")
        for row in report["top_ops"]:
            print(f"  {row['op']:50s} {row['self_ms']:8.0f} ms x{row['calls']}")
        return
    flops = (
        3
        * args.batch
        * count_forward_flops(
            lambda: semask.create_model(args.model, num_classes=args.num_classes), (1, 3, args.size, args.size)
        )
    )
    x, labels = inputs(args.batch, args.size, args.num_classes)
    runs = {v: make(base, v) for v in VARIANTS}
    probe = GemmProbe(torch.device("cpu"))
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    load_start = os.getloadavg()
    for v in VARIANTS:  # warm-up
        step(*runs[v], x, labels)
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for v in order:
            probe()
            start = time.perf_counter()
            step(*runs[v], x, labels)
            times[v].append(time.perf_counter() - start)
        print({v: round(t[-1], 2) for v, t in times.items()}, flush=True)
    probe()
    gemm = statistics.median(probe.rates)
    result = {
        "model": args.model,
        "batch": args.batch,
        "size": args.size,
        "num_classes": args.num_classes,
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "allocator": allocator,
        "load_average": [load_start, os.getloadavg()],
        "train_flops": flops,
        "gemm_median_flops": gemm,
        "gemm_best_flops": max(probe.rates),
        "gemm_peak_start_flops": gemm_peak_flops(torch.device("cpu"))["peak_flops"],
        "variants": {},
    }
    for v in VARIANTS:
        ratios = [a / b for a, b in zip(times[v], times["adamw"])]
        result["variants"][v] = {
            "median_s": statistics.median(times[v]),
            "best_s": min(times[v]),
            "runs_s": times[v],
            "ratio_vs_adamw": statistics.median(ratios),
            "best_ratio_vs_adamw": min(times[v]) / min(times["adamw"]),
            "achieved_flops": flops / statistics.median(times[v]),
            "fraction_of_concurrent_gemm": flops / statistics.median(times[v]) / gemm,
        }
    for row in memory:
        result["variants"][row["variant"]]["peak_rss_mib"] = row["peak_rss_mib"]
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "train_step_cpu.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out / "train_step_cpu.json")
    write_markdown(args.out / "train_step_cpu.md", result)
    print(json.dumps(result["variants"], indent=1))


def write_markdown(path: Path, result: dict) -> None:
    lines = [
        f"# Training step, {result['model']}, K={result['num_classes']}, {result['size']}x{result['size']}, "
        f"batch {result['batch']} (CPU, {result['threads']} threads)",
        "",
        f"`python benchmarks/train_step.py --rounds {result['rounds']}{' --memory' if 'peak_rss_mib' in result['variants']['adamw'] else ''}`; "
        f"torch {result['torch']}; {result.get('allocator', 'default glibc malloc')}. One step = forward + L1 + 0.4 L2 + backward + AdamW. Variants alternate in one "
        f"process (same weights); load average {result['load_average'][0][0]:.1f} -> {result['load_average'][1][0]:.1f} "
        "on a machine shared with other jobs, so absolute times drift and the ratios (median of per-round ratios) "
        f"are the figures. Concurrent GEMM rate {result['gemm_median_flops'] / 1e9:.1f} GFLOP/s (median of probes "
        f"between steps); {result['train_flops'] / 1e9:.0f} GFLOP per step (3 x forward).",
        "",
    ]
    header = ["variant", "median s", "best s", "vs adamw (median ratio)", "vs adamw (best runs)"]
    header += ["achieved GFLOP/s", "fraction of concurrent GEMM", "peak RSS MiB"]
    rows = [
        [
            v,
            f"{row['median_s']:.2f}",
            f"{row['best_s']:.2f}",
            f"{row['ratio_vs_adamw']:.2f}x",
            f"{row['best_ratio_vs_adamw']:.2f}x",
            f"{row['achieved_flops'] / 1e9:.1f}",
            f"{row['fraction_of_concurrent_gemm']:.0%}",
            str(row.get("peak_rss_mib", "-")),
        ]
        for v, row in result["variants"].items()
    ]
    lines += [*table(header, rows), ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
