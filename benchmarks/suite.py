"""What the benchmark measures, model by model (see run.py for the command line)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from measure import (
    GemmProbe,
    PeakMemory,
    Timing,
    count_forward_flops,
    gemm_peak_flops,
    machine_info,
    peak_memory,
    synchronize,
    time_fn,
)
from profile_ops import profile_inference
from torch import nn

import semask

# (warm-up runs, timed runs) per measurement; the first warm-up run also measures peak memory.
# With 0 warm-up runs the memory run is also the (first) timed run.
REPEATS = {
    "latency": {False: (2, 10), True: (1, 3)},
    "batch": {False: (1, 3), True: (0, 1)},
    "train": {False: (2, 5), True: (1, 1)},
}


def scaling_repeats(size: int, quick: bool) -> tuple[int, int]:
    if size >= 2048:
        return 1, 1
    if size >= 1024:
        return 1, 2
    return (1, 2) if quick else (1, 5)


class Runner:
    """Everything that depends on device and precision: building, autocast, inputs, timing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda given but torch.cuda.is_available() is False")
        amp = args.amp or ("bf16" if self.device.type == "cuda" else "none")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.amp_name = amp if amp != "none" else "fp32"
        self.num_classes = args.num_classes
        self.quick = args.quick

    def build(self, name: str) -> nn.Module:
        return semask.create_model(name, num_classes=self.num_classes)

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def images(self, batch: int, size: int) -> torch.Tensor:
        return torch.randn(batch, 3, size, size, device=self.device)

    def measure(
        self, step: Callable[[], None], warmup: int, repeats: int, between: Callable[[], None] | None = None
    ) -> tuple[Timing, PeakMemory]:
        """Peak memory of a first run (which is also the first warm-up), then the timed runs."""
        with peak_memory(self.device) as mem:
            start = time.perf_counter()
            step()
            synchronize(self.device)
            first = time.perf_counter() - start
        if warmup == 0:
            return Timing([first, *time_fn(step, self.device, 0, repeats - 1, between).times]), mem
        return time_fn(step, self.device, warmup - 1, repeats, between), mem

    def inference_step(self, model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode(), self.autocast():
                model(x)

        return step


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    runner = Runner(args)
    device = runner.device
    results: dict[str, Any] = {
        "machine": machine_info(device, torch.get_num_threads()),
        "settings": {"quick": args.quick, "num_classes": args.num_classes, "amp": runner.amp_name},
        "gemm": {"start": gemm_peak_flops(device)},
        "models": {},
    }
    if device.type == "cuda":
        results["gemm"]["bf16"] = gemm_peak_flops(device, torch.bfloat16)
    print(f"fp32 GEMM peak: {results['gemm']['start']['peak_flops'] / 1e9:.1f} GFLOP/s", flush=True)
    sizes = args.sizes or ([256, 512] if args.quick else [256, 512, 768, 1024, 2048])
    for name in args.models:
        results["models"][name] = benchmark_model(runner, name, sizes, args)
    # A second GEMM measurement: the peak is the best of both, so a busy moment at the
    # start of a run cannot inflate the achieved fractions.
    results["gemm"]["end"] = gemm_peak_flops(device)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    peak = max(
        [results["gemm"]["start"]["peak_flops"], results["gemm"]["end"]["peak_flops"]]
        + [e["inference_512"]["concurrent_gemm_best_flops"] for e in results["models"].values()]
    )
    results["gemm"]["peak_flops"] = peak
    bf16_peak = results["gemm"].get("bf16", {}).get("peak_flops")
    for entry in results["models"].values():
        add_fractions(entry, peak, bf16_peak)
    return results


def add_fractions(entry: dict[str, Any], peak: float, bf16_peak: float | None) -> None:
    """Achieved FLOP/s (full count / median time) as fractions of the measured peak."""
    for key, images in (("inference_512", 1), ("batch8_512", 8)):
        row = entry[key]
        row["achieved_flops"] = images * entry["flops_512"] / row["median_s"]
        row["fraction_of_peak"] = row["achieved_flops"] / peak
    inf = entry["inference_512"]
    inf["fraction_of_concurrent_gemm"] = inf["achieved_flops"] / inf["concurrent_gemm_flops"]
    train = entry["train"]
    train["achieved_flops"] = train["flops"] / train["median_s"]
    train_peak = bf16_peak if bf16_peak and train["amp"] != "fp32" else peak
    train["fraction_of_peak"] = train["achieved_flops"] / train_peak
    for row in entry["scaling"]:
        row["achieved_flops"] = row["flops"] / row["median_s"]
        row["fraction_of_peak"] = row["achieved_flops"] / peak


def benchmark_model(runner: Runner, name: str, sizes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    device, quick = runner.device, runner.quick
    print(f"== {name}", flush=True)
    torch.manual_seed(0)
    model = runner.build(name).to(device).eval()
    build = lambda: runner.build(name)  # noqa: E731  (meta-device FLOP counting)
    entry: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "flops_512": count_forward_flops(build, (1, 3, 512, 512)),
    }

    x = runner.images(1, 512)
    probe = GemmProbe(device)
    timing, mem = runner.measure(runner.inference_step(model, x), *REPEATS["latency"][quick], between=probe)
    entry["inference_512"] = {
        **timing.as_dict(),
        "memory": mem.as_dict(),
        "concurrent_gemm_flops": statistics.median(probe.rates),
        "concurrent_gemm_best_flops": max(probe.rates),
    }
    del probe
    print(
        f"  latency 512: {timing.median * 1e3:.0f} ms (best {timing.best * 1e3:.0f}), "
        f"{entry['flops_512'] / timing.median / 1e9:.1f} GFLOP/s, peak {mem.peak_mib:.0f} MiB",
        flush=True,
    )
    entry["profile_512"] = profile_inference(runner.inference_step(model, x), device)

    xb = runner.images(8, 512)
    timing, mem = runner.measure(runner.inference_step(model, xb), *REPEATS["batch"][quick])
    entry["batch8_512"] = {**timing.as_dict(), "images_per_s": 8 / timing.median, "memory": mem.as_dict()}
    print(f"  batch 8: {8 / timing.median:.2f} img/s, peak {mem.peak_mib:.0f} MiB", flush=True)
    del xb

    entry["train"] = benchmark_training(runner, name)
    entry["train"]["flops"] = 3 * entry["train"]["batch"] * entry["flops_512"]  # fwd + bwd = 3 x fwd
    print(f"  train step (batch {entry['train']['batch']}): {entry['train']['median_s']:.2f} s", flush=True)

    entry["scaling"] = []
    for size in sizes:
        xs = runner.images(1, size)
        timing, mem = runner.measure(runner.inference_step(model, xs), *scaling_repeats(size, quick))
        row = {
            "size": size,
            "flops": count_forward_flops(build, (1, 3, size, size)),
            **timing.as_dict(),
            "memory": mem.as_dict(),
        }
        entry["scaling"].append(row)
        print(
            f"  {size}x{size}: {timing.median * 1e3:.0f} ms, peak {mem.peak_mib:.0f} MiB (+{mem.increase_mib:.0f})",
            flush=True,
        )
        del xs

    if args.compile:
        entry["compiled_512"] = benchmark_compiled(runner, model, x)
    # The ONNX export takes ~30 s per model on 2 cores, so --quick compares the first model only.
    if not args.no_onnx and device.type == "cpu" and (not quick or name == args.models[0]):
        entry["onnx_512"] = benchmark_onnx(model, x, args.threads, quick)
    return entry


def benchmark_training(runner: Runner, name: str, batch: int | None = None, crop: int = 512) -> dict[str, Any]:
    """One optimiser step (forward with both losses, backward, AdamW) at the paper's crop
    (batch: 8 on a GPU, 2 on a CPU unless given)."""
    device = runner.device
    batch = batch or (8 if device.type == "cuda" else 2)
    torch.manual_seed(0)
    model = runner.build(name).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)  # as the trainer
    scaler = torch.amp.GradScaler(device.type, enabled=runner.amp_dtype is torch.float16)
    x = runner.images(batch, crop)
    labels = torch.randint(0, runner.num_classes, (batch, crop, crop), device=device)
    labels[:, :32] = 255  # some ignored pixels, as in padded crops

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with runner.autocast():
            loss = model(x, labels).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    timing, mem = runner.measure(step, *REPEATS["train"][runner.quick])
    return {
        "batch": batch,
        "crop": crop,
        "amp": runner.amp_name,
        **timing.as_dict(),
        "images_per_s": batch / timing.median,
        "memory": mem.as_dict(),
    }


def benchmark_compiled(runner: Runner, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    compiled = torch.compile(model)
    step = runner.inference_step(compiled, x)
    start = time.perf_counter()
    step()  # compilation
    synchronize(runner.device)
    compile_s = time.perf_counter() - start
    timing = time_fn(step, runner.device, 1, REPEATS["latency"][runner.quick][1])
    return {**timing.as_dict(), "compile_s": compile_s}


def benchmark_onnx(model: nn.Module, x: torch.Tensor, threads: int, quick: bool) -> dict[str, Any]:
    """onnxruntime CPU latency of the exported logits graph, and its agreement with PyTorch."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install semask[onnx])"}
    from semask.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", size=tuple(x.shape[-2:]), verify=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        warmup, repeats = REPEATS["latency"][quick]
        timing = time_fn(lambda: session.run(None, feed), torch.device("cpu"), warmup, repeats)
        onnx_logits = torch.from_numpy(session.run(None, feed)[0])
    with torch.inference_mode():
        torch_logits = model(x).logits.float().cpu()
    return {
        **timing.as_dict(),
        "max_abs_diff_vs_torch": float((onnx_logits - torch_logits).abs().max()),
        "max_abs_logit": float(torch_logits.abs().max()),
        "onnxruntime": ort.__version__,
    }


def latency_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Child-process mode: only the 512x512 batch-1 latency of each model."""
    runner = Runner(args)
    out: dict[str, Any] = {}
    for name in args.models:
        torch.manual_seed(0)
        model = runner.build(name).to(runner.device).eval()
        timing, mem = runner.measure(
            runner.inference_step(model, runner.images(1, 512)), *REPEATS["latency"][args.quick]
        )
        out[name] = {**timing.as_dict(), "memory": mem.as_dict()}
    return out
