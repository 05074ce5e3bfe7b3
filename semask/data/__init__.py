"""Datasets, the mmseg- and detectron2-exact data paths (:func:`pipeline_for` picks one per model
family), a synthetic context dataset, palettes and visualisation."""

from ..models.palettes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    COCO_STUFF_CLASSES,
    COCO_STUFF_PALETTE,
    default_palette,
)
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
from .detectron2 import ShortEdgeTestTransform, ShortEdgeTrainTransform
from .pipelines import DataPipeline, Detectron2Pipeline, MMSegPipeline, pipeline_for
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
    "DataPipeline",
    "Detectron2Pipeline",
    "FolderDataset",
    "MMSegPipeline",
    "SegmentationDataset",
    "ShortEdgeTestTransform",
    "ShortEdgeTrainTransform",
    "TestTransform",
    "TrainTransform",
    "Transform",
    "build_dataset",
    "colorize",
    "default_palette",
    "make_context_dataset",
    "overlay",
    "pipeline_for",
    "read_image",
    "read_label",
    "reduce_zero_label",
    "save_label_png",
]
