"""The official training and test settings behind every packaged recipe, transcribed by hand from the
official config files (read with the code search; the file path is beside each value group).

Data only: ``tests/test_recipes_official.py`` checks every recipe against it field by field and
``scripts/recipe_table.py`` renders the recipe table of ``semask/configs/README.md`` from it.

mmseg semantics that matter when reading these files: ``samples_per_gpu`` is the batch of one GPU
(= our ``train.batch_size``, which is per process); ``ratio_range`` given as a list picks one ratio
(the SeMask fork's ``Resize.random_sample_ratio``), as a tuple draws uniformly in [lo, hi);
``RandomCrop(cat_max_ratio=1)`` never retries; ``Pad(pad_val=0, seg_pad_val=255)`` comes after
``Normalize``; ``custom_keys`` match parameter names by substring (``decay_mult=0``: no weight decay).
"""

from __future__ import annotations

from typing import Any

SEMASK = "Picsart-AI-Research/SeMask-Segmentation"
NVLABS = "NVlabs/SegFormer"
RATIO_LIST = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
SIZES = {"t": ("tiny", 7), "s": ("small", 7), "b": ("base", 12), "l": ("large", 12)}

# ---------------------------------------------------------------- Semantic-FPN (mmseg 0.11 fork)

# SeMask-FPN/configs/_base_/schedules/schedule_80k.py (mmseg 0.x; the fork's copy is not in the
# index, the values are mmseg's and Swin-Transformer-Semantic-Segmentation's): IterBasedRunner
# max_iters 80000, checkpoint_config interval 8000, evaluation interval 8000.
# Each leaf file then sets (with _delete_): optimizer AdamW betas (0.9, 0.999), custom_keys
# absolute_pos_embed / relative_position_bias_table / norm: decay_mult 0; lr_config poly, linear
# warmup 1500 iterations, power 1.0, min_lr 0.0, by_epoch False.
FPN_SCHEDULE: dict[str, Any] = dict(
    iters=80000,
    warmup_iters=1500,
    power=1.0,
    min_lr=0.0,
    eval_interval=8000,
    ckpt_interval=8000,
    betas=(0.9, 0.999),
    no_decay_keys=("absolute_pos_embed", "relative_position_bias_table", "norm"),
    head_lr_mult=1.0,
)
# Leaf-file optimiser and warmup per dataset (every semask_swin/ and swin/ file of that dataset;
# the two *_base_*_768x768_80k_cityscapes.py files use warmup_ratio 1e-6 instead of 1e-5).
FPN_OPTIM = {
    "ade20k": dict(lr=1e-4, weight_decay=1e-4, warmup_ratio=1e-6),
    "coco_stuff10k": dict(lr=1e-4, weight_decay=1e-4, warmup_ratio=1e-6),
    "cityscapes": dict(lr=1e-3, weight_decay=0.05, warmup_ratio=1e-5),
}
# SeMask-FPN/configs/_base_/models/semfpn_semask_swin.py and semfpn_swin.py (+ each leaf's backbone):
# drop_path_rate 0.3, decode_head channels 256, dropout_ratio 0.1, cate_w 0.4 (SeMask),
# num_sem_blocks [1, 1, 1, 1], sem_window_size = window_size, test_cfg mode whole.
FPN_MODEL: dict[str, Any] = dict(drop_path_rate=0.3, decoder_channels=256, decoder_dropout=0.1)
SEMASK_MODEL: dict[str, Any] = dict(semantic_loss_weight=0.4, num_semantic_blocks=(1, 1, 1, 1))
BACKBONES = {  # embed_dim, depths, num_heads, window_size of the leaf files
    "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7),
    "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12),
}


def _pipeline(
    img_scale: tuple[int, int], crop: int, ratios: Any, cat_max_ratio: float, reduce_zero_label: bool, workers: int
) -> dict[str, Any]:
    """One dataset base file: train pipeline, test resize (MultiScaleFlipAug img_scale, flip False)."""
    list_pick = isinstance(ratios, list)
    return dict(
        img_scale=img_scale,
        ratios=ratios if list_pick else None,
        ratio_range=None if list_pick else ratios,
        crop=(crop, crop),
        cat_max_ratio=cat_max_ratio,
        flip_prob=0.5,
        photometric=True,
        pad_val=0,
        seg_pad_val=255,
        reduce_zero_label=reduce_zero_label,
        workers_per_gpu=workers,
        test_scale=img_scale,
        test_mode="whole",
    )


D = "SeMask-FPN/configs/_base_/datasets/"
DATASET_FILES: dict[str, dict[str, Any]] = {
    D + "semask/ade20k.py": _pipeline((2048, 512), 512, RATIO_LIST, 1, True, 4),
    D + "semask/ade20k_tiny.py": _pipeline((2048, 512), 512, RATIO_LIST, 0.75, True, 4),
    D + "semask/ade20k_640x640.py": _pipeline((2560, 640), 640, RATIO_LIST, 1, True, 4),
    D + "semask/cityscapes_768x768.py": _pipeline((2048, 1024), 768, (0.5, 2.0), 0.75, False, 2),
    D + "semask/coco_stuff10k.py": _pipeline((2048, 512), 512, RATIO_LIST, 1, True, 4),
    D + "semask/coco_stuff10k_640x640.py": _pipeline((2560, 640), 640, RATIO_LIST, 1, True, 4),
    D + "swin/ade20k.py": _pipeline((2048, 512), 512, (0.5, 2.0), 0.75, True, 4),
    D + "swin/ade20k_640x640.py": _pipeline((2560, 640), 640, (0.5, 2.0), 0.75, True, 4),
    # not in the index: the spec's values, equal to semask/cityscapes_768x768.py
    D + "swin/cityscapes_768x768.py": _pipeline((2048, 1024), 768, (0.5, 2.0), 0.75, False, 2),
    D + "swin/coco_stuff10k.py": _pipeline((2048, 512), 512, (0.5, 2.0), 0.75, True, 4),
    D + "swin/coco_stuff10k_640x640.py": _pipeline((2560, 640), 640, (0.5, 2.0), 0.75, True, 4),
}
NUM_CLASSES = {"ade20k": 150, "cityscapes": 19, "coco_stuff10k": 171}

# samples_per_gpu of each leaf file, and GPUs: SeMask-FPN/README.md ("ADE20K: 2 GPUs and 8
# imgs/gpu. For Large, 4 GPUs with 4 imgs/gpu. Cityscapes: 2 GPUs and 4 imgs/gpu. For Large,
# 4 GPUs with 2 imgs/gpu. COCO-Stuff 10k: 4 GPUs and 4 imgs/gpu. For Base and Large, 8 GPUs with
# 2 imgs/gpu"). The README gives no counts for the Swin baselines: the SeMask count of the dataset
# is assumed (COCO-Stuff: 16 images per step, as the files' comment "2 GPUs with 8 images per GPU").
FPN_BATCH = {  # (prefix, dataset) -> {size: (GPUs, samples_per_gpu)}
    ("semask_swin", "ade20k"): {"t": (2, 8), "s": (2, 8), "b": (2, 8), "l": (4, 4)},
    ("semask_swin", "cityscapes"): {"t": (2, 4), "s": (2, 4), "b": (2, 4), "l": (4, 2)},
    ("semask_swin", "coco_stuff10k"): {"t": (4, 4), "s": (4, 4), "b": (8, 2), "l": (8, 2)},
    ("swin", "ade20k"): {"t": (2, 8), "s": (2, 8), "b": (2, 8), "l": (4, 4)},
    ("swin", "cityscapes"): {"t": (2, 4), "s": (2, 4), "b": (2, 4), "l": (4, 2)},
    ("swin", "coco_stuff10k"): {"t": (2, 8), "s": (2, 8), "b": (2, 8), "l": (4, 4)},
}
# decode_head sampler=dict(type='OHEMPixelSampler', min_kept=100000) (thresh defaults to None):
# semfpn_semask_swin_large_patch4_window12_640x640_80k_ade20k.py and all four semask_swin/coco_stuff10k files.
OHEM = dict(thresh=None, min_kept=100000)
# Paper Table 2 (ADE20K, Cityscapes), SeMask-FPN/README.md (SeMask on COCO-Stuff-10k): s.s. / m.s.
FPN_PAPER = {
    ("semask_swin", "ade20k"): {"t": (42.06, 43.36), "s": (45.92, 47.63), "b": (49.35, 50.98), "l": (51.89, 53.52)},
    ("swin", "ade20k"): {"t": (41.48, 42.89), "s": (45.20, 46.96), "b": (48.80, 50.28), "l": (50.85, 52.95)},
    ("semask_swin", "cityscapes"): {"t": (74.92, 76.56), "s": (77.13, 79.14), "b": (77.70, 79.73), "l": (78.53, 80.39)},
    ("swin", "cityscapes"): {"t": (71.81, 73.74), "s": (75.19, 77.68), "b": (76.54, 79.05), "l": (78.03, 79.53)},
    ("semask_swin", "coco_stuff10k"): {
        "t": (37.53, 38.88),
        "s": (40.72, 42.27),
        "b": (44.63, 46.30),
        "l": (47.47, 48.54),
    },
}


def _fpn_recipe(prefix: str, size: str, dataset: str) -> dict[str, Any]:
    semask = prefix == "semask_swin"
    word, window = SIZES[size]
    crop = 768 if dataset == "cityscapes" else (640 if size == "l" else 512)
    suffix = {"ade20k": "ade20k", "cityscapes": "cityscapes", "coco_stuff10k": "coco10k"}[dataset]
    family = "semask" if semask else "swin"
    leaf = f"SeMask-FPN/configs/{prefix}/{dataset}/semfpn_{prefix}_{word}_patch4_window{window}_{crop}x{crop}_80k_{suffix}.py"
    if dataset == "ade20k":
        base = "ade20k_640x640.py" if size == "l" else ("ade20k_tiny.py" if semask and size == "t" else "ade20k.py")
    elif dataset == "cityscapes":
        base = "cityscapes_768x768.py"
    else:
        base = "coco_stuff10k_640x640.py" if size == "l" else "coco_stuff10k.py"
    dataset_file = f"{D}{family}/{base}"
    gpus, per_gpu = FPN_BATCH[(prefix, dataset)][size]
    optim = dict(FPN_OPTIM[dataset])
    if dataset == "cityscapes" and size == "b":
        optim["warmup_ratio"] = 1e-6
    model = {**FPN_MODEL, **BACKBONES[size], **(SEMASK_MODEL if semask else {})}
    if semask:
        model["semantic_window_size"] = window
    return dict(
        model=f"{prefix}_{size}_fpn",
        repo=SEMASK,
        file=leaf,
        dataset_file=dataset_file,
        dataset=dataset,
        num_classes=NUM_CLASSES[dataset],
        gpus=gpus,
        samples_per_gpu=per_gpu,
        **FPN_SCHEDULE,
        **optim,
        **DATASET_FILES[dataset_file],
        ohem=OHEM if semask and (dataset == "coco_stuff10k" or (dataset == "ade20k" and size == "l")) else None,
        model_settings=model,
        paper=FPN_PAPER.get((prefix, dataset), {}).get(size),
    )


# ---------------------------------------------------------------- MiT / SegFormer (no SeMask code)

# NVlabs/SegFormer local_configs/segformer/B{0..5}/*.160k.py: optimizer AdamW lr 6e-5, betas
# (0.9, 0.999), weight_decay 0.01, custom_keys pos_block / norm: decay_mult 0, head: lr_mult 10;
# lr_config poly, warmup linear 1500, warmup_ratio 1e-6, power 1.0, min_lr 0.0;
# _base_/schedules/schedule_160k_8gpu_adamw.py: max_iters 160000, checkpoint_config interval 4000.
MIT_SCHEDULE: dict[str, Any] = dict(
    iters=160000,
    warmup_iters=1500,
    warmup_ratio=1e-6,
    power=1.0,
    min_lr=0.0,
    ckpt_interval=4000,
    lr=6e-5,
    weight_decay=0.01,
    betas=(0.9, 0.999),
    no_decay_keys=("norm",),  # "pos_block" too, which no MiT parameter contains
    head_lr_mult=10.0,
)
# _base_/datasets/ade20k_repeat.py (B0-B4) and the B5 640 file's own data section:
# Resize (2048, 512) / (2048, 640), ratio_range (0.5, 2.0); RandomCrop cat_max_ratio 0.75; flip 0.5;
# PhotoMetricDistortion; Pad 0 / 255; workers_per_gpu 4; leaf: samples_per_gpu 2, evaluation 16000.
# _base_/datasets/cityscapes_1024x1024_repeat.py: Resize (2048, 1024), ratio_range (0.5, 2.0),
# crop 1024, cat_max_ratio 0.75; workers_per_gpu 2; leaf: samples_per_gpu 1, evaluation 4000,
# test_cfg slide crop (1024, 1024) stride (768, 768). All: 8 GPUs (the schedule's name: 8gpu).
MIT_DATA = {
    "ade20k": {
        **_pipeline((2048, 512), 512, (0.5, 2.0), 0.75, True, 4),
        "samples_per_gpu": 2,
        "eval_interval": 16000,
        "dataset_file": "local_configs/_base_/datasets/ade20k_repeat.py",
    },
    "ade20k_640": {
        **_pipeline((2048, 640), 640, (0.5, 2.0), 0.75, True, 4),
        "samples_per_gpu": 2,
        "eval_interval": 16000,
        "dataset_file": "local_configs/segformer/B5/segformer.b5.640x640.ade.160k.py",
    },
    "cityscapes": {
        **_pipeline((2048, 1024), 1024, (0.5, 2.0), 0.75, False, 2),
        "samples_per_gpu": 1,
        "eval_interval": 4000,
        "dataset_file": "local_configs/_base_/datasets/cityscapes_1024x1024_repeat.py",
        "test_mode": "slide",
        "test_crop": (1024, 1024),
        "test_stride": (768, 768),
    },
}
MIT_DEPTHS = {0: (2, 2, 2, 2), 1: (2, 2, 2, 2), 2: (3, 4, 6, 3), 3: (3, 4, 18, 3), 4: (3, 8, 27, 3), 5: (3, 6, 40, 3)}
# Paper Table 6 (ADE20K 512x512): SegFormer MiT-B4 48.46 / 49.76 (mmseg's numbers), SeMask MiT-B4 50.01 / 51.07.
MIT_PAPER = {("mit", 4): (48.46, 49.76), ("semask_mit", 4): (50.01, 51.07)}
# Where a MiT recipe differs from the NVlabs file on purpose (stated in each recipe's comment).
MIT_DEVIATIONS = (
    "decode head: mmseg's SegFormerHead (E = 256) instead of NVlabs' all-MLP SegFormerHead (embed_dim 256 for B0/B1, "
    "768 for B2-B5): the model the paper's Table 6 baseline numbers (mmseg) come from",
    "ADE20K test: the plain keep-ratio resize instead of NVlabs' AlignedResize (sides rounded up to multiples of 32): "
    "the mmseg protocol of the same numbers",
)


def _mit_recipe(prefix: str, b: int, dataset: str) -> dict[str, Any]:
    data = MIT_DATA["ade20k_640" if (dataset == "ade20k" and b == 5) else dataset]
    crop = data["crop"][0]
    leaf = (
        f"local_configs/segformer/B{b}/segformer.b{b}.{crop}x{crop}.{'ade' if dataset == 'ade20k' else 'city'}.160k.py"
    )
    settings: dict[str, Any] = dict(drop_path_rate=0.1, depths=MIT_DEPTHS[b])  # mit_b* class defaults
    if prefix == "semask_mit":
        settings.update(semantic_loss_weight=0.4, num_semantic_blocks=(1, 1, 1, 1))
    return dict(
        model=f"{prefix}_b{b}",
        repo=NVLABS,
        file=leaf,
        dataset=dataset,
        num_classes=NUM_CLASSES[dataset],
        gpus=8,
        **MIT_SCHEDULE,
        **data,
        ohem=None,
        model_settings=settings,
        paper=MIT_PAPER.get((prefix, b)) if dataset == "ade20k" else None,
    )


# ---------------------------------------------------------------- every mmseg-family recipe

OFFICIAL: dict[str, dict[str, Any]] = {}
for _prefix in ("semask_swin", "swin"):
    for _size in SIZES:
        for _dataset in NUM_CLASSES:
            OFFICIAL[f"{_prefix}_{_size}_fpn_{_dataset}"] = _fpn_recipe(_prefix, _size, _dataset)
for _prefix in ("mit", "semask_mit"):
    for _b in range(6):
        for _dataset in ("ade20k", "cityscapes"):
            OFFICIAL[f"{_prefix}_b{_b}_{_dataset}"] = _mit_recipe(_prefix, _b, _dataset)

# Where an official file is itself inconsistent: the recipe keeps the dataset's truth (and says so).
INCONSISTENT = {
    "swin_b_fpn_cityscapes": "decode_head num_classes=150 in the 19-class Cityscapes file",
    **{
        f"semask_swin_{s}_fpn_coco_stuff10k": "backbone num_cls left at the model base's 150, head num_classes 171"
        for s in SIZES
    },
}

# The paper's ablations (Tables 3-5): no config was released; each trains with the recipe of the
# model it modifies. recipe -> (model, base recipe, table, s.s. mIoU).
ABLATIONS = {
    "trans_swin_t_fpn_ade20k": ("trans_swin_t_fpn", "semask_swin_t_fpn_ade20k", "Table 3", 41.42),
    "semask_swin_t_fpn_no_lambda_ade20k": ("semask_swin_t_fpn_no_lambda", "semask_swin_t_fpn_ade20k", "Table 4", 41.11),
    "semask_swin_s_fpn_no_lambda_ade20k": ("semask_swin_s_fpn_no_lambda", "semask_swin_s_fpn_ade20k", "Table 4", 45.00),
    "semask_swin_t_fpn_no_prior_loss_ade20k": (
        "semask_swin_t_fpn_no_prior_loss",
        "semask_swin_t_fpn_ade20k",
        "Table 5",
        41.72,
    ),
    "swin_t_fpn_aux_ade20k": ("swin_t_fpn_aux", "swin_t_fpn_ade20k", "Table 5", 41.52),
    "query_swin_t_fpn_ade20k": ("query_swin_t_fpn", "swin_t_fpn_ade20k", "Table 5", 40.81),
}

# The detectron2 family's recipes (audited field by field in tests/test_recipes_detectron2.py); here
# only what the recipe table shows: the official file and the total batch (IMS_PER_BATCH 16, on the
# 4 GPUs of SeMask-FAPN/SeMask-Mask2Former/train.sh: 16 / train.batch_size GPUs).
MASK2FORMER = {
    "semask_swin_l_maskformer_ade20k": "SeMask-MaskFormer/configs/ade20k-150/semask_swin/"
    "maskformer_semask_swin_large_IN21k_384_bs16_160k_res640.yaml",
    "semask_swin_l_mask2former_ade20k": "SeMask-Mask2Former/configs/ade20k/semantic-segmentation/semask_swin/"
    "maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.yaml",
    "semask_swin_l_mask2former_cityscapes": "SeMask-Mask2Former/configs/cityscapes/semantic-segmentation/semask_swin/"
    "maskformer2_semask_swin_large_IN21k_384_bs16_90k.yaml",
    "semask_swin_l_mask2former_fapn_ade20k": "SeMask-FAPN/SeMask-Mask2Former/configs/ade20k/semantic-segmentation/"
    "semask_swin/fapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.yaml",
    "semask_swin_l_mask2former_msfapn_ade20k": "SeMask-FAPN/SeMask-Mask2Former/configs/ade20k/semantic-segmentation/"
    "semask_swin/msfapn_maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640 copy.yaml",
}
MASK2FORMER_TOTAL_BATCH = 16
