"""The SeMask semantic layer (paper section 3.2, Fig. 3; spec semask_fpn.md section 3).

After the Transformer blocks of a stage, the features y attend to themselves through
*semantic* queries and keys: both are linear projections to K (number of classes)
channels, so the attention map compares pixels by their class evidence. The result is
added back with a learnable weight lambda that starts at 0, so an ImageNet-pretrained
encoder is unchanged at the start of training. The query projection S_Q of the last
semantic block is the stage's *semantic prior map*, supervised by the semantic-prior
loss through the parameter-free semantic decoder.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from .layers import tokens_to_windows, window_token_index, windows_to_tokens

# Global attention over every pixel of a large image would hold an N x N score matrix
# (16384^2 floats = 1 GiB at stride 16 of a 2048^2 input). Rows of a softmax are
# independent, so queries are processed in chunks of this many tokens: the result is
# the exact same math, with memory linear in N.
GLOBAL_ATTENTION_CHUNK = 4096


def semantic_attention(s_q: Tensor, s_k: Tensor, v: Tensor, chunk: int = GLOBAL_ATTENTION_CHUNK) -> Tensor:
    """softmax(S_Q S_K^T) V with no 1/sqrt(d) scaling (as the official code), row-chunked.

    Computed in at least float32, also under autocast: the unscaled products of class
    scores are large, and bf16/fp16 would round them too coarsely for the softmax.
    """
    dtype = torch.promote_types(v.dtype, torch.float32)
    device = v.device.type
    with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
        s_q, s_k, v_ = s_q.to(dtype), s_k.to(dtype), v.to(dtype)
        s_k_t = s_k.transpose(-2, -1)
        if s_q.shape[-2] <= chunk:
            out = torch.softmax(s_q @ s_k_t, dim=-1) @ v_
        else:
            out = torch.cat([torch.softmax(q @ s_k_t, dim=-1) @ v_ for q in s_q.split(chunk, dim=-2)], dim=-2)
    return out.to(v.dtype)


def prior_map(s_q: Tensor, h: int, w: int) -> Tensor:
    """(B, H*W, K) semantic queries -> (B, K, H, W) prior map, a channels-last view (no copy)."""
    b, _, k = s_q.shape
    return s_q.contiguous().view(b, h, w, k).permute(0, 3, 1, 2)


class SemanticAttentionBlock(nn.Module):
    """One semantic attention block (the official ``class_injection.{k}``).

    ``mlp_cls_q``/``mlp_cls_k`` give the semantic queries/keys (K channels),
    ``mlp_v`` the values, ``mlp_res`` the output projection, ``lambda_`` the paper's lambda
    (stored as ``gamma`` in the official checkpoints).
    """

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1, learnable_lambda: bool = True) -> None:
        super().__init__()
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        # Table 4 ablation: without a learnable lambda the branch is added with weight 1.
        if learnable_lambda:
            self.lambda_ = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("lambda_", torch.ones(1), persistent=False)

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y: (windows, N, C) -> (semantic prior S_Q (windows, N, K), updated y)."""
        s_q = self.mlp_cls_q(y)
        f = self.mlp_res(semantic_attention(s_q, self.mlp_cls_k(y), self.mlp_v(y)))
        return s_q, torch.addcmul(y, self.lambda_, self.dropout(f))  # y + lambda * f in one pass


class SelfAttentionBlock(nn.Module):
    """The paper's Table 3 ablation ("Trans Swin"): plain single-head self-attention in place
    of the SeMask block, same placement, windows, lambda and dropout; it yields no prior."""

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1, learnable_lambda: bool = True) -> None:
        super().__init__()
        del num_classes  # the point of the ablation: no class projections
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = dim**-0.5
        if learnable_lambda:
            self.lambda_ = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("lambda_", torch.ones(1), persistent=False)

    def forward(self, y: Tensor) -> tuple[None, Tensor]:
        f = self.proj(semantic_attention(self.q(y) * self.scale, self.k(y), self.v(y)))
        return None, torch.addcmul(y, self.lambda_, self.dropout(f))


class SemanticLayer(nn.Module):
    """Semantic layer of one stage: LayerNorm, then ``num_blocks`` semantic attention blocks.

    ``window_size`` windows the attention (non-shifted, zero padding taking part, as the
    official code); ``global_attention`` lets every pixel of an image attend to every other.
    ``block`` is the block class: :class:`SemanticAttentionBlock`, or :class:`SelfAttentionBlock`
    for the Table 3 ablation (no prior map).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_blocks: int = 1,
        window_size: int = 7,
        global_attention: bool = False,
        dropout: float = 0.1,
        learnable_lambda: bool = True,
        block: type[SemanticAttentionBlock | SelfAttentionBlock] = SemanticAttentionBlock,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.global_attention = global_attention
        self.norm1 = nn.LayerNorm(dim)
        self.class_injection = nn.ModuleList(
            block(dim, num_classes, dropout, learnable_lambda) for _ in range(num_blocks)
        )

    def forward(self, x: Tensor, h: int, w: int, output_prior: bool = True) -> tuple[Tensor, Tensor | None]:
        """x: (B, H*W, C) -> (semantically masked features (B, H*W, C), prior map (B, K, H, W) or None).

        ``output_prior=False`` (inference) skips assembling the prior map from the windows.
        """
        b = x.shape[0]
        y = self.norm1(x)  # the normalised features are the residual stream from here on
        if self.global_attention:
            for block in self.class_injection:
                s_q, y = block(y)
            return y, None if s_q is None or not output_prior else prior_map(s_q, h, w)
        m = self.window_size
        to_windows, to_tokens = window_token_index(h, w, m, 0, x.device)
        y = tokens_to_windows(y, to_windows, m)  # zero padding after the norm, taking part
        for block in self.class_injection:
            s_q, y = block(y)
        y = windows_to_tokens(y, to_tokens, b)
        if s_q is None or not output_prior:
            return y, None
        return y, prior_map(windows_to_tokens(s_q, to_tokens, b), h, w)

    def extra_repr(self) -> str:
        mode = "global" if self.global_attention else f"window={self.window_size}"
        return mode
