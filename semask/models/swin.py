"""Swin Transformer encoder with optional SeMask semantic layers (spec semask_fpn.md sections 2-3).

Module and parameter names follow the official checkpoints (``patch_embed``,
``layers.{i}.blocks.{j}``, ``layers.{i}.semantic_layer``, ``layers.{i}.downsample``,
``norm{i}``) so official weights load with a single rename (``gamma`` -> ``lambda_``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import ModelConfig, stage_indices, tuple_field
from .layers import (
    CACHE_BYTES,
    DropPath,
    Mlp,
    TensorCache,
    adapt_first_conv_in_state,
    init_transformer_weights,
    round_up,
    to_tensor_tuple,
    tokens_to_windows,
    window_token_index,
    windows_to_tokens,
)
from .pretrained import PretrainedCfg, register_pretrained
from .semantic_layer import SelfAttentionBlock, SemanticAttentionBlock, SemanticLayer
from .strict import BackboneLoadReport, load_state_dict_checked

# Additive mask value between tokens of different regions in shifted windows (official value).
SHIFT_MASK_VALUE = -100.0


def relative_position_index(window: int) -> Tensor:
    """(M^2, M^2) index into the (2M-1)^2 bias table: (ha-hb+M-1)*(2M-1) + (wa-wb+M-1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def shift_window_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(nW, M^2, M^2) additive mask keeping attention inside the regions a cyclic shift joined.

    Cached per size (it depends on nothing else); built fresh while compiling/exporting.
    """
    if torch.compiler.is_compiling():
        return _shift_window_mask(hp, wp, window, shift, device)
    return _cached_shift_window_mask(hp, wp, window, shift, device)


def _shift_window_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> Tensor:
    region = torch.zeros(hp, wp, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[hs, ws] = label
            label += 1
    windows = region.view(hp // window, window, wp // window, window).transpose(1, 2).reshape(-1, window * window)
    different = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros_like(different, dtype=torch.float32).masked_fill(different, SHIFT_MASK_VALUE)


_SHIFT_MASK_CACHE = TensorCache(CACHE_BYTES)  # by bytes: a 2048x2048 input's stage-1 mask is 50 MiB


def _cached_shift_window_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> Tensor:
    return _SHIFT_MASK_CACHE.get(
        (hp, wp, window, shift, device), lambda: _shift_window_mask(hp, wp, window, shift, device)
    )


class WindowAttention(nn.Module):
    """Multi-head self-attention inside MxM windows with a relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)

    def relative_position_bias(self) -> Tensor:
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def attention_mask(self, shift_mask: Tensor | None, windows: int, dtype: torch.dtype) -> Tensor:
        """Relative position bias plus shift mask as one additive mask, 4-D and contiguous so
        that scaled_dot_product_attention takes its fused kernel without copying it:
        (1 or windows, heads, N, N). Formed on every call, never cached: it is a function of a
        parameter, and optimizer steps (fused AdamW among them) may change the table without
        any sign a cache could key on. The gather is tiny next to the attention it feeds.
        """
        bias = self.relative_position_bias().to(dtype).unsqueeze(0).contiguous()
        if shift_mask is None:
            return bias
        nw = shift_mask.shape[0]
        if windows != nw:  # several images: the windows of each use the same mask
            shift_mask = shift_mask.repeat(windows // nw, 1, 1)
        return bias + shift_mask.to(dtype).unsqueeze(1)

    def forward(
        self, x: Tensor, shift_mask: Tensor | None = None, return_queries: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B*nW, N, C); shift_mask: (nW, N, N) additive, windows of one image in order.

        ``return_queries`` also returns the (unscaled) queries, heads merged, (B*nW, N, C).
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mask = self.attention_mask(shift_mask, bw, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(bw, n, c))
        if return_queries:
            return out, qkv[:, :, 0].reshape(bw, n, c)
        return out


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, each with a residual and drop path."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float, drop_path: float
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: Tensor, h: int, w: int, shift_mask: Tensor | None, return_queries: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, H*W, C). ``return_queries`` also returns the attention queries as (B, H*W, C).

        Padding (after the norm, padded tokens not masked), the cyclic shift and the window
        partition are one gather; merging, un-shifting and cropping are another.
        """
        b = x.shape[0]
        to_windows, to_tokens = window_token_index(h, w, self.window_size, self.shift, x.device)
        windows = tokens_to_windows(self.norm1(x), to_windows, self.window_size)
        y = self.attn(windows, shift_mask if self.shift else None, return_queries)
        if return_queries:
            y, queries = y
        x = x + self.drop_path(windows_to_tokens(y, to_tokens, b))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if return_queries:
            return x, windows_to_tokens(queries, to_tokens, b)
        return x


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (official sub-grid order) -> LayerNorm(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, int, int]:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        h, w = x.shape[1:3]
        return self.reduction(self.norm(x.view(b, h * w, 4 * c))), h, w


class PatchEmbed(nn.Module):
    """Pad to a multiple of 4, 4x4/4 convolution, LayerNorm over channels."""

    def __init__(self, embed_dim: int, patch_size: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        p = self.patch_size
        h, w = x.shape[-2:]
        if h % p or w % p:
            x = F.pad(x, (0, round_up(w, p) - w, 0, round_up(h, p) - h))
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class SwinStage(nn.Module):
    """Swin blocks, then (SeMask) the semantic layer, then patch merging for the next stage."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_paths: list[float],
        downsample: bool,
        semantic_layer: SemanticLayer | None,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio, drop_paths[j])
            for j in range(depth)
        )
        self.semantic_layer = semantic_layer
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(
        self, x: Tensor, h: int, w: int, output_prior: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor, int, int]:
        """Returns (stage output, semantic prior or None, input of the next stage, its H, W)."""
        x, prior = self.run_blocks(x, h, w, output_prior)
        if self.semantic_layer is not None:
            x, prior = self.semantic_layer(x, h, w, output_prior)
        if self.downsample is None:
            return x, prior, x, h, w
        x_next, hn, wn = self.downsample(x, h, w)
        return x, prior, x_next, hn, wn

    def shift_mask(self, h: int, w: int, device: torch.device) -> Tensor | None:
        m = self.window_size
        return shift_window_mask(round_up(h, m), round_up(w, m), m, m // 2, device) if len(self.blocks) > 1 else None

    def run_blocks(self, x: Tensor, h: int, w: int, output_prior: bool) -> tuple[Tensor, Tensor | None]:
        """The Swin blocks; (tokens, prior map of an auxiliary ablation or None)."""
        shift_mask = self.shift_mask(h, w, x.device)
        for block in self.blocks:
            x = block(x, h, w, shift_mask)
        return x, None


class AuxiliaryStage(SwinStage):
    """Table 5 ablations (baselines only): a Linear(C, K) ``aux_classifier`` turns tokens of the
    stage into its prior map, supervised like SeMask's; subclasses choose which tokens."""

    def __init__(self, dim: int, *args: Any, num_classes: int, **kwargs: Any) -> None:
        super().__init__(dim, *args, **kwargs)
        if self.semantic_layer is not None:
            raise ValueError("the auxiliary-classifier ablations are baselines: they have no semantic layer")
        self.aux_classifier = nn.Linear(dim, num_classes)

    def aux_map(self, tokens: Tensor, h: int, w: int) -> Tensor:
        return self.aux_classifier(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class StageOutputAuxStage(AuxiliaryStage):
    """``auxiliary_source="stage_output"``: the classifier reads the stage's output tokens."""

    def run_blocks(self, x: Tensor, h: int, w: int, output_prior: bool) -> tuple[Tensor, Tensor | None]:
        x, _ = super().run_blocks(x, h, w, output_prior)
        return x, self.aux_map(x, h, w) if output_prior else None


class QueryAuxStage(AuxiliaryStage):
    """``auxiliary_source="queries"``: the classifier reads the queries of the last Swin block."""

    def run_blocks(self, x: Tensor, h: int, w: int, output_prior: bool) -> tuple[Tensor, Tensor | None]:
        if not output_prior:
            return super().run_blocks(x, h, w, output_prior)
        shift_mask = self.shift_mask(h, w, x.device)
        for block in self.blocks[:-1]:
            x = block(x, h, w, shift_mask)
        x, queries = self.blocks[-1](x, h, w, shift_mask, return_queries=True)
        return x, self.aux_map(queries, h, w)


@dataclass
class EncoderOutput:
    """Normalised stage features (strides 4..32) and semantic prior maps (empty for Swin).

    Swin returns them as (B, C, H, W) views of its token-major (B, H*W, C) tensors, i.e.
    channels-last in memory: the convolutional decoders run channels-last, so no layout
    copy is made.
    """

    features: list[Tensor]
    semantic_priors: list[Tensor]


class SwinTransformer(nn.Module):
    """Swin encoder returning four feature maps; SeMask when ``num_semantic_blocks`` > 0.

    ``semantic_global_stages`` lists the stages whose semantic attention is global;
    ``semantic_block`` and ``stage`` (a :class:`SwinStage` class or factory) select the paper's ablations.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        num_classes: int = 150,
        num_semantic_blocks: tuple[int, ...] = (1, 1, 1, 1),
        semantic_window_size: int = 7,
        semantic_global_stages: tuple[int, ...] = (),
        semantic_dropout: float = 0.1,
        learnable_lambda: bool = True,
        semantic_block: type[SemanticAttentionBlock | SelfAttentionBlock] = SemanticAttentionBlock,
        stage: Callable[..., SwinStage] = SwinStage,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        self.patch_embed = PatchEmbed(embed_dim, in_channels=in_channels)
        total = sum(depths)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]  # linear, as torch.linspace
        self.num_features = [embed_dim * 2**i for i in range(num_stages)]
        self.layers = nn.ModuleList()
        for i, dim in enumerate(self.num_features):
            semantic = None
            if num_semantic_blocks[i] > 0:
                semantic = SemanticLayer(
                    dim,
                    num_classes,
                    num_semantic_blocks[i],
                    semantic_window_size,
                    global_attention=i in semantic_global_stages,
                    dropout=semantic_dropout,
                    learnable_lambda=learnable_lambda,
                    block=semantic_block,
                )
            start = sum(depths[:i])
            self.layers.append(
                stage(
                    dim,
                    depths[i],
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    rates[start : start + depths[i]],
                    downsample=i < num_stages - 1,
                    semantic_layer=semantic,
                )
            )
        for i, dim in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.grad_checkpointing = False
        self.apply(init_transformer_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in backward instead of storing its activations (less training
        memory for about one extra forward). Drop-path RNG state is replayed, so gradients match."""
        self.grad_checkpointing = enable

    def forward(self, pixel_values: Tensor, output_priors: bool = True) -> EncoderOutput:
        """``output_priors=False`` leaves ``semantic_priors`` empty (inference has no use for them)."""
        x, h, w = self.patch_embed(pixel_values)
        b = x.shape[0]
        features, priors = [], []
        for i, stage in enumerate(self.layers):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                out, prior, x, h_next, w_next = checkpoint(stage, x, h, w, output_priors, use_reentrant=False)
            else:
                out, prior, x, h_next, w_next = stage(x, h, w, output_priors)
            out = getattr(self, f"norm{i}")(out)
            features.append(out.view(b, h, w, -1).permute(0, 3, 1, 2))  # channels-last view, no copy
            if prior is not None:
                priors.append(prior)
            h, w = h_next, w_next
        return EncoderOutput(features, priors)


@dataclass
class SwinBackboneConfig(ModelConfig):
    """The (SeMask) Swin encoder fields, shared by the FPN and mask-classification configs.

    ``semantic_window_size=None`` means "equal to ``window_size``" and
    ``semantic_global_stages=None`` means the family's official rule
    (:meth:`official_global_stages`); both are resolved at construction so a saved config
    is explicit.
    """

    embed_dim: int = 96
    depths: tuple[int, ...] = tuple_field(2, 2, 6, 2)
    num_heads: tuple[int, ...] = tuple_field(3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    num_semantic_blocks: int | tuple[int, ...] = 1
    semantic_window_size: int | None = None
    semantic_global_stages: tuple[int, ...] | None = None
    semantic_dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        self.depths = tuple(int(d) for d in self.depths)
        n = len(self.depths)
        self.num_heads = to_tensor_tuple(self.num_heads, n, "num_heads")
        self.num_semantic_blocks = to_tensor_tuple(self.num_semantic_blocks, n, "num_semantic_blocks")
        if self.semantic_window_size is None:
            self.semantic_window_size = self.window_size
        for name in ("window_size", "semantic_window_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (patches per window side), got {getattr(self, name)}")
        if self.semantic_global_stages is None:
            self.semantic_global_stages = self.official_global_stages()
        self.semantic_global_stages = stage_indices(self.semantic_global_stages, n, "semantic_global_stages")

    def official_global_stages(self) -> tuple[int, ...]:
        """The stages whose semantic layers attend globally in the family's released code."""
        raise NotImplementedError


def swin_from_config(config: SwinBackboneConfig, **extra: Any) -> SwinTransformer:
    """The (SeMask) Swin encoder a config describes; ``extra`` passes the ablations' block and stage classes."""
    return SwinTransformer(
        embed_dim=config.embed_dim,
        depths=config.depths,
        num_heads=config.num_heads,
        window_size=config.window_size,
        mlp_ratio=config.mlp_ratio,
        drop_path_rate=config.drop_path_rate,
        num_classes=config.num_classes,
        num_semantic_blocks=config.num_semantic_blocks,
        semantic_window_size=config.semantic_window_size,
        semantic_global_stages=config.semantic_global_stages,
        semantic_dropout=config.semantic_dropout,
        in_channels=config.in_channels,
        **extra,
    )


def resample_relative_position_bias(table: Tensor, window_size: int) -> Tensor:
    """Bicubically resize a ((2M'-1)^2, heads) bias table to window ``window_size``."""
    old = round(table.shape[0] ** 0.5)
    new = 2 * window_size - 1
    if old == new:
        return table
    heads = table.shape[1]
    grid = table.T.reshape(1, heads, old, old).float()
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(heads, new * new).T.to(table.dtype)


# ------------------------------------------------------------ ImageNet backbone weights
_FRESH_IN_SEGMENTATION = re.compile(r"^(norm\d+\.|layers\.\d+\.(semantic_layer|aux_classifier)\.)")
_CLASSIFIER_ONLY = re.compile(r"^(head\.|norm\.|.*\.attn_mask$|.*relative_position_index$)")


def load_swin_imagenet(backbone: SwinTransformer, state_dict: dict[str, Tensor], source: str) -> BackboneLoadReport:
    """Load ImageNet Swin weights, dropping the classifier and resampling bias tables.

    Only the semantic layers and the stage norms may stay uninitialised; any other
    missing, unexpected or mis-shaped key is an error, so a wrong checkpoint never
    fails silently (a known pitfall of the original release).
    """
    sd = {k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in state_dict.items()}
    unused = [k for k in sd if _CLASSIFIER_ONLY.match(k)]
    sd = {k: v for k, v in sd.items() if not _CLASSIFIER_ONLY.match(k)}
    own = backbone.state_dict()
    for key, value in list(sd.items()):
        if key.endswith("relative_position_bias_table") and key in own and value.shape != own[key].shape:
            window = round((own[key].shape[0] ** 0.5 + 1) / 2)
            sd[key] = resample_relative_position_bias(value, window)
    adapt_first_conv_in_state(sd, own, "patch_embed.proj.weight")  # in_channels != 3
    return load_state_dict_checked(
        backbone, sd, f"ImageNet Swin checkpoint {source}", lambda k: bool(_FRESH_IN_SEGMENTATION.match(k)), unused
    )


_IMAGENET_FILES = {  # what the official configs start from (B and L: ImageNet-22k at 384)
    "t": "swin_tiny_patch4_window7_224.pth",
    "s": "swin_small_patch4_window7_224.pth",
    "b": "swin_base_patch4_window12_384_22k.pth",
    "l": "swin_large_patch4_window12_384_22k.pth",
}
_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
SWIN_SIZES = {  # (embed_dim, depths) of the released encoders
    "t": (96, (2, 2, 6, 2)),
    "s": (96, (2, 2, 18, 2)),
    "b": (128, (2, 2, 18, 2)),
    "l": (192, (2, 2, 18, 2)),
}
register_pretrained(
    *(
        PretrainedCfg(f"swin_{size}", "imagenet", file_name=name, url=_RELEASE + name, kind="backbone", license="MIT")
        for size, name in _IMAGENET_FILES.items()
    )
)


def swin_imagenet_name(config: Any) -> str:
    """``swin_t`` ... ``swin_l`` for a config of a released width and depth."""
    for size, (dim, depths) in SWIN_SIZES.items():
        if config.embed_dim == dim and tuple(config.depths) == depths:
            return f"swin_{size}"
    raise ValueError(
        f"no released ImageNet Swin has embed_dim={config.embed_dim}, depths={tuple(config.depths)}; "
        "pass backbone_weights as a file path"
    )
