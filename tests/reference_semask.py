"""A deliberately naive, spec-literal SeMask-FPN forward over an *official-layout* state dict.

Written independently of ``semask.models`` from spec semask_fpn.md sections 2-4: explicit
per-window loops, masks built from region ids pixel by pixel, relative indices from the
formula. Slow, so only for small inputs; the models must match it to float32 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _ln(x: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"], eps=1e-5)


def _lin(x: Tensor, sd: dict[str, Tensor], key: str) -> Tensor:
    return F.linear(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"))


def _rel_index(m: int) -> Tensor:
    idx = torch.empty(m * m, m * m, dtype=torch.long)
    for a in range(m * m):
        ha, wa = divmod(a, m)
        for b in range(m * m):
            hb, wb = divmod(b, m)
            idx[a, b] = (ha - hb + m - 1) * (2 * m - 1) + (wa - wb + m - 1)
    return idx


def _regions(hp: int, wp: int, m: int, s: int) -> Tensor:
    """Region id per pixel of the padded map: slices [0,-M), [-M,-s), [-s,end) per axis."""

    def axis_id(i: int, n: int) -> int:
        if i < n - m:
            return 0
        if i < n - s:
            return 1
        return 2

    ids = torch.empty(hp, wp, dtype=torch.long)
    for i in range(hp):
        for j in range(wp):
            ids[i, j] = axis_id(i, hp) * 3 + axis_id(j, wp)
    return ids


def swin_block(x: Tensor, h: int, w: int, sd: dict[str, Tensor], key: str, heads: int, m: int, shift: int) -> Tensor:
    b, _, c = x.shape
    y = _ln(x, sd, f"{key}.norm1").view(b, h, w, c)
    hp, wp = math.ceil(h / m) * m, math.ceil(w / m) * m
    y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
    if shift:
        y = torch.roll(y, (-shift, -shift), (1, 2))
        regions = _regions(hp, wp, m, shift)
    table = sd[f"{key}.attn.relative_position_bias_table"]
    bias = table[_rel_index(m).view(-1)].view(m * m, m * m, heads).permute(2, 0, 1)
    d = c // heads
    out = torch.zeros_like(y)
    for bi in range(b):
        for wy in range(0, hp, m):
            for wx in range(0, wp, m):
                tokens = y[bi, wy : wy + m, wx : wx + m].reshape(m * m, c)
                qkv = _lin(tokens, sd, f"{key}.attn.qkv").view(m * m, 3, heads, d)
                q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
                att = torch.einsum("nhd,khd->hnk", q * d**-0.5, k) + bias
                if shift:
                    r = regions[wy : wy + m, wx : wx + m].reshape(-1)
                    att = att + (r[:, None] != r[None, :]).float() * -100.0
                o = torch.einsum("hnk,khd->nhd", att.softmax(-1), v).reshape(m * m, c)
                out[bi, wy : wy + m, wx : wx + m] = _lin(o, sd, f"{key}.attn.proj").view(m, m, c)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    x = x + out[:, :h, :w].reshape(b, h * w, c)
    hid = F.gelu(_lin(_ln(x, sd, f"{key}.norm2"), sd, f"{key}.mlp.fc1"))
    return x + _lin(hid, sd, f"{key}.mlp.fc2")


def semantic_layer(
    x: Tensor, h: int, w: int, sd: dict[str, Tensor], key: str, n_blocks: int, m: int, global_: bool
) -> tuple[Tensor, Tensor]:
    b, _, c = x.shape
    y = _ln(x, sd, f"{key}.norm1")
    if global_:
        groups = [(bi, None) for bi in range(b)]
        grid = y.view(b, h, w, c)
        hp, wp = h, w
    else:
        hp, wp = math.ceil(h / m) * m, math.ceil(w / m) * m
        grid = F.pad(y.view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
        groups = [(bi, (wy, wx)) for bi in range(b) for wy in range(0, hp, m) for wx in range(0, wp, m)]
    k_classes = sd[f"{key}.class_injection.0.mlp_cls_q.weight"].shape[0]
    out = torch.zeros_like(grid)
    prior = grid.new_zeros(b, hp, wp, k_classes)
    for bi, origin in groups:
        if origin is None:
            t = grid[bi].reshape(h * w, c)
        else:
            t = grid[bi, origin[0] : origin[0] + m, origin[1] : origin[1] + m].reshape(m * m, c)
        for k in range(n_blocks):
            p = f"{key}.class_injection.{k}"
            sq, sk, v = _lin(t, sd, f"{p}.mlp_cls_q"), _lin(t, sd, f"{p}.mlp_cls_k"), _lin(t, sd, f"{p}.mlp_v")
            t = sd[f"{p}.gamma"] * _lin((sq @ sk.T).softmax(-1) @ v, sd, f"{p}.mlp_res") + t
        if origin is None:
            out[bi], prior[bi] = t.view(h, w, c), sq.view(h, w, -1)
        else:
            out[bi, origin[0] : origin[0] + m, origin[1] : origin[1] + m] = t.view(m, m, c)
            prior[bi, origin[0] : origin[0] + m, origin[1] : origin[1] + m] = sq.view(m, m, -1)
    return out[:, :h, :w].reshape(b, h * w, c), prior[:, :h, :w].permute(0, 3, 1, 2)


def patch_merging(x: Tensor, h: int, w: int, sd: dict[str, Tensor], key: str) -> tuple[Tensor, int, int]:
    b, _, c = x.shape
    g = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
    cat = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], -1)
    h2, w2 = cat.shape[1:3]
    cat = _ln(cat.reshape(b, h2 * w2, 4 * c), sd, f"{key}.norm")
    return F.linear(cat, sd[f"{key}.reduction.weight"]), h2, w2


def _up(x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    if size is None:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def reference_forward(
    sd: dict[str, Tensor], x: Tensor, heads: list[int], window: int, sem_window: int, global_stages: tuple[int, ...]
) -> tuple[Tensor, Tensor | None]:
    """(logits, semantic logits or None) at the input size, official key names, eval mode."""
    H, W = x.shape[-2:]
    xp = F.pad(x, (0, (-W) % 4, 0, (-H) % 4))
    t = F.conv2d(xp, sd["backbone.patch_embed.proj.weight"], sd["backbone.patch_embed.proj.bias"], stride=4)
    b, _, h, w = t.shape
    t = _ln(t.flatten(2).transpose(1, 2), sd, "backbone.patch_embed.norm")
    feats, priors = [], []
    for i in range(len(heads)):
        depth = len({k.split(".")[4] for k in sd if k.startswith(f"backbone.layers.{i}.blocks.")})
        for j in range(depth):
            t = swin_block(
                t, h, w, sd, f"backbone.layers.{i}.blocks.{j}", heads[i], window, 0 if j % 2 == 0 else window // 2
            )
        n_sem = len(
            {k.split(".")[5] for k in sd if k.startswith(f"backbone.layers.{i}.semantic_layer.class_injection.")}
        )
        if n_sem:
            t, prior = semantic_layer(
                t, h, w, sd, f"backbone.layers.{i}.semantic_layer", n_sem, sem_window, i in global_stages
            )
            priors.append(prior)
        feats.append(_ln(t, sd, f"backbone.norm{i}").view(b, h, w, -1).permute(0, 3, 1, 2))
        if i < len(heads) - 1:
            t, h, w = patch_merging(t, h, w, sd, f"backbone.layers.{i}.downsample")

    def conv_bn_relu(f: Tensor, key: str) -> Tensor:
        f = F.conv2d(f, sd[f"{key}.conv.weight"], padding=1)
        f = F.batch_norm(
            f,
            sd[f"{key}.bn.running_mean"],
            sd[f"{key}.bn.running_var"],
            sd[f"{key}.bn.weight"],
            sd[f"{key}.bn.bias"],
            eps=1e-5,
        )
        return F.relu(f)

    out = None
    for i, f in enumerate(feats):
        n = max(1, i)
        for r in range(n):
            f = conv_bn_relu(f, f"decode_head.scale_heads.{i}.{2 * r if i else r}")
            if i:
                f = _up(f)
        out = f if out is None else out + _up(f, tuple(out.shape[-2:]))
    logits = F.conv2d(out, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
    logits = _up(logits, (H, W))
    if not priors:
        return logits, None
    sem = priors[0]
    for i, p in enumerate(priors[1:], start=1):
        for _ in range(i):
            p = _up(p)
        sem = sem + _up(p, tuple(sem.shape[-2:]))
    return logits, _up(sem, (H, W))
