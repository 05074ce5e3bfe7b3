"""The mask-classification recipes (semask/configs/mask2former/) against the official detectron2 files.

``OFFICIAL`` holds the values transcribed from the official files, each with the file it comes
from (Picsart-AI-Research/SeMask-Segmentation unless another repository is named; a value set
nowhere in the config chain comes from the code defaults named). Every recipe is checked against
every field; the optimizer's no-decay and lr-multiplier rule of ``train_net.py`` is checked on
the models themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import M2F_TINY

import semask
from semask.config import ExperimentConfig, OptimConfig, get_recipe
from semask.models.swin import swin_imagenet_name

# --------------------------------------------------------------------------- official files
SEMASK_M2F = "SeMask-Mask2Former/configs/ade20k/semantic-segmentation/semask_swin/"
M2F_L = SEMASK_M2F + "maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.yaml"  # not in the index: = FAPN_L
M2F_R50 = SEMASK_M2F + "semask_maskformer2_R50_bs16_160k.yaml"
FAPN_DIR = "SeMask-FAPN/SeMask-Mask2Former/configs/ade20k/semantic-segmentation/semask_swin/"
FAPN_L = FAPN_DIR + "fapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.yaml"
FAPN_R50 = FAPN_DIR + "semask_maskformer2_R50_bs16_160k.yaml"
MSFAPN_L = FAPN_DIR + "msfapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640 copy.yaml"
MSFAPN_R50 = FAPN_DIR + "semask_maskformer2_msfapn_R50_bs16_160k.yaml"
ADE_BASE = "facebookresearch/Mask2Former configs/ade20k/semantic-segmentation/Base-ADE20K-SemanticSegmentation.yaml"
CITY_DIR = "SeMask-Mask2Former/configs/cityscapes/semantic-segmentation/semask_swin/"
CITY_L = CITY_DIR + "maskformer2_semask_swin_large_IN21k_384_bs16_90k.yaml"
CITY_R50 = CITY_DIR + "semask_maskformer2_R50_bs16_90k.yaml"
CITY_BASE = (
    "facebookresearch/Mask2Former configs/cityscapes/semantic-segmentation/Base-Cityscapes-SemanticSegmentation.yaml"
)
MF_L = "SeMask-MaskFormer/configs/ade20k-150/semask_swin/maskformer_semask_swin_large_IN21k_384_bs16_160k_res640.yaml"
MF_R50 = "SeMask-MaskFormer/configs/ade20k-150/semask_swin/semask_maskformer_R50_bs16_160k.yaml"
MF_BASE = "facebookresearch/MaskFormer configs/ade20k-150/Base-ADE20K-150.yaml"
M2F_CONFIG_PY = "SeMask-Mask2Former/mask2former/config.py"
MF_CONFIG_PY = "SeMask-MaskFormer/mask_former/config.py"
MF_MODEL_PY = "SeMask-MaskFormer/mask_former/semask_mask_former_model.py"
D2_DEFAULTS = "facebookresearch/detectron2 detectron2/config/defaults.py"
DEEPLAB = "facebookresearch/detectron2 projects/DeepLab/deeplab/config.py"
MAPPER = "facebookresearch/Mask2Former mask2former/data/dataset_mappers/mask_former_semantic_dataset_mapper.py"
AMP_TRAINER = "facebookresearch/detectron2 detectron2/engine/train_loop.py (AMPTrainer: autocast(), float16)"
TRAIN_SH = "SeMask-FAPN/SeMask-Mask2Former/train.sh (--num-gpus 4; GETTING_STARTED.md says 8)"

GPUS = 4  # the official training script's GPU count: IMS_PER_BATCH = per-GPU batch x GPUS

SWIN_L = {
    "MODEL.SWIN.EMBED_DIM": 192,
    "MODEL.SWIN.DEPTHS": (2, 2, 18, 2),
    "MODEL.SWIN.NUM_HEADS": (6, 12, 24, 48),
    "MODEL.SWIN.WINDOW_SIZE": 12,
    "MODEL.SWIN.DROP_PATH_RATE": 0.3,
    "MODEL.WEIGHTS": "swin_large_patch4_window12_384_22k",
    "MODEL.PIXEL_MEAN": (123.675, 116.280, 103.530),
    "MODEL.PIXEL_STD": (58.395, 57.120, 57.375),
}


def _from(source: str, values: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    return {key: (value, source) for key, value in values.items()}


M2F_SOLVER = {  # the same in both Mask2Former base files
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.BASE_LR": 1e-4,
    "SOLVER.WARMUP_FACTOR": 1.0,
    "SOLVER.WARMUP_ITERS": 0,
    "SOLVER.WEIGHT_DECAY": 0.05,
    "SOLVER.OPTIMIZER": "ADAMW",
    "SOLVER.BACKBONE_MULTIPLIER": 0.1,
    "SOLVER.CLIP_GRADIENTS": ("full_model", 0.01, 2.0),  # CLIP_TYPE, CLIP_VALUE, NORM_TYPE
    "SOLVER.AMP.ENABLED": True,
    "DATALOADER.NUM_WORKERS": 4,
    "TEST.EVAL_PERIOD": 5000,
}
ADE_640_INPUT = {  # the Swin-L res640 files (Mask2Former family)
    "INPUT.MIN_SIZE_TRAIN": [int(x * 0.1 * 640) for x in range(5, 21)],
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
    "INPUT.MIN_SIZE_TEST": 640,
    "INPUT.MAX_SIZE_TRAIN": 2560,
    "INPUT.MAX_SIZE_TEST": 2560,
    "INPUT.CROP.SIZE": (640, 640),
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
    "INPUT.COLOR_AUG_SSD": True,
    "INPUT.SIZE_DIVISIBILITY": 640,
    "TEST.EVAL_PERIOD": 5000,
    "TEST.AUG.MIN_SIZES": [320, 480, 640, 800, 960, 1120],
    "TEST.AUG.MAX_SIZE": 4480,
}
M2F_HEAD = {  # the R50 files every SeMask Mask2Former-family Swin-L file inherits
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": 6,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.1,
    "MODEL.MASK_FORMER.CLASS_WEIGHT": 2.0,
    "MODEL.MASK_FORMER.MASK_WEIGHT": 5.0,
    "MODEL.MASK_FORMER.DICE_WEIGHT": 5.0,
    "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
    "MODEL.MASK_FORMER.NHEADS": 8,
    "MODEL.MASK_FORMER.DROPOUT": 0.0,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
    "MODEL.MASK_FORMER.DEC_LAYERS": 10,
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": 12544,
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": 3.0,
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": 0.75,
}
COMMON = {  # code defaults and the mapper, the same for every recipe
    **_from(D2_DEFAULTS, {"SOLVER.CHECKPOINT_PERIOD": 5000, "SOLVER.WEIGHT_DECAY_NORM": 0.0}),
    **_from(DEEPLAB, {"SOLVER.POLY_LR_POWER": 0.9, "SOLVER.POLY_LR_CONSTANT_ENDING": 0.0}),
    **_from(MAPPER, {"mapper: RandomFlip prob": 0.5, "mapper: image pad value": 128}),
    **_from(AMP_TRAINER, {"AMP dtype": "float16"}),
    **_from(TRAIN_SH, {"GPUs": GPUS}),
}


def _m2f_ade(swin_file: str, r50_file: str, decoder: str) -> dict[str, tuple[Any, str]]:
    """A SeMask Mask2Former-family ADE20K recipe: the base, its R50 file, its Swin-L file."""
    return {
        **COMMON,
        **_from(ADE_BASE, {**M2F_SOLVER, "SOLVER.MAX_ITER": 160000, "DATASETS.TRAIN": "ade20k_sem_seg_train"}),
        **_from(M2F_CONFIG_PY, {"MODEL.MASK_FORMER.CATE_WEIGHT": 0.4, "SOLVER.WEIGHT_DECAY_EMBED": 0.0}),
        **_from(r50_file, {**M2F_HEAD, "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150}),
        **_from(r50_file, {"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": decoder}),
        **_from(swin_file, {**SWIN_L, "MODEL.SWIN.SEM_WINDOW_SIZE": 12, "MODEL.SWIN.NUM_SEM_BLOCKS": 1}),
        **_from(swin_file, ADE_640_INPUT),
    }


OFFICIAL: dict[str, dict[str, tuple[Any, str]]] = {
    "semask_swin_l_mask2former_ade20k": _m2f_ade(M2F_L, M2F_R50, "MSDeformAttnPixelDecoder"),
    "semask_swin_l_mask2former_fapn_ade20k": _m2f_ade(FAPN_L, FAPN_R50, "PixelFANDecoder"),
    "semask_swin_l_mask2former_msfapn_ade20k": _m2f_ade(MSFAPN_L, MSFAPN_R50, "MSDeformAttnPixelFANDecoder"),
    "semask_swin_l_mask2former_cityscapes": {
        **COMMON,
        **_from(
            CITY_BASE,
            {
                **M2F_SOLVER,
                "SOLVER.MAX_ITER": 90000,
                "DATASETS.TRAIN": "cityscapes_fine_sem_seg_train",
                "INPUT.MIN_SIZE_TRAIN": [int(x * 0.1 * 1024) for x in range(5, 21)],
                "INPUT.MIN_SIZE_TRAIN_SAMPLING": "choice",
                "INPUT.MIN_SIZE_TEST": 1024,
                "INPUT.MAX_SIZE_TRAIN": 4096,
                "INPUT.MAX_SIZE_TEST": 2048,
                "INPUT.CROP.SIZE": (512, 1024),
                "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 1.0,
                "INPUT.COLOR_AUG_SSD": True,
                "INPUT.SIZE_DIVISIBILITY": -1,
                "TEST.AUG.MIN_SIZES": [512, 768, 1024, 1280, 1536, 1792],
                "TEST.AUG.MAX_SIZE": 4096,
            },
        ),
        **_from(M2F_CONFIG_PY, {"MODEL.MASK_FORMER.CATE_WEIGHT": 0.4, "SOLVER.WEIGHT_DECAY_EMBED": 0.0}),
        # CITY_L sets no SEM_WINDOW_SIZE / NUM_SEM_BLOCKS: config.py's defaults apply
        **_from(M2F_CONFIG_PY, {"MODEL.SWIN.SEM_WINDOW_SIZE": 7, "MODEL.SWIN.NUM_SEM_BLOCKS": 1}),
        **_from(CITY_R50, {**M2F_HEAD, "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 19}),
        **_from(CITY_R50, {"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder"}),
        **_from(CITY_L, SWIN_L),
    },
    "semask_swin_l_maskformer_ade20k": {
        **COMMON,
        **_from(
            MF_BASE,
            {
                "SOLVER.IMS_PER_BATCH": 16,
                "SOLVER.MAX_ITER": 160000,
                "SOLVER.OPTIMIZER": "ADAMW",
                "SOLVER.CLIP_GRADIENTS": ("full_model", 0.01, 2.0),
                "DATASETS.TRAIN": "ade20k_sem_seg_train",
                "DATALOADER.NUM_WORKERS": 4,
            },
        ),
        **_from(D2_DEFAULTS, {"SOLVER.AMP.ENABLED": False}),  # neither MaskFormer file enables it
        **_from(MF_CONFIG_PY, {"MODEL.MASK_FORMER.CATE_WEIGHT": 0.4}),
        **_from(MF_CONFIG_PY, {"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "BasePixelDecoder"}),
        **_from(MF_MODEL_PY, {"MODEL.MASK_FORMER.CLASS_WEIGHT": 1.0}),  # weight_dict "loss_ce": 1
        **_from(
            MF_R50,
            {
                "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 150,
                "MODEL.SEM_SEG_HEAD.MASK_DIM": 256,
                "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": 0.1,
                "MODEL.MASK_FORMER.MASK_WEIGHT": 20.0,
                "MODEL.MASK_FORMER.DICE_WEIGHT": 1.0,
                "MODEL.MASK_FORMER.HIDDEN_DIM": 256,
                "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": 100,
                "MODEL.MASK_FORMER.NHEADS": 8,
                "MODEL.MASK_FORMER.DROPOUT": 0.1,
                "MODEL.MASK_FORMER.DIM_FEEDFORWARD": 2048,
                "MODEL.MASK_FORMER.DEC_LAYERS": 6,
                # no pixel-decoder transformer and no point sampling in MaskFormer
                "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": None,
                "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": None,
                "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": None,
                "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": None,
            },
        ),
        **_from(
            MF_L,
            {
                **SWIN_L,
                "MODEL.SWIN.SEM_WINDOW_SIZE": 12,
                "MODEL.SWIN.NUM_SEM_BLOCKS": 1,
                "SOLVER.BASE_LR": 6e-5,
                "SOLVER.WARMUP_FACTOR": 1e-6,
                "SOLVER.WARMUP_ITERS": 1500,
                "SOLVER.WEIGHT_DECAY": 0.01,
                "SOLVER.WEIGHT_DECAY_NORM": 0.0,
                "SOLVER.WEIGHT_DECAY_EMBED": 0.0,
                "SOLVER.BACKBONE_MULTIPLIER": 1.0,
                **ADE_640_INPUT,
                "INPUT.MIN_SIZE_TRAIN": [int(0.25 * x * 640) for x in range(1, 8)],
            },
        ),
    },
}

DECODERS = {
    "maskformer": "BasePixelDecoder",
    "mask2former": "MSDeformAttnPixelDecoder",
    "fapn": "PixelFANDecoder",
    "msfapn": "MSDeformAttnPixelFANDecoder",
}
DATASETS = {"ade20k": "ade20k_sem_seg_train", "cityscapes": "cityscapes_fine_sem_seg_train"}


def _uses_points(m: Any) -> Any:
    return m.family != "maskformer"


# How each official key reads in our recipe (c: ExperimentConfig) and model config (m).
OURS: dict[str, Callable[[ExperimentConfig, Any], Any]] = {
    "SOLVER.IMS_PER_BATCH": lambda c, m: c.train.batch_size * c.train.grad_accum * GPUS,
    "GPUs": lambda c, m: GPUS,
    "SOLVER.BASE_LR": lambda c, m: c.optim.lr,
    "SOLVER.MAX_ITER": lambda c, m: c.schedule.iters,
    "SOLVER.WARMUP_FACTOR": lambda c, m: c.schedule.warmup_ratio,
    "SOLVER.WARMUP_ITERS": lambda c, m: c.schedule.warmup_iters,
    "SOLVER.WEIGHT_DECAY": lambda c, m: c.optim.weight_decay,
    "SOLVER.WEIGHT_DECAY_NORM": lambda c, m: 0.0 if c.optim.no_decay_keys is None else None,  # the model's rule
    "SOLVER.WEIGHT_DECAY_EMBED": lambda c, m: 0.0 if c.optim.no_decay_keys is None else None,
    "SOLVER.OPTIMIZER": lambda c, m: "ADAMW" if c.optim.betas == (0.9, 0.999) else c.optim.betas,
    "SOLVER.BACKBONE_MULTIPLIER": lambda c, m: c.optim.backbone_lr_mult,
    "SOLVER.CLIP_GRADIENTS": lambda c, m: ("full_model", c.train.clip_grad, 2.0),  # clip_grad_norm_ over all
    "SOLVER.AMP.ENABLED": lambda c, m: c.train.amp,
    "AMP dtype": lambda c, m: {"fp16": "float16", "bf16": "bfloat16"}[c.train.amp_dtype],
    "SOLVER.POLY_LR_POWER": lambda c, m: c.schedule.power,
    "SOLVER.POLY_LR_CONSTANT_ENDING": lambda c, m: c.schedule.min_lr,
    "SOLVER.CHECKPOINT_PERIOD": lambda c, m: c.train.ckpt_interval,
    "TEST.EVAL_PERIOD": lambda c, m: c.train.eval_interval,
    "DATASETS.TRAIN": lambda c, m: DATASETS[c.data.type] if c.data.train_split in ("training", "train") else None,
    "DATALOADER.NUM_WORKERS": lambda c, m: c.data.num_workers,
    "INPUT.MIN_SIZE_TRAIN": lambda c, m: c.data.short_edges,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": lambda c, m: "choice",  # ShortEdgeTrainTransform picks uniformly
    "INPUT.MAX_SIZE_TRAIN": lambda c, m: c.data.max_size,
    "INPUT.MIN_SIZE_TEST": lambda c, m: (
        min(c.eval.scale) if c.eval.mode == "whole" and c.eval.scales == [1.0] else None
    ),
    "INPUT.MAX_SIZE_TEST": lambda c, m: max(c.eval.scale),
    "INPUT.CROP.SIZE": lambda c, m: tuple(c.data.crop_size),
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": lambda c, m: c.data.cat_max_ratio,
    "INPUT.COLOR_AUG_SSD": lambda c, m: c.data.photometric,
    "INPUT.SIZE_DIVISIBILITY": lambda c, m: -1 if c.data.pad_size is None else c.data.pad_size,
    "mapper: RandomFlip prob": lambda c, m: c.data.flip_prob,
    "mapper: image pad value": lambda c, m: c.data.pad_value,
    "TEST.AUG.MIN_SIZES": lambda c, m: m.test_sizes,
    "TEST.AUG.MAX_SIZE": lambda c, m: m.test_max_size,
    "MODEL.SWIN.EMBED_DIM": lambda c, m: m.embed_dim,
    "MODEL.SWIN.DEPTHS": lambda c, m: tuple(m.depths),
    "MODEL.SWIN.NUM_HEADS": lambda c, m: tuple(m.num_heads),
    "MODEL.SWIN.WINDOW_SIZE": lambda c, m: m.window_size,
    "MODEL.SWIN.SEM_WINDOW_SIZE": lambda c, m: m.semantic_window_size,
    "MODEL.SWIN.NUM_SEM_BLOCKS": lambda c, m: (
        m.num_semantic_blocks[0] if len(set(m.num_semantic_blocks)) == 1 else None
    ),
    "MODEL.SWIN.DROP_PATH_RATE": lambda c, m: m.drop_path_rate,
    "MODEL.WEIGHTS": lambda c, m: (
        semask.get_pretrained(f"{swin_imagenet_name(m)}.imagenet").file_name.removesuffix(".pth")
        if c.model.backbone_weights == "imagenet"
        else c.model.backbone_weights
    ),
    "MODEL.PIXEL_MEAN": lambda c, m: m.mean,
    "MODEL.PIXEL_STD": lambda c, m: m.std,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": lambda c, m: m.num_classes,
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": lambda c, m: DECODERS[m.family],
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS": lambda c, m: m.encoder_layers if _uses_points(m) else None,
    "MODEL.SEM_SEG_HEAD.MASK_DIM": lambda c, m: m.mask_dim,
    "MODEL.MASK_FORMER.NO_OBJECT_WEIGHT": lambda c, m: m.no_object_weight,
    "MODEL.MASK_FORMER.CLASS_WEIGHT": lambda c, m: m.class_weight,
    "MODEL.MASK_FORMER.MASK_WEIGHT": lambda c, m: m.mask_weight,
    "MODEL.MASK_FORMER.DICE_WEIGHT": lambda c, m: m.dice_weight,
    "MODEL.MASK_FORMER.CATE_WEIGHT": lambda c, m: m.semantic_loss_weight,
    "MODEL.MASK_FORMER.HIDDEN_DIM": lambda c, m: m.hidden_dim,
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES": lambda c, m: m.num_queries,
    "MODEL.MASK_FORMER.NHEADS": lambda c, m: m.decoder_heads,
    "MODEL.MASK_FORMER.DROPOUT": lambda c, m: m.decoder_dropout,
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD": lambda c, m: m.decoder_ffn_dim,
    # Mask2Former: "10 # 9 decoder layers, add one for the loss on learnable query"; MaskFormer: 6 layers
    "MODEL.MASK_FORMER.DEC_LAYERS": lambda c, m: m.dec_layers + (1 if _uses_points(m) else 0),
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS": lambda c, m: m.train_num_points if _uses_points(m) else None,
    "MODEL.MASK_FORMER.OVERSAMPLE_RATIO": lambda c, m: m.oversample_ratio if _uses_points(m) else None,
    "MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO": lambda c, m: m.importance_sample_ratio if _uses_points(m) else None,
}


@pytest.mark.parametrize("recipe", sorted(OFFICIAL))
def test_recipe_equals_the_official_files_field_by_field(recipe: str) -> None:
    cfg = get_recipe(recipe)
    model_cfg = semask.get_config(cfg.model.name, **cfg.model.overrides)
    official = OFFICIAL[recipe]
    assert set(official) == set(OURS), "every field is transcribed for every recipe"
    wrong = {
        key: f"ours {OURS[key](cfg, model_cfg)!r} != official {value!r} ({source})"
        for key, (value, source) in official.items()
        if OURS[key](cfg, model_cfg) != value
    }
    assert not wrong, wrong
    assert semask.data.pipeline_for(model_cfg).name == "detectron2"


def test_every_mask_classification_recipe_is_audited() -> None:
    names = {
        n
        for n in semask.recipe_names()
        if semask.get_config(get_recipe(n).model.name).model_type == "semask_maskformer"
    }
    assert names == set(OFFICIAL)


# --------------------------------------------------------------------------- optimizer rule


def official_param_groups(
    model: torch.nn.Module, base_lr: float, weight_decay: float, multiplier: float
) -> dict[str, tuple[float, float]]:
    """train_net.py ``Trainer.build_optimizer`` of both SeMask detectron2 projects: per parameter
    (first module that owns it), lr x BACKBONE_MULTIPLIER when the module name contains
    "backbone"; weight decay 0 for relative_position_bias_table / absolute_pos_embed, for the
    parameters of norm modules (WEIGHT_DECAY_NORM 0) and of nn.Embedding (WEIGHT_DECAY_EMBED 0)."""
    norm_types = (
        torch.nn.BatchNorm1d,
        torch.nn.BatchNorm2d,
        torch.nn.BatchNorm3d,
        torch.nn.SyncBatchNorm,
        torch.nn.GroupNorm,
        torch.nn.InstanceNorm1d,
        torch.nn.InstanceNorm2d,
        torch.nn.InstanceNorm3d,
        torch.nn.LayerNorm,
        torch.nn.LocalResponseNorm,
    )
    out: dict[str, tuple[float, float]] = {}
    memo: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or id(value) in memo:
                continue
            memo.add(id(value))
            lr, wd = base_lr, weight_decay
            if "backbone" in module_name:
                lr = lr * multiplier
            if "relative_position_bias_table" in param_name or "absolute_pos_embed" in param_name:
                wd = 0.0
            if isinstance(module, norm_types):
                wd = 0.0
            if isinstance(module, torch.nn.Embedding):
                wd = 0.0
            out[f"{module_name}.{param_name}" if module_name else param_name] = (lr, wd)
    return out


@pytest.mark.parametrize("family", ["maskformer", "mask2former", "fapn", "msfapn"])
def test_no_decay_and_backbone_lr_follow_train_net(family: str) -> None:
    from semask.engine.trainer import param_groups

    recipe = {"maskformer": "semask_swin_l_maskformer_ade20k"}.get(family, "semask_swin_l_mask2former_ade20k")
    optim: OptimConfig = get_recipe(recipe).optim
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_mask2former", family=family, num_classes=5, **M2F_TINY)
    ours = {
        name: (group["lr"], group["weight_decay"])
        for group in param_groups(model, optim)
        for name in group["param_names"]
    }
    official = official_param_groups(model, optim.lr, optim.weight_decay, optim.backbone_lr_mult)
    assert ours == official
    assert any(wd == 0.0 for _, wd in official.values()) and any(wd > 0 for _, wd in official.values())
