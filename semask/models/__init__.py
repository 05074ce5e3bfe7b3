"""Model families; importing a family module registers its presets, weights and checkpoint converters."""

from . import (
    mask2former,  # noqa: F401
    mit,  # noqa: F401
    semask_fpn,  # noqa: F401  (registers presets)
)
from .base import ModelConfig, SeMaskModel
from .io import read_checkpoint
from .loader import create_model, load
from .outputs import SegmentationOutput, UnsegmentableImageError
from .pretrained import PretrainedCfg, get_pretrained, list_pretrained
from .registry import build_model, get_config, list_models
from .strict import BackboneLoadReport, CheckpointError

__all__ = [
    "BackboneLoadReport",
    "CheckpointError",
    "ModelConfig",
    "PretrainedCfg",
    "SeMaskModel",
    "SegmentationOutput",
    "UnsegmentableImageError",
    "build_model",
    "create_model",
    "get_config",
    "get_pretrained",
    "list_models",
    "list_pretrained",
    "load",
    "read_checkpoint",
]
