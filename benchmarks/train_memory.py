"""Peak training memory (RSS) of one SeMask step with and without gradient checkpointing.

Each setting runs in a fresh subprocess (peak RSS is per process): forward with labels
(L1 + 0.4 L2), backward, AdamW step, with glibc's malloc tuned as ``semask train`` runs it
(``--default-allocator``: glibc's defaults; benchmarks/measure.py). Usage:
    python benchmarks/train_memory.py --model semask_swin_t_fpn --sizes 512 1024 --batch 2 --out mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def one_step(model_name: str, size: int, batch: int, checkpointing: bool) -> dict:
    import torch

    import semask

    torch.manual_seed(0)
    model = semask.create_model(model_name, num_classes=150).train()
    model.set_grad_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 150, (batch, size, size))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    model(images, labels=labels, upsample_logits=False).loss.backward()  # as the trainer calls it
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model_name,
        "size": size,
        "batch": batch,
        "checkpointing": checkpointing,
        "peak_rss_mib": round(peak),
        "before_step_mib": round(base),
        "step_s": round(seconds, 2),
    }


def measure(model_name: str, sizes: list[int], batch: int) -> list[dict]:
    """Fresh-process peak RSS for every (size, checkpointing) pair."""
    rows = []
    for size in sizes:
        for ckpt in (False, True):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--model",
                model_name,
                "--sizes",
                str(size),
                "--batch",
                str(batch),
            ] + (["--checkpointing"] if ckpt else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| model | size | batch | checkpointing | peak RSS MiB | step s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size']} | {r['batch']} | {'on' if r['checkpointing'] else 'off'} | "
            f"{r['peak_rss_mib']:,} | {r['step_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="semask_swin_t_fpn")
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--default-allocator", action="store_true", help="leave glibc malloc at its defaults")
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_step(args.model, args.sizes[0], args.batch, args.checkpointing)))
        return
    from measure import configure_allocator  # the children inherit the setting

    allocator = configure_allocator(args.default_allocator)
    print(f"allocator: {allocator}")
    rows = [{**row, "allocator": allocator} for row in measure(args.model, args.sizes, args.batch)]
    print(to_markdown(rows))
    if args.out:
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
