"""Model families; importing a family module registers its presets and checkpoint converter."""

from . import (
    mask2former,  # noqa: F401
    mit,  # noqa: F401
    semask_fpn,  # noqa: F401  (registers presets)
)
from .base import CheckpointError, ModelConfig
from .outputs import SegmentationOutput
from .registry import build_model, create_model, get_config, list_models

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "SegmentationOutput",
    "build_model",
    "create_model",
    "get_config",
    "list_models",
]
