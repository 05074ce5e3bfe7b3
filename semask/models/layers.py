"""Small building blocks shared by the encoders."""
from __future__ import annotations

from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Transformer feed-forward: fc1 -> GELU -> fc2 (key names as in the Swin checkpoints)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def init_transformer_weights(module: nn.Module) -> None:
    """The Swin/SeMask initialisation: trunc-normal(0.02) Linear with zero bias, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad a (B, H, W, C) map on the right/bottom so H and W are multiples of ``multiple``."""
    _, h, w, _ = x.shape
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        x = nn.functional.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * nW, window*window, C), row-major windows."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows: Tensor, window: int, b: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window*window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def to_tensor_tuple(value: int | tuple[int, ...] | list[int], n: int, name: str) -> tuple[int, ...]:
    """Accept one int (same for every stage) or exactly ``n`` per-stage values."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} needs {n} values (one per stage), got {value}")
    return value

