"""Configuration of the MiT family (SeMask-MiT and the SegFormer baselines): sizes and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..base import (
    ModelConfig,
    check_choice,
    stage_indices,
    tuple_field,
)
from ..layers import to_tensor_tuple
from ..loss import LOSS_REDUCTIONS

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
        if self.semantic_window_size < 1:
            raise ValueError(
                f"semantic_window_size must be >= 1 (patches per window side), got {self.semantic_window_size}"
            )
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


# ----------------------------------------------------------------------------- sizes
_MIT_WIDE = (64, 128, 320, 512)
_VARIANTS = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "b1": dict(embed_dims=_MIT_WIDE, depths=(2, 2, 2, 2)),
    "b2": dict(embed_dims=_MIT_WIDE, depths=(3, 4, 6, 3)),
    "b3": dict(embed_dims=_MIT_WIDE, depths=(3, 4, 18, 3)),
    "b4": dict(embed_dims=_MIT_WIDE, depths=(3, 8, 27, 3)),
    "b5": dict(embed_dims=_MIT_WIDE, depths=(3, 6, 40, 3)),
}
