"""Mix Transformer (MiT) + SegFormer head, with optional SeMask semantic layers (spec semask_mit.md).

The paper plugs SeMask into SegFormer's MiT-B4 (Table 6) but never released that code;
this is the design of spec section 4.3. In every stage the semantic layer sits after the
MiT blocks and *before* the pretrained stage norm ``norm{i}``, whose output is both the
stage feature for the decoder and the input of the next stage. With lambda = 0 the stage
computes ``norm_i(LN_s(x))``, which equals ``norm_i(x)`` up to LayerNorm epsilons, so an
ImageNet-pretrained MiT starts training unchanged.

Encoder modules are named like the NVlabs checkpoints (``patch_embed{1..4}``,
``block{1..4}.{j}.attn.q/kv/sr``, ``mlp.dwconv.dwconv``, ``norm{1..4}``), so the public
``mit_b*.pth`` ImageNet files load without renaming. Two decode heads are available:
``"mmseg"`` (default; 1x1 conv + BN + ReLU per stage, E = 256 for every size; the
baseline the SeMask paper compares with) and ``"nvlabs"`` (the all-MLP head of the
SegFormer paper, E = 256 for B0/B1 and 768 for B2-B5). Official SegFormer checkpoints in
the NVlabs, mmseg and Hugging Face key schemes load through registered converters.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import (
    BackboneLoadReport,
    CheckpointError,
    ModelConfig,
    check_choice,
    load_state_dict_checked,
    load_state_dict_strict,
    stage_indices,
    tuple_field,
)
from .layers import DropPath, adapt_first_conv_in_state, init_transformer_weights, to_tensor_tuple
from .loss import LOSS_REDUCTIONS
from .pretrained import PretrainedCfg, register_pretrained
from .registry import register_architecture, register_converter, register_preset
from .segmenter import EncoderDecoderModel, resize
from .semantic_layer import SemanticLayer
from .swin import EncoderOutput
from .upsampled_ce import bilinear_matrix

DECODE_HEADS = ("mmseg", "nvlabs")
SEMANTIC_PLACEMENTS = ("before_stage_norm", "after_stage_norm")


def default_global_stages(num_classes: int) -> tuple[int, ...]:
    """Spec 4.3 "hybrid" rule: K > 19 -> stages 3-4 global, 1-2 in 7x7 windows; K <= 19 all windowed.

    Global attention at stride 4 would need a 16384^2 map per 512^2 image, so the first two
    stages are always windowed; this copies the released SeMask-FPN T/S/L and FaPN choice.
    """
    return (2, 3) if num_classes > 19 else ()


def official_decoder_channels(decode_head: str, depths: tuple[int, ...]) -> int:
    """Head width E of the released models: mmseg 256 for every size; NVlabs 256 for the
    two-blocks-per-stage B0/B1 and 768 for B2-B5 (spec 1.1)."""
    if decode_head == "mmseg" or depths == (2, 2, 2, 2):
        return 256
    return 768


@dataclass
class SeMaskMiTConfig(ModelConfig):
    """Architecture of a (SeMask) MiT + SegFormer-head model.

    Per-stage tuples: ``embed_dims`` (C_i), ``depths``, ``num_heads``, ``sr_ratios`` (spatial
    reduction R_i of the efficient self-attention), ``patch_sizes``/``strides`` of the
    overlapping patch embeddings. ``num_semantic_blocks=0`` gives the SegFormer baseline.

    ``semantic_placement`` puts the semantic layer before the stage norm (default, spec 4.3)
    or after it (spec 4.3 alternative B: no extra LayerNorm, the stage norm's output is the
    residual stream). ``semantic_global_stages=None`` resolves to
    :func:`default_global_stages`; the other stages use ``semantic_window_size`` windows.
    ``decoder_channels=None`` resolves to :func:`official_decoder_channels`. Both are
    resolved at construction so a saved config is explicit.
    """

    model_type: ClassVar[str] = "semask_mit"
    embed_dims: tuple[int, ...] = tuple_field(32, 64, 160, 256)
    depths: tuple[int, ...] = tuple_field(2, 2, 2, 2)
    num_heads: tuple[int, ...] = tuple_field(1, 2, 5, 8)
    sr_ratios: tuple[int, ...] = tuple_field(8, 4, 2, 1)
    patch_sizes: tuple[int, ...] = tuple_field(7, 3, 3, 3)
    strides: tuple[int, ...] = tuple_field(4, 2, 2, 2)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    num_semantic_blocks: int | tuple[int, ...] = 1
    semantic_placement: Literal["before_stage_norm", "after_stage_norm"] = "before_stage_norm"
    semantic_window_size: int = 7
    semantic_global_stages: tuple[int, ...] | None = None
    semantic_dropout: float = 0.1
    learnable_lambda: bool = True
    decode_head: Literal["mmseg", "nvlabs"] = "mmseg"
    decoder_channels: int | None = None
    decoder_dropout: float = 0.1
    semantic_loss_weight: float = 0.4
    loss_reduction: Literal["all", "valid"] = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.depths = tuple(int(d) for d in self.depths)
        n = len(self.depths)
        for name in ("embed_dims", "num_heads", "sr_ratios", "patch_sizes", "strides", "num_semantic_blocks"):
            setattr(self, name, to_tensor_tuple(getattr(self, name), n, name))
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"embed_dims {self.embed_dims} not divisible by num_heads {self.num_heads}")
        check_choice("semantic_placement", self.semantic_placement, SEMANTIC_PLACEMENTS)
        check_choice("decode_head", self.decode_head, DECODE_HEADS)
        if self.decoder_channels is None:
            self.decoder_channels = official_decoder_channels(self.decode_head, self.depths)
        if self.semantic_global_stages is None:
            self.semantic_global_stages = default_global_stages(self.num_classes)
        self.semantic_global_stages = stage_indices(self.semantic_global_stages, n, "semantic_global_stages")
        check_choice("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)

    @property
    def is_semask(self) -> bool:
        return any(self.num_semantic_blocks)  # type: ignore[arg-type]


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
                raise ValueError(
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


# ------------------------------------------------------------------------ decode heads
class ConvBNReLU(nn.Module):
    """1x1 conv (no bias) -> BatchNorm -> ReLU, with mmseg's ``conv``/``bn`` key names."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def observes_modules(head: nn.Module) -> bool:
    """Whether something watches the head's individual conv/linear calls: forward hooks (the
    paper-convention MAC count of ``semask info``, feature hooks) or torch's FlopCounterMode.
    The heads then run their literal module-by-module path, so every count stays the paper's."""
    if torch.compiler.is_compiling():
        return False
    module_hooks = torch.nn.modules.module
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return True
    if any(m._forward_hooks or m._forward_pre_hooks for m in head.modules()):
        return True
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    from torch.utils.flop_counter import _FlopCounterMode

    return any(isinstance(mode, _FlopCounterMode) for mode in _get_current_dispatch_mode_stack())


def fused_sum(maps: list[tuple[Tensor, Tensor]], size: torch.Size, bias: Tensor, fuse: ConvBNReLU) -> Tensor:
    """``fuse.act(fuse.bn(sum_i resize(W_i x_i) + bias))`` for (W_i (E, C_i), x_i (B, C_i, h_i, w_i)).

    Equal to fusing the concatenation of the resized maps: a 1x1 conv is per-pixel linear and
    bilinear resizing mixes pixels with weights summing to 1, so the two commute (bias included),
    and each stage pays an E x C_i product at its own resolution instead of (n E) x E at stride 4.
    The BatchNorm stays after the sum; in eval mode (running statistics) it is folded into W_i.
    """
    bn = fuse.bn
    if not bn.training and bn.running_mean is not None and bn.running_var is not None:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
        maps = [(scale[:, None] * w, x) for w, x in maps]
        bias, bn = scale * bias + shift, None
    out: Tensor | None = None
    for w, x in maps:
        b, c, h, wd = x.shape
        if out is None:  # the stride-4 stage, plus the bias
            out = torch.baddbmm(bias[:, None], w.expand(b, -1, -1), x.reshape(b, c, h * wd)).view(b, -1, h, wd)
        else:
            out = add_resized(out, torch.matmul(w, x.reshape(b, c, h * wd)).view(b, -1, h, wd))
    assert out is not None and out.shape[-2:] == size
    return fuse.act(out if bn is None else bn(out))


def add_resized(out: Tensor, y: Tensor) -> Tensor:
    """``out + resize(y, out.shape[-2:])`` as two GEMMs, the second accumulating into ``out``
    (in place): rows first at the low width, then one (B E H, w) x (w, W) product. About twice
    as fast on CPU as the interpolation kernel plus a separate add for E = 256..768 maps."""
    b, e, h, w = y.shape
    big_h, big_w = out.shape[-2:]
    rows = torch.matmul(bilinear_matrix(h, big_h, y), y.reshape(b * e, h, w))  # (B E, H, w)
    cols = bilinear_matrix(w, big_w, y).T
    return out.view(b * e * big_h, big_w).addmm_(rows.view(-1, w), cols).view(b, e, big_h, big_w)


def _classifier(channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


class MMSegSegFormerHead(nn.Module):
    """mmseg SegformerHead: per stage 1x1 conv-BN-ReLU to E, resize to stride 4, concat
    [c1..c4], fuse 4E -> E (conv-BN-ReLU), dropout, 1x1 classifier ``conv_seg``."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvBNReLU(c, channels) for c in in_channels)
        self.fusion_conv = ConvBNReLU(len(in_channels) * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = _classifier(channels, num_classes)

    def forward(self, features: list[Tensor]) -> Tensor:
        if observes_modules(self):
            return self.reference_forward(features)
        # The fuse conv's slice i acts on stage i's E channels: apply it before the resize.
        e = self.fusion_conv.conv.out_channels
        fuse = self.fusion_conv.conv.weight.flatten(1)
        maps = [(fuse[:, i * e : (i + 1) * e], conv(f)) for i, (conv, f) in enumerate(zip(self.convs, features))]
        fused = fused_sum(maps, features[0].shape[-2:], fuse.new_zeros(e), self.fusion_conv)
        return self.conv_seg(self.dropout(fused))

    def reference_forward(self, features: list[Tensor]) -> Tensor:
        """The literal mmseg order: resize every stage to stride 4, concatenate, fuse."""
        size = features[0].shape[-2:]
        maps = [resize(conv(f), size) for conv, f in zip(self.convs, features)]
        return self.conv_seg(self.dropout(self.fusion_conv(torch.cat(maps, dim=1))))


class LinearEmbed(nn.Module):
    """Per-pixel Linear(C_i, E) on a feature map (key ``linear_c{i}.proj``)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class AllMLPHead(nn.Module):
    """NVlabs SegFormerHead: per stage Linear(C_i, E) (no norm, no activation), resize to
    stride 4, concat [c4..c1], fuse 4E -> E (conv-BN-ReLU), dropout, 1x1 ``linear_pred``."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.num_stages = len(in_channels)
        for i, c in enumerate(in_channels):
            self.add_module(f"linear_c{i + 1}", LinearEmbed(c, channels))
        self.linear_fuse = ConvBNReLU(self.num_stages * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = _classifier(channels, num_classes)
        self.apply(init_transformer_weights)

    def forward(self, features: list[Tensor]) -> Tensor:
        if observes_modules(self):
            return self.reference_forward(features)
        # Slice j of the fuse conv composed with stage i's Linear (concat order c4..c1: j = n-1-i).
        e = self.linear_fuse.conv.out_channels
        fuse = self.linear_fuse.conv.weight.flatten(1)
        maps, bias = [], fuse.new_zeros(e)
        for i, f in enumerate(features):
            j = self.num_stages - 1 - i
            part = fuse[:, j * e : (j + 1) * e]
            proj = getattr(self, f"linear_c{i + 1}").proj
            maps.append((part @ proj.weight, f))
            bias = bias + part @ proj.bias
        return self.linear_pred(self.dropout(fused_sum(maps, features[0].shape[-2:], bias, self.linear_fuse)))

    def reference_forward(self, features: list[Tensor]) -> Tensor:
        """The literal NVlabs order: project, resize to stride 4, concatenate [c4..c1], fuse."""
        size = features[0].shape[-2:]
        maps = [resize(getattr(self, f"linear_c{i + 1}")(features[i]), size) for i in reversed(range(self.num_stages))]
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(maps, dim=1))))


# ------------------------------------------------------------------------------- model
@register_architecture
class SeMaskMiT(EncoderDecoderModel):
    """(SeMask) MiT encoder + SegFormer head; ``forward(pixel_values, labels=None)``."""

    config_class = SeMaskMiTConfig
    config: SeMaskMiTConfig
    backbone: MixTransformer
    no_weight_decay_keys = ("norm",)  # the SegFormer recipe

    def __init__(self, config: SeMaskMiTConfig) -> None:
        super().__init__(config)
        self.backbone = MixTransformer(
            embed_dims=config.embed_dims,
            depths=config.depths,
            num_heads=config.num_heads,
            sr_ratios=config.sr_ratios,
            patch_sizes=config.patch_sizes,
            strides=config.strides,
            mlp_ratio=config.mlp_ratio,
            drop_path_rate=config.drop_path_rate,
            num_classes=config.num_classes,
            num_semantic_blocks=config.num_semantic_blocks,  # type: ignore[arg-type]
            semantic_placement=config.semantic_placement,
            semantic_window_size=config.semantic_window_size,
            semantic_global_stages=config.semantic_global_stages,  # type: ignore[arg-type]
            semantic_dropout=config.semantic_dropout,
            learnable_lambda=config.learnable_lambda,
            in_channels=config.in_channels,
        )
        head_cls = MMSegSegFormerHead if config.decode_head == "mmseg" else AllMLPHead
        self.decode_head = head_cls(
            self.backbone.num_features,
            config.decoder_channels,
            config.num_classes,
            config.decoder_dropout,  # type: ignore[arg-type]
        )

    def load_backbone_state(self, state_dict: dict[str, Tensor], source: str) -> BackboneLoadReport:
        return load_mit_imagenet(self.backbone, state_dict, source)

    def imagenet_name(self) -> str:
        for size, arch in _VARIANTS.items():
            if self.config.embed_dims == arch["embed_dims"] and self.config.depths == arch["depths"]:
                return f"mit_{size}"
        raise ValueError(
            f"no released ImageNet MiT has embed_dims={self.config.embed_dims}, depths={self.config.depths}"
        )


# ----------------------------------------------------------------------------- presets
_MIT_WIDE = (64, 128, 320, 512)
_VARIANTS = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": dict(embed_dims=_MIT_WIDE, depths=(2, 2, 2, 2)),
    "b2": dict(embed_dims=_MIT_WIDE, depths=(3, 4, 6, 3)),
    "b3": dict(embed_dims=_MIT_WIDE, depths=(3, 4, 18, 3)),
    "b4": dict(embed_dims=_MIT_WIDE, depths=(3, 8, 27, 3)),
    "b5": dict(embed_dims=_MIT_WIDE, depths=(3, 6, 40, 3)),
}
for _v, _arch in _VARIANTS.items():
    register_preset(f"mit_{_v}", "semask_mit", num_semantic_blocks=0, **_arch)
    register_preset(f"semask_mit_{_v}", "semask_mit", num_semantic_blocks=1, **_arch)
    # the released SegFormer models (NVlabs / Hugging Face): the all-MLP head
    register_preset(f"segformer_{_v}", "semask_mit", num_semantic_blocks=0, decode_head="nvlabs", **_arch)

# ------------------------------------------------------------------ released weights
_HF_LICENSE = "NVIDIA SegFormer license (research, non-commercial)"
_ADE_TEST = dict(mode="whole", scale=(2048, 512))
_CITYSCAPES_TEST = dict(mode="slide", scale=(2048, 1024), crop_size=(1024, 1024), stride=(768, 768))
register_pretrained(
    *(
        PretrainedCfg(
            f"mit_{v}",
            "imagenet",
            file_name="pytorch_model.bin",
            hf_repo=f"nvidia/mit-{v}",
            kind="backbone",
            license=_HF_LICENSE,
        )
        for v in _VARIANTS
    ),
    *(
        PretrainedCfg(
            f"segformer_{v}",
            "ade20k",
            file_name="pytorch_model.bin",
            hf_repo=f"nvidia/segformer-{v}-finetuned-ade-{crop}-{crop}",
            dataset="ade20k",
            num_classes=150,
            crop_size=(crop, crop),
            eval={**_ADE_TEST, "scale": (4 * crop, crop)},
            license=_HF_LICENSE,
        )
        for v, crop in (("b0", 512), ("b1", 512), ("b2", 512), ("b3", 512), ("b4", 512), ("b5", 640))
    ),
    *(
        PretrainedCfg(
            f"segformer_{v}",
            "cityscapes",
            file_name="pytorch_model.bin",
            hf_repo=f"nvidia/segformer-{v}-finetuned-cityscapes-1024-1024",
            dataset="cityscapes",
            num_classes=19,
            crop_size=(1024, 1024),
            eval=_CITYSCAPES_TEST,
            license=_HF_LICENSE,
        )
        for v in _VARIANTS
    ),
)


# --------------------------------------------------------------- key schemes -> ours
# Our encoder keys are the NVlabs ones. Rules rename mmseg / Hugging Face encoder keys
# (without the ``backbone.`` / ``segformer.encoder.`` prefix); {s} is the 1-based stage.
_Rule = tuple[re.Pattern[str], str]


def _rules(*pairs: tuple[str, str]) -> list[_Rule]:
    return [(re.compile(p), t) for p, t in pairs]


_MMSEG_ENCODER_RULES = _rules(
    (r"^layers\.(?P<i>\d+)\.0\.projection\.(?P<r>.+)$", "patch_embed{s}.proj.{r}"),
    (r"^layers\.(?P<i>\d+)\.0\.norm\.(?P<r>.+)$", "patch_embed{s}.norm.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.(?P<n>norm[12])\.(?P<r>.+)$", "block{s}.{j}.{n}.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.attn\.attn\.out_proj\.(?P<r>.+)$", "block{s}.{j}.attn.proj.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.attn\.(?P<n>sr|norm)\.(?P<r>.+)$", "block{s}.{j}.attn.{n}.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.ffn\.layers\.0\.(?P<r>.+)$", "block{s}.{j}.mlp.fc1.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.ffn\.layers\.1\.(?P<r>.+)$", "block{s}.{j}.mlp.dwconv.dwconv.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.ffn\.layers\.4\.(?P<r>.+)$", "block{s}.{j}.mlp.fc2.{r}"),
    (r"^layers\.(?P<i>\d+)\.2\.(?P<r>.+)$", "norm{s}.{r}"),
)
_MMSEG_IN_PROJ = re.compile(r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.attn\.attn\.in_proj_(?P<r>weight|bias)$")

_HF_ENCODER_RULES = _rules(
    (r"^patch_embeddings\.(?P<i>\d+)\.proj\.(?P<r>.+)$", "patch_embed{s}.proj.{r}"),
    (r"^patch_embeddings\.(?P<i>\d+)\.layer_norm\.(?P<r>.+)$", "patch_embed{s}.norm.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.layer_norm_1\.(?P<r>.+)$", "block{s}.{j}.norm1.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.layer_norm_2\.(?P<r>.+)$", "block{s}.{j}.norm2.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.query\.(?P<r>.+)$", "block{s}.{j}.attn.q.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.sr\.(?P<r>.+)$", "block{s}.{j}.attn.sr.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.layer_norm\.(?P<r>.+)$", "block{s}.{j}.attn.norm.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.output\.dense\.(?P<r>.+)$", "block{s}.{j}.attn.proj.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.mlp\.dense1\.(?P<r>.+)$", "block{s}.{j}.mlp.fc1.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.mlp\.dwconv\.dwconv\.(?P<r>.+)$", "block{s}.{j}.mlp.dwconv.dwconv.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.mlp\.dense2\.(?P<r>.+)$", "block{s}.{j}.mlp.fc2.{r}"),
    (r"^layer_norm\.(?P<i>\d+)\.(?P<r>.+)$", "norm{s}.{r}"),
)
_HF_KEY_VALUE = re.compile(r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.(?P<kv>key|value)\.(?P<r>weight|bias)$")

_HF_HEAD_RULES = _rules(
    (r"^linear_c\.(?P<i>\d+)\.proj\.(?P<r>.+)$", "linear_c{s}.proj.{r}"),
    (r"^linear_fuse\.weight$", "linear_fuse.conv.weight"),
    (r"^batch_norm\.(?P<r>.+)$", "linear_fuse.bn.{r}"),
    (r"^classifier\.(?P<r>.+)$", "linear_pred.{r}"),
)


def _apply_rules(key: str, rules: list[_Rule]) -> str:
    """The renamed key, or ``key`` itself when no rule matches (strict loading then names it)."""
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            groups = m.groupdict()
            if "i" in groups:
                groups["s"] = str(int(groups["i"]) + 1)
            return template.format(**groups)
    return key


def _as_linear(value: Tensor) -> Tensor:
    """mmseg stores the Mix-FFN Linears as 1x1 convs: (out, in, 1, 1) -> (out, in)."""
    return value.flatten(1) if value.ndim == 4 and value.shape[-2:] == (1, 1) else value


def mmseg_encoder_to_ours(state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """mmseg MiT keys (``layers.{i}.{0,1,2}``) -> NVlabs/ours: split in_proj [q; k; v] into q and kv."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = _MMSEG_IN_PROJ.match(key)
        if m:
            if value.shape[0] % 3:
                raise CheckpointError(f"{source}: {key} has {value.shape[0]} rows, not 3 x width ([q; k; v])")
            c = value.shape[0] // 3
            prefix = f"block{int(m['i']) + 1}.{m['j']}.attn"
            out[f"{prefix}.q.{m['r']}"] = value[:c]
            out[f"{prefix}.kv.{m['r']}"] = value[c:]
            continue
        new = _apply_rules(key, _MMSEG_ENCODER_RULES)
        out[new] = _as_linear(value) if new.endswith(("mlp.fc1.weight", "mlp.fc2.weight")) else value
    return out


def hf_encoder_to_ours(state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Hugging Face Segformer encoder keys -> NVlabs/ours: concatenate key and value into kv."""
    out: dict[str, Tensor] = {}
    pairs: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        m = _HF_KEY_VALUE.match(key)
        if m:
            pairs.setdefault((m["i"], m["j"], m["r"]), {})[m["kv"]] = value
            continue
        out[_apply_rules(key, _HF_ENCODER_RULES)] = value
    for (i, j, r), parts in pairs.items():
        for needed in ("key", "value"):
            if needed not in parts:
                raise CheckpointError(f"{source}: block.{i}.{j}.attention.self.{needed}.{r} is missing")
        out[f"block{int(i) + 1}.{j}.attn.kv.{r}"] = torch.cat([parts["key"], parts["value"]], dim=0)
    return out


def _with_prefix(prefix: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def _split_prefix(prefix: str, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(keys under ``prefix`` with it removed, all other keys unchanged)."""
    inside = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in state_dict.items() if not k.startswith(prefix)}


# ------------------------------------------------------------ ImageNet backbone weights
_HF_ENCODER_PREFIXES = ("segformer.encoder.", "encoder.")
_IMAGENET_CLASSIFIER = re.compile(r"^(head|classifier)\.")


def imagenet_encoder_to_ours(state_dict: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], list[str]]:
    """(encoder keys in our naming, dropped ImageNet classifier keys) for any supported layout.

    Accepts NVlabs ``mit_b*.pth`` (bare keys + ``head.*``), mmseg 1.x ``mit_b*_2022*.pth``
    (``layers.*``), Hugging Face ``nvidia/mit-b*`` (``segformer.encoder.*`` + ``classifier.*``)
    and any of them under a ``backbone.`` prefix.
    """
    sd = {k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in state_dict.items()}
    dropped = sorted(k for k in sd if _IMAGENET_CLASSIFIER.match(k))
    sd = {k: v for k, v in sd.items() if not _IMAGENET_CLASSIFIER.match(k)}
    for prefix in _HF_ENCODER_PREFIXES:
        if f"{prefix}patch_embeddings.0.proj.weight" in sd:
            encoder, rest = _split_prefix(prefix, sd)
            return {**hf_encoder_to_ours(encoder, source), **rest}, dropped
    if "layers.0.0.projection.weight" in sd:
        return mmseg_encoder_to_ours(sd, source), dropped
    return sd, dropped


def load_mit_imagenet(backbone: MixTransformer, state_dict: dict[str, Tensor], source: str) -> BackboneLoadReport:
    """Load ImageNet MiT weights into ``backbone``, dropping the classifier.

    Only the (new) semantic layers may stay uninitialised; any other missing, unexpected
    or mis-shaped key is an error naming the key.
    """
    sd, dropped = imagenet_encoder_to_ours(state_dict, source)
    adapt_first_conv_in_state(sd, backbone.state_dict(), "patch_embed1.proj.weight")  # in_channels != 3
    return load_state_dict_checked(
        backbone, sd, f"ImageNet MiT checkpoint {source}", lambda k: k.startswith("semantic_layer."), dropped
    )


# ------------------------------------------------------------------ official checkpoints
def _count(state_dict: dict[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := rx.match(k))})


def infer_mit_config(state_dict: dict[str, Tensor], source: str) -> dict[str, Any]:
    """Read the architecture off the tensor shapes of a state dict in our key naming.

    Heads are not stored in the weights: MiT uses one head in stage 1 and a fixed head
    width, so ``num_heads[i] = C_i / C_1`` (1, 2, 5, 8 for every released size).
    Strides are the MiT ones (4, 2, 2, 2). The semantic window size and which stages attend
    globally leave no trace in the weights: they follow the config defaults unless overridden.
    """
    try:
        n = _count(state_dict, r"backbone\.patch_embed(\d+)\.proj\.weight$")
        patch = [state_dict[f"backbone.patch_embed{i + 1}.proj.weight"] for i in range(n)]
        dims = tuple(int(p.shape[0]) for p in patch)
        fc1 = state_dict["backbone.block1.0.mlp.fc1.weight"]
        values: dict[str, Any] = dict(
            embed_dims=dims,
            depths=tuple(_count(state_dict, rf"backbone\.block{i + 1}\.(\d+)\.") for i in range(n)),
            num_heads=tuple(d // dims[0] for d in dims),
            sr_ratios=tuple(
                int(state_dict[f"backbone.block{i + 1}.0.attn.sr.weight"].shape[-1])
                if f"backbone.block{i + 1}.0.attn.sr.weight" in state_dict
                else 1
                for i in range(n)
            ),
            patch_sizes=tuple(int(p.shape[-1]) for p in patch),
            mlp_ratio=fc1.shape[0] / dims[0],
            num_semantic_blocks=tuple(
                _count(state_dict, rf"backbone\.semantic_layer\.{i}\.class_injection\.(\d+)\.") for i in range(n)
            ),
        )
        if any(
            f"backbone.semantic_layer.{i}.class_injection.0.mlp_v.weight" in state_dict for i in range(n)
        ) and not any(k.startswith("backbone.semantic_layer.") and ".norm1." in k for k in state_dict):
            values["semantic_placement"] = "after_stage_norm"
        if "decode_head.linear_fuse.conv.weight" in state_dict:
            values["decode_head"] = "nvlabs"
            classifier = state_dict["decode_head.linear_pred.weight"]
        else:
            values["decode_head"] = "mmseg"
            classifier = state_dict["decode_head.conv_seg.weight"]
    except KeyError as err:
        raise CheckpointError(f"{source}: cannot infer the MiT architecture, key {err} is missing") from None
    values["num_classes"] = int(classifier.shape[0])
    values["decoder_channels"] = int(classifier.shape[1])
    return values


def _class_metadata(meta: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Class names and palette from an mmseg 0.x (``CLASSES``) or 1.x (``dataset_meta``) meta."""
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = meta.get("CLASSES") or dataset_meta.get("classes")
    palette = meta.get("PALETTE") or dataset_meta.get("palette")
    values: dict[str, Any] = {}
    if classes is not None and len(classes) == num_classes:
        values["class_names"] = [str(c) for c in classes]
    if palette is not None and len(palette) >= num_classes:
        values["palette"] = [[int(c) for c in colour] for colour in palette]
    return values


_RELEASED_WIDTHS = {_MIT_WIDE, (32, 64, 160, 256)}  # B0 and B1-B5: heads C_i / C_1 = (1, 2, 5, 8)


def _build_and_load(ours: dict[str, Tensor], meta: dict[str, Any], source: str, overrides: dict[str, Any]) -> SeMaskMiT:
    from .registry import build_model

    values = infer_mit_config(ours, source)
    if "num_heads" not in overrides and values["embed_dims"] not in _RELEASED_WIDTHS:
        raise CheckpointError(
            f"{source}: attention heads are not stored in the weights, and widths {values['embed_dims']} are not "
            f"a released MiT size; pass num_heads=(...) (a Hugging Face folder's config.json carries them)"
        )
    values.update(_class_metadata(meta, values["num_classes"]))
    model = build_model(SeMaskMiTConfig(**{**values, **overrides}))
    # BatchNorm's step counter is not a weight; some exports omit it.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            ours.setdefault(key, torch.zeros_like(value))
    load_state_dict_strict(model, ours, source)
    return model  # type: ignore[return-value]


def _is_nvlabs_mit(state_dict: dict[str, Any]) -> bool:
    """NVlabs SegFormer checkpoints, and our own models saved as a plain state dict."""
    return "backbone.patch_embed1.proj.weight" in state_dict and (
        "decode_head.linear_fuse.conv.weight" in state_dict or "decode_head.fusion_conv.conv.weight" in state_dict
    )


def convert_nvlabs_mit(state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any) -> SeMaskMiT:
    ours = dict(state_dict)
    if "decode_head.linear_fuse.conv.weight" in ours:
        # mmseg's base head builds a conv_seg the all-MLP head never uses; drop it.
        ours = {k: v for k, v in ours.items() if not k.startswith("decode_head.conv_seg.")}
    return _build_and_load(ours, meta, source, overrides)


def _is_mmseg_segformer(state_dict: dict[str, Any]) -> bool:
    return "backbone.layers.0.0.projection.weight" in state_dict and "decode_head.fusion_conv.conv.weight" in state_dict


def convert_mmseg_segformer(
    state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any
) -> SeMaskMiT:
    """mmseg 0.x/1.x SegFormer: encoder renamed, head names already ours (``convs``, ``fusion_conv``, ``conv_seg``)."""
    encoder, rest = _split_prefix("backbone.", state_dict)
    ours = {**_with_prefix("backbone.", mmseg_encoder_to_ours(encoder, source)), **rest}
    return _build_and_load(ours, meta, source, overrides)


# transformers 5 renamed the SegFormer weights (its conversion_mapping.py); these rules map them
# back to the transformers 4 names, which the converter below reads.
_HF5_TO_HF4 = _rules(
    (r"^segformer\.stages\.(?P<i>\d+)\.patch_embeddings\.(?P<r>.+)$", "segformer.encoder.patch_embeddings.{i}.{r}"),
    (r"^segformer\.stages\.(?P<i>\d+)\.layer_norm\.(?P<r>.+)$", "segformer.encoder.layer_norm.{i}.{r}"),
    (r"^segformer\.stages\.(?P<i>\d+)\.blocks\.(?P<r>.+)$", "segformer.encoder.block.{i}.{r}"),
    (r"^decode_head\.linear_projections\.(?P<r>.+)$", "decode_head.linear_c.{r}"),
)
_HF5_TO_HF4_PARTS = (
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("attention.sequence_reduction.sequence_reduction.", "attention.self.sr."),
    ("attention.sequence_reduction.layer_norm.", "attention.self.layer_norm."),
    ("mlp.fc1.", "mlp.dense1."),
    ("mlp.fc2.", "mlp.dense2."),
    ("layernorm_before.", "layer_norm_1."),
    ("layernorm_after.", "layer_norm_2."),
)


def hf5_to_hf4_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers 5 SegFormer key names -> transformers 4 ones (a no-op on 4 names)."""
    out = {}
    for key, value in state_dict.items():
        new = _apply_rules(key, _HF5_TO_HF4)
        if new != key and new.startswith("segformer.encoder.block."):
            for old_part, part in _HF5_TO_HF4_PARTS:
                new = new.replace(old_part, part)
        out[new] = value
    return out


def _is_hf_segformer(state_dict: dict[str, Any]) -> bool:
    return (
        "segformer.encoder.patch_embeddings.0.proj.weight" in state_dict
        or "segformer.stages.0.patch_embeddings.proj.weight" in state_dict
    ) and "decode_head.linear_fuse.weight" in state_dict


_HF_CONFIG_FIELDS = {  # Hugging Face SegformerConfig -> ours
    "hidden_sizes": "embed_dims",
    "depths": "depths",
    "num_attention_heads": "num_heads",
    "sr_ratios": "sr_ratios",
    "patch_sizes": "patch_sizes",
    "strides": "strides",
    "decoder_hidden_size": "decoder_channels",
}


def hf_segformer_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Our config fields from a Hugging Face SegFormer ``config.json`` (heads and strides are only there)."""
    missing = [k for k in (*_HF_CONFIG_FIELDS, "mlp_ratios") if k not in config]
    if missing:
        raise CheckpointError(f"{source} lacks the SegFormer settings {missing}")
    values: dict[str, Any] = {
        ours: tuple(config[hf]) if isinstance(config[hf], list) else config[hf]
        for hf, ours in _HF_CONFIG_FIELDS.items()
    }
    ratios = set(config["mlp_ratios"])
    if len(ratios) != 1:
        raise CheckpointError(f"{source}: mlp_ratios {config['mlp_ratios']} differ per stage, which MiT here does not")
    values["mlp_ratio"] = float(ratios.pop())
    values["decode_head"] = "nvlabs"
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        values["class_names"] = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return values


def convert_hf_segformer(
    state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any
) -> SeMaskMiT:
    """Hugging Face ``SegformerForSemanticSegmentation`` weights (same maths as NVlabs)."""
    encoder, rest = _split_prefix("segformer.encoder.", hf5_to_hf4_keys(state_dict))
    head, rest = _split_prefix("decode_head.", rest)
    ours = {
        **_with_prefix("backbone.", hf_encoder_to_ours(encoder, source)),
        **_with_prefix("decode_head.", {_apply_rules(k, _HF_HEAD_RULES): v for k, v in head.items()}),
        **rest,
    }
    return _build_and_load(ours, meta, source, overrides)


register_converter("mit_nvlabs", _is_nvlabs_mit, convert_nvlabs_mit)
register_converter("mit_mmseg", _is_mmseg_segformer, convert_mmseg_segformer)
register_converter("mit_hf", _is_hf_segformer, convert_hf_segformer)
