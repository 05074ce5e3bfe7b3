"""Cross-entropy of bilinearly upsampled logits without the full-resolution tensors.

The paper's loss resizes stride-4 logits (B, K, H/4, W/4) to the label size and takes the
per-pixel CE. Done literally, training holds the (B, K, H, W) logits, their log-softmax and
two full-size gradients (at 512^2, K=150, batch 2: 315 MB each). :func:`upsampled_cross_entropy`
computes the same sum band by band of output rows: a band of logits is rebuilt from its few
low-resolution source rows with the 1-D bilinear matrices (along W, then one GEMM along H),
reduced to its CE and, in the same pass, to its gradient ``softmax - onehot`` mapped back
through the transposed matrices onto those rows; then dropped. Every temporary is band-sized
(on a CPU 8 MB, which glibc's malloc reuses; tensors over 32 MiB are mapped fresh each time).
"""

from __future__ import annotations

from collections.abc import Iterator

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


def _columns(x: Tensor, a_w: Tensor) -> Tensor:
    """Source rows (K, s, w) resized along W, laid out (s, K, W): each row is then one
    contiguous K W slab, and a band of output rows is one GEMM over the band's few rows."""
    return torch.matmul(x.transpose(0, 1), a_w.T)


def _bands_of_logits(
    x: Tensor, size: tuple[int, int], band_rows: int
) -> Iterator[tuple[int, int, int, int, int, Tensor, Tensor]]:
    """(image, first row, end row, first source row, end source row, H-resize rows, band logits
    (rows, K, W)) for every band of output rows of the bilinear resize of ``x`` to ``size``."""
    b, k, h, w = x.shape
    big_h, big_w = size
    a_w, a_h = bilinear_matrix(w, big_w, x), bilinear_matrix(h, big_h, x)
    lo, hi, _ = bilinear_taps(h, big_h)
    for i in range(b):
        for r0, r1 in _bands(big_h, band_rows):
            s0, s1 = int(lo[r0]), int(hi[r1 - 1]) + 1  # the band's source rows
            rows = a_h[r0:r1, s0:s1]
            cols = _columns(x[i, :, s0:s1], a_w).reshape(s1 - s0, k * big_w)
            yield i, r0, r1, s0, s1, rows, torch.mm(rows, cols).view(-1, k, big_w)


class _UpsampledCrossEntropySum(torch.autograd.Function):
    """The loss is a scalar at the end of the graph, so its gradient is formed in the same pass
    as its value, band by band, and backward only scales it: no band is built twice."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits: Tensor, labels: Tensor, weight: Tensor | None, ignore_index: int, band_rows: int, want_grad: bool
    ) -> Tensor:
        x = _compute_dtype(logits)
        big_w = labels.shape[-1]
        a_w = bilinear_matrix(x.shape[-1], big_w, x)
        total = x.new_zeros((), dtype=torch.float64)
        grad = torch.zeros_like(x) if want_grad else None
        with torch.autocast(x.device.type, enabled=False):  # float32 throughout, as the literal CE
            for i, r0, r1, s0, s1, rows, band in _bands_of_logits(x, labels.shape[-2:], band_rows):
                lab = labels[i, r0:r1].long()
                valid = lab != ignore_index
                target = torch.where(valid, lab, 0)[:, None]
                # per-pixel weight: 1 on valid pixels, times ``weight`` when given
                pixel = valid.to(band.dtype) if weight is None else valid * weight[i, r0:r1].to(band.dtype)
                logp = torch.log_softmax(band, 1)
                total -= (logp.gather(1, target)[:, 0] * pixel).sum(dtype=torch.float64)
                if want_grad:  # grad exists exactly then
                    p = logp.exp_()  # softmax
                    p.scatter_add_(1, target, -valid[:, None].to(p.dtype))  # - onehot
                    p.mul_(pixel[:, None])
                    grad_cols = torch.mm(rows.T, p.view(r1 - r0, -1)).view(s1 - s0, -1, big_w)
                    grad[i, :, s0:s1] += torch.matmul(grad_cols, a_w).transpose(0, 1)
        if want_grad:
            ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        return total.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * grad_output.to(grad.dtype)).to(ctx.dtype), None, None, None, None, None


def _band_rows(logits: Tensor, labels: Tensor, band_elements: int | None) -> int:
    """Rows per band: about ``band_elements`` floats (default 2^21 on a CPU: 8 MB, cache- and
    malloc-friendly; 2^26 on a GPU: a few large kernels per image instead of many small ones)."""
    if band_elements is None:
        band_elements = 1 << 21 if logits.device.type == "cpu" else 1 << 26
    return max(1, band_elements // (logits.shape[1] * labels.shape[-1]))


def upsampled_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int = 255,
    band_elements: int | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Sum over non-ignored pixels of CE(resize(logits, labels' size), labels), float32 (float64 kept).

    Equal (to float rounding) to ``F.cross_entropy(F.interpolate(logits, size, bilinear,
    align_corners=False).float(), labels, ignore_index=..., reduction="sum")``, with
    temporaries of about ``band_elements`` floats instead of B K H W. ``logits`` (B, K, h, w),
    ``labels`` (B, H, W) integers; ``weight`` (B, H, W), optional, multiplies each pixel's CE
    (OHEM's kept-pixel mask, class weights of the labels).
    """
    want_grad = torch.is_grad_enabled() and logits.requires_grad  # no gradient is formed for evaluation
    band_rows = _band_rows(logits, labels, band_elements)
    return _UpsampledCrossEntropySum.apply(logits, labels, weight, ignore_index, band_rows, want_grad)


@torch.no_grad()
def upsampled_pixel_cross_entropy(
    logits: Tensor, labels: Tensor, ignore_index: int = 255, band_elements: int | None = None
) -> Tensor:
    """(B, H, W) per-pixel CE of the logits bilinearly resized to the labels' size (0 on ignored
    pixels), built band by band like :func:`upsampled_cross_entropy`; no gradient."""
    x = _compute_dtype(logits)
    out = x.new_zeros(labels.shape)
    with torch.autocast(x.device.type, enabled=False):
        for i, r0, r1, _, _, _, band in _bands_of_logits(
            x, labels.shape[-2:], _band_rows(logits, labels, band_elements)
        ):
            lab = labels[i, r0:r1].long()
            valid = lab != ignore_index
            target = torch.where(valid, lab, 0)[:, None]
            out[i, r0:r1] = -torch.log_softmax(band, 1).gather(1, target)[:, 0] * valid
    return out
