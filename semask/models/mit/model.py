"""Mix Transformer (MiT) + SegFormer head, with optional SeMask semantic layers (spec semask_mit.md).

The paper plugs SeMask into SegFormer's MiT-B4 (Table 6) but never released that code;
this is the design of spec section 4.3. In every stage the semantic layer sits after the
MiT blocks and *before* the pretrained stage norm ``norm{i}``, whose output is both the
stage feature for the decoder and the input of the next stage. With lambda = 0 the stage
computes ``norm_i(LN_s(x))``, which equals ``norm_i(x)`` up to LayerNorm epsilons, so an
ImageNet-pretrained MiT starts training unchanged.

Encoder modules are named like the NVlabs checkpoints (``patch_embed{1..4}``,
``block{1..4}.{j}.attn.q/kv/sr``, ``mlp.dwconv.dwconv``, ``norm{1..4}``), so the public
``mit_b*.pth`` ImageNet files load without renaming. Two decode heads are available:
``"mmseg"`` (default; 1x1 conv + BN + ReLU per stage, E = 256 for every size; the
baseline the SeMask paper compares with) and ``"nvlabs"`` (the all-MLP head of the
SegFormer paper, E = 256 for B0/B1 and 768 for B2-B5). Official SegFormer checkpoints in
the NVlabs, mmseg and Hugging Face key schemes load through registered converters.
"""

from __future__ import annotations

from torch import Tensor

from ..pretrained import PretrainedCfg, register_pretrained
from ..registry import register_architecture, register_preset
from ..segmenter import EncoderDecoderModel
from ..strict import BackboneLoadReport
from .config import _VARIANTS, SeMaskMiTConfig
from .convert import load_mit_imagenet
from .encoder import MixTransformer
from .heads import AllMLPHead, MMSegSegFormerHead


# ------------------------------------------------------------------------------- model
@register_architecture
class SeMaskMiT(EncoderDecoderModel):
    """(SeMask) MiT encoder + SegFormer head; ``forward(pixel_values, labels=None)``."""

    config_class = SeMaskMiTConfig
    config: SeMaskMiTConfig
    backbone: MixTransformer
    no_weight_decay_keys = ("norm",)  # the SegFormer recipe

    def __init__(self, config: SeMaskMiTConfig) -> None:
        super().__init__(config)
        self.backbone = MixTransformer(
            embed_dims=config.embed_dims,
            depths=config.depths,
            num_heads=config.num_heads,
            sr_ratios=config.sr_ratios,
            patch_sizes=config.patch_sizes,
            strides=config.strides,
            mlp_ratio=config.mlp_ratio,
            drop_path_rate=config.drop_path_rate,
            num_classes=config.num_classes,
            num_semantic_blocks=config.num_semantic_blocks,  # type: ignore[arg-type]
            semantic_placement=config.semantic_placement,
            semantic_window_size=config.semantic_window_size,
            semantic_global_stages=config.semantic_global_stages,  # type: ignore[arg-type]
            semantic_dropout=config.semantic_dropout,
            learnable_lambda=config.learnable_lambda,
            in_channels=config.in_channels,
        )
        head_cls = MMSegSegFormerHead if config.decode_head == "mmseg" else AllMLPHead
        self.decode_head = head_cls(
            self.backbone.num_features,
            config.decoder_channels,
            config.num_classes,
            config.decoder_dropout,  # type: ignore[arg-type]
        )

    def load_backbone_state(self, state_dict: dict[str, Tensor], source: str) -> BackboneLoadReport:
        return load_mit_imagenet(self.backbone, state_dict, source)

    def imagenet_name(self) -> str:
        return mit_imagenet_name(self.config)


# ----------------------------------------------------------------------------- presets
for _v, _arch in _VARIANTS.items():
    register_preset(f"mit_{_v}", "semask_mit", num_semantic_blocks=0, **_arch)
    register_preset(f"semask_mit_{_v}", "semask_mit", num_semantic_blocks=1, **_arch)
    # the released SegFormer models (NVlabs / Hugging Face): the all-MLP head
    register_preset(f"segformer_{_v}", "semask_mit", num_semantic_blocks=0, decode_head="nvlabs", **_arch)

# ------------------------------------------------------------------ released weights
_HF_LICENSE = "NVIDIA SegFormer license (research, non-commercial)"
_ADE_TEST = dict(mode="whole", scale=(2048, 512))
_CITYSCAPES_TEST = dict(mode="slide", scale=(2048, 1024), crop_size=(1024, 1024), stride=(768, 768))
register_pretrained(
    *(
        PretrainedCfg(
            f"mit_{v}",
            "imagenet",
            file_name="pytorch_model.bin",
            hf_repo=f"nvidia/mit-{v}",
            kind="backbone",
            license=_HF_LICENSE,
        )
        for v in _VARIANTS
    ),
    *(
        PretrainedCfg(
            f"segformer_{v}",
            "ade20k",
            file_name="pytorch_model.bin",
            hf_repo=f"nvidia/segformer-{v}-finetuned-ade-{crop}-{crop}",
            dataset="ade20k",
            num_classes=150,
            crop_size=(crop, crop),
            eval={**_ADE_TEST, "scale": (4 * crop, crop)},
            license=_HF_LICENSE,
        )
        for v, crop in (("b0", 512), ("b1", 512), ("b2", 512), ("b3", 512), ("b4", 512), ("b5", 640))
    ),
    *(
        PretrainedCfg(
            f"segformer_{v}",
            "cityscapes",
            file_name="pytorch_model.bin",
            hf_repo=f"nvidia/segformer-{v}-finetuned-cityscapes-1024-1024",
            dataset="cityscapes",
            num_classes=19,
            crop_size=(1024, 1024),
            eval=_CITYSCAPES_TEST,
            license=_HF_LICENSE,
        )
        for v in _VARIANTS
    ),
)


def mit_imagenet_name(config: SeMaskMiTConfig) -> str:
    """``mit_b0`` ... ``mit_b5`` for a config of a released width and depth."""
    for size, arch in _VARIANTS.items():
        if tuple(config.embed_dims) == arch["embed_dims"] and tuple(config.depths) == arch["depths"]:
            return f"mit_{size}"
    raise ValueError(f"no released ImageNet MiT has embed_dims={config.embed_dims}, depths={config.depths}")
