"""Official MiT / SegFormer weights -> ours: NVlabs, mmseg 0.x/1.x and Hugging Face (transformers 4 and 5) key schemes, ImageNet encoders;
and ours -> a Hugging Face SegFormer folder (:func:`to_hf_segformer`, the inverse of the Hugging Face import)."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import adapt_first_conv_in_state
from ..registry import build_model, register_config_reader, register_converter
from ..strict import BackboneLoadReport, CheckpointError, load_state_dict_checked, load_state_dict_strict
from .config import _MIT_WIDE, SeMaskMiTConfig
from .encoder import MixTransformer

# --------------------------------------------------------------- key schemes -> ours
# Our encoder keys are the NVlabs ones. Rules rename mmseg / Hugging Face encoder keys
# (without the ``backbone.`` / ``segformer.encoder.`` prefix); {s} is the 1-based stage.
_Rule = tuple[re.Pattern[str], str]


def _rules(*pairs: tuple[str, str]) -> list[_Rule]:
    return [(re.compile(p), t) for p, t in pairs]


_MMSEG_ENCODER_RULES = _rules(
    (r"^layers\.(?P<i>\d+)\.0\.projection\.(?P<r>.+)$", "patch_embed{s}.proj.{r}"),
    (r"^layers\.(?P<i>\d+)\.0\.norm\.(?P<r>.+)$", "patch_embed{s}.norm.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.(?P<n>norm[12])\.(?P<r>.+)$", "block{s}.{j}.{n}.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.attn\.attn\.out_proj\.(?P<r>.+)$", "block{s}.{j}.attn.proj.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.attn\.(?P<n>sr|norm)\.(?P<r>.+)$", "block{s}.{j}.attn.{n}.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.ffn\.layers\.0\.(?P<r>.+)$", "block{s}.{j}.mlp.fc1.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.ffn\.layers\.1\.(?P<r>.+)$", "block{s}.{j}.mlp.dwconv.dwconv.{r}"),
    (r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.ffn\.layers\.4\.(?P<r>.+)$", "block{s}.{j}.mlp.fc2.{r}"),
    (r"^layers\.(?P<i>\d+)\.2\.(?P<r>.+)$", "norm{s}.{r}"),
)
_MMSEG_IN_PROJ = re.compile(r"^layers\.(?P<i>\d+)\.1\.(?P<j>\d+)\.attn\.attn\.in_proj_(?P<r>weight|bias)$")

_HF_ENCODER_RULES = _rules(
    (r"^patch_embeddings\.(?P<i>\d+)\.proj\.(?P<r>.+)$", "patch_embed{s}.proj.{r}"),
    (r"^patch_embeddings\.(?P<i>\d+)\.layer_norm\.(?P<r>.+)$", "patch_embed{s}.norm.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.layer_norm_1\.(?P<r>.+)$", "block{s}.{j}.norm1.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.layer_norm_2\.(?P<r>.+)$", "block{s}.{j}.norm2.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.query\.(?P<r>.+)$", "block{s}.{j}.attn.q.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.sr\.(?P<r>.+)$", "block{s}.{j}.attn.sr.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.layer_norm\.(?P<r>.+)$", "block{s}.{j}.attn.norm.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.output\.dense\.(?P<r>.+)$", "block{s}.{j}.attn.proj.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.mlp\.dense1\.(?P<r>.+)$", "block{s}.{j}.mlp.fc1.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.mlp\.dwconv\.dwconv\.(?P<r>.+)$", "block{s}.{j}.mlp.dwconv.dwconv.{r}"),
    (r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.mlp\.dense2\.(?P<r>.+)$", "block{s}.{j}.mlp.fc2.{r}"),
    (r"^layer_norm\.(?P<i>\d+)\.(?P<r>.+)$", "norm{s}.{r}"),
)
_HF_KEY_VALUE = re.compile(r"^block\.(?P<i>\d+)\.(?P<j>\d+)\.attention\.self\.(?P<kv>key|value)\.(?P<r>weight|bias)$")

_HF_HEAD_RULES = _rules(
    (r"^linear_c\.(?P<i>\d+)\.proj\.(?P<r>.+)$", "linear_c{s}.proj.{r}"),
    (r"^linear_fuse\.weight$", "linear_fuse.conv.weight"),
    (r"^batch_norm\.(?P<r>.+)$", "linear_fuse.bn.{r}"),
    (r"^classifier\.(?P<r>.+)$", "linear_pred.{r}"),
)


def _apply_rules(key: str, rules: list[_Rule]) -> str:
    """The renamed key, or ``key`` itself when no rule matches (strict loading then names it)."""
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            groups = m.groupdict()
            if "i" in groups:
                groups["s"] = str(int(groups["i"]) + 1)
            return template.format(**groups)
    return key


def _as_linear(value: Tensor) -> Tensor:
    """mmseg stores the Mix-FFN Linears as 1x1 convs: (out, in, 1, 1) -> (out, in)."""
    return value.flatten(1) if value.ndim == 4 and value.shape[-2:] == (1, 1) else value


def mmseg_encoder_to_ours(state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """mmseg MiT keys (``layers.{i}.{0,1,2}``) -> NVlabs/ours: split in_proj [q; k; v] into q and kv."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = _MMSEG_IN_PROJ.match(key)
        if m:
            if value.shape[0] % 3:
                raise CheckpointError(f"{source}: {key} has {value.shape[0]} rows, not 3 x width ([q; k; v])")
            c = value.shape[0] // 3
            prefix = f"block{int(m['i']) + 1}.{m['j']}.attn"
            out[f"{prefix}.q.{m['r']}"] = value[:c]
            out[f"{prefix}.kv.{m['r']}"] = value[c:]
            continue
        new = _apply_rules(key, _MMSEG_ENCODER_RULES)
        out[new] = _as_linear(value) if new.endswith(("mlp.fc1.weight", "mlp.fc2.weight")) else value
    return out


def hf_encoder_to_ours(state_dict: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Hugging Face Segformer encoder keys -> NVlabs/ours: concatenate key and value into kv."""
    out: dict[str, Tensor] = {}
    pairs: dict[tuple[str, str, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        m = _HF_KEY_VALUE.match(key)
        if m:
            pairs.setdefault((m["i"], m["j"], m["r"]), {})[m["kv"]] = value
            continue
        out[_apply_rules(key, _HF_ENCODER_RULES)] = value
    for (i, j, r), parts in pairs.items():
        for needed in ("key", "value"):
            if needed not in parts:
                raise CheckpointError(f"{source}: block.{i}.{j}.attention.self.{needed}.{r} is missing")
        out[f"block{int(i) + 1}.{j}.attn.kv.{r}"] = torch.cat([parts["key"], parts["value"]], dim=0)
    return out


def _with_prefix(prefix: str, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def _split_prefix(prefix: str, state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(keys under ``prefix`` with it removed, all other keys unchanged)."""
    inside = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in state_dict.items() if not k.startswith(prefix)}


# ------------------------------------------------------------ ImageNet backbone weights
_HF_ENCODER_PREFIXES = ("segformer.encoder.", "encoder.")
_IMAGENET_CLASSIFIER = re.compile(r"^(head|classifier)\.")


def imagenet_encoder_to_ours(state_dict: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], list[str]]:
    """(encoder keys in our naming, dropped ImageNet classifier keys) for any supported layout.

    Accepts NVlabs ``mit_b*.pth`` (bare keys + ``head.*``), mmseg 1.x ``mit_b*_2022*.pth``
    (``layers.*``), Hugging Face ``nvidia/mit-b*`` (``segformer.encoder.*`` + ``classifier.*``)
    and any of them under a ``backbone.`` prefix.
    """
    sd = {k[len("backbone.") :] if k.startswith("backbone.") else k: v for k, v in state_dict.items()}
    dropped = sorted(k for k in sd if _IMAGENET_CLASSIFIER.match(k))
    sd = {k: v for k, v in sd.items() if not _IMAGENET_CLASSIFIER.match(k)}
    for prefix in _HF_ENCODER_PREFIXES:
        if f"{prefix}patch_embeddings.0.proj.weight" in sd:
            encoder, rest = _split_prefix(prefix, sd)
            return {**hf_encoder_to_ours(encoder, source), **rest}, dropped
    if "layers.0.0.projection.weight" in sd:
        return mmseg_encoder_to_ours(sd, source), dropped
    return sd, dropped


def load_mit_imagenet(backbone: MixTransformer, state_dict: dict[str, Tensor], source: str) -> BackboneLoadReport:
    """Load ImageNet MiT weights into ``backbone``, dropping the classifier.

    Only the (new) semantic layers may stay uninitialised; any other missing, unexpected
    or mis-shaped key is an error naming the key.
    """
    sd, dropped = imagenet_encoder_to_ours(state_dict, source)
    adapt_first_conv_in_state(sd, backbone.state_dict(), "patch_embed1.proj.weight")  # in_channels != 3
    return load_state_dict_checked(
        backbone, sd, f"ImageNet MiT checkpoint {source}", lambda k: k.startswith("semantic_layer."), dropped
    )


# ------------------------------------------------------------------ official checkpoints
def _count(state_dict: dict[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := rx.match(k))})


def infer_mit_config(state_dict: dict[str, Tensor], source: str) -> dict[str, Any]:
    """Read the architecture off the tensor shapes of a state dict in our key naming.

    Heads are not stored in the weights: MiT uses one head in stage 1 and a fixed head
    width, so ``num_heads[i] = C_i / C_1`` (1, 2, 5, 8 for every released size).
    Strides are the MiT ones (4, 2, 2, 2). The semantic window size and which stages attend
    globally leave no trace in the weights: they follow the config defaults unless overridden.
    """
    try:
        n = _count(state_dict, r"backbone\.patch_embed(\d+)\.proj\.weight$")
        patch = [state_dict[f"backbone.patch_embed{i + 1}.proj.weight"] for i in range(n)]
        dims = tuple(int(p.shape[0]) for p in patch)
        fc1 = state_dict["backbone.block1.0.mlp.fc1.weight"]
        values: dict[str, Any] = dict(
            embed_dims=dims,
            depths=tuple(_count(state_dict, rf"backbone\.block{i + 1}\.(\d+)\.") for i in range(n)),
            num_heads=tuple(d // dims[0] for d in dims),
            sr_ratios=tuple(
                int(state_dict[f"backbone.block{i + 1}.0.attn.sr.weight"].shape[-1])
                if f"backbone.block{i + 1}.0.attn.sr.weight" in state_dict
                else 1
                for i in range(n)
            ),
            patch_sizes=tuple(int(p.shape[-1]) for p in patch),
            mlp_ratio=fc1.shape[0] / dims[0],
            num_semantic_blocks=tuple(
                _count(state_dict, rf"backbone\.semantic_layer\.{i}\.class_injection\.(\d+)\.") for i in range(n)
            ),
        )
        if any(
            f"backbone.semantic_layer.{i}.class_injection.0.mlp_v.weight" in state_dict for i in range(n)
        ) and not any(k.startswith("backbone.semantic_layer.") and ".norm1." in k for k in state_dict):
            values["semantic_placement"] = "after_stage_norm"
        if "decode_head.linear_fuse.conv.weight" in state_dict:
            values["decode_head"] = "nvlabs"
            classifier = state_dict["decode_head.linear_pred.weight"]
        else:
            values["decode_head"] = "mmseg"
            classifier = state_dict["decode_head.conv_seg.weight"]
    except KeyError as err:
        raise CheckpointError(f"{source}: cannot infer the MiT architecture, key {err} is missing") from None
    values["num_classes"] = int(classifier.shape[0])
    values["decoder_channels"] = int(classifier.shape[1])
    return values


def _class_metadata(meta: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """Class names and palette from an mmseg 0.x (``CLASSES``) or 1.x (``dataset_meta``) meta."""
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    classes = meta.get("CLASSES") or dataset_meta.get("classes")
    palette = meta.get("PALETTE") or dataset_meta.get("palette")
    values: dict[str, Any] = {}
    if classes is not None and len(classes) == num_classes:
        values["class_names"] = [str(c) for c in classes]
    if palette is not None and len(palette) >= num_classes:
        values["palette"] = [[int(c) for c in colour] for colour in palette]
    return values


_RELEASED_WIDTHS = {_MIT_WIDE, (32, 64, 160, 256)}  # B0 and B1-B5: heads C_i / C_1 = (1, 2, 5, 8)


def _build_and_load(ours: dict[str, Tensor], meta: dict[str, Any], source: str, overrides: dict[str, Any]) -> nn.Module:
    values = infer_mit_config(ours, source)
    if "num_heads" not in overrides and values["embed_dims"] not in _RELEASED_WIDTHS:
        raise CheckpointError(
            f"{source}: attention heads are not stored in the weights, and widths {values['embed_dims']} are not "
            f"a released MiT size; pass num_heads=(...) (a Hugging Face folder's config.json carries them)"
        )
    values.update(_class_metadata(meta, values["num_classes"]))
    model = build_model(SeMaskMiTConfig(**{**values, **overrides}))
    # BatchNorm's step counter is not a weight; some exports omit it.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            ours.setdefault(key, torch.zeros_like(value))
    load_state_dict_strict(model, ours, source)
    return model


def _is_nvlabs_mit(state_dict: dict[str, Any]) -> bool:
    """NVlabs SegFormer checkpoints, and our own models saved as a plain state dict."""
    return "backbone.patch_embed1.proj.weight" in state_dict and (
        "decode_head.linear_fuse.conv.weight" in state_dict or "decode_head.fusion_conv.conv.weight" in state_dict
    )


def convert_nvlabs_mit(state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any) -> nn.Module:
    ours = dict(state_dict)
    if "decode_head.linear_fuse.conv.weight" in ours:
        # mmseg's base head builds a conv_seg the all-MLP head never uses; drop it.
        ours = {k: v for k, v in ours.items() if not k.startswith("decode_head.conv_seg.")}
    return _build_and_load(ours, meta, source, overrides)


def _is_mmseg_segformer(state_dict: dict[str, Any]) -> bool:
    return "backbone.layers.0.0.projection.weight" in state_dict and "decode_head.fusion_conv.conv.weight" in state_dict


def convert_mmseg_segformer(
    state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any
) -> nn.Module:
    """mmseg 0.x/1.x SegFormer: encoder renamed, head names already ours (``convs``, ``fusion_conv``, ``conv_seg``)."""
    encoder, rest = _split_prefix("backbone.", state_dict)
    ours = {**_with_prefix("backbone.", mmseg_encoder_to_ours(encoder, source)), **rest}
    return _build_and_load(ours, meta, source, overrides)


# transformers 5 renamed the SegFormer weights (its conversion_mapping.py); these rules map them
# back to the transformers 4 names, which the converter below reads.
_HF5_TO_HF4 = _rules(
    (r"^segformer\.stages\.(?P<i>\d+)\.patch_embeddings\.(?P<r>.+)$", "segformer.encoder.patch_embeddings.{i}.{r}"),
    (r"^segformer\.stages\.(?P<i>\d+)\.layer_norm\.(?P<r>.+)$", "segformer.encoder.layer_norm.{i}.{r}"),
    (r"^segformer\.stages\.(?P<i>\d+)\.blocks\.(?P<r>.+)$", "segformer.encoder.block.{i}.{r}"),
    (r"^decode_head\.linear_projections\.(?P<r>.+)$", "decode_head.linear_c.{r}"),
)
_HF5_TO_HF4_PARTS = (
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.o_proj.", "attention.output.dense."),
    ("attention.sequence_reduction.sequence_reduction.", "attention.self.sr."),
    ("attention.sequence_reduction.layer_norm.", "attention.self.layer_norm."),
    ("mlp.fc1.", "mlp.dense1."),
    ("mlp.fc2.", "mlp.dense2."),
    ("layernorm_before.", "layer_norm_1."),
    ("layernorm_after.", "layer_norm_2."),
)


def hf5_to_hf4_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers 5 SegFormer key names -> transformers 4 ones (a no-op on 4 names)."""
    out = {}
    for key, value in state_dict.items():
        new = _apply_rules(key, _HF5_TO_HF4)
        if new != key and new.startswith("segformer.encoder.block."):
            for old_part, part in _HF5_TO_HF4_PARTS:
                new = new.replace(old_part, part)
        out[new] = value
    return out


def _is_hf_segformer(state_dict: dict[str, Any]) -> bool:
    return (
        "segformer.encoder.patch_embeddings.0.proj.weight" in state_dict
        or "segformer.stages.0.patch_embeddings.proj.weight" in state_dict
    ) and "decode_head.linear_fuse.weight" in state_dict


_HF_CONFIG_FIELDS = {  # Hugging Face SegformerConfig -> ours
    "hidden_sizes": "embed_dims",
    "depths": "depths",
    "num_attention_heads": "num_heads",
    "sr_ratios": "sr_ratios",
    "patch_sizes": "patch_sizes",
    "strides": "strides",
    "decoder_hidden_size": "decoder_channels",
}


_HF_OPTIONAL_FIELDS = {  # read when present (training-only settings and the input bands)
    "drop_path_rate": "drop_path_rate",
    "classifier_dropout_prob": "decoder_dropout",
    "num_channels": "in_channels",
}
#: Our settings a Hugging Face config has no field for; a folder we export keeps them under this key.
HF_EXTRA_KEY = "semask"


def hf_segformer_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """Our config fields from a Hugging Face SegFormer ``config.json`` (heads and strides are only there)."""
    missing = [k for k in (*_HF_CONFIG_FIELDS, "mlp_ratios") if k not in config]
    if missing:
        raise CheckpointError(f"{source} lacks the SegFormer settings {missing}")
    values: dict[str, Any] = {
        ours: tuple(config[hf]) if isinstance(config[hf], list) else config[hf]
        for hf, ours in _HF_CONFIG_FIELDS.items()
    }
    ratios = set(config["mlp_ratios"])
    if len(ratios) != 1:
        raise CheckpointError(f"{source}: mlp_ratios {config['mlp_ratios']} differ per stage, which MiT here does not")
    values["mlp_ratio"] = float(ratios.pop())
    values["decode_head"] = "nvlabs"
    values.update({ours: config[hf] for hf, ours in _HF_OPTIONAL_FIELDS.items() if hf in config})
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        values["class_names"] = [str(id2label[k]) for k in sorted(id2label, key=int)]
    extra = config.get(HF_EXTRA_KEY)
    if isinstance(extra, dict):  # a folder semask exported: mean, std, palette, protocol
        values.update({k: extra[k] for k in ("mean", "std", "palette", "protocol") if extra.get(k) is not None})
    return values


def convert_hf_segformer(
    state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any
) -> nn.Module:
    """Hugging Face ``SegformerForSemanticSegmentation`` weights (same maths as NVlabs)."""
    encoder, rest = _split_prefix("segformer.encoder.", hf5_to_hf4_keys(state_dict))
    head, rest = _split_prefix("decode_head.", rest)
    ours = {
        **_with_prefix("backbone.", hf_encoder_to_ours(encoder, source)),
        **_with_prefix("decode_head.", {_apply_rules(k, _HF_HEAD_RULES): v for k, v in head.items()}),
        **rest,
    }
    return _build_and_load(ours, meta, source, overrides)


# ------------------------------------------------------------ export to Hugging Face
# Our keys -> transformers 4 SegFormer keys (the names of the released Hub checkpoints, which
# transformers 5 renames on load); {i} is the 0-based stage of our 1-based {s}.
_OURS_TO_HF = _rules(
    (r"^backbone\.patch_embed(?P<s>\d)\.proj\.(?P<r>.+)$", "segformer.encoder.patch_embeddings.{i}.proj.{r}"),
    (r"^backbone\.patch_embed(?P<s>\d)\.norm\.(?P<r>.+)$", "segformer.encoder.patch_embeddings.{i}.layer_norm.{r}"),
    (r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.norm1\.(?P<r>.+)$", "segformer.encoder.block.{i}.{j}.layer_norm_1.{r}"),
    (r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.norm2\.(?P<r>.+)$", "segformer.encoder.block.{i}.{j}.layer_norm_2.{r}"),
    (
        r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.attn\.q\.(?P<r>.+)$",
        "segformer.encoder.block.{i}.{j}.attention.self.query.{r}",
    ),
    (
        r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.attn\.sr\.(?P<r>.+)$",
        "segformer.encoder.block.{i}.{j}.attention.self.sr.{r}",
    ),
    (
        r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.attn\.norm\.(?P<r>.+)$",
        "segformer.encoder.block.{i}.{j}.attention.self.layer_norm.{r}",
    ),
    (
        r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.attn\.proj\.(?P<r>.+)$",
        "segformer.encoder.block.{i}.{j}.attention.output.dense.{r}",
    ),
    (r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.mlp\.fc1\.(?P<r>.+)$", "segformer.encoder.block.{i}.{j}.mlp.dense1.{r}"),
    (
        r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.mlp\.dwconv\.dwconv\.(?P<r>.+)$",
        "segformer.encoder.block.{i}.{j}.mlp.dwconv.dwconv.{r}",
    ),
    (r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.mlp\.fc2\.(?P<r>.+)$", "segformer.encoder.block.{i}.{j}.mlp.dense2.{r}"),
    (r"^backbone\.norm(?P<s>\d)\.(?P<r>.+)$", "segformer.encoder.layer_norm.{i}.{r}"),
    (r"^decode_head\.linear_c(?P<s>\d)\.proj\.(?P<r>.+)$", "decode_head.linear_c.{i}.proj.{r}"),
    (r"^decode_head\.linear_fuse\.conv\.weight$", "decode_head.linear_fuse.weight"),
    (r"^decode_head\.linear_fuse\.bn\.(?P<r>.+)$", "decode_head.batch_norm.{r}"),
    (r"^decode_head\.linear_pred\.(?P<r>.+)$", "decode_head.classifier.{r}"),
)
_OUR_KV = re.compile(r"^backbone\.block(?P<s>\d)\.(?P<j>\d+)\.attn\.kv\.(?P<r>weight|bias)$")


def to_hf_segformer(model: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(``config.json``, state dict) of ``model`` as a Hugging Face ``SegformerForSemanticSegmentation``.

    What transformers' SegFormer can hold: the MiT encoder and the all-MLP head
    (``decode_head="nvlabs"``, the ``segformer_b*`` presets). SeMask-MiT's semantic layers and
    mmseg's SegFormer head (our MiT default) have no place in it and are refused, naming the
    preset that fits. Our key/value Linear ``kv`` is split into ``key`` and ``value``; settings the
    format has no field for (mean, std, palette, test protocol) go under ``"semask"``, which
    :func:`hf_segformer_config` reads back.
    """
    config = model.config  # type: ignore[union-attr]
    if not isinstance(config, SeMaskMiTConfig):
        raise ValueError(
            f"only SegFormer / MiT models have a Hugging Face layout (SegformerForSemanticSegmentation); this is a "
            f"{type(model).__name__}"
        )
    if config.is_semask:
        raise ValueError(
            "SeMask-MiT's semantic layers (num_semantic_blocks > 0) have no place in transformers' SegFormer: "
            "its SegformerForSemanticSegmentation is the plain MiT encoder + all-MLP head. Export a SegFormer "
            "(segformer_b*, num_semantic_blocks=0, decode_head='nvlabs'), or keep the semask format "
            "(save_pretrained) or ONNX for this model"
        )
    if config.decode_head != "nvlabs":
        raise ValueError(
            f"the {config.decode_head} SegFormer head (1x1 conv + BN + ReLU per stage, our MiT default) has no "
            "Hugging Face equivalent: SegformerForSemanticSegmentation has the NVlabs all-MLP head "
            "(decode_head='nvlabs', the segformer_b* presets)"
        )
    weights: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        kv = _OUR_KV.match(key)
        if kv:
            c = value.shape[0] // 2
            prefix = f"segformer.encoder.block.{int(kv['s']) - 1}.{kv['j']}.attention.self"
            weights[f"{prefix}.key.{kv['r']}"] = value[:c].clone()
            weights[f"{prefix}.value.{kv['r']}"] = value[c:].clone()
            continue
        for pattern, template in _OURS_TO_HF:
            m = pattern.match(key)
            if m:
                groups = m.groupdict()
                if "s" in groups:
                    groups["i"] = str(int(groups["s"]) - 1)
                weights[template.format(**groups)] = value
                break
        else:
            raise ValueError(f"{key} has no Hugging Face SegFormer name")
    n = len(config.depths)
    names = config.names()
    ratio = int(config.mlp_ratio) if float(config.mlp_ratio).is_integer() else config.mlp_ratio
    hf_config = {
        "architectures": ["SegformerForSemanticSegmentation"],
        "model_type": "segformer",
        "num_channels": config.in_channels,
        "num_encoder_blocks": n,
        "depths": list(config.depths),
        "sr_ratios": list(config.sr_ratios),
        "hidden_sizes": list(config.embed_dims),
        "patch_sizes": list(config.patch_sizes),
        "strides": list(config.strides),
        "num_attention_heads": list(config.num_heads),
        "mlp_ratios": [ratio] * n,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout_prob": config.decoder_dropout,
        "initializer_range": 0.02,
        "drop_path_rate": config.drop_path_rate,
        "layer_norm_eps": 1e-6,
        "decoder_hidden_size": config.decoder_channels,
        "semantic_loss_ignore_index": 255,
        "reshape_last_stage": True,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
        HF_EXTRA_KEY: {
            "mean": list(config.mean),
            "std": list(config.std),
            "palette": config.palette,
            "protocol": config.protocol,
        },
    }
    return hf_config, weights


register_converter("mit_nvlabs", _is_nvlabs_mit, convert_nvlabs_mit)
register_converter("mit_mmseg", _is_mmseg_segformer, convert_mmseg_segformer)
register_converter("mit_hf", _is_hf_segformer, convert_hf_segformer)
register_config_reader("segformer", hf_segformer_config)
