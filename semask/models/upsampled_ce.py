"""Cross-entropy of bilinearly upsampled logits without the full-resolution tensors.

The paper's loss resizes stride-4 logits (B, K, H/4, W/4) to the label size and takes the
per-pixel CE. Done literally, training holds the (B, K, H, W) logits, their log-softmax and
two full-size gradients (at 512^2, K=150, batch 2: 315 MB each). :func:`upsampled_cross_entropy`
computes the same sum band by band of output rows: a band of logits is rebuilt from the
low-resolution map with the 1-D bilinear matrices (W direction once per image, then the few
source rows of the band), reduced to its CE, and dropped; backward rebuilds the band, forms
``softmax - onehot`` and maps it back through the transposed matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bilinear_taps(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """(lower source index, upper source index, weight of the upper one) of each of ``n_out``
    outputs of 1-D bilinear resizing, align_corners False: output o samples
    ``max((o + 0.5) n_in / n_out - 0.5, 0)`` (torch's rule), float64 weights."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long()
    return lo, (lo + 1).clamp(max=n_in - 1), src - lo


def bilinear_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in) matrix of 1-D bilinear resizing (see :func:`bilinear_taps`), dtype/device of ``like``."""
    lo, hi, frac = bilinear_taps(n_in, n_out)
    rows = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype=like.dtype, device=like.device)


def _bands(rows: int, band_rows: int) -> list[tuple[int, int]]:
    return [(r0, min(r0 + band_rows, rows)) for r0 in range(0, rows, band_rows)]


def _compute_dtype(logits: Tensor) -> Tensor:
    """float32 (as the literal loss, which upcasts half-precision logits), float64 kept."""
    x = logits.detach()
    return x if x.dtype == torch.float64 else x.float()


def _taps(n_in: int, n_out: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    lo, hi, frac = bilinear_taps(n_in, n_out)
    return lo.to(like.device), hi.to(like.device), frac.to(dtype=like.dtype, device=like.device)


def _columns(x: Tensor, a_w: Tensor) -> Tensor:
    """Image (K, h, w) resized along W, laid out (h, K, W): each source row is then one
    contiguous K W slab, and a band of output rows blends two gathered slabs per row."""
    return torch.matmul(x.transpose(0, 1), a_w.T)


class _UpsampledCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, ignore_index: int, band_rows: int) -> Tensor:  # type: ignore[override]
        x = _compute_dtype(logits)
        b, k, h, w = x.shape
        big_h, big_w = labels.shape[-2:]
        a_w = bilinear_matrix(w, big_w, x)
        lo, hi, frac = _taps(h, big_h, x)
        total = x.new_zeros((), dtype=torch.float64)
        with torch.autocast(x.device.type, enabled=False):  # float32 throughout, as the literal CE
            for i in range(b):
                cols = _columns(x[i], a_w).view(h, k * big_w)
                for r0, r1 in _bands(big_h, band_rows):
                    band = torch.lerp(cols[lo[r0:r1]], cols[hi[r0:r1]], frac[r0:r1, None]).view(-1, k, big_w)
                    lab = labels[i, r0:r1].long()
                    valid = lab != ignore_index
                    picked = torch.log_softmax(band, 1).gather(1, torch.where(valid, lab, 0)[:, None])[:, 0]
                    total -= (picked * valid).sum(dtype=torch.float64)
        ctx.save_for_backward(logits, labels)
        ctx.ignore_index, ctx.band_rows = ignore_index, band_rows
        return total.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        logits, labels = ctx.saved_tensors
        x = _compute_dtype(logits)
        b, k, h, w = x.shape
        big_h, big_w = labels.shape[-2:]
        a_h, a_w = bilinear_matrix(h, big_h, x), bilinear_matrix(w, big_w, x)
        lo, hi, frac = _taps(h, big_h, x)
        out = torch.empty_like(x)
        g = grad.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            for i in range(b):
                cols = _columns(x[i], a_w).view(h, k * big_w)
                grad_cols = torch.zeros_like(cols)
                for r0, r1 in _bands(big_h, ctx.band_rows):
                    band = torch.lerp(cols[lo[r0:r1]], cols[hi[r0:r1]], frac[r0:r1, None]).view(-1, k, big_w)
                    lab = labels[i, r0:r1].long()
                    valid = lab != ctx.ignore_index
                    p = torch.softmax(band, 1)
                    p.scatter_add_(1, torch.where(valid, lab, 0)[:, None], -valid[:, None].to(p.dtype))  # - onehot
                    p.mul_((valid.to(p.dtype) * g)[:, None])
                    s0, s1 = int(lo[r0]), int(hi[r1 - 1]) + 1  # the band's source rows
                    grad_cols[s0:s1].addmm_(a_h[r0:r1, s0:s1].T, p.view(r1 - r0, -1))
                out[i] = torch.matmul(grad_cols.view(h, k, big_w), a_w).transpose(0, 1)
        return out.to(logits.dtype), None, None, None


def upsampled_cross_entropy(
    logits: Tensor, labels: Tensor, ignore_index: int = 255, band_elements: int = 1 << 21
) -> Tensor:
    """Sum over non-ignored pixels of CE(resize(logits, labels' size), labels), float32 (float64 kept).

    Equal (to float rounding) to ``F.cross_entropy(F.interpolate(logits, size, bilinear,
    align_corners=False).float(), labels, ignore_index=..., reduction="sum")``, with
    temporaries of about ``band_elements`` floats instead of B K H W. ``logits`` (B, K, h, w),
    ``labels`` (B, H, W) integers.
    """
    k, big_w = logits.shape[1], labels.shape[-1]
    band_rows = max(1, band_elements // (k * big_w))
    return _UpsampledCrossEntropySum.apply(logits, labels, ignore_index, band_rows)
