"""semask: SeMask (Semantically Masked Transformers) semantic segmentation in plain PyTorch."""

from .engine.evaluate import evaluate
from .engine.predict import predict, predict_folder
from .engine.trainer import train
from .hub import load_model, load_official_checkpoint, save_model
from .models import CheckpointError, SegmentationOutput, build_model, create_model, get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "SegmentationOutput",
    "build_model",
    "create_model",
    "evaluate",
    "get_config",
    "list_models",
    "load_model",
    "load_official_checkpoint",
    "predict",
    "predict_folder",
    "save_model",
    "train",
]
