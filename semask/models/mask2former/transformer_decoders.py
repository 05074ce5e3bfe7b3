"""Query decoders that turn pixel features into (class, mask) pairs (spec section 1.8).

MaskFormer: a DETR decoder over the projected res5 map. Mask2Former: masked attention,
each layer restricted to the foreground of the previous layer's mask prediction, cycling
through the three pixel-decoder levels coarse to fine. Both return one prediction set per
supervised layer, last one final. Attention modules are ``nn.MultiheadAttention`` in the
(L, B, C) layout so the packed ``in_proj_weight`` keys match the official checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import sine_position_embedding
from .pixel_decoders import c2_xavier_fill


@dataclass
class Predictions:
    """Per supervised layer: class logits (B, Q, K+1) and mask logits (B, Q, h, w) at stride 4."""

    logits: list[Tensor]
    masks: list[Tensor]


class MaskEmbedMLP(nn.Module):
    """``layers.{0,1,2}``: Linear, ReLU between, none after the last."""

    def __init__(self, dim: int, out_dim: int, num_layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, out_dim if i == num_layers - 1 else dim) for i in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def flatten_memory(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (H*W, B, C)."""
    return x.flatten(2).permute(2, 0, 1)


# --------------------------------------------------------------------------- MaskFormer
class DETRDecoderLayer(nn.Module):
    """Post-norm self-attention, cross-attention to the memory, FFN (DETR)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, t: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        q = t + query_pos
        t = self.norm1(t + self.dropout(self.self_attn(q, q, t, need_weights=False)[0]))
        attended = self.multihead_attn(t + query_pos, memory + pos, memory, need_weights=False)[0]
        t = self.norm2(t + self.dropout(attended))
        return self.norm3(t + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(t))))))


class DETRDecoder(nn.Module):
    """``transformer.decoder``: layers plus the final norm applied to every intermediate output."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DETRDecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)


class MaskFormerPredictor(nn.Module):
    """MaskFormer ``TransformerPredictor``: 0 encoder layers, DETR decoder on res5."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dim: int = 256,
        num_queries: int = 100,
        heads: int = 8,
        ffn_dim: int = 2048,
        dec_layers: int = 6,
        mask_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.decoder = DETRDecoder(dim, heads, ffn_dim, dec_layers, dropout)
        for p in self.transformer.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.input_proj = nn.Conv2d(in_channels, dim, 1)
        c2_xavier_fill(self.input_proj)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = MaskEmbedMLP(dim, mask_dim)
        self.dim = dim

    def forward(self, res5: Tensor, mask_features: Tensor) -> Predictions:
        b, _, h, w = res5.shape
        memory = flatten_memory(self.input_proj(res5))
        pos = flatten_memory(sine_position_embedding(b, h, w, self.dim, res5.device)).to(memory.dtype)
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, b, -1)
        t = torch.zeros_like(query_pos)
        decoder = self.transformer.decoder
        out = Predictions([], [])
        for layer in decoder.layers:
            t = layer(t, memory, pos, query_pos)
            hidden = decoder.norm(t).transpose(0, 1)
            out.logits.append(self.class_embed(hidden))
            out.masks.append(torch.einsum("bqc,bchw->bqhw", self.mask_embed(hidden), mask_features))
        return out


# --------------------------------------------------------------------------- Mask2Former
class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, t: Tensor, query_pos: Tensor) -> Tensor:
        q = t + query_pos
        return self.norm(t + self.dropout(self.self_attn(q, q, t, need_weights=False)[0]))


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, t: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, mask: Tensor) -> Tensor:
        attended = self.multihead_attn(t + query_pos, memory + pos, memory, attn_mask=mask, need_weights=False)[0]
        return self.norm(t + self.dropout(attended))


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, t: Tensor) -> Tensor:
        return self.norm(t + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(t))))))


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former ``MultiScaleMaskedTransformerDecoder`` (``dec_layers`` layers, dec_layers+1 predictions).

    Layer i cross-attends to level i mod 3 of the pixel decoder, only where the previous
    prediction's sigmoid mask is >= 0.5 (queries with an empty mask attend everywhere).
    """

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        num_queries: int = 100,
        heads: int = 8,
        ffn_dim: int = 2048,
        dec_layers: int = 9,
        mask_dim: int = 256,
        num_levels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.num_levels = num_levels
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(dim, heads, dropout) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(dim, heads, dropout) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(dim, ffn_dim, dropout) for _ in range(dec_layers))
        for layers in (
            self.transformer_self_attention_layers,
            self.transformer_cross_attention_layers,
            self.transformer_ffn_layers,
        ):
            for p in layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        self.decoder_norm = nn.LayerNorm(dim)
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(num_levels, dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = MaskEmbedMLP(dim, mask_dim)
        self.dim = dim

    def predict(self, t: Tensor, mask_features: Tensor, target_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Class logits, mask logits and the (B*heads, Q, h*w) attention mask for the next layer."""
        hidden = self.decoder_norm(t).transpose(0, 1)
        logits = self.class_embed(hidden)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(hidden), mask_features)
        resized = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5
        blocked = blocked.unsqueeze(1).expand(-1, self.heads, -1, -1).flatten(0, 1).detach()
        return logits, masks, blocked

    def forward(self, multi_scale: list[Tensor], mask_features: Tensor) -> Predictions:
        b = mask_features.shape[0]
        sizes = [(int(x.shape[2]), int(x.shape[3])) for x in multi_scale]
        memories, positions = [], []
        for lvl, x in enumerate(multi_scale):
            memories.append(flatten_memory(x) + self.level_embed.weight[lvl].view(1, 1, -1))
            pos = sine_position_embedding(b, sizes[lvl][0], sizes[lvl][1], self.dim, x.device)
            positions.append(flatten_memory(pos).to(x.dtype))
        query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, b, -1)
        t = self.query_feat.weight.unsqueeze(1).expand(-1, b, -1)
        out = Predictions([], [])
        logits, masks, blocked = self.predict(t, mask_features, sizes[0])
        out.logits.append(logits)
        out.masks.append(masks)
        for i, (cross, self_attn, ffn) in enumerate(
            zip(
                self.transformer_cross_attention_layers,
                self.transformer_self_attention_layers,
                self.transformer_ffn_layers,
            )
        ):
            lvl = i % self.num_levels
            blocked = blocked & ~blocked.all(-1, keepdim=True)  # a fully blocked query attends everywhere
            t = cross(t, memories[lvl], positions[lvl], query_pos, blocked)
            t = ffn(self_attn(t, query_pos))
            logits, masks, blocked = self.predict(t, mask_features, sizes[(i + 1) % self.num_levels])
            out.logits.append(logits)
            out.masks.append(masks)
        return out
