"""Every CUDA path of semask in one run: pass / fail per path, precision against fp32, speed, memory.

    python benchmarks/gpu_check.py                 # a GPU machine (about 4-6 minutes on one H100)
    python benchmarks/gpu_check.py --cpu-dry-run   # tiny sizes, CPU, no AMP, gloo (CI, so it cannot rot)

Checks, in order (a check not started within ``--budget-s`` is reported as skipped; ``--only
PREFIX`` reruns some):

* ``gemm``: the fp32 (TF32 off) and bf16 matmul rates of this device, the denominators of MFU.
* ``mfu/<model>``: bf16 training steps of SeMask-T and SeMask-L FPN at 512x512, batch 8 (halved
  until it fits), K=150 (``benchmarks/suite.py``'s step), images/s, peak memory and model FLOPs
  (3 x forward, full count) per second as a fraction of the bf16 GEMM rate of this run.
* ``banded_ce``: the banded cross-entropy (semask/models/upsampled_ce.py) at its GPU band of 2^26
  floats against the literal resize + CE, value and gradient, K=150 training shapes; time and memory.
* ``deform_attn/<variant>``: the Mask2Former pixel decoders (deformable attention; MSFaPN adds the
  modulated deformable convolution) in fp32 on the device against the CPU (the decoder runs in fp32
  by design, also under autocast, which is checked too), forward and gradients; the deformable
  sampling core (``grid_sample``) against float64.
* ``channels_last``: a SeMask-T FPN training step with channels-last weights and input against the
  contiguous one (loss and gradients, fp32), and the bf16 loss both ways.
* ``ddp``: a 1-process NCCL group (gloo in the dry run); the model converted to SyncBN and wrapped
  in DDP as ``semask.engine.distributed.prepare_model`` does for several GPUs (it leaves one process
  unwrapped), one step against the plain model. With one rank SyncBN falls back to BatchNorm, so
  ``syncbn_kernels`` also runs torch's SyncBN autograd function on the 1-rank group (the CUDA
  statistics, all-gather and backward kernels) against ``F.batch_norm``. The trainer's per-step
  stop agreement (``agree_stop``) on the gloo group ``gloo_group`` makes beside NCCL: it must agree
  while a GPU kernel still runs (no CUDA sync).
* ``train/<family>/<precision>``: the trainer itself (``semask.engine.trainer.train``) on synthetic
  scenes for SeMask Swin-T FPN, SeMask MiT-B2 and SeMask Swin-T Mask2Former, in fp32, fp16 (GradScaler
  with clipping through ``unscale_``) and bf16, each with its evaluation and checkpoint; the first
  iteration's loss (same weights, same batch) against fp32; ``.../ckpt`` adds gradient checkpointing
  to the bf16 run (loss against the bf16 run, peak memory).
* ``eval_amp``: ``evaluate`` and ``predict_folder`` under bf16 / fp16 autocast (as ``semask eval`` /
  ``predict --amp`` run them), sliding windows batched: probabilities against fp32.
* ``window_batch``: sliding-window inference of a 1024x2048 image (18 windows) one window per pass
  against the default batch (``auto_window_batch``), fp32 and bf16: equality and time.

The dry run trains fp32 only (no AMP on a CPU) and checkpointing for the FPN family only: it runs
every function of the script once, in seconds.
fp32 references run with TF32 off (``torch.backends.{cuda.matmul,cudnn}.allow_tf32 = False``).
Tolerances are stated per check (``TOLERANCES``); they have not been calibrated on a GPU yet. Writes
``gpu_check_cuda.{json,md}`` (or ``gpu_check_cpu_dry_run.*``) to ``--out``; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from measure import count_forward_flops, gemm_peak_flops, machine_info, peak_memory, synchronize  # noqa: E402
from report import table  # noqa: E402

import semask  # noqa: E402

#: (relative) tolerances; "rel" = max |a - b| / max |reference|.
TOLERANCES = {
    "fp32": 1e-4,  # fp32 vs float64 or vs another fp32 kernel order (TF32 off)
    "fp32_grad": 1e-3,  # gradients pass through more reductions
    "fp16_loss": 1e-2,  # first-iteration loss vs fp32 (a mean: rounding errors average out)
    "bf16_loss": 3e-2,  # 8 significant bits against fp16's 11
    "fp16_logits": 2e-2,  # the worst logit vs fp32, relative to the largest
    "bf16_logits": 1e-1,
    "fp16_probs": 5e-3,  # max |probability difference| vs fp32
    "bf16_probs": 2e-2,
    "ckpt_loss": 1e-3,  # gradient checkpointing recomputes the same forward
}
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# tiny models of the dry run (the test suite's sizes: tests/conftest.py)
_TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), decoder_channels=16, drop_path_rate=0.0)
_MIT_TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 3, 4), decoder_channels=16)
_M2F_TINY = dict(
    embed_dim=32,
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 4, 8),
    window_size=4,
    hidden_dim=32,
    mask_dim=32,
    num_queries=8,
    decoder_heads=4,
    decoder_ffn_dim=64,
    encoder_ffn_dim=64,
    encoder_layers=2,
    dec_layers=3,
)


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU check, or the CPU dry run that exercises the same code."""

    device: torch.device
    dry_run: bool
    precisions: tuple[str, ...]  # training precisions; the dry run trains fp32 only (no AMP on a CPU)
    families: dict[str, tuple[str, dict[str, Any]]]
    data_size: int
    crop: int
    batch: int
    iters: int
    num_workers: int
    num_classes: int  # K of the synthetic-free checks (the training data has its own 6 classes)
    ce_logits: tuple[int, int, int, int]  # (B, K, h, w) stride-4 logits of the banded CE
    slide_image: tuple[int, int]
    slide_crop: int
    slide_stride: int
    mfu_models: tuple[str, ...]
    mfu_batch: int
    mfu_crop: int
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per preset (dry run)

    def build(self, name: str, num_classes: int | None = None) -> nn.Module:
        return semask.create_model(name, num_classes=num_classes or self.num_classes, **self.overrides.get(name, {}))

    @property
    def amp(self) -> tuple[str, ...]:
        return tuple(p for p in ("bf16", "fp16") if p in self.precisions)


def make_plan(dry_run: bool) -> Plan:
    if dry_run:
        tiny = {"semask_swin_t_fpn": _TINY, "semask_swin_l_fpn": _TINY, "semask_mit_b2": _MIT_TINY}
        tiny |= {"semask_swin_t_mask2former": _M2F_TINY, "semask_swin_t_mask2former_msfapn": _M2F_TINY}
        return Plan(
            device=torch.device("cpu"),
            dry_run=True,
            precisions=("fp32",),
            families={
                "fpn": ("semask_swin_t_fpn", _TINY),
                "mit": ("semask_mit_b2", _MIT_TINY),
                "mask2former": ("semask_swin_t_mask2former", _M2F_TINY),
            },
            data_size=64,
            crop=48,
            batch=2,
            iters=1,
            num_workers=0,
            num_classes=8,
            ce_logits=(2, 8, 16, 16),
            slide_image=(96, 128),
            slide_crop=48,
            slide_stride=32,
            mfu_models=("semask_swin_t_fpn", "semask_swin_l_fpn"),
            mfu_batch=2,
            mfu_crop=64,
            overrides=tiny,
        )
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible; run with --cpu-dry-run for the CPU dry run")
    return Plan(
        device=torch.device("cuda", torch.cuda.current_device()),
        dry_run=False,
        precisions=("fp32", "fp16", "bf16"),
        families={
            "fpn": ("semask_swin_t_fpn", {}),
            "mit": ("semask_mit_b2", {}),
            "mask2former": ("semask_swin_t_mask2former", {}),
        },
        data_size=512,
        crop=512,
        batch=4,
        iters=4,
        num_workers=4,
        num_classes=150,
        ce_logits=(8, 150, 128, 128),
        slide_image=(1024, 2048),
        slide_crop=512,
        slide_stride=341,
        mfu_models=("semask_swin_t_fpn", "semask_swin_l_fpn"),
        mfu_batch=8,
        mfu_crop=512,
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def grads_rel(a: nn.Module, b: nn.Module) -> float:
    """The worst :func:`rel` over parameters with gradients."""
    worst = 0.0
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pb.grad is not None and float(pb.grad.abs().max()) > 0:
            if pa.grad is None:
                raise AssertionError(f"{name} has no gradient in the variant")
            worst = max(worst, rel(pa.grad, pb.grad))
    return worst


def autocast(plan: Plan, precision: str) -> Any:
    from semask.engine.amp import autocast as semask_autocast

    return semask_autocast(plan.device, None if plan.dry_run else PRECISIONS[precision])


def timed(fn: Callable[[], Any], plan: Plan, repeats: int = 1) -> tuple[Any, float]:
    """``fn()``'s result and its median wall time over ``repeats`` runs (device synchronised)."""
    times, out = [], None
    for _ in range(repeats):
        synchronize(plan.device)
        start = time.perf_counter()
        out = fn()
        synchronize(plan.device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def verdict(checks: dict[str, bool]) -> str:
    return "pass" if all(checks.values()) else "fail: " + ", ".join(k for k, ok in checks.items() if not ok)


# ----------------------------------------------------------------------------- checks


def check_gemm(plan: Plan, state: dict[str, Any]) -> dict[str, Any]:
    n = 512 if plan.dry_run else 8192
    fp32 = gemm_peak_flops(plan.device, torch.float32, n=n)["peak_flops"]
    out = {"fp32_flops": fp32, "compared": f"{n}^3 matmul, best of 5"}
    if not plan.dry_run:
        out["bf16_flops"] = gemm_peak_flops(plan.device, torch.bfloat16, n=n)["peak_flops"]
    state["gemm"] = out.get("bf16_flops", fp32)  # the MFU denominator (fp32 in the dry run: no AMP)
    out["status"] = "pass" if fp32 > 0 else "fail"
    return out


def check_banded_ce(plan: Plan, state: dict[str, Any]) -> dict[str, Any]:
    from semask.models.upsampled_ce import upsampled_cross_entropy

    b, k, h, w = plan.ce_logits
    torch.manual_seed(0)
    logits = torch.randn(b, k, h, w, device=plan.device, requires_grad=True)
    labels = torch.randint(0, k, (b, 4 * h, 4 * w), device=plan.device)
    labels[:, : 4 * h // 8] = 255

    def banded() -> torch.Tensor:
        logits.grad = None
        loss = upsampled_cross_entropy(logits, labels, band_elements=1 << 26)  # the GPU band, also in the dry run
        loss.backward()
        return loss.detach()

    def literal() -> torch.Tensor:
        logits.grad = None
        full = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(full, labels, ignore_index=255, reduction="sum")
        loss.backward()
        return loss.detach()

    with peak_memory(plan.device) as mem_banded:
        value, t_banded = timed(banded, plan, repeats=3)
    grad = logits.grad.clone()
    with peak_memory(plan.device) as mem_literal:
        reference, t_literal = timed(literal, plan, repeats=3)
    value_rel, grad_rel = rel(value, reference), rel(grad, logits.grad)
    return {
        "status": verdict({"value": value_rel <= TOLERANCES["fp32"], "grad": grad_rel <= TOLERANCES["fp32"]}),
        "compared": f"banded vs literal CE, logits {tuple(plan.ce_logits)} -> {tuple(labels.shape[-2:])}",
        "value_rel": value_rel,
        "grad_rel": grad_rel,
        "tolerance": TOLERANCES["fp32"],
        "seconds_banded": t_banded,
        "seconds_literal": t_literal,
        "peak_mib": mem_banded.peak_mib,
        "peak_mib_literal": mem_literal.peak_mib,
    }


def _pixel_decoder_inputs(model: nn.Module, plan: Plan) -> list[torch.Tensor]:
    size = min(plan.crop, 256)  # features of a 256x256 input: the CPU reference stays a few seconds
    channels = model.backbone.num_features
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, c, size // 2 ** (i + 2), size // 2 ** (i + 2), generator=g) for i, c in enumerate(channels)]


def check_deform_attn(plan: Plan, variant: str) -> dict[str, Any]:
    from semask.models.mask2former.ops import ms_deform_attn

    torch.manual_seed(0)
    model = plan.build(variant, num_classes=plan.num_classes)
    decoder = model.sem_seg_head.pixel_decoder
    with torch.no_grad():  # off the zero-offset, uniform-weight init: every sampling path matters
        for p in decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    features = _pixel_decoder_inputs(model, plan)

    def run(device: torch.device, precision: str = "fp32") -> Any:
        module = copy.deepcopy(decoder).to(device).train()
        inputs = [f.to(device).requires_grad_(True) for f in features]
        with autocast(plan, precision) if device == plan.device else torch.autocast("cpu", enabled=False):
            mask_features, outs = module(inputs)
        g = torch.Generator().manual_seed(2)
        weights = [torch.randn(o.shape, generator=g).to(device) for o in [mask_features, *outs]]
        sum((o.float() * wt).sum() for o, wt in zip([mask_features, *outs], weights)).backward()
        return mask_features.detach(), [x.grad for x in inputs], module

    # the decoder runs in float32 by design (as the official code), so its reference is the CPU
    ref_out, ref_grads, ref_module = run(torch.device("cpu"))
    (out, grads, module), seconds = timed(lambda: run(plan.device), plan)
    # the sampling core itself (grid_sample) against float64
    g = torch.Generator().manual_seed(4)
    shapes = [(8, 10), (4, 5)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8, generator=g, dtype=torch.float64)
    locations = torch.rand(2, 30, 4, len(shapes), 4, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(2, 30, 4, len(shapes), 4, generator=g, dtype=torch.float64)
    core64 = ms_deform_attn(value, shapes, locations, weights)
    core = ms_deform_attn(
        *(t.float().to(plan.device) for t in (value,)),
        shapes,
        locations.float().to(plan.device),
        weights.float().to(plan.device),
    )
    result = {
        "compared": f"pixel decoder of {variant} fp32 on {plan.device.type} vs the CPU (it runs in fp32 by "
        "design); deformable sampling core vs float64",
        "out_rel": rel(out, ref_out),
        "input_grad_rel": max(rel(a, b) for a, b in zip(grads, ref_grads)),
        "param_grad_rel": grads_rel(module, ref_module),
        "core_vs_float64_rel": rel(core, core64),
        "tolerance": TOLERANCES["fp32"],
        "tolerance_grad": TOLERANCES["fp32_grad"],
        "seconds": seconds,
    }
    ok = {
        "output": result["out_rel"] <= TOLERANCES["fp32"],
        "input grads": result["input_grad_rel"] <= TOLERANCES["fp32_grad"],
        "parameter grads": result["param_grad_rel"] <= TOLERANCES["fp32_grad"],
        "core": result["core_vs_float64_rel"] <= TOLERANCES["fp32"],
    }
    for precision in plan.amp:  # autocast is turned off inside the decoder: equal to fp32
        amp_out, _, _ = run(plan.device, precision)
        result[f"{precision}_vs_fp32_rel"] = rel(amp_out, out)
        ok[precision] = result[f"{precision}_vs_fp32_rel"] <= TOLERANCES["fp32"]
    result["status"] = verdict(ok)
    return result


def _train_batch(plan: Plan, batch: int, crop: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 3, crop, crop, generator=g).to(plan.device)
    labels = torch.randint(0, num_classes, (batch, crop, crop), generator=g).to(plan.device)
    labels[:, : crop // 16] = 255
    return x, labels


def seeded(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss as the trainer takes it, with the same dropout draws every call."""
    torch.manual_seed(5)
    return model(x, labels, upsample_logits=False).loss


def check_channels_last(plan: Plan) -> dict[str, Any]:
    torch.manual_seed(0)
    model = plan.build("semask_swin_t_fpn").to(plan.device).train()
    x, labels = _train_batch(plan, 2, plan.crop, plan.num_classes)
    variant = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    loss = seeded(model, x, labels)
    loss.backward()
    loss_cl = seeded(variant, x_cl, labels)
    loss_cl.backward()
    result = {
        "compared": "SeMask-T FPN training step, channels-last weights + input vs contiguous",
        "loss_rel": rel(loss_cl, loss),
        "grad_rel": grads_rel(variant, model),
        "tolerance": TOLERANCES["fp32"],
        "tolerance_grad": TOLERANCES["fp32_grad"],
    }
    ok = {"loss": result["loss_rel"] <= TOLERANCES["fp32"], "grads": result["grad_rel"] <= TOLERANCES["fp32_grad"]}
    for precision in plan.amp:
        with torch.no_grad(), autocast(plan, precision):
            a, b = seeded(model, x, labels), seeded(variant, x_cl, labels)
        result[f"{precision}_loss_rel"] = rel(b, a)
        ok[precision] = result[f"{precision}_loss_rel"] <= TOLERANCES[f"{precision}_loss"]
    result["status"] = verdict(ok)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_ddp(plan: Plan) -> dict[str, Any]:
    import torch.distributed as dist

    backend = "gloo" if plan.dry_run else "nccl"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = plan.build("semask_swin_t_fpn").to(plan.device).train()
        wrapped: nn.Module = copy.deepcopy(plain)
        if plan.device.type == "cuda":  # prepare_model's conversion (SyncBN needs CUDA inputs)
            wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        synced = sum(isinstance(m, nn.SyncBatchNorm) for m in wrapped.modules())
        ids = [plan.device.index] if plan.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
        x, labels = _train_batch(plan, 2, plan.crop, plan.num_classes)
        loss_plain = seeded(plain, x, labels)
        loss_plain.backward()
        loss_ddp = seeded(ddp, x, labels)
        loss_ddp.backward()  # the gradient all-reduce of the DDP reducer
        result = {
            "compared": f"1-rank {backend} DDP step ({synced} SyncBN layers) vs the plain model",
            "backend": backend,
            "loss_rel": rel(loss_ddp, loss_plain),
            "grad_rel": grads_rel(ddp.module, plain),
            "tolerance": TOLERANCES["fp32"],
            "tolerance_grad": TOLERANCES["fp32_grad"],
        }
        ok = {"loss": result["loss_rel"] <= TOLERANCES["fp32"], "grads": result["grad_rel"] <= TOLERANCES["fp32_grad"]}
        ok["stop agreement over gloo, no CUDA sync"] = _agree_stop_on_the_side(plan, backend, result)
        if plan.device.type == "cuda":
            ok["SyncBN"] = synced > 0
        result["status"] = verdict(ok)
        return result
    finally:
        dist.destroy_process_group()


def _agree_stop_on_the_side(plan: Plan, backend: str, result: dict[str, Any]) -> bool:
    """``agree_stop`` over the group ``init_distributed`` makes (a gloo side group beside NCCL,
    the default group under gloo), called while a GPU kernel of about 0.2 s is still running."""
    import torch.distributed as dist

    from semask.engine.distributed import DistInfo, agree_stop, gloo_group

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=plan.device, cpu_group=gloo_group())
    if plan.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda._sleep(300_000_000)  # spins on the GPU; a CUDA sync would wait for it
    agreed = [agree_stop(15, info), agree_stop(0, info)]
    busy = plan.device.type == "cuda" and not torch.cuda.current_stream().query()
    result["stop_group"] = {"backend": dist.get_backend(info.cpu_group), "side": info.cpu_group is not dist.group.WORLD}
    result["stop_agreed"] = agreed
    result["stop_while_gpu_busy"] = busy
    side = result["stop_group"] == {"backend": "gloo", "side": backend != "gloo"}
    return agreed == [15, 0] and side and (busy or plan.device.type != "cuda")


def check_syncbn_kernels(plan: Plan) -> dict[str, Any]:
    if plan.device.type != "cuda":
        return {"status": "skip", "compared": "SyncBN runs on CUDA only (torch refuses CPU inputs)"}
    import torch.distributed as dist
    from torch.nn.modules._functions import SyncBatchNorm as sync_batch_norm

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x = torch.randn(8, 64, 32, 32, device=plan.device) * 3 + 1
        weight = torch.rand(64, device=plan.device) + 0.5
        bias = torch.randn(64, device=plan.device)
        outs, grads, stats = [], [], []
        for synced in (False, True):
            xi, wi, bi = (t.clone().requires_grad_(True) for t in (x, weight, bias))
            mean, var = torch.zeros(64, device=plan.device), torch.ones(64, device=plan.device)
            if synced:  # what SyncBatchNorm.forward runs for world size > 1
                out = sync_batch_norm.apply(xi, wi, bi, mean, var, 1e-5, 0.1, dist.group.WORLD, 1)
            else:
                out = F.batch_norm(xi, mean, var, wi, bi, training=True, momentum=0.1, eps=1e-5)
            (out * torch.linspace(-1, 1, out.numel(), device=plan.device).view_as(out)).sum().backward()
            outs.append(out.detach())
            grads.append([xi.grad, wi.grad, bi.grad])
            stats.append(torch.cat([mean, var]))
        result = {
            "compared": "torch's SyncBN function on a 1-rank NCCL group vs F.batch_norm (training)",
            "out_rel": rel(outs[1], outs[0]),
            "grad_rel": max(rel(a, b) for a, b in zip(grads[1], grads[0])),
            "running_stats_rel": rel(stats[1], stats[0]),
            "tolerance": TOLERANCES["fp32"],
            "tolerance_grad": TOLERANCES["fp32_grad"],
        }
        result["status"] = verdict(
            {
                "output": result["out_rel"] <= TOLERANCES["fp32"],
                "grads": result["grad_rel"] <= TOLERANCES["fp32_grad"],
                "running stats": result["running_stats_rel"] <= TOLERANCES["fp32"],
            }
        )
        return result
    finally:
        dist.destroy_process_group()


def initial_weights(plan: Plan, state: dict[str, Any], family: str) -> Path:
    """The weights every run of ``family`` starts from, saved once: the preset's initialisation,
    except that the layers producing class scores get unit gain (std 1/sqrt(fan-in) instead of
    the presets' 0.01, which keeps a first loss at ln K whatever the precision) and every lambda
    is 0.3 (so the semantic layers contribute): the first loss then shows precision errors."""
    from semask.data.synthetic import CONTEXT_CLASSES

    path = state["tmp"] / f"init_{family}"
    if not path.exists():
        name, overrides = plan.families[family]
        torch.manual_seed(0)
        model = semask.create_model(name, num_classes=len(CONTEXT_CLASSES), **overrides)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.shape[0] == len(CONTEXT_CLASSES):
                    fan_in = module.weight[0].numel()
                    module.weight.normal_(0.0, fan_in**-0.5)
            for param_name, param in model.named_parameters():
                if param_name.endswith("lambda_"):
                    param.fill_(0.3)
        model.save_pretrained(path)
    return path


def train_config(plan: Plan, state: dict[str, Any], family: str, precision: str, ckpt: bool) -> Any:
    from semask.config import ExperimentConfig
    from semask.data.pipelines import pipeline_for

    name = plan.families[family][0]
    amp = not plan.dry_run and precision != "fp32"
    start = str(initial_weights(plan, state, family))
    size = plan.data_size
    resize: dict[str, Any] = {"scale": [size, size], "ratios": [1.0], "ratio_range": None}
    if pipeline_for(semask.get_config(name)).name == "detectron2":  # the mask-classification data path
        resize = {"scale": None, "ratios": None, "ratio_range": None, "short_edges": [size], "max_size": 4 * size}
    raw = {
        "model": {"name": name, "pretrained": start, "grad_checkpointing": ckpt},
        "data": {
            "type": "folder",
            "root": str(state["data"]),
            "train_split": "train",
            "val_split": "val",
            "crop_size": [plan.crop, plan.crop],
            **resize,
            "num_workers": plan.num_workers,
            "check": "none",
        },
        "optim": {"lr": 1e-4, "weight_decay": 0.01},
        "schedule": {"iters": plan.iters, "warmup_iters": 1, "warmup_ratio": 1.0},
        "train": {
            "batch_size": plan.batch,
            "device": plan.device.type,
            "amp": amp,
            "amp_dtype": precision if amp else "bf16",
            "clip_grad": 1.0,  # through scaler.unscale_ with fp16
            "log_interval": 1,
            "eval_interval": plan.iters,
            "ckpt_interval": plan.iters,
            "keep_last": 1,
            "tensorboard": False,
        },
        "eval": {"scale": [4 * size, size]},  # fit for mmseg, short edge for detectron2: the whole image
    }
    return ExperimentConfig.from_dict(raw, f"gpu_check {family} {precision}{' ckpt' if ckpt else ''}")


def check_train(plan: Plan, state: dict[str, Any], family: str, precision: str, ckpt: bool = False) -> dict[str, Any]:
    from semask.engine.checkpoint import load_training_checkpoint
    from semask.engine.trainer import train

    work = state["tmp"] / f"train_{family}_{precision}{'_ckpt' if ckpt else ''}"
    cfg = train_config(plan, state, family, precision, ckpt)
    with peak_memory(plan.device) as mem:
        summary = train(cfg, work, progress=False)
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "train"]
    losses = [r["loss"] for r in steps]
    times = [r["time"] for r in steps[1:]] or [steps[0]["time"]]
    scaler = load_training_checkpoint(work / "checkpoints" / "latest.pth")["scaler"]
    result: dict[str, Any] = {
        "compared": f"trainer, {plan.families[family][0]}, {plan.iters} iteration(s) of batch {plan.batch} "
        f"at {plan.crop}x{plan.crop}",
        "losses": losses,
        "images_per_s": plan.batch / statistics.median(times),
        "peak_mib": mem.peak_mib,
        "mIoU": (summary.get("metrics") or {}).get("mIoU"),
        "scaler_scale": scaler.get("scale") if scaler else None,
    }
    ok = {"finite losses": all(math.isfinite(v) for v in losses), "evaluated": result["mIoU"] is not None}
    if precision == "fp16" and not plan.dry_run:
        ok["scaler stepped"] = bool(scaler) and scaler.get("scale", 0) >= 1.0
    key = (family, precision)
    if ckpt:
        base = state["train"].get(key)
        if base is not None:
            result["loss_1_vs_no_ckpt_rel"] = abs(losses[0] - base["losses"][0]) / abs(base["losses"][0])
            result["tolerance"] = TOLERANCES["ckpt_loss"]
            result["peak_mib_no_ckpt"] = base["peak_mib"]
            ok["loss as without checkpointing"] = result["loss_1_vs_no_ckpt_rel"] <= TOLERANCES["ckpt_loss"]
    else:
        state["train"][key] = result
        reference = state["train"].get((family, "fp32"))
        if precision != "fp32" and reference is not None:
            result["loss_1_vs_fp32_rel"] = abs(losses[0] - reference["losses"][0]) / abs(reference["losses"][0])
            result["tolerance"] = TOLERANCES[f"{precision}_loss"]
            ok["first loss vs fp32"] = result["loss_1_vs_fp32_rel"] <= result["tolerance"]
            result["logits_vs_fp32_rel"] = _logits_rel(plan, state, family, precision)
            result["tolerance_logits"] = TOLERANCES[f"{precision}_logits"]
            ok["logits vs fp32"] = result["logits_vs_fp32_rel"] <= result["tolerance_logits"]
        if family == "fpn" and precision == "fp32":
            state["model_dir"] = summary["model_dir"]
    result["status"] = verdict(ok)
    return result


def _logits_rel(plan: Plan, state: dict[str, Any], family: str, precision: str) -> float:
    """The family's initial model in eval mode under ``precision`` autocast: :func:`rel` of its
    logits against fp32 on one batch (the loss averages errors out; the worst logit does not)."""
    model = semask.load(initial_weights(plan, state, family)).to(plan.device).eval()
    x = _train_batch(plan, 2, plan.crop, 2)[0]
    with torch.inference_mode():
        reference = model(x).logits.float()
        with autocast(plan, precision):
            logits = model(x).logits.float()
    return rel(logits, reference)


def check_eval_amp(plan: Plan, state: dict[str, Any]) -> dict[str, Any]:
    from semask.config import EvalConfig
    from semask.data.datasets import build_dataset
    from semask.engine.evaluate import evaluate
    from semask.engine.inference import predict_image
    from semask.engine.predict import predict_folder

    if "model_dir" not in state:
        return {"status": "skip", "compared": "needs the model of train/fpn/fp32"}
    model = semask.load(state["model_dir"]).to(plan.device)
    dataset = build_dataset("folder", state["data"], "val")
    crop, stride = plan.data_size * 5 // 8, plan.data_size * 3 // 8  # 2 x 2 windows per image, batched
    settings = EvalConfig(scale=None, mode="slide", crop_size=(crop, crop), stride=(stride, stride))
    image = dataset.load_sample(0)[0]
    config = model.config
    result: dict[str, Any] = {"compared": "evaluate / predict_folder / probabilities under autocast vs fp32 (slide)"}
    ok = {}
    probs = {}
    for precision in ("fp32", *plan.amp):
        with autocast(plan, precision):
            metrics = evaluate(model, dataset, settings, progress=False)
            _, seconds = timed(
                lambda p=precision: predict_folder(
                    model,
                    [state["data"] / "images" / "val"],
                    state["tmp"] / f"pred_{p}",
                    progress=False,
                    **settings.predict_options(),
                ),
                plan,
            )
            probs[precision] = torch.from_numpy(
                predict_image(
                    model,
                    image,
                    config.mean,
                    config.std,
                    return_probabilities=True,
                    num_classes=config.num_classes,
                    **settings.predict_options(),
                )[1]
            )
        result[f"{precision}_mIoU"] = metrics["mIoU"]
        result[f"{precision}_predict_images_per_s"] = len(dataset) / seconds
        if precision != "fp32":
            diff = float((probs[precision] - probs["fp32"]).abs().max())
            agree = float((probs[precision].argmax(0) == probs["fp32"].argmax(0)).double().mean())
            result[f"{precision}_max_prob_diff"] = diff
            result[f"{precision}_label_agreement"] = agree
            result[f"{precision}_tolerance"] = TOLERANCES[f"{precision}_probs"]
            ok[precision] = diff <= TOLERANCES[f"{precision}_probs"]
        ok[f"{precision} mIoU"] = math.isfinite(metrics["mIoU"])
    result["images_per_s"] = result["fp32_predict_images_per_s"]
    result["status"] = verdict(ok)
    return result


def check_window_batch(plan: Plan) -> dict[str, Any]:
    from semask.engine.inference import _forward, auto_window_batch, slide_windows

    torch.manual_seed(0)
    model = plan.build("semask_swin_t_fpn").to(plan.device).eval()
    x = torch.randn(1, 3, *plan.slide_image, device=plan.device)
    windows = slide_windows(plan.slide_image, plan.slide_crop, plan.slide_stride)
    auto = auto_window_batch(x, plan.num_classes, windows)
    batch = auto if auto > 1 or not plan.dry_run else 4  # the dry run batches too (a CPU's default is 1)

    def run(window_batch: int) -> torch.Tensor:
        with torch.inference_mode():
            return _forward(model, x, "slide", plan.slide_crop, plan.slide_stride, plan.num_classes, window_batch)

    result: dict[str, Any] = {
        "compared": f"{len(windows)} windows of {plan.slide_crop} on {plan.slide_image}: "
        f"window_batch={batch} (auto: {auto}) vs 1",
        "window_batch": batch,
    }
    ok = {}
    for precision in ("fp32", *plan.amp):
        with autocast(plan, precision):
            if not plan.dry_run:
                run(1), run(batch)  # warm-up (cuDNN autotuning, allocator)
            one, t_one = timed(lambda: run(1), plan, repeats=1 if plan.dry_run else 2)
            batched, t_batched = timed(lambda: run(batch), plan, repeats=1 if plan.dry_run else 2)
        diff = rel(batched, one)
        result[f"{precision}_rel"] = diff
        result[f"{precision}_pixels_with_another_class"] = float((batched.argmax(1) != one.argmax(1)).double().mean())
        result[f"{precision}_seconds_one"] = t_one
        result[f"{precision}_seconds_batched"] = t_batched
        tolerance = TOLERANCES["fp32"] if precision == "fp32" else TOLERANCES[f"{precision}_logits"]
        ok[precision] = diff <= tolerance
    result["tolerance"] = TOLERANCES["fp32"]
    result["images_per_s"] = 1 / result["fp32_seconds_batched"]
    result["status"] = verdict(ok)
    return result


def check_mfu(plan: Plan, state: dict[str, Any], name: str) -> dict[str, Any]:
    import suite

    class Runner(suite.Runner):
        def build(self, preset: str) -> nn.Module:
            return plan.build(preset)

    args = argparse.Namespace(
        device=plan.device.type,
        amp="none" if plan.dry_run else "bf16",
        num_classes=plan.num_classes,
        quick=plan.dry_run,
    )
    runner = Runner(args)
    batch = plan.mfu_batch
    while True:
        try:
            step = suite.benchmark_training(runner, name, batch=batch, crop=plan.mfu_crop)
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2  # SeMask-L at batch 8 may not fit: the largest batch that does, said in the report
            torch.cuda.empty_cache()
    flops = 3 * batch * count_forward_flops(lambda: plan.build(name), (1, 3, plan.mfu_crop, plan.mfu_crop))
    achieved = flops / step["median_s"]
    return {
        "status": "pass" if math.isfinite(achieved) and achieved > 0 else "fail",
        "batch": batch,
        "compared": f"{step['amp']} training step, batch {batch} at {plan.mfu_crop}x{plan.mfu_crop}, "
        f"K={plan.num_classes}, vs the {'fp32' if plan.dry_run else 'bf16'} GEMM rate of this run",
        "step_s": step["median_s"],
        "images_per_s": step["images_per_s"],
        "peak_mib": step["memory"]["peak_mib"],
        "train_flops": flops,
        "achieved_flops": achieved,
        "mfu": achieved / state["gemm"],
    }


# ----------------------------------------------------------------------------- driver


def checks(plan: Plan, state: dict[str, Any]) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    found: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("gemm", lambda: check_gemm(plan, state)),
        *((f"mfu/{name}", lambda n=name: check_mfu(plan, state, n)) for name in plan.mfu_models),
        ("banded_ce", lambda: check_banded_ce(plan, state)),
        ("deform_attn/mask2former", lambda: check_deform_attn(plan, "semask_swin_t_mask2former")),
        ("deform_attn/mask2former_msfapn", lambda: check_deform_attn(plan, "semask_swin_t_mask2former_msfapn")),
        ("channels_last", lambda: check_channels_last(plan)),
        ("ddp", lambda: check_ddp(plan)),
        ("syncbn_kernels", lambda: check_syncbn_kernels(plan)),
    ]
    ckpt_precision = plan.amp[0] if plan.amp else "fp32"
    for family in plan.families:
        for precision in plan.precisions:
            found.append((f"train/{family}/{precision}", lambda f=family, p=precision: check_train(plan, state, f, p)))
        if not plan.dry_run or family == "fpn":  # the dry run runs this code once
            ckpt = f"train/{family}/{ckpt_precision}/ckpt"
            found.append((ckpt, lambda f=family: check_train(plan, state, f, ckpt_precision, True)))
    found += [
        ("eval_amp", lambda: check_eval_amp(plan, state)),
        ("window_batch", lambda: check_window_batch(plan)),
    ]
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU, no AMP, gloo instead of NCCL")
    p.add_argument("--budget-s", type=float, default=450.0, help="checks not started by then are skipped")
    p.add_argument("--only", nargs="+", metavar="PREFIX", help="run only the checks whose names start so")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    started = time.perf_counter()
    plan = make_plan(args.cpu_dry_run)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (module docstring)
    torch.backends.cudnn.allow_tf32 = False
    if plan.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="semask_gpu_check_") as tmp:
        from semask.data import make_context_dataset

        state: dict[str, Any] = {"tmp": Path(tmp), "train": {}, "gemm": float("nan")}
        state["data"] = make_context_dataset(
            Path(tmp) / "data", num_train=2 * plan.batch, num_val=1 if plan.dry_run else 4, size=plan.data_size, seed=0
        )
        for name, run in checks(plan, state):
            if args.only and not any(name.startswith(prefix) for prefix in args.only):
                continue
            elapsed = time.perf_counter() - started
            if elapsed > args.budget_s:
                results[name] = {"status": "skip", "compared": f"time budget of {args.budget_s:.0f} s spent"}
                continue
            start = time.perf_counter()
            try:
                results[name] = run()
            except Exception as exc:  # a failing path is a result, not the end of the check
                results[name] = {"status": f"fail: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            results[name]["seconds_total"] = time.perf_counter() - start
            if plan.device.type == "cuda":
                torch.cuda.empty_cache()
            print(f"{name:40s} {results[name]['status'][:100]}  ({results[name]['seconds_total']:.1f} s)", flush=True)
    report = {
        "mode": "cpu_dry_run" if plan.dry_run else "cuda",
        "machine": machine_info(plan.device, torch.get_num_threads()),
        "tolerances": TOLERANCES,
        "checks": results,
        "wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu_check_{report['mode']}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    failed = [n for n, r in results.items() if r["status"].startswith("fail")]
    return 1 if failed else 0


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}{unit}"
    return f"{value}{unit}"


def markdown(report: dict[str, Any]) -> str:
    m, results = report["machine"], report["checks"]
    gemm = results.get("gemm", {})
    lines = [
        f"# semask GPU check ({report['mode']})",
        "",
        f"- machine: {m.get('gpu') or m['cpu']}, torch {m['torch']}; wall time {report['wall_s']:.0f} s",
        f"- GEMM: fp32 (TF32 off) {gemm.get('fp32_flops', 0) / 1e9:,.0f} GFLOP/s"
        + (f", bf16 {gemm['bf16_flops'] / 1e9:,.0f} GFLOP/s" if "bf16_flops" in gemm else ""),
        "- `rel` = max |a - b| / max |reference|; tolerances: "
        + ", ".join(f"{k} {v:g}" for k, v in report["tolerances"].items()),
        "",
    ]
    rows = []
    for name, r in results.items():
        measured = ", ".join(
            f"{k} {_num(v)}"
            for k, v in r.items()
            if k.endswith(("_rel", "_diff", "agreement", "mIoU", "scale", "window_batch")) and not isinstance(v, list)
        )
        if "losses" in r:
            measured = f"losses {', '.join(f'{v:.4f}' for v in r['losses'])}" + (f"; {measured}" if measured else "")
        rows.append(
            [
                f"`{name}`",
                r["status"].split("\n")[0][:120],
                r.get("compared", "-"),
                measured or "-",
                _num(r.get("images_per_s")),
                _num(r.get("peak_mib")),
                _num(r.get("seconds_total"), " s"),
            ]
        )
    lines += table(["check", "status", "what", "measured", "img/s", "peak MiB", "time"], rows)
    mfu = [(n, r) for n, r in results.items() if n.startswith("mfu/") and "mfu" in r]
    if mfu:
        lines += ["", "## Training-step MFU (model FLOPs = 3 x forward, full count)", ""]
        lines += table(
            ["model", "step s", "img/s", "peak MiB", "achieved TFLOP/s", "MFU"],
            [
                [
                    n[4:],
                    f"{r['step_s']:.3f}",
                    f"{r['images_per_s']:.1f}",
                    f"{r['peak_mib']:,.0f}",
                    f"{r['achieved_flops'] / 1e12:.2f}",
                    f"{100 * r['mfu']:.1f} %",
                ]
                for n, r in mfu
            ],
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
