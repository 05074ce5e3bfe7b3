"""Model families; importing a family module registers its presets, weights and checkpoint converters."""

from . import (
    mask2former,  # noqa: F401
    mit,  # noqa: F401
    semask_fpn,  # noqa: F401  (registers presets)
)
from .base import BackboneLoadReport, CheckpointError, ModelConfig, SeMaskModel
from .io import load, read_checkpoint
from .outputs import SegmentationOutput
from .pretrained import PretrainedCfg, get_pretrained, list_pretrained
from .registry import build_model, create_model, get_config, list_models

__all__ = [
    "BackboneLoadReport",
    "CheckpointError",
    "ModelConfig",
    "PretrainedCfg",
    "SeMaskModel",
    "SegmentationOutput",
    "build_model",
    "create_model",
    "get_config",
    "get_pretrained",
    "list_models",
    "list_pretrained",
    "load",
    "read_checkpoint",
]
