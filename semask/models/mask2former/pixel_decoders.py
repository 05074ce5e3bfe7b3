"""Pixel decoders: per-pixel embeddings (stride 4) and the multi-scale memory of the transformer decoder.

Spec semask_mask2former.md section 1.7: FPN (MaskFormer), multi-scale deformable encoder
(Mask2Former), FPN with FaPN feature alignment (FaPN) and the deformable encoder with one
feature-alignment step at stride 4 (MSFaPN). Module names follow the detectron2 checkpoints.
Every decoder returns ``(mask_features, multi_scale_features)``, the latter coarse to fine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import MSDeformAttn, modulated_deform_conv2d, sine_position_embedding

GN_GROUPS = 32


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """detectron2's conv init: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNorm(nn.Conv2d):
    """detectron2 ``Conv2d``: conv -> optional GroupNorm (``.norm``) -> optional ReLU; no bias with a norm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, norm: nn.Module | None = None, relu: bool = False
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None)
        self.norm = norm
        self.relu = relu
        c2_xavier_fill(self)

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x


def gn_conv(in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> ConvNorm:
    return ConvNorm(in_channels, out_channels, kernel_size, nn.GroupNorm(GN_GROUPS, out_channels), relu)


# --------------------------------------------------------------------------- FaPN alignment
class ModulatedDeformConv(nn.Module):
    """DCNv2 3x3 conv that predicts its own offsets and masks from a guide map (``conv_offset_mask``)."""

    def __init__(self, channels: int, deformable_groups: int = 8, kernel_size: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset_mask = nn.Conv2d(channels, deformable_groups * 3 * kernel_size**2, kernel_size, padding=1)
        bound = 1.0 / math.sqrt(channels * kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset_mask.weight)  # start as a plain conv: zero offsets, mask 0.5
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: Tensor, guide: Tensor) -> Tensor:
        o1, o2, m = self.conv_offset_mask(guide).chunk(3, dim=1)
        with torch.autocast(device_type=x.device.type, enabled=False):  # offsets need fp32 precision
            return modulated_deform_conv2d(
                x.float(), torch.cat([o1, o2], 1).float(), m.float().sigmoid(), self.weight.float(), self.bias.float()
            )


class FeatureAlign(nn.Module):
    """FaPN feature alignment without FSM: DCN on the top-down sum, offsets from [lateral, 2*sum].

    The offset conv is normalised by the GroupNorm of the following ``layer_k`` conv: the
    official code registers that one module in both places (quirk Q6). Here it is passed in
    at call time, so the weights exist once in the state dict (the official duplicate
    ``align_k.offset.norm.*`` keys are checked and dropped by the checkpoint converter).
    """

    def __init__(self, channels: int, deformable_groups: int = 8) -> None:
        super().__init__()
        self.offset = nn.Conv2d(2 * channels, channels, 1, bias=False)
        c2_xavier_fill(self.offset)
        self.dcpack_L2 = ModulatedDeformConv(channels, deformable_groups)

    def forward(self, lateral: Tensor, summed: Tensor, shared_norm: nn.Module) -> Tensor:
        if summed.shape[-2:] != lateral.shape[-2:]:
            summed = F.interpolate(summed, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        guide = shared_norm(self.offset(torch.cat([lateral, 2 * summed], dim=1)))
        return F.relu(self.dcpack_L2(summed, guide)).to(lateral.dtype) + lateral


# --------------------------------------------------------------------------- FPN decoders
class FPNPixelDecoder(nn.Module):
    """MaskFormer FPN (``align=False``) or FaPN (``align=True``): nearest top-down, GN convs.

    ``adapter_k``/``layer_k`` for k = 1..3 are the res2..res4 levels, ``layer_4`` the res5 conv.
    """

    def __init__(self, in_channels: list[int], dim: int, align: bool = False, deformable_groups: int = 8) -> None:
        super().__init__()
        self.align = align
        for k, c in enumerate(in_channels[:-1], start=1):
            self.add_module(f"adapter_{k}", gn_conv(c, dim, 1, relu=False))
            if align:
                self.add_module(f"align_{k}", FeatureAlign(dim, deformable_groups))
            self.add_module(f"layer_{k}", gn_conv(dim, dim, 3, relu=True))
        self.add_module(f"layer_{len(in_channels)}", gn_conv(in_channels[-1], dim, 3, relu=True))
        self.mask_features = nn.Conv2d(dim, dim, 3, padding=1)
        c2_xavier_fill(self.mask_features)
        self.num_levels = len(in_channels)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        n = self.num_levels
        y = getattr(self, f"layer_{n}")(features[-1])
        outs = [y]
        for k in range(n - 1, 0, -1):
            lateral = getattr(self, f"adapter_{k}")(features[k - 1])
            summed = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            layer = getattr(self, f"layer_{k}")
            y = layer(getattr(self, f"align_{k}")(lateral, summed, layer.norm) if self.align else summed)
            outs.append(y)
        return self.mask_features(y), outs[:3]


# --------------------------------------------------------------------------- deformable encoder
class DeformableEncoderLayer(nn.Module):
    """Post-norm: LN(x + MSDeformAttn(x + pos)), then LN(x + FFN(x))."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, levels: int, points: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DeformableEncoder(nn.Module):
    """Holds ``level_embed`` and ``encoder.layers`` (the checkpoint's ``transformer.*``)."""

    def __init__(
        self, dim: int, layers: int, ffn_dim: int, heads: int, levels: int, points: int, dropout: float
    ) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(levels, dim))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, ffn_dim, heads, levels, points, dropout) for _ in range(layers)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[Tensor], pos: list[Tensor]) -> list[Tensor]:
        shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos)], dim=1
        )
        # every query looks around its own pixel centre, the same normalised point on all levels
        refs = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(
                (torch.arange(h, device=src.device, dtype=src.dtype) + 0.5) / h,
                (torch.arange(w, device=src.device, dtype=src.dtype) + 0.5) / w,
                indexing="ij",
            )
            refs.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1))
        ref = torch.cat(refs, 0)[None, :, None, :].expand(src.shape[0], -1, len(shapes), -1)
        for layer in self.encoder.layers:
            src = layer(src, pos_flat, ref, shapes)
        outs = src.split([h * w for h, w in shapes], dim=1)
        return [o.transpose(1, 2).reshape(src.shape[0], -1, h, w) for o, (h, w) in zip(outs, shapes)]


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former pixel decoder: deformable encoder on res5..res3, one FPN step to res2.

    With ``align=True`` the res2 step goes through a FaPN :class:`FeatureAlign` (MSFaPN).
    The whole decoder runs in float32 under autocast, as the official code.
    """

    def __init__(
        self,
        in_channels: list[int],
        dim: int = 256,
        enc_layers: int = 6,
        enc_ffn_dim: int = 1024,
        heads: int = 8,
        points: int = 4,
        dropout: float = 0.0,
        align: bool = False,
        deformable_groups: int = 8,
    ) -> None:
        super().__init__()
        levels = len(in_channels) - 1
        self.input_proj = nn.ModuleList()
        for c in reversed(in_channels[1:]):  # res5 first: level 0 is the coarsest
            conv = nn.Conv2d(c, dim, 1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            self.input_proj.append(nn.Sequential(conv, nn.GroupNorm(GN_GROUPS, dim)))
        self.transformer = DeformableEncoder(dim, enc_layers, enc_ffn_dim, heads, levels, points, dropout)
        self.mask_features = nn.Conv2d(dim, dim, 1)
        c2_xavier_fill(self.mask_features)
        self.align = align
        self.adapter_1 = gn_conv(in_channels[0], dim, 1, relu=False)
        if align:
            self.align_1 = FeatureAlign(dim, deformable_groups)
        self.layer_1 = gn_conv(dim, dim, 3, relu=True)
        self.dim = dim

    def forward(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            features = [f.float() for f in features]
            coarse = features[:0:-1]  # res5, res4, res3
            srcs = [proj(f) for proj, f in zip(self.input_proj, coarse)]
            pos = [sine_position_embedding(f.shape[0], f.shape[2], f.shape[3], self.dim, f.device) for f in coarse]
            outs = self.transformer(srcs, pos)
            lateral = self.adapter_1(features[0])
            up = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            summed = lateral + up
            y = self.layer_1(self.align_1(lateral, summed, self.layer_1.norm) if self.align else summed)
            return self.mask_features(y), outs
