"""Mix Transformer encoder (spec semask_mit.md section 1) with optional semantic layers per stage."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import DropPath, init_transformer_weights
from ..outputs import UnsegmentableImageError
from ..semantic_layer import SemanticLayer
from ..swin import EncoderOutput


# ----------------------------------------------------------------------------- encoder
class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping k x k patches (padding k // 2), then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head attention whose keys/values come from an R x R strided-conv reduced map."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)  # rows 0:C are the keys, C:2C the values
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        d = c // self.num_heads
        q = self.q(x).view(b, n, self.num_heads, d).transpose(1, 2)
        if self.sr_ratio > 1:
            if h < self.sr_ratio or w < self.sr_ratio:
                raise UnsegmentableImageError(
                    f"a {h}x{w} stage map is smaller than its spatial-reduction ratio {self.sr_ratio}; "
                    "the input image is too small for this model"
                )
            x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(b, -1, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale d^-0.5, no dropout (MiT uses 0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """3x3 depthwise conv on the token map; the nesting reproduces the ``mlp.dwconv.dwconv`` key."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """fc1 -> depthwise 3x3 conv -> GELU -> fc2: the conv gives MiT its positional information."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    """Pre-norm efficient self-attention + Mix-FFN, each with a residual and drop path."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


def init_mit_weights(module: nn.Module) -> None:
    """NVlabs MiT initialisation: Linear/LayerNorm as Swin, Conv2d normal(0, sqrt(2 / fan_out))."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    else:
        init_transformer_weights(module)


class MixTransformer(nn.Module):
    """MiT encoder returning four normalised feature maps (strides 4..32); SeMask when a stage
    has semantic blocks. ``semantic_layer[str(i)]`` is the semantic layer of stage i."""

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (32, 64, 160, 256),
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        patch_sizes: tuple[int, ...] = (7, 3, 3, 3),
        strides: tuple[int, ...] = (4, 2, 2, 2),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        num_classes: int = 150,
        num_semantic_blocks: tuple[int, ...] = (0, 0, 0, 0),
        semantic_placement: str = "before_stage_norm",
        semantic_window_size: int = 7,
        semantic_global_stages: tuple[int, ...] = (),
        semantic_dropout: float = 0.1,
        learnable_lambda: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_features = list(embed_dims)
        self.semantic_placement = semantic_placement
        total = sum(depths)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]  # linear, as torch.linspace
        for i, dim in enumerate(embed_dims):
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(in_channels, dim, patch_sizes[i], strides[i]))
            start = sum(depths[:i])
            self.add_module(
                f"block{i + 1}",
                nn.ModuleList(
                    MiTBlock(dim, num_heads[i], sr_ratios[i], mlp_ratio, rates[start + j]) for j in range(depths[i])
                ),
            )
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dim, eps=1e-6))
            in_channels = dim
        self.semantic_layer = nn.ModuleDict()
        for i, dim in enumerate(embed_dims):
            if num_semantic_blocks[i] > 0:
                layer = SemanticLayer(
                    dim,
                    num_classes,
                    num_semantic_blocks[i],
                    semantic_window_size,
                    global_attention=i in semantic_global_stages,
                    dropout=semantic_dropout,
                    learnable_lambda=learnable_lambda,
                )
                if semantic_placement == "after_stage_norm":
                    layer.norm1 = nn.Identity()  # type: ignore[assignment]  # norm{i} already normalised x
                self.semantic_layer[str(i)] = layer
        self.grad_checkpointing = False
        self.apply(init_mit_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward instead of storing its activations (less training
        memory for about one extra forward). Drop-path RNG state is replayed, so gradients match."""
        self.grad_checkpointing = enable

    def forward(self, pixel_values: Tensor, output_priors: bool = True) -> EncoderOutput:
        """``output_priors=False`` leaves ``semantic_priors`` empty (inference has no use for them)."""
        x = pixel_values
        features, priors = [], []
        for i in range(len(self.num_features)):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, prior = checkpoint(self._stage, i, x, output_priors, use_reentrant=False)
            else:
                x, prior = self._stage(i, x, output_priors)
            if prior is not None:
                priors.append(prior)
            features.append(x)
        return EncoderOutput(features, priors)

    def _stage(self, i: int, x: Tensor, output_priors: bool) -> tuple[Tensor, Tensor | None]:
        """Stage i: (B, C, H, W) input -> (channels-first output, semantic prior or None)."""
        b = x.shape[0]
        x, h, w = getattr(self, f"patch_embed{i + 1}")(x)
        for block in getattr(self, f"block{i + 1}"):
            x = block(x, h, w)
        semantic = self.semantic_layer[str(i)] if str(i) in self.semantic_layer else None  # noqa: SIM401 (ModuleDict)
        prior = None
        if semantic is not None and self.semantic_placement == "before_stage_norm":
            x, prior = semantic(x, h, w, output_priors)
        x = getattr(self, f"norm{i + 1}")(x)
        if semantic is not None and self.semantic_placement == "after_stage_norm":
            x, prior = semantic(x, h, w, output_priors)
        return x.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous(), prior  # decoder and next stage input
