"""SeMask Swin + Semantic-FPN and the Swin-FPN baselines (paper Table 2; spec semask_fpn.md).

The decode head is mmseg's FPNHead (no FPN neck). SeMask adds a semantic layer per
encoder stage and a parameter-free *semantic decoder* that sums the upsampled
semantic prior maps; its output is supervised with weight 0.4 (paper eq. 5).
Baselines are the same model with ``num_semantic_blocks=0``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from ..base import MS_RATIOS, check_choice
from ..loss import LOSS_REDUCTIONS
from ..pretrained import PretrainedCfg, register_pretrained
from ..registry import register_architecture, register_preset
from ..segmenter import EncoderDecoderModel
from ..semantic_layer import SelfAttentionBlock, SemanticAttentionBlock
from ..strict import BackboneLoadReport
from ..swin import (
    QueryAuxStage,
    StageOutputAuxStage,
    SwinBackboneConfig,
    SwinStage,
    SwinTransformer,
    load_swin_imagenet,
    swin_from_config,
    swin_imagenet_name,
)
from .head import SemanticFPNHead


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
class SeMaskFPNConfig(SwinBackboneConfig):
    """Architecture of a (SeMask) Swin + Semantic-FPN model (Swin fields: :class:`SwinBackboneConfig`).

    Ablations of the paper: ``semantic_attention="self"`` (Table 3, Trans Swin),
    ``learnable_lambda=False`` (Table 4), ``semantic_loss_weight=0`` and
    ``auxiliary_source="stage_output"|"queries"`` on a baseline (Table 5).
    """

    model_type: ClassVar[str] = "semask_fpn"
    learnable_lambda: bool = True
    semantic_attention: Literal["semantic", "self"] = "semantic"
    auxiliary_source: Literal["stage_output", "queries"] | None = None
    decoder_channels: int = 256
    decoder_dropout: float = 0.1
    semantic_loss_weight: float = 0.4
    loss_reduction: Literal["all", "valid"] = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        check_choice("semantic_attention", self.semantic_attention, tuple(SEMANTIC_BLOCKS))
        check_choice("auxiliary_source", self.auxiliary_source, tuple(AUXILIARY_STAGES))
        if self.auxiliary_source is not None and self.is_semask:
            raise ValueError("auxiliary_source is an ablation of the baselines: set num_semantic_blocks=0")

    def official_global_stages(self) -> tuple[int, ...]:
        return official_global_stages(self.embed_dim, self.num_classes)

    @property
    def is_semask(self) -> bool:
        return any(self.num_semantic_blocks)


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
