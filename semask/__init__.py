"""semask: SeMask (Semantically Masked Transformers) semantic segmentation in plain PyTorch."""

from . import losses, metrics
from .config import get_recipe, load_config, recipe_names
from .engine.evaluate import evaluate
from .engine.predict import Prediction, predict, predict_folder
from .engine.trainer import train
from .explain import Explanation, explain
from .hub import download
from .models import (
    CheckpointError,
    SegmentationOutput,
    SeMaskModel,
    build_model,
    create_model,
    get_config,
    get_pretrained,
    list_models,
    list_pretrained,
    load,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Explanation",
    "Prediction",
    "SeMaskModel",
    "SegmentationOutput",
    "build_model",
    "create_model",
    "download",
    "evaluate",
    "explain",
    "get_config",
    "get_pretrained",
    "get_recipe",
    "list_models",
    "list_pretrained",
    "load",
    "load_config",
    "losses",
    "metrics",
    "predict",
    "predict_folder",
    "recipe_names",
    "train",
]
