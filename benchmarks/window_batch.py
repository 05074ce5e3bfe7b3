"""Sliding-window inference, one window per forward pass against ``window_batch`` windows at once.

SeMask-T FPN (K=150, random weights) segments a 512 x 1024 image by sliding 512 x 512 windows
with stride 341 (the ADE20K slide protocol): 3 windows. Variants (``--batches``, default 1 and
3) alternate in one process, rounds rotating the order; reported are median times, the ratio
to one window at a time, the largest logit difference and the share of pixels whose class
differs, and (``--memory``) the peak RSS of one prediction per variant. Usage:
    python benchmarks/window_batch.py --rounds 3 --memory
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from measure import configure_allocator, peak_memory  # noqa: E402
from report import table  # noqa: E402

import semask  # noqa: E402
from semask.engine.inference import _forward  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="semask_swin_t_fpn")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--stride", type=int, default=341)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 3])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory", action="store_true", help="also the peak RSS of one prediction per variant")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    allocator = configure_allocator(args.device != "cpu")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = semask.create_model(args.model, num_classes=args.num_classes).to(device).eval()
    x = torch.randn(1, 3, *args.size, device=device)

    def run(batch: int) -> torch.Tensor:
        with torch.inference_mode():
            return _forward(model, x, "slide", args.crop, args.stride, args.num_classes, window_batch=batch)

    reference = run(1)  # warm-up, and the logits every variant is compared with
    memory = {}
    if args.memory and device.type == "cpu":
        for batch in args.batches:
            with peak_memory(device) as mem:
                run(batch)
            memory[batch] = round(mem.increase_mib)
    outputs = {b: run(b) for b in args.batches}  # warm-up of each batch size
    times: dict[int, list[float]] = {b: [] for b in args.batches}
    load_start = os.getloadavg()
    for r in range(args.rounds):
        order = args.batches[r % len(args.batches) :] + args.batches[: r % len(args.batches)]
        for b in order:
            start = time.perf_counter()
            run(b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[b].append(time.perf_counter() - start)
        print({b: round(t[-1], 3) for b, t in times.items()}, flush=True)
    labels = reference.argmax(1)
    result = {
        "model": args.model,
        "num_classes": args.num_classes,
        "size": list(args.size),
        "crop": args.crop,
        "stride": args.stride,
        "windows": len(semask.engine.inference.slide_windows(tuple(args.size), args.crop, args.stride)),
        "device": args.device,
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "allocator": allocator,
        "load_average": [load_start, os.getloadavg()],
        "variants": {},
    }
    for b in args.batches:
        ratios = [t / t1 for t, t1 in zip(times[b], times[args.batches[0]])]
        result["variants"][str(b)] = {
            "median_s": statistics.median(times[b]),
            "best_s": min(times[b]),
            "runs_s": times[b],
            "ratio_vs_first": statistics.median(ratios),
            "max_abs_logit_diff": float((outputs[b] - reference).abs().max()),
            "max_abs_logit": float(reference.abs().max()),
            "pixels_with_another_class": float((outputs[b].argmax(1) != labels).float().mean()),
            **({"peak_rss_increase_mib": memory[b]} if b in memory else {}),
        }
    stem = f"window_batch_{device.type}" + (f"_{args.threads}t" if device.type == "cpu" else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result, " ".join(sys.argv[1:])) + "\n")
    print(markdown(result, " ".join(sys.argv[1:])))


def markdown(result: dict, flags: str) -> str:
    first = next(iter(result["variants"]))
    lines = [
        f"# Sliding-window batching, {result['model']}, K={result['num_classes']}, "
        f"{result['size'][0]}x{result['size'][1]} image, {result['windows']} windows of {result['crop']}, "
        f"stride {result['stride']} ({result['device']}, {result['threads']} threads)",
        "",
        f"`python benchmarks/window_batch.py {flags}`; torch {result['torch']}; {result['allocator']}. "
        f"Variants alternate in one process, {result['rounds']} rounds; load average "
        f"{result['load_average'][0][0]:.1f} -> {result['load_average'][1][0]:.1f} (a shared machine: the "
        "ratio, a median of per-round ratios, is the figure). Differences are against one window at a time.",
        "",
    ]
    rows = [
        [
            b,
            f"{v['median_s']:.2f}",
            f"{v['best_s']:.2f}",
            f"{v['ratio_vs_first']:.2f}x",
            f"{v['max_abs_logit_diff']:.1e} (of {v['max_abs_logit']:.1f})",
            f"{100 * v['pixels_with_another_class']:.4f} %",
            str(v.get("peak_rss_increase_mib", "-")),
        ]
        for b, v in result["variants"].items()
    ]
    header = ["window_batch", "median s", "best s", f"vs window_batch={first}", "max abs logit diff"]
    header += ["pixels with another class", "peak RSS increase MiB"]
    return "\n".join(lines + table(header, rows))


if __name__ == "__main__":
    main()
