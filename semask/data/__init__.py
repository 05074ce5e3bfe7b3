"""Datasets, mmseg-exact transforms, a synthetic context dataset, palettes and visualisation."""

from .datasets import (
    DATASETS,
    ADE20KDataset,
    CityscapesDataset,
    COCOStuff10kDataset,
    DataError,
    FolderDataset,
    SegmentationDataset,
    build_dataset,
    read_image,
    read_label,
    reduce_zero_label,
)
from .palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    default_palette,
)
from .synthetic import CONTEXT_CLASSES, CONTEXT_PALETTE, make_context_dataset
from .transforms import (
    ADE20K_RATIOS,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TestTransform,
    TrainTransform,
    Transform,
)
from .visualize import colorize, overlay, save_label_png

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_PALETTE",
    "ADE20K_RATIOS",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_PALETTE",
    "CONTEXT_CLASSES",
    "CONTEXT_PALETTE",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ADE20KDataset",
    "COCOStuff10kDataset",
    "CityscapesDataset",
    "DataError",
    "FolderDataset",
    "SegmentationDataset",
    "TestTransform",
    "TrainTransform",
    "Transform",
    "build_dataset",
    "colorize",
    "default_palette",
    "make_context_dataset",
    "overlay",
    "read_image",
    "read_label",
    "reduce_zero_label",
    "save_label_png",
]
