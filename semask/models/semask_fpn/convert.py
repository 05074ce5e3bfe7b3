"""Official SeMask-FPN / Swin-FPN checkpoints (mmseg 0.x) -> ours: the architecture read off the shapes."""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from ..registry import build_model, register_converter
from ..strict import load_state_dict_strict
from .model import SeMaskFPN, SeMaskFPNConfig


# ------------------------------------------------------------------ official checkpoints
def _is_official_fpn(state_dict: dict[str, Any]) -> bool:
    return (
        "backbone.patch_embed.proj.weight" in state_dict
        and "decode_head.conv_seg.weight" in state_dict
        and any(k.startswith("decode_head.scale_heads.") for k in state_dict)
    )


def infer_fpn_config(state_dict: dict[str, Tensor]) -> dict[str, Any]:
    """Read the architecture off the tensor shapes of an official (mmseg) checkpoint."""

    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({m.group(1) for k in state_dict if (m := rx.match(k))})

    num_stages = count(r"backbone\.layers\.(\d+)\.")
    depths = tuple(count(rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(num_stages))
    tables = [state_dict[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(num_stages)]
    embed_dim = state_dict["backbone.patch_embed.proj.weight"].shape[0]
    fc1 = state_dict["backbone.layers.0.blocks.0.mlp.fc1.weight"]
    conv_seg = state_dict["decode_head.conv_seg.weight"]
    return dict(
        num_classes=conv_seg.shape[0],
        embed_dim=embed_dim,
        depths=depths,
        num_heads=tuple(t.shape[1] for t in tables),
        window_size=round((tables[0].shape[0] ** 0.5 + 1) / 2),
        mlp_ratio=fc1.shape[0] / embed_dim,
        num_semantic_blocks=tuple(
            count(rf"backbone\.layers\.{i}\.semantic_layer\.class_injection\.(\d+)\.") for i in range(num_stages)
        ),
        decoder_channels=conv_seg.shape[1],
    )


def official_to_semask_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official mmseg key names -> ours: ``gamma`` is the paper's lambda; index buffers are recomputed."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        out[re.sub(r"\.gamma$", ".lambda_", key)] = value
    return out


def convert_official_fpn(
    state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any
) -> SeMaskFPN:
    values = infer_fpn_config(state_dict)
    classes, palette = meta.get("CLASSES"), meta.get("PALETTE")
    if classes is not None and len(classes) == values["num_classes"]:
        values["class_names"] = [str(c) for c in classes]
    if palette is not None and len(palette) >= values["num_classes"]:
        values["palette"] = [[int(c) for c in colour] for colour in palette]
    model = build_model(SeMaskFPNConfig(**{**values, **overrides}))
    load_state_dict_strict(model, official_to_semask_keys(state_dict), source)
    return model  # type: ignore[return-value]


register_converter("semask_fpn", _is_official_fpn, convert_official_fpn)
