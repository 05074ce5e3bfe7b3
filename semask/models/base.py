"""Pieces every semask model family shares: the config and model base classes and their hooks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from .io import read_checkpoint, save
from .loader import load
from .palettes import default_palette
from .pretrained import IMAGENET_MEAN, IMAGENET_STD, MS_RATIOS, get_pretrained, is_pretrained_name, resolved_weights

logger = logging.getLogger(__name__)

#: The fields of a test protocol (:class:`semask.config.EvalConfig`; a test keeps the two in step).
PROTOCOL_FIELDS = ("mode", "crop_size", "stride", "scale", "scales", "flip", "sizes", "max_size", "window_batch")


#: One class cannot be segmented with a softmax; said the same way by the API and the YAML configs.
BINARY_HINT = (
    "{where}: 1 is not supported; binary segmentation uses num_classes: 2 (class 0 background, "
    "class 1 foreground) with the usual softmax, losses, metrics and argmax prediction"
)


@dataclass
class ModelConfig:
    """Fields common to every family: classes and the metadata needed to use a saved model.

    ``protocol`` is the test protocol the weights are scored with (:class:`semask.config.EvalConfig`
    fields, e.g. ``{"mode": "whole", "scale": [2048, 512]}``; None: unknown): ``semask.predict``,
    ``semask eval`` / ``predict`` / ``serve`` / ``explain`` and the ONNX metadata use it unless told
    otherwise, so one model gives one answer everywhere. The trainer records its ``eval`` section,
    registered weights their paper protocol. Subclasses add architecture fields and set
    ``model_type``, the key under which :func:`semask.models.registry.register_architecture` finds
    the model class.
    """

    model_type: ClassVar[str] = ""
    num_classes: int = 150
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN  # one value per input channel
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = 3  # input bands; != 3 adapts the patch embedding (see layers.adapt_input_conv)
    protocol: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.num_classes == 1:
            raise ValueError(BINARY_HINT.format(where="num_classes"))
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for num_classes={self.num_classes}")
        if self.palette is not None and len(self.palette) < self.num_classes:
            raise ValueError(f"palette has {len(self.palette)} colours for {self.num_classes} classes")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels or min(self.std) <= 0:
            raise ValueError(
                f"in_channels={self.in_channels} needs mean and std with one value per channel (std > 0), got "
                f"mean={list(self.mean)}, std={list(self.std)}"
            )
        if self.protocol is not None:
            unknown = sorted(set(self.protocol) - set(PROTOCOL_FIELDS))
            if unknown:
                raise ValueError(f"protocol has unknown fields {unknown}; a protocol has {list(PROTOCOL_FIELDS)}")
            self.protocol = json.loads(json.dumps(dict(self.protocol)))  # plain JSON values: equal after a save

    def names(self) -> list[str]:
        """One name per class: ``class_names``, or the ids ("0", "1", ...) for unnamed classes."""
        return list(self.class_names or [str(k) for k in range(self.num_classes)])

    def colours(self) -> list[list[int]]:
        """One ``[r, g, b]`` per class: ``palette``, or :func:`~semask.models.palettes.default_palette`'s."""
        return [list(map(int, c)) for c in (self.palette or default_palette(self.num_classes))[: self.num_classes]]

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"model_type"})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **overrides: Any) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no fields {unknown}; valid fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Config validation shared by the families: ``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def stage_indices(stages: Iterable[int], num_stages: int, name: str) -> tuple[int, ...]:
    """Sorted stage indices, each checked to lie in 0..num_stages - 1."""
    result = tuple(sorted(int(s) for s in stages))
    if any(not 0 <= s < num_stages for s in result):
        raise ValueError(f"{name} {result} outside stages 0..{num_stages - 1}")
    return result


def tuple_field(*values: Any) -> Any:
    """A dataclass default for an immutable sequence field."""
    return field(default_factory=lambda: tuple(values))


class SeMaskModel(nn.Module):
    """Base of every family: typed ``config``, loading and saving, and the trainer's hooks.

    Subclasses set ``config_class`` and build ``self.backbone`` (the encoder); their ``forward``
    takes ``(pixel_values, labels=None, output_semantic_logits=False, upsample_logits=True)`` and returns a
    :class:`~semask.models.outputs.SegmentationOutput`.
    """

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # the official recipes exempt parameters whose names contain these from weight decay
    no_weight_decay_keys: ClassVar[tuple[str, ...]] = ("absolute_pos_embed", "relative_position_bias_table", "norm")
    backbone: nn.Module

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    # -------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, spec: str | os.PathLike[str], **overrides: Any) -> SeMaskModel:
        """Any name ``preset.tag`` or file :func:`semask.models.loader.load` reads, checked to be a ``cls``."""
        model = load(spec, **overrides)
        if not isinstance(model, cls):
            raise TypeError(f"{spec} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Weights + config: a folder (``model.safetensors`` + ``config.json``), or one ``.safetensors`` file."""
        return save(self, path)

    def load_backbone_weights(self, weights: str | os.PathLike[str]) -> Any:
        """Initialise the encoder from ImageNet weights: a tag (``"imagenet"``), a name or a file.

        Returns (and logs) a report of what starts fresh; anything else missing is an error.
        """
        spec = str(weights)
        if not Path(spec).exists() and not is_pretrained_name(spec) and "/" not in spec and "." not in spec:
            spec = f"{self.imagenet_name()}.{spec}"  # a bare tag
        named = is_pretrained_name(spec)
        with resolved_weights(get_pretrained(spec)) if named else contextlib.nullcontext(Path(spec)) as path:
            if not path.exists():
                raise FileNotFoundError(f"backbone weights {weights} are neither a file nor a registered name")
            state_dict, _ = read_checkpoint(path)
            report = self.load_backbone_state(state_dict, source=str(path))
        logger.info("backbone initialised from %s: %s", weights, report)
        return report

    def load_backbone_state(self, state_dict: dict[str, Tensor], source: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no ImageNet loader")

    def imagenet_name(self) -> str:
        """Registry name of the encoder's ImageNet weights (e.g. ``swin_t``); families override."""
        raise NotImplementedError(f"{type(self).__name__} has no ImageNet weights by name")

    def probabilities(self, logits: Tensor) -> Tensor:
        """Class probabilities from ``forward``'s logits (B, K, H, W): what multi-scale and flip
        testing average, and what confidences are read from."""
        return logits.softmax(dim=1)

    def aug_test(self) -> dict[str, Any]:
        """The family's official multi-scale + flip test, as :class:`semask.config.EvalConfig` fields."""
        return {"scales": list(MS_RATIOS), "flip": True, "sizes": None}

    # -------------------------------------------------------------- trainer hooks
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters the official recipe trains without weight decay."""
        return {n for n, _ in self.named_parameters() if any(k in n for k in self.no_weight_decay_keys)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in training: the encoder recomputes each stage in backward."""
        self.backbone.set_grad_checkpointing(enable)  # type: ignore[operator]

    def freeze_encoder(self, freeze: bool = True) -> None:
        """Train only the decoder: the encoder's parameters get no gradients (none are computed)."""
        self.backbone.requires_grad_(not freeze)
