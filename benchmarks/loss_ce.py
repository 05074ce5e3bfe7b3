"""The paper's cross-entropy with its backward: literal (resize to the labels, then CE) vs banded.

Logits (B, K, H/4, W/4) and labels (B, H, W) at 512x512, K=150, batch 2, some pixels ignored.
``literal`` resizes the logits to the label size (the model's own resize) and takes
``F.cross_entropy``; ``banded`` is :func:`semask.models.upsampled_ce.upsampled_cross_entropy`
(value and gradient in one pass over bands of rows). Runs alternate in one process; the
figure is the median of per-round ratios. The process runs on glibc's malloc tuned as
``semask train`` runs it (``--default-allocator``: glibc's defaults, under which the literal
loss's full-size temporaries are faulted in again on every call). Usage:
    python benchmarks/loss_ce.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from measure import configure_allocator

from semask.models.segmenter import resize
from semask.models.upsampled_ce import upsampled_cross_entropy

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--default-allocator", action="store_true", help="leave glibc malloc at its defaults")
    args = p.parse_args()
    allocator = configure_allocator(args.default_allocator)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logits = torch.randn(2, 150, 128, 128)
    labels = torch.randint(0, 150, (2, 512, 512))
    labels[:, :32] = 255

    def with_grad(loss_of: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def run() -> tuple[torch.Tensor, torch.Tensor]:
            x = logits.clone().requires_grad_()
            loss = loss_of(x)
            loss.backward()
            return loss.detach(), x.grad

        return run

    literal = with_grad(lambda x: F.cross_entropy(resize(x, (512, 512)), labels, ignore_index=255, reduction="sum"))
    banded = with_grad(lambda x: upsampled_cross_entropy(x, labels, 255))
    (a, grad_a), (b, grad_b) = literal(), banded()
    times: dict[str, list[float]] = {"literal": [], "banded": []}
    for r in range(args.rounds):
        for name, fn in sorted((("literal", literal), ("banded", banded)), reverse=bool(r % 2)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratios = [t / u for t, u in zip(times["banded"], times["literal"])]
    result = {
        "literal_median_s": statistics.median(times["literal"]),
        "banded_median_s": statistics.median(times["banded"]),
        "banded_over_literal": statistics.median(ratios),
        "loss_relative_difference": abs(a.item() - b.item()) / abs(a.item()),
        "grad_max_abs_difference": (grad_a - grad_b).abs().max().item(),
        "rounds": args.rounds,
        "threads": args.threads,
        "allocator": allocator,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loss_ce_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        "# Cross-entropy + backward, K=150, 512x512, batch 2 (CPU)\n\n"
        f"`python benchmarks/loss_ce.py --rounds {args.rounds}`, {args.threads} threads, {allocator}, "
        "alternating in one process.\n\n"
        "| loss | median s | banded / literal (median ratio) |\n|---|---:|---:|\n"
        f"| literal (resize, then CE) | {result['literal_median_s']:.3f} | |\n"
        f"| banded (upsampled_ce) | {result['banded_median_s']:.3f} | {result['banded_over_literal']:.2f}x |\n\n"
        f"Loss relative difference {result['loss_relative_difference']:.1e}; gradient max abs difference "
        f"{result['grad_max_abs_difference']:.1e}.\n"
    )
    (args.out / "loss_ce_cpu.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
