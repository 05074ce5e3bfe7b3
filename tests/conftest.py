"""Shared fixtures: tiny model settings and helpers to fake official checkpoints."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), decoder_channels=16, drop_path_rate=0.0)
# tiny MiT (heads C_i / 8) and Mask2Former settings shared by the loader and family tests
MIT_TINY = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 3, 4), decoder_channels=16)
# one block per stage and four named classes: the explanation and web-demo tests
NAMED_TINY = dict(
    num_classes=4,
    embed_dim=16,
    depths=(1, 1, 1, 1),
    num_heads=(1, 1, 1, 1),
    window_size=4,
    decoder_channels=16,
    class_names=["sea", "land", "boat", "car"],
)
M2F_TINY = dict(
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


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One intra-op thread for tiny models: on a busy 2-core box spinning OpenMP threads stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic non-trivial values (lambda != 0), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda_"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.2)
            elif name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "bn.weight")) or re.search(
                r"norm\d\.weight$", name
            ):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def to_official(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict in the official mmseg key layout (``gamma``, index buffers present)."""
    sd = {re.sub(r"\.lambda_$", ".gamma", k): v.clone() for k, v in model.state_dict().items()}
    for name, buf in model.named_buffers():
        if name.endswith("relative_position_index"):
            sd[name] = buf.clone()
    return sd


@pytest.fixture
def tiny():
    return dict(TINY)
