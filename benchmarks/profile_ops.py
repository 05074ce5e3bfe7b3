"""Where the time goes: a torch.profiler run grouped into a few readable categories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

# aten op names (without "aten::") by prefix; the first matching category wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("GEMM (linear, matmul)", ("addmm", "mm", "bmm", "baddbmm", "matmul", "linear", "_addmm_activation")),
    ("convolution", ("mkldnn_convolution", "convolution", "_convolution", "conv", "_slow_conv", "thnn_conv")),
    ("window/semantic attention kernels", ("_scaled_dot_product", "scaled_dot_product", "_softmax", "softmax")),
    ("bilinear resize", ("upsample", "_upsample")),
    (
        "normalisation",
        ("native_layer_norm", "layer_norm", "native_batch_norm", "batch_norm", "_native_batch_norm", "_batch_norm"),
    ),
    (
        "copies / layout / gathers",
        (
            "copy_",
            "cat",
            "index",
            "clone",
            "contiguous",
            "roll",
            "constant_pad_nd",
            "_to_copy",
            "gather",
            "pad",
            "fill_",
            "zero_",
            "zeros",
            "empty",
            "repeat",
        ),
    ),
    (
        "elementwise",
        ("add", "mul", "gelu", "relu", "clamp_min", "where", "div", "sub", "masked_fill", "threshold", "neg", "exp"),
    ),
]


def categorise(op: str) -> str:
    name = op.split("::", 1)[-1]
    for category, prefixes in CATEGORIES:
        if any(name.startswith(p) for p in prefixes):
            return category
    return "other"


def profile_inference(run: Callable[[], Any], device: torch.device, top: int = 15) -> dict[str, Any]:
    """Profile one call of ``run``; self time per category and the ``top`` ops by self time (ms)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr) / 1e3, e.count) for e in prof.key_averages()]
    rows = [r for r in rows if r[1] > 0]
    total = sum(r[1] for r in rows)
    categories: dict[str, float] = {}
    for key, ms, _ in rows:
        categories[categorise(key)] = categories.get(categorise(key), 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    return {
        "total_self_ms": total,
        "categories_ms": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "top_ops": [{"op": k, "self_ms": ms, "calls": n} for k, ms, n in rows[:top]],
    }
