"""SeMask Swin + Semantic-FPN and the Swin-FPN baselines (paper Table 2; spec semask_fpn.md).

The decode head is mmseg's FPNHead (no FPN neck). SeMask adds a semantic layer per
encoder stage and a parameter-free *semantic decoder* that sums the upsampled
semantic prior maps; its output is supervised with weight 0.4 (paper eq. 5).
Baselines are the same model with ``num_semantic_blocks=0``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from .base import (
    MS_RATIOS,
    BackboneLoadReport,
    ModelConfig,
    check_choice,
    load_state_dict_strict,
    stage_indices,
    tuple_field,
)
from .layers import to_tensor_tuple
from .loss import LOSS_REDUCTIONS
from .pretrained import PretrainedCfg, register_pretrained
from .registry import register_architecture, register_converter, register_preset
from .segmenter import EncoderDecoderModel, resize, upsample2x
from .semantic_layer import SelfAttentionBlock, SemanticAttentionBlock
from .swin import (
    QueryAuxStage,
    StageOutputAuxStage,
    SwinStage,
    SwinTransformer,
    load_swin_imagenet,
    swin_from_config,
    swin_imagenet_name,
)


def official_global_stages(embed_dim: int, num_classes: int) -> tuple[int, ...]:
    """The released checkpoints' rule: C in {96, 192} and K > 19 -> stages 2, 3 global."""
    return (2, 3) if embed_dim in (96, 192) and num_classes > 19 else ()


# The paper's ablations as classes, chosen once from the config's names (Tables 3 and 5).
SEMANTIC_BLOCKS = {"semantic": SemanticAttentionBlock, "self": SelfAttentionBlock}
AUXILIARY_STAGES: dict[str | None, type[SwinStage]] = {
    None: SwinStage,
    "stage_output": StageOutputAuxStage,
    "queries": QueryAuxStage,
}


@dataclass
class SeMaskFPNConfig(ModelConfig):
    """Architecture of a (SeMask) Swin + Semantic-FPN model.

    ``semantic_window_size=None`` means "equal to ``window_size``" and
    ``semantic_global_stages=None`` means the official rule
    (:func:`official_global_stages`); both are resolved at construction so a saved
    config is explicit.

    Ablations of the paper: ``semantic_attention="self"`` (Table 3, Trans Swin),
    ``learnable_lambda=False`` (Table 4), ``semantic_loss_weight=0`` and
    ``auxiliary_source="stage_output"|"queries"`` on a baseline (Table 5).
    """

    model_type: ClassVar[str] = "semask_fpn"
    embed_dim: int = 96
    depths: tuple[int, ...] = tuple_field(2, 2, 6, 2)
    num_heads: tuple[int, ...] = tuple_field(3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    num_semantic_blocks: int | tuple[int, ...] = 1
    semantic_window_size: int | None = None
    semantic_global_stages: tuple[int, ...] | None = None
    semantic_dropout: float = 0.1
    learnable_lambda: bool = True
    semantic_attention: Literal["semantic", "self"] = "semantic"
    auxiliary_source: Literal["stage_output", "queries"] | None = None
    decoder_channels: int = 256
    decoder_dropout: float = 0.1
    semantic_loss_weight: float = 0.4
    loss_reduction: Literal["all", "valid"] = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.depths = tuple(int(d) for d in self.depths)
        n = len(self.depths)
        self.num_heads = to_tensor_tuple(self.num_heads, n, "num_heads")
        self.num_semantic_blocks = to_tensor_tuple(self.num_semantic_blocks, n, "num_semantic_blocks")
        if self.semantic_window_size is None:
            self.semantic_window_size = self.window_size
        if self.semantic_global_stages is None:
            self.semantic_global_stages = official_global_stages(self.embed_dim, self.num_classes)
        self.semantic_global_stages = stage_indices(self.semantic_global_stages, n, "semantic_global_stages")
        check_choice("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        check_choice("semantic_attention", self.semantic_attention, tuple(SEMANTIC_BLOCKS))
        check_choice("auxiliary_source", self.auxiliary_source, tuple(AUXILIARY_STAGES))
        if self.auxiliary_source is not None and self.is_semask:
            raise ValueError("auxiliary_source is an ablation of the baselines: set num_semantic_blocks=0")

    @property
    def is_semask(self) -> bool:
        return any(self.num_semantic_blocks)


class ConvModule(nn.Module):
    """3x3 conv (no bias) -> BatchNorm -> ReLU, with mmseg's ``conv``/``bn`` key names."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Upsample2x(nn.Module):
    """:func:`upsample2x` as a tower layer; parameter-free, occupies odd indices."""

    def forward(self, x: Tensor) -> Tensor:
        return upsample2x(x)


class PointwiseConvToNCHW(nn.Conv2d):
    """1x1 convolution of a channels-last map whose output is NCHW-contiguous (``conv_seg``).

    In eager mode it is one batched GEMM, weight (K, C) x tokens^T (C, H*W), that reads
    the NHWC map in place and writes NCHW directly; PyTorch would route a 1x1 kernel on
    channels-last input through its slow im2col path and a layout copy would follow.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return super().forward(x).contiguous()
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        weight = self.weight.view(1, -1, c).expand(b, -1, -1)
        return torch.baddbmm(self.bias.view(1, -1, 1), weight, tokens.transpose(1, 2)).view(b, -1, h, w)


class SemanticFPNHead(nn.Module):
    """mmseg FPNHead: per-stride conv towers upsampled to stride 4 and summed, then 1x1 to K.

    Towers 1.. stop before their last x2 upsampling (a parameter-free layer, so the
    official key indices are unchanged): :meth:`forward` applies it once to their sum.
    """

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for i, c in enumerate(in_channels):
            layers: list[nn.Module] = []
            for k in range(max(1, i)):  # log2(stride_i / 4) convs, at least one
                if k > 0:
                    layers.append(Upsample2x())
                layers.append(ConvModule(c if k == 0 else channels, channels))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = PointwiseConvToNCHW(channels, num_classes)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Stride-4 logits (B, K, H/4, W/4), NCHW-contiguous.

        The towers run channels-last (NHWC): oneDNN convolutions skip their layout
        reorders and bilinear upsampling is about 3x faster. The logits come out NCHW
        because the full-resolution outputs are NCHW (cross-entropy's backward is ~3x
        slower on channels-last logits).
        """
        features = [f.contiguous(memory_format=torch.channels_last) for f in features]
        out = self.scale_heads[0](features[0])
        # Towers 1.. share their final x2 upsampling, a linear map: maps of equal size are
        # summed first and upsampled once (2 fewer stride-4 passes). Odd input sizes can
        # give towers unequal sizes; each group of equal ones is then upsampled on its own.
        groups: list[Tensor] = []
        for head, feature in zip(self.scale_heads[1:], features[1:]):
            y = head(feature)
            if groups and groups[-1].shape == y.shape:
                groups[-1] = groups[-1] + y
            else:
                groups.append(y)
        for y in groups:
            out = out + resize(upsample2x(y), out.shape[-2:])
        return self.conv_seg(self.dropout(out))


@register_architecture
class SeMaskFPN(EncoderDecoderModel):
    """(SeMask) Swin encoder + Semantic-FPN decoder; ``forward(pixel_values, labels=None)``."""

    config_class = SeMaskFPNConfig
    config: SeMaskFPNConfig
    backbone: SwinTransformer

    def __init__(self, config: SeMaskFPNConfig) -> None:
        super().__init__(config)
        stage = AUXILIARY_STAGES[config.auxiliary_source]
        self.backbone = swin_from_config(
            config,
            learnable_lambda=config.learnable_lambda,
            semantic_block=SEMANTIC_BLOCKS[config.semantic_attention],
            stage=stage if stage is SwinStage else functools.partial(stage, num_classes=config.num_classes),
        )
        self.decode_head = SemanticFPNHead(
            self.backbone.num_features, config.decoder_channels, config.num_classes, config.decoder_dropout
        )

    def load_backbone_state(self, state_dict: dict[str, Tensor], source: str) -> BackboneLoadReport:
        return load_swin_imagenet(self.backbone, state_dict, source)

    def imagenet_name(self) -> str:
        return swin_imagenet_name(self.config)


# ----------------------------------------------------------------------------- presets
_VARIANTS = {
    "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}
for _v, _arch in _VARIANTS.items():
    register_preset(f"swin_{_v}_fpn", "semask_fpn", num_semantic_blocks=0, **_arch)
    register_preset(f"semask_swin_{_v}_fpn", "semask_fpn", num_semantic_blocks=1, **_arch)
    register_preset(f"semask_swin_{_v}_fpn_no_lambda", "semask_fpn", learnable_lambda=False, **_arch)

# The paper's Tables 3 and 5 ablations (Tiny).
register_preset("trans_swin_t_fpn", "semask_fpn", semantic_attention="self", **_VARIANTS["t"])
register_preset("semask_swin_t_fpn_no_prior_loss", "semask_fpn", semantic_loss_weight=0.0, **_VARIANTS["t"])
register_preset(
    "swin_t_fpn_aux", "semask_fpn", num_semantic_blocks=0, auxiliary_source="stage_output", **_VARIANTS["t"]
)
register_preset("query_swin_t_fpn", "semask_fpn", num_semantic_blocks=0, auxiliary_source="queries", **_VARIANTS["t"])


# ------------------------------------------------------------------ released weights
# The official SeMask-FPN checkpoints (Google Drive, mmseg 0.x .pth; spec model_zoo.md section 1).
_DATASETS = {  # tag: (data.type, classes, official config suffix)
    "ade20k": ("ade20k", 150, "ade20k"),
    "cityscapes": ("cityscapes", 19, "cityscapes"),
    "coco_stuff10k": ("coco_stuff10k", 171, "coco10k"),
}
_SIZES = {"t": ("tiny", 7), "s": ("small", 7), "b": ("base", 12), "l": ("large", 12)}
_FPN_RELEASES = (  # (size, tag, crop, paper mIoU s.s. / m.s., Drive file id)
    ("t", "ade20k", 512, (42.06, 43.36), "1L0daUHWQGNGCXHF-cKWEauPSyBV0GLOR"),
    ("s", "ade20k", 512, (45.92, 47.63), "1QhDG4SyGFtWL5kP9BbBoyPqTuFu7fH_y"),
    ("b", "ade20k", 512, (49.35, 50.98), "1PXCEhrrUy5TJC4dUp7YDQvaapnMzGT6C"),
    ("l", "ade20k", 640, (51.89, 53.52), "1u5flfAQCiQJbMZbZPIlGUGTYBz9Ca7rE"),
    ("t", "cityscapes", 768, (74.92, 76.56), "1_JBOJQSUVes-CWs075XyPnuNfG5psELr"),
    ("s", "cityscapes", 768, (77.13, 79.14), "1WyT207dZmdwETBUR6aeiqOVfQdUIV_fN"),
    ("b", "cityscapes", 768, (77.70, 79.73), "1-LzVB6XzD7IR0zzE5qmE0EM4ZTv429b4"),
    ("l", "cityscapes", 768, (78.53, 80.39), "1R9DDCmucQ_a_6ZkMGufEZCzJ-_qVMqCB"),
    ("t", "coco_stuff10k", 512, (37.53, 38.88), "1qhXsJ8H64JPI_DW7CNzhxpHSEG2sKaIl"),
    ("s", "coco_stuff10k", 512, (40.72, 42.27), "1ddXSMQu5ClkbLNMyQdyT0ATaOr86vIkL"),
    ("b", "coco_stuff10k", 512, (44.63, 46.30), "1pGWI7U9bZJoe4ZaDx7ktWELx-uVN7rL0"),
    ("l", "coco_stuff10k", 640, (47.47, 48.54), "1F6B9x9pX-SYEth7hdtxeNUeQ3XncOH7G"),
)


def _fpn_release(size: str, tag: str, crop: int, miou: tuple[float, float], drive_id: str) -> PretrainedCfg:
    dataset, classes, suffix = _DATASETS[tag]
    name, window = _SIZES[size]
    config = f"semfpn_semask_swin_{name}_patch4_window{window}_{crop}x{crop}_80k_{suffix}"
    scale = (2048, 1024) if dataset == "cityscapes" else (4 * crop, crop)  # the test resize (fit, keep ratio)
    return PretrainedCfg(
        f"semask_swin_{size}_fpn",
        tag,
        file_name=f"{config}.pth",
        gdrive_id=drive_id,
        dataset=dataset,
        num_classes=classes,
        crop_size=(crop, crop),
        eval=dict(mode="whole", scale=scale),
        ms_scales=MS_RATIOS,
        paper_miou=miou,
        official_config=config,
    )


register_pretrained(*(_fpn_release(*release) for release in _FPN_RELEASES))


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
    from .registry import build_model

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
