"""Pure-PyTorch operators of the mask-classification heads (spec semask_mask2former.md 1.7-2.3).

Multi-scale deformable attention (Deformable DETR) and modulated deformable convolution
(DCNv2) normally need compiled CUDA kernels; here both are written with ``grid_sample`` /
``gather`` so the models run and export anywhere. PointRend point sampling is used by the
matcher and the mask losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention core.

    value (B, S, heads, Dh) with S = sum of H_l*W_l (levels concatenated row-major);
    sampling_locations (B, Q, heads, levels, points, 2) as normalised (x, y) in [0, 1];
    attention_weights (B, Q, heads, levels, points). Bilinear sampling is
    ``grid_sample(align_corners=False, padding zeros)``, as the CUDA kernel. Returns (B, Q, heads*Dh).
    """
    b, _, heads, dh = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = values[lvl].permute(0, 2, 3, 1).reshape(b * heads, dh, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * heads, q, points, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*heads, Dh, Q, levels*points)
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (stacked * weights).sum(-1).view(b, heads * dh, q)
    return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Deformable attention over ``levels`` feature maps, ``points`` samples per head and level."""

    def __init__(self, dim: int = 256, levels: int = 3, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"deformable attention width {dim} is not divisible by {heads} heads")
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: offsets start on a ring of 8 directions, radius = point index + 1."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self, query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """query (B, Q, C); reference_points (B, Q, levels, 2) normalised (x, y); value (B, S, C)."""
        b, q, _ = query.shape
        v = self.value_proj(value).view(b, value.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normaliser = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(v, spatial_shapes, locations, weights))


def _bilinear_gather(x: Tensor, py: Tensor, px: Tensor) -> Tensor:
    """Sample x (N, C, H, W) at pixel coordinates py, px (N, P); out-of-range corners read 0."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    y0, x0 = py.floor(), px.floor()
    out = x.new_zeros(n, c, py.shape[1])
    for dy in (0, 1):
        for dx in (0, 1):
            yc, xc = y0 + dy, x0 + dx
            weight = (1 - (py - yc).abs()) * (1 - (px - xc).abs())
            valid = (yc >= 0) & (yc <= h - 1) & (xc >= 0) & (xc <= w - 1)
            index = (yc.clamp(0, h - 1) * w + xc.clamp(0, w - 1)).long()
            gathered = flat.gather(2, index.unsqueeze(1).expand(n, c, -1))
            out = out + gathered * (weight * valid).unsqueeze(1).to(x.dtype)
    return out


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
) -> Tensor:
    """DCNv2: a convolution whose taps are moved by ``offset`` and scaled by ``mask``.

    x (B, C, H, W); weight (C_out, C, kh, kw); offset (B, 2*G*kh*kw, Ho, Wo) in the DCNv2 /
    torchvision layout (channel 2*(g*K + k) = dy, +1 = dx); mask (B, G*kh*kw, Ho, Wo).
    Channels are split into G deformable groups. Samples outside the image read 0.
    """
    b, c, h, w = x.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f"deformable conv weight expects {c_in} input channels, got {c}")
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    if groups < 1 or offset.shape[1] != 2 * groups * k or mask.shape[1] != groups * k or c % groups:
        raise ValueError(
            f"offset {tuple(offset.shape)} / mask {tuple(mask.shape)} do not fit a {kh}x{kw} kernel "
            f"with deformable groups dividing {c} channels"
        )
    ho, wo = offset.shape[-2:]
    off = offset.view(b, groups, k, 2, ho, wo)
    tap_y = (torch.arange(kh, device=x.device) * dilation).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=x.device) * dilation).repeat(kh)
    base_y = torch.arange(ho, device=x.device) * stride - padding
    base_x = torch.arange(wo, device=x.device) * stride - padding
    py = (base_y.view(1, 1, 1, ho, 1) + tap_y.view(1, 1, k, 1, 1)).to(off.dtype) + off[:, :, :, 0]
    px = (base_x.view(1, 1, 1, 1, wo) + tap_x.view(1, 1, k, 1, 1)).to(off.dtype) + off[:, :, :, 1]
    sampled = _bilinear_gather(
        x.reshape(b * groups, c // groups, h, w), py.reshape(b * groups, -1), px.reshape(b * groups, -1)
    )  # (B*G, C/G, K*Ho*Wo)
    sampled = sampled.view(b, groups, c // groups, k, ho * wo) * mask.view(b, groups, 1, k, ho * wo)
    out = weight.reshape(c_out, c * k) @ sampled.reshape(b, c * k, ho * wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, c_out, ho, wo)


def point_sample(x: Tensor, coords: Tensor) -> Tensor:
    """x (N, C, H, W) at normalised (x, y) points coords (N, P, 2) in [0, 1] -> (N, C, P)."""
    return F.grid_sample(x, (2.0 * coords - 1.0).unsqueeze(2), align_corners=False).squeeze(3)


def uncertain_point_coords(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> Tensor:
    """PointRend importance sampling: the points whose logit is closest to 0, plus random ones.

    mask_logits (N, 1, H, W) -> coords (N, num_points, 2). Draw ``oversample_ratio x num_points``
    uniform points, keep the ``importance_ratio`` share with the smallest |logit|, fill up with
    fresh uniform points.
    """
    n = mask_logits.shape[0]
    candidates = torch.rand(n, int(num_points * oversample_ratio), 2, device=mask_logits.device)
    uncertainty = -point_sample(mask_logits, candidates)[:, 0].abs()
    num_uncertain = int(importance_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = candidates.gather(1, index.unsqueeze(-1).expand(-1, -1, 2))
    fresh = torch.rand(n, num_points - num_uncertain, 2, device=mask_logits.device)
    return torch.cat([chosen, fresh], dim=1)


def sine_position_embedding(
    batch: int, h: int, w: int, dim: int, device: torch.device, temperature: float = 10000.0
) -> Tensor:
    """DETR sine positions, normalised to [0, 2pi]: (B, dim, H, W), channels [y-part, x-part]."""
    feats = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * scale
    dim_t = temperature ** (2 * (torch.arange(feats, dtype=torch.float32, device=device) // 2) / feats)

    def embed(coord: Tensor) -> Tensor:  # (n,) -> (n, feats): sin/cos interleaved per frequency
        p = coord[:, None] / dim_t
        return torch.stack([p[:, 0::2].sin(), p[:, 1::2].cos()], dim=2).flatten(1)

    pos_y = embed(y)[:, None, :].expand(h, w, feats)
    pos_x = embed(x)[None, :, :].expand(h, w, feats)
    pos = torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1)
    return pos.unsqueeze(0).expand(batch, -1, -1, -1)
