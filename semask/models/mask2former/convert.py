"""Official SeMask mask-classification checkpoints (detectron2) -> ours: family and sizes read off the shapes."""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from torch import Tensor

from ..registry import build_model, register_converter
from ..strict import CheckpointError, load_state_dict_strict
from .model import MaskFormerConfig, SeMaskMaskFormer

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------ official checkpoints
_PREFIX = "sem_seg_head."


def _is_official_mask_classification(state_dict: dict[str, Any]) -> bool:
    return "backbone.patch_embed.proj.weight" in state_dict and f"{_PREFIX}predictor.class_embed.weight" in state_dict


def infer_maskformer_config(state_dict: dict[str, Tensor], heads: int = 8) -> dict[str, Any]:
    """Read family and sizes off the tensor shapes of a detectron2 SeMask checkpoint.

    The number of attention ``heads`` is not visible in the weights (official: 8); the
    deformable encoder's points per head and level are derived from it.
    """

    def count(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({m.group(1) for k in state_dict if (m := rx.match(k))})

    pd, pr = f"{_PREFIX}pixel_decoder.", f"{_PREFIX}predictor."
    deformable = f"{pd}transformer.level_embed" in state_dict
    aligned = f"{pd}align_1.offset.weight" in state_dict
    if f"{pr}transformer.decoder.layers.0.linear1.weight" in state_dict:
        family, dec_layers = "maskformer", count(rf"{re.escape(pr)}transformer\.decoder\.layers\.(\d+)\.")
        ffn = state_dict[f"{pr}transformer.decoder.layers.0.linear1.weight"].shape[0]
    else:
        family = {(True, False): "mask2former", (True, True): "msfapn", (False, True): "fapn"}.get(
            (deformable, aligned)
        )
        if family is None:
            raise CheckpointError("official checkpoint has a Mask2Former predictor but no known pixel decoder")
        dec_layers = count(rf"{re.escape(pr)}transformer_ffn_layers\.(\d+)\.")
        ffn = state_dict[f"{pr}transformer_ffn_layers.0.linear1.weight"].shape[0]
    tables = [state_dict[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"] for i in range(4)]
    embed_dim = state_dict["backbone.patch_embed.proj.weight"].shape[0]
    num_classes = state_dict[f"{pr}class_embed.weight"].shape[0] - 1
    window = round((tables[0].shape[0] ** 0.5 + 1) / 2)
    values: dict[str, Any] = dict(
        family=family,
        num_classes=num_classes,
        embed_dim=embed_dim,
        depths=tuple(count(rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(4)),
        num_heads=tuple(t.shape[1] for t in tables),
        window_size=window,
        mlp_ratio=state_dict["backbone.layers.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        num_semantic_blocks=tuple(
            count(rf"backbone\.layers\.{i}\.semantic_layer\.class_injection\.(\d+)\.") for i in range(4)
        ),
        # not stored in the weights: the ADE20K configs use the Swin window, Cityscapes the default 7
        semantic_window_size=window if num_classes == 150 else 7,
        hidden_dim=state_dict[f"{pr}class_embed.weight"].shape[1],
        mask_dim=state_dict[f"{pr}mask_embed.layers.2.weight"].shape[0],
        num_queries=state_dict[f"{pr}query_embed.weight"].shape[0],
        decoder_ffn_dim=ffn,
        dec_layers=dec_layers,
    )
    if deformable:
        values["encoder_layers"] = count(rf"{re.escape(pd)}transformer\.encoder\.layers\.(\d+)\.")
        values["encoder_ffn_dim"] = state_dict[f"{pd}transformer.encoder.layers.0.linear1.weight"].shape[0]
        levels = state_dict[f"{pd}transformer.level_embed"].shape[0]
        attention_rows = state_dict[f"{pd}transformer.encoder.layers.0.self_attn.attention_weights.weight"].shape[0]
        values["encoder_points"] = attention_rows // (levels * heads)
    if aligned:
        values["deformable_groups"] = state_dict[f"{pd}align_1.dcpack_L2.conv_offset_mask.weight"].shape[0] // 27
    if "criterion.empty_weight" in state_dict:
        values["no_object_weight"] = float(state_dict["criterion.empty_weight"][-1])
    return values


_SHARED_NORM = re.compile(r"^(sem_seg_head\.pixel_decoder\.)align_(\d+)\.offset\.norm\.(weight|bias)$")


def official_to_semask_keys(state_dict: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """detectron2 names -> ours: ``gamma`` is lambda; index buffers and the CE weight are rebuilt.

    FaPN's ``align_k.offset.norm.*`` duplicate ``layer_k.norm.*`` (one shared module); they
    are dropped after checking they really are the same values.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("relative_position_index") or key == "criterion.empty_weight":
            continue
        shared = _SHARED_NORM.match(key)
        if shared:
            twin = f"{shared.group(1)}layer_{shared.group(2)}.norm.{shared.group(3)}"
            if twin not in state_dict or not torch.equal(state_dict[twin], value):
                raise CheckpointError(f"{source}: {key} should be the same tensor as {twin} (shared GroupNorm)")
            continue
        out[re.sub(r"\.gamma$", ".lambda_", key)] = value
    return out


def convert_official_maskformer(
    state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any
) -> SeMaskMaskFormer:
    """Build the model a detectron2 SeMask checkpoint describes and load it strictly."""
    inferred = infer_maskformer_config(state_dict, overrides.get("decoder_heads", 8))
    assumed = {
        k: v
        for k, v in (("decoder_heads", 8), ("semantic_window_size", inferred["semantic_window_size"]))
        if k not in overrides
    }
    if assumed:
        logger.warning(
            "%s: not stored in the weights, assumed as in the official configs: %s (pass them to change)",
            source,
            ", ".join(f"{k}={v}" for k, v in assumed.items()),
        )
    values = {**inferred, **overrides}
    model = build_model(MaskFormerConfig(**values))
    load_state_dict_strict(model, official_to_semask_keys(state_dict, source), source)
    return model  # type: ignore[return-value]


register_converter("semask_maskformer", _is_official_mask_classification, convert_official_maskformer)
