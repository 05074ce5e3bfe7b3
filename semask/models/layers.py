"""Small building blocks shared by the encoders."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
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


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` >= ``n`` (non-negative arithmetic only: ONNX export
    of symbolic sizes mistranslates floor division of negative numbers)."""
    return (n + multiple - 1) // multiple * multiple


def window_token_index(h: int, w: int, window: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Gather indices between raster tokens and (shifted) windows, so that padding, cyclic
    shift and window partition (and their inverses) are each a single row copy.

    The gather table is one zero row (the padding, index 0) followed by the h*w tokens.
    ``to_windows`` (nW * window^2,) gives the table row of every slot of the right/bottom
    zero-padded map rolled by (-shift, -shift) and split into row-major windows;
    ``to_tokens`` (h*w,) is the inverse: the window slot of each raster token.
    Cached per size (they depend on nothing else); built fresh while compiling/exporting.
    """
    if torch.compiler.is_compiling():
        return _window_token_index(h, w, window, shift, device)
    return _cached_window_token_index(h, w, window, shift, device)


def _window_token_index(h: int, w: int, window: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor]:
    hp, wp = round_up(h, window), round_up(w, window)
    rows = torch.arange(1, h * w + 1, device=device).view(h, w)
    rows = _roll(F.pad(rows, (0, wp - w, 0, hp - h)), shift)
    to_windows = rows.view(hp // window, window, wp // window, window).transpose(1, 2).reshape(-1)
    slots = torch.arange(hp * wp, device=device).view(hp // window, wp // window, window, window)
    slots = _roll(slots.transpose(1, 2).reshape(hp, wp), -shift)
    return to_windows, slots[:h, :w].reshape(-1)


def _roll(grid: Tensor, shift: int) -> Tensor:
    """torch.roll(grid, (-shift, -shift)) by slicing, which exports to ONNX for symbolic sizes."""
    if shift == 0:
        return grid
    grid = torch.cat([grid[shift:], grid[:shift]], dim=0)
    return torch.cat([grid[:, shift:], grid[:, :shift]], dim=1)


class TensorCache:
    """A least-recently-used cache of tensors bounded by their total bytes, not their count: index
    tables and masks for large inputs would otherwise pin a lot of (GPU) memory. ``clear()`` frees it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._sizes: dict[Any, int] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        with torch.inference_mode(False), torch.no_grad():  # usable later with autograd on
            value = build()
        tensors = value if isinstance(value, tuple) else (value,)
        size = sum(t.numel() * t.element_size() for t in tensors)
        if size <= self.max_bytes:
            self._items[key], self._sizes[key] = value, size
            while sum(self._sizes.values()) > self.max_bytes:
                old, _ = self._items.popitem(last=False)
                del self._sizes[old]
        return value

    def clear(self) -> None:
        self._items.clear()
        self._sizes.clear()


CACHE_BYTES = 64 << 20  # per cache; a 2048x2048 input needs about 10 MiB of index tables
_WINDOW_INDEX_CACHE = TensorCache(CACHE_BYTES)


def _cached_window_token_index(h: int, w: int, window: int, shift: int, device: torch.device) -> tuple[Tensor, Tensor]:
    return _WINDOW_INDEX_CACHE.get(
        (h, w, window, shift, device), lambda: _window_token_index(h, w, window, shift, device)
    )


def tokens_to_windows(x: Tensor, to_windows: Tensor, window: int) -> Tensor:
    """(B, L, C) tokens -> (B * nW, window^2, C) windows, zero-padded (see :func:`window_token_index`)."""
    table = F.pad(x, (0, 0, 1, 0))  # row 0: the padding token
    return table.index_select(1, to_windows).view(-1, window * window, x.shape[-1])


def windows_to_tokens(windows: Tensor, to_tokens: Tensor, batch: int) -> Tensor:
    """(B * nW, window^2, C) windows -> (B, L, C) raster tokens, padding dropped."""
    return windows.reshape(batch, -1, windows.shape[-1]).index_select(1, to_tokens)


def to_tensor_tuple(value: int | tuple[int, ...] | list[int], n: int, name: str) -> tuple[int, ...]:
    """Accept one int (same for every stage) or exactly ``n`` per-stage values."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} needs {n} values (one per stage), got {value}")
    return value


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """A first-layer conv weight (O, 3, kh, kw) trained on RGB, adapted to ``in_channels`` inputs
    (the rule of timm's ``adapt_input_conv``):

    * 1 channel: the sum over R, G, B (a grey image gives the activations of its RGB copy);
    * C > 3 (e.g. 4-band or 12-band imagery): the RGB filters repeated ceil(C / 3) times along
      the input axis, cut to C, then scaled by 3 / C so that the response to an input of equal
      bands keeps its magnitude;
    * 2 channels: the same repeat-and-scale rule (R, G scaled by 3/2);
    * 3 channels: unchanged.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a (out, in, kh, kw) conv weight, got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"can only adapt RGB (3-channel) weights, got {weight.shape[1]} input channels")
    dtype = weight.dtype
    w = weight.float()
    if in_channels == 1:
        out = w.sum(dim=1, keepdim=True)
    else:
        repeat = -(-in_channels // 3)
        out = w.repeat(1, repeat, 1, 1)[:, :in_channels] * (3.0 / in_channels)
    return out.to(dtype)


def adapt_first_conv_in_state(state_dict: dict[str, Tensor], own: dict[str, Tensor], key: str) -> None:
    """Replace RGB weights ``state_dict[key]`` by :func:`adapt_input_conv` ones when the model's
    ``own[key]`` takes another number of input channels (in place; nothing else changes)."""
    if key in state_dict and key in own and state_dict[key].ndim == 4 and own[key].ndim == 4:
        have, want = state_dict[key].shape[1], own[key].shape[1]
        if have == 3 and want != 3:
            state_dict[key] = adapt_input_conv(state_dict[key], want)
