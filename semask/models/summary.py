"""Parameter and FLOP accounting in the paper's convention and as full FLOPs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

_CPU_FLASH_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _cpu_flash_sdpa_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's FlopCounterMode has no formula for the fused CPU attention kernel and counts it as 0.
if _CPU_FLASH_SDPA is not None:
    with contextlib.suppress(ValueError):  # a newer torch already counts it
        register_flop_formula(_CPU_FLASH_SDPA)(_cpu_flash_sdpa_flops)


@dataclass
class ModelSummary:
    """Parameters by part and compute at one input size (G = 1e9)."""

    name: str
    num_classes: int
    size: tuple[int, int]
    params_total: int
    params_encoder: int
    params_semantic: int
    params_decoder: int
    gmacs_conv_linear: float  # the paper's "FLOPs": conv + linear multiply-accumulates
    gflops_full: float  # 2 x every multiply-accumulate of conv, linear and attention matmuls

    def table(self) -> str:
        rows = [
            ("parameters (total)", f"{self.params_total:,}"),
            ("  encoder (without semantic layers)", f"{self.params_encoder:,}"),
            ("  semantic layers", f"{self.params_semantic:,}"),
            ("  decoder", f"{self.params_decoder:,}"),
            (
                f"GFLOPs, paper convention (conv+linear MACs) @ {self.size[0]}x{self.size[1]}",
                f"{self.gmacs_conv_linear:.2f}",
            ),
            (f"GFLOPs, full (2 x all matmul/conv MACs) @ {self.size[0]}x{self.size[1]}", f"{self.gflops_full:.2f}"),
        ]
        width = max(len(r[0]) for r in rows)
        head = f"{self.name} (K={self.num_classes})"
        return "\n".join([head] + [f"{k.ljust(width)}  {v}" for k, v in rows])


def count_parameters(model: nn.Module) -> tuple[int, int, int, int]:
    """(total, encoder without semantic layers, semantic layers, decoder)."""
    total = encoder = semantic = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if name.startswith("backbone."):
            if ".semantic_layer." in name:
                semantic += p.numel()
            else:
                encoder += p.numel()
    return total, encoder, semantic, total - encoder - semantic


def conv_linear_macs(model: nn.Module, pixel_values: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d and Linear call (mmcv's get_flops convention)."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features
        else:  # Conv2d
            conv: nn.Conv2d = module  # type: ignore[assignment]
            k = conv.kernel_size[0] * conv.kernel_size[1] * conv.in_channels // conv.groups
            macs += output.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.inference_mode():
            model(pixel_values)
    finally:
        for h in handles:
            h.remove()
    return macs


def full_flops(model: nn.Module, pixel_values: torch.Tensor) -> int:
    """All matmul/conv/attention FLOPs (2 per MAC) as counted by torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(pixel_values)
    return counter.get_total_flops()


def describe(name: str, num_classes: int = 150, size: tuple[int, int] = (512, 512)) -> ModelSummary:
    """Summary of preset ``name`` at ``num_classes`` and input ``size`` (H, W)."""
    from .loader import create_model

    model = create_model(name, num_classes=num_classes).eval()
    x = torch.zeros(1, 3, *size)
    total, encoder, semantic, decoder = count_parameters(model)
    return ModelSummary(
        name=name,
        num_classes=num_classes,
        size=size,
        params_total=total,
        params_encoder=encoder,
        params_semantic=semantic,
        params_decoder=decoder,
        gmacs_conv_linear=conv_linear_macs(model, x) / 1e9,
        gflops_full=full_flops(model, x) / 1e9,
    )
