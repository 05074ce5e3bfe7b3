"""SeMask Swin with mask-classification heads: MaskFormer, Mask2Former, -FaPN, -MSFaPN.

Spec semask_mask2former.md. The SeMask part is the backbone (one semantic layer per Swin
stage) plus a parameter-free semantic decoder whose output gets the semantic-prior CE
(weight 0.4); the segmentation itself comes from Q (class, mask) pairs combined as
``sum_q softmax(class_q)[c] * sigmoid(mask_q)``. Module names follow the detectron2
checkpoints (``backbone``, ``sem_seg_head.pixel_decoder``, ``sem_seg_head.predictor``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import (
    SeMaskModel,
    check_choice,
    tuple_field,
)
from ..loss import check_labels, segmentation_cross_entropy
from ..outputs import SegmentationOutput
from ..pretrained import PretrainedCfg, register_pretrained
from ..registry import register_architecture, register_preset
from ..semantic_layer import SemanticLayer
from ..strict import BackboneLoadReport
from ..swin import SwinBackboneConfig, load_swin_imagenet, swin_from_config, swin_imagenet_name
from .criterion import SetCriterion
from .pixel_decoders import FPNPixelDecoder, MSDeformAttnPixelDecoder
from .transformer_decoders import MaskedAttentionDecoder, MaskFormerPredictor, Predictions

FAMILIES = ("maskformer", "mask2former", "fapn", "msfapn")
# Official inputs are padded to a multiple of the coarsest stride (detectron2 ImageList).
SIZE_DIVISIBILITY = 32

# Family defaults that differ between the MaskFormer (v1) and Mask2Former code (spec 1.8, 2.2-2.3).
_MASKFORMER_DEFAULTS = dict(dec_layers=6, decoder_dropout=0.1, class_weight=1.0, mask_weight=20.0, dice_weight=1.0)
_MASK2FORMER_DEFAULTS = dict(dec_layers=9, decoder_dropout=0.0, class_weight=2.0, mask_weight=5.0, dice_weight=5.0)


def official_global_stages(family: str, num_classes: int) -> tuple[int, ...]:
    """Which semantic layers attend globally in each official code copy (spec table 1.3, quirk Q3)."""
    if family == "maskformer":
        return (3,)
    if family == "mask2former":
        return (3,) if num_classes == 150 else ()
    return (2, 3)  # the FaPN copy, used by FaPN and MSFaPN


@dataclass
class MaskFormerConfig(SwinBackboneConfig):
    """Architecture and loss of a SeMask Swin mask-classification model.

    ``family`` picks the heads: "maskformer" (FPN + DETR decoder on res5), "mask2former"
    (deformable pixel decoder + masked attention), "fapn" (FaPN pixel decoder + masked
    attention), "msfapn" (deformable pixel decoder with FaPN alignment at stride 4).
    Fields left ``None`` take the family's official value at construction. The Swin fields
    are :class:`SwinBackboneConfig`'s, with the defaults of the released SeMask-L models.
    """

    model_type: ClassVar[str] = "semask_maskformer"
    family: Literal["maskformer", "mask2former", "fapn", "msfapn"] = "mask2former"
    embed_dim: int = 192
    depths: tuple[int, ...] = tuple_field(2, 2, 18, 2)
    num_heads: tuple[int, ...] = tuple_field(6, 12, 24, 48)
    window_size: int = 12
    # heads
    hidden_dim: int = 256
    mask_dim: int = 256
    num_queries: int = 100
    decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    dec_layers: int | None = None
    decoder_dropout: float | None = None
    encoder_layers: int = 6
    encoder_ffn_dim: int = 1024
    encoder_points: int = 4
    deformable_groups: int = 8
    # loss
    class_weight: float | None = None
    mask_weight: float | None = None
    dice_weight: float | None = None
    no_object_weight: float = 0.1
    deep_supervision: bool = True
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    semantic_loss_weight: float = 0.4
    # multi-scale + flip test (spec section 3): short-edge sizes and long-edge cap
    test_sizes: list[int] = field(default_factory=lambda: [320, 480, 640, 800, 960, 1120])
    test_max_size: int = 4480

    def __post_init__(self) -> None:
        check_choice("family", self.family, FAMILIES)
        if len(self.depths) != 4:
            raise ValueError(f"the pixel decoders need 4 backbone stages, got depths={tuple(self.depths)}")
        super().__post_init__()
        if not all(self.num_semantic_blocks):
            raise ValueError(f"every stage needs a semantic layer, got num_semantic_blocks={self.num_semantic_blocks}")
        defaults = _MASKFORMER_DEFAULTS if self.family == "maskformer" else _MASK2FORMER_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.hidden_dim % 32:
            raise ValueError(f"hidden_dim must be a multiple of 32 (GroupNorm(32)), got {self.hidden_dim}")
        if self.dec_layers < 1:  # type: ignore[operator]
            raise ValueError(f"dec_layers must be >= 1, got {self.dec_layers}")
        self.test_sizes = [int(s) for s in self.test_sizes]

    def official_global_stages(self) -> tuple[int, ...]:
        return official_global_stages(self.family, self.num_classes)

    @property
    def uses_points(self) -> bool:
        return self.family != "maskformer"


@dataclass
class MaskClassificationOutput(SegmentationOutput):
    """:class:`SegmentationOutput` plus the raw set predictions and every loss term.

    ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, H/4, W/4) are the final layer's
    (on the input padded to a multiple of 32); ``aux_outputs`` the earlier layers' as
    (logits, masks) pairs; ``loss_terms`` the unweighted CE/mask/dice terms per layer.
    """

    pred_logits: Tensor | None = None
    pred_masks: Tensor | None = None
    aux_outputs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    loss_terms: dict[str, Tensor] = field(default_factory=dict)


torch.export.register_dataclass(MaskClassificationOutput, serialized_type_name="semask.MaskClassificationOutput")


def semantic_head(priors: list[Tensor]) -> Tensor:
    """detectron2 ``SemanticHead``: x2 steps and final x4, all bilinear align_corners=True (quirk Q4)."""

    def up(x: Tensor, **kwargs: Any) -> Tensor:
        return F.interpolate(x, mode="bilinear", align_corners=True, **kwargs)

    out = priors[0]
    for i, prior in enumerate(priors[1:], start=1):
        for _ in range(i):
            prior = up(prior, scale_factor=2.0)
        if prior.shape[-2:] != out.shape[-2:]:
            prior = up(prior, size=out.shape[-2:])
        out = out + prior
    return up(out, size=(4 * out.shape[-2], 4 * out.shape[-1]))


def semantic_inference(logits: Tensor, masks: Tensor) -> Tensor:
    """sum_q softmax(class_q)[c] * sigmoid(mask_q): (B,Q,K+1), (B,Q,H,W) -> (B,K,H,W); no-object dropped."""
    return torch.einsum("bqc,bqhw->bchw", logits.softmax(-1)[..., :-1], masks.sigmoid())


def init_semantic_layers_d2(backbone: nn.Module) -> None:
    """detectron2 init of the semantic layers: kaiming-normal q/k/v, zero biases, zero mlp_res.

    At init every semantic layer then outputs exactly its LayerNorm input (lambda is 0 too).
    """
    for module in backbone.modules():
        if isinstance(module, SemanticLayer):
            for block in module.class_injection:
                for linear in (block.mlp_cls_q, block.mlp_cls_k, block.mlp_v):
                    nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(linear.bias)
                nn.init.zeros_(block.mlp_res.weight)
                nn.init.zeros_(block.mlp_res.bias)


class SemSegHead(nn.Module):
    """``sem_seg_head``: pixel decoder + transformer decoder (the semantic head has no parameters)."""

    def __init__(self, config: MaskFormerConfig, in_channels: list[int]) -> None:
        super().__init__()
        cfg = config
        d = cfg.hidden_dim
        if cfg.family in ("maskformer", "fapn"):
            self.pixel_decoder: nn.Module = FPNPixelDecoder(
                in_channels, d, align=cfg.family == "fapn", deformable_groups=cfg.deformable_groups
            )
        else:
            self.pixel_decoder = MSDeformAttnPixelDecoder(
                in_channels,
                d,
                cfg.encoder_layers,
                cfg.encoder_ffn_dim,
                cfg.decoder_heads,
                cfg.encoder_points,
                dropout=0.0,
                align=cfg.family == "msfapn",
                deformable_groups=cfg.deformable_groups,
            )
        if cfg.family == "maskformer":
            self.predictor: nn.Module = MaskFormerPredictor(
                in_channels[-1],
                cfg.num_classes,
                d,
                cfg.num_queries,
                cfg.decoder_heads,
                cfg.decoder_ffn_dim,
                cfg.dec_layers,  # type: ignore[arg-type]
                cfg.mask_dim,
                cfg.decoder_dropout,  # type: ignore[arg-type]
            )
        else:
            self.predictor = MaskedAttentionDecoder(
                cfg.num_classes,
                d,
                cfg.num_queries,
                cfg.decoder_heads,
                cfg.decoder_ffn_dim,
                cfg.dec_layers,  # type: ignore[arg-type]
                cfg.mask_dim,
                dropout=cfg.decoder_dropout,  # type: ignore[arg-type]
            )
        self.family = cfg.family

    def forward(self, features: list[Tensor]) -> Predictions:
        mask_features, multi_scale = self.pixel_decoder(features)
        if self.family == "maskformer":
            return self.predictor(features[-1], mask_features)  # type: ignore[no-any-return]
        return self.predictor(multi_scale, mask_features)  # type: ignore[no-any-return]


@register_architecture
class SeMaskMaskFormer(SeMaskModel):
    """SeMask Swin + mask-classification head; ``forward(pixel_values, labels=None)``."""

    config_class = MaskFormerConfig
    config: MaskFormerConfig

    def __init__(self, config: MaskFormerConfig) -> None:
        super().__init__(config)
        self.backbone = swin_from_config(config)
        init_semantic_layers_d2(self.backbone)
        self.sem_seg_head = SemSegHead(config, self.backbone.num_features)
        self.criterion = SetCriterion(
            config.num_classes,
            config.class_weight,  # type: ignore[arg-type]
            config.mask_weight,  # type: ignore[arg-type]
            config.dice_weight,  # type: ignore[arg-type]
            config.no_object_weight,
            config.train_num_points if config.uses_points else 0,
            config.oversample_ratio,
            config.importance_sample_ratio,
        )

    def aug_test(self) -> dict[str, Any]:
        """detectron2's ms+flip test: short edges ``test_sizes``, long edge <= ``test_max_size``."""
        return {"sizes": list(self.config.test_sizes), "max_size": self.config.test_max_size, "flip": True}

    def probabilities(self, logits: Tensor) -> Tensor:
        """The class x mask scores as they are: the official ms+flip test averages them with no
        softmax (spec section 3); they lie in [0, 1] but need not sum to 1."""
        return logits

    def no_weight_decay(self) -> set[str]:
        """The official recipes' no-decay names: MaskFormer's short list, Mask2Former's longer one."""
        keys = _NO_DECAY_MASKFORMER if self.config.family == "maskformer" else _NO_DECAY_MASK2FORMER
        return {n for n, _ in self.named_parameters() if any(k in n for k in keys)}

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        output_semantic_logits: bool = False,
        upsample_logits: bool = True,
    ) -> MaskClassificationOutput:
        """``semantic_logits`` only with ``labels`` or ``output_semantic_logits=True`` (as SeMaskFPN).
        ``upsample_logits=False``: ``logits`` from the masks at their own stride (1/4 of the input
        padded to a multiple of 32), without the (B, Q, H, W) mask upsampling the losses do not use."""
        if labels is not None and (
            labels.shape[0] != pixel_values.shape[0] or labels.shape[-2:] != pixel_values.shape[-2:]
        ):
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match pixel_values "
                f"(B={pixel_values.shape[0]}, H, W={tuple(pixel_values.shape[-2:])})"
            )
        h, w = pixel_values.shape[-2:]
        pad_h, pad_w = (-h) % SIZE_DIVISIBILITY, (-w) % SIZE_DIVISIBILITY
        padded = F.pad(pixel_values, (0, pad_w, 0, pad_h)) if pad_h or pad_w else pixel_values
        want_semantic = labels is not None or output_semantic_logits
        encoded = self.backbone(padded, output_priors=want_semantic)
        predictions = self.sem_seg_head(encoded.features)
        masks = predictions.masks[-1]
        if upsample_logits:
            masks = F.interpolate(masks, size=padded.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]
        logits = semantic_inference(predictions.logits[-1].float(), masks.float())
        semantic = semantic_head(encoded.semantic_priors) if want_semantic else None  # at the padded size
        out = MaskClassificationOutput(
            logits=logits,
            semantic_logits=None if semantic is None else semantic[..., :h, :w],
            pred_logits=predictions.logits[-1],
            pred_masks=predictions.masks[-1],
            aux_outputs=list(zip(predictions.logits[:-1], predictions.masks[:-1])),
        )
        if labels is not None:
            self.add_loss(out, predictions, semantic, labels, pad_h, pad_w)
        return out

    def add_loss(
        self,
        out: MaskClassificationOutput,
        predictions: Predictions,
        semantic: Tensor,
        labels: Tensor,
        pad_h: int,
        pad_w: int,
    ) -> None:
        """Mask-classification loss over all supervised layers + 0.4 x semantic-prior CE (spec 2.3-2.4)."""
        cfg = self.config
        check_labels(labels, cfg.num_classes)
        if pad_h or pad_w:  # padded pixels: negatives in every mask, ignored by the semantic CE
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=255)
        if not cfg.deep_supervision:
            predictions = Predictions(predictions.logits[-1:], predictions.masks[-1:])
        out.loss_main, out.loss_terms = self.criterion(predictions, labels)
        out.loss_semantic = segmentation_cross_entropy(semantic, labels, reduction="valid")
        out.loss = out.loss_main + cfg.semantic_loss_weight * out.loss_semantic

    def load_backbone_state(self, state_dict: dict[str, Tensor], source: str) -> BackboneLoadReport:
        """Public ImageNet Swin weights (the semantic layers stay D2-initialised)."""
        return load_swin_imagenet(self.backbone, state_dict, source)

    def imagenet_name(self) -> str:
        return swin_imagenet_name(self.config)


_NO_DECAY_MASKFORMER = ("norm", "relative_position_bias_table", "predictor.query_embed")
_NO_DECAY_MASK2FORMER = (
    "norm",
    "relative_position_bias_table",
    "predictor.query_feat",
    "predictor.query_embed",
    "predictor.level_embed",
    "pixel_decoder.input_proj.0.1.",
    "pixel_decoder.input_proj.1.1.",
    "pixel_decoder.input_proj.2.1.",
)


# ----------------------------------------------------------------------------- presets
_VARIANTS = {
    "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}
_CITYSCAPES = dict(
    num_classes=19, semantic_window_size=7, test_sizes=[512, 768, 1024, 1280, 1536, 1792], test_max_size=4096
)
for _v, _arch in _VARIANTS.items():
    register_preset(f"semask_swin_{_v}_maskformer", "semask_maskformer", family="maskformer", **_arch)
    register_preset(f"semask_swin_{_v}_mask2former", "semask_maskformer", family="mask2former", **_arch)
    register_preset(f"semask_swin_{_v}_mask2former_fapn", "semask_maskformer", family="fapn", **_arch)
    register_preset(f"semask_swin_{_v}_mask2former_msfapn", "semask_maskformer", family="msfapn", **_arch)
    register_preset(
        f"semask_swin_{_v}_mask2former_cityscapes",
        "semask_maskformer",
        family="mask2former",
        **{**_arch, **_CITYSCAPES},
    )


# ------------------------------------------------------------------ released weights
# The official SeMask mask-classification checkpoints (Google Drive, detectron2 .pth; model_zoo.md).
_ADE = dict(
    dataset="ade20k",
    num_classes=150,
    crop_size=(640, 640),
    eval=dict(mode="whole", scale=(2560, 640)),
    ms_sizes=(320, 480, 640, 800, 960, 1120),
    ms_max_size=4480,
)
_MASK_RELEASES = (  # (preset, paper mIoU s.s. / m.s., Drive file id, official config)
    (
        "semask_swin_l_maskformer",
        (54.75, 56.15),
        "1KgKQLGv9CcBqeEvOEDdxQ-O6lpMfHBLw",
        "maskformer_semask_swin_large_IN21k_384_bs16_160k_res640",
    ),
    (
        "semask_swin_l_mask2former",
        (56.41, 57.52),
        "1hN1I4Wv7_1FCPOsfA-5PELn6Xn3b_R8a",
        "maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640",
    ),
    (
        "semask_swin_l_mask2former_fapn",
        (56.88, 58.25),
        "1njy_RSEXiyx29O_xFraHqsItTHOtw_qc",
        "fapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640",
    ),
    (
        "semask_swin_l_mask2former_msfapn",
        (57.00, 58.25),
        "1DQ9KltSLDj47H2jYnCtVwyBf7KPR9SM_",
        "msfapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640",
    ),
)
register_pretrained(
    *(
        PretrainedCfg(
            preset,
            "ade20k",
            file_name=f"{config}.pth",
            gdrive_id=drive_id,
            paper_miou=miou,
            official_config=config,
            **_ADE,
        )
        for preset, miou, drive_id, config in _MASK_RELEASES
    ),
    PretrainedCfg(
        "semask_swin_l_mask2former_cityscapes",
        "cityscapes",
        file_name="maskformer2_semask_swin_large_IN21k_384_bs16_90k.pth",
        gdrive_id="14fZQWQuBUu2qlpy3wyQ42xs6gQNg2DZX",
        dataset="cityscapes",
        num_classes=19,
        crop_size=(512, 1024),
        eval=dict(mode="whole", scale=(2048, 1024)),
        ms_sizes=(512, 768, 1024, 1280, 1536, 1792),
        ms_max_size=4096,
        paper_miou=(83.97, 84.98),
        official_config="maskformer2_semask_swin_large_IN21k_384_bs16_90k",
    ),
)

__all__ = [
    "MaskClassificationOutput",
    "MaskFormerConfig",
    "SeMaskMaskFormer",
    "semantic_head",
    "semantic_inference",
]
