"""Pieces every semask model family shares: the config base, strict weight loading."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

# ImageNet statistics in 0-255 RGB, used by every official SeMask / Swin / SegFormer recipe.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every offending key."""


@dataclass
class ModelConfig:
    """Fields common to every family: classes and the metadata needed to use a saved model.

    Subclasses add architecture fields and set ``model_type``, the key under which
    :func:`semask.models.registry.register_architecture` finds the model class.
    """

    model_type: ClassVar[str] = ""
    num_classes: int = 150
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for num_classes={self.num_classes}")
        if self.palette is not None and len(self.palette) < self.num_classes:
            raise ValueError(f"palette has {len(self.palette)} colours for {self.num_classes} classes")
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

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


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail with a message naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mis_shaped:
        raise CheckpointError(format_key_report(source, missing, unexpected, mis_shaped))
    model.load_state_dict(state_dict, strict=True)


def format_key_report(source: str, missing: list[str], unexpected: list[str], mis_shaped: list[str]) -> str:
    lines = [f"{source} does not match the model:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            shown = "\n    ".join(keys[:25]) + (f"\n    ... and {len(keys) - 25} more" if len(keys) > 25 else "")
            lines.append(f"  {len(keys)} {title} keys:\n    {shown}")
    return "\n".join(lines)
