"""Experiment configuration: typed dataclasses read from YAML with `_base_` inheritance.

A run is fully described by one :class:`ExperimentConfig`. YAML files set it, ``a.b.c=value``
overrides adjust it from the command line, and the resolved result is written into the work
dir so a run can always be reproduced from its own folder.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the value."""


@dataclass
class ModelConfig:
    """Which model to build: a registered name plus overrides of its config fields.

    ``pretrained`` initialises the whole model from a semask model folder or an official
    checkpoint; ``backbone_weights`` initialises only the encoder from an ImageNet Swin checkpoint.
    """

    name: str = "semask_swin_t_fpn"
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    backbone_weights: str | None = None
    grad_checkpointing: bool = False  # recompute encoder stages in backward: less memory, ~1 more forward

    def __post_init__(self) -> None:
        """Check the name and every override against the preset now, not when training starts."""
        from .models import get_config

        try:
            get_config(self.name, **self.overrides)
        except (KeyError, TypeError) as exc:
            raise ValueError(str(exc).strip("'\"")) from None
        except ValueError as exc:
            raise ValueError(f"model.overrides {self.overrides} do not fit {self.name}: {exc}") from None


@dataclass
class DataConfig:
    """Dataset location and the training augmentation of spec section 6.

    ``ratios`` (a list to pick from, as on ADE20K) and ``ratio_range`` (uniform, as on
    Cityscapes) are alternatives: set exactly one. ``num_classes`` and ``reduce_zero_label``
    default to what the dataset type defines. ``kwargs`` go to ``build_dataset`` unchanged.
    """

    type: str = "ade20k"
    root: str = "data/ade/ADEChallengeData2016"
    train_split: str = "training"
    val_split: str | None = "validation"
    num_classes: int | None = None
    reduce_zero_label: bool | None = None
    crop_size: tuple[int, int] = (512, 512)
    scale: tuple[int, int] = (2048, 512)
    ratios: list[float] | None = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    ratio_range: tuple[float, float] | None = None
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    num_workers: int = 4
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.ratios is None) == (self.ratio_range is None):
            raise ValueError(
                f"set exactly one of ratios ({self.ratios!r}) and ratio_range ({self.ratio_range!r}); "
                "use null for the other"
            )


@dataclass
class OptimConfig:
    """AdamW with the official no-weight-decay keys (matched as substrings of parameter names)."""

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_keys: tuple[str, ...] = ("absolute_pos_embed", "relative_position_bias_table", "norm")
    backbone_lr_mult: float = 1.0


@dataclass
class ScheduleConfig:
    """Iteration-based linear warmup from ``warmup_ratio * lr``, then poly decay to ``min_lr``."""

    iters: int = 80000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    power: float = 1.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.iters < 1 or not 0 <= self.warmup_iters <= self.iters:
            raise ValueError(f"need iters >= 1 and 0 <= warmup_iters <= iters, got {self.iters}, {self.warmup_iters}")


@dataclass
class TrainConfig:
    """Loop settings. ``batch_size`` is per process; the total batch is it x world size x grad_accum."""

    batch_size: int = 8
    grad_accum: int = 1
    amp: bool = False
    amp_dtype: Literal["bf16", "fp16"] = "bf16"
    clip_grad: float | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    sync_bn: bool = True
    log_interval: int = 50
    eval_interval: int = 8000
    ckpt_interval: int = 8000
    keep_last: int = 3
    tensorboard: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "log_interval", "eval_interval", "ckpt_interval", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class EvalConfig:
    """Test protocol: resize to fit ``scale`` (keep ratio), whole or sliding-window inference.

    ``scales`` are the multi-scale ratios (``[1.0]`` = single scale); with ``flip`` each scale is
    also run mirrored and the softmax probabilities are averaged at the original size.
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scale: tuple[int, int] | None = (2048, 512)
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False

    def __post_init__(self) -> None:
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive ratios, got {self.scales}")


@dataclass
class ExperimentConfig:
    """Everything a training or evaluation run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) for YAML, JSON and checkpoints."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = "<dict>", overrides: list[str] | tuple[str, ...] = ()
    ) -> ExperimentConfig:
        """Build from a nested dict (e.g. the config stored in a checkpoint), then apply overrides."""
        raw = copy.deepcopy(data)
        for item in overrides:
            key, value = parse_override(item)
            _set_nested(raw, key, value)
        if overrides:
            source = f"{source} with overrides {list(overrides)}"
        return _build(cls, raw, source, "")


AUG_TEST_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML experiment file (following ``_base_`` files) and apply ``a.b=value`` overrides."""
    path = Path(path)
    return ExperimentConfig.from_dict(_read_with_bases(path, chain=()), str(path), overrides)


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b.c=value``; the value is parsed as YAML, so ``1e-4``, ``[64,64]`` and ``null`` work."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {item!r}: cannot parse value {text!r} as YAML ({problem})") from None
    return key, value


def dump_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (no ``_base_``), loadable again with :func:`load_config`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"_base_ cycle: {cycle}")
    if not path.is_file():
        where = f" (a _base_ of {chain[-1]})" if chain else ""
        raise ConfigError(f"config file {path} does not exist{where}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _merge(merged, _read_with_bases(path.parent / base, (*chain, resolved)))
    return _merge(merged, data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_nested(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys and value types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {[prefix + k for k in unknown]}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {names}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        kwargs[name] = _coerce(data[name], hints[name], source, prefix + name)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # cross-field checks in __post_init__
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {exc}") from None


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key} must be {expected}, got {value!r} ({type(value).__name__})")

    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key + ".")
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise fail(" or ".join(_describe(a) for a in args))
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, key)
            except ConfigError:
                pass
        raise fail(" or ".join(_describe(a) for a in args))
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-4" (no dot) as a string
                return float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail(_describe(tp))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(_describe(tp))
        return tuple(_coerce(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail(_describe(tp))
        return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    raise TypeError(f"config annotation {tp!r} of {key} is not supported")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} " + "/".join(_plural(a) for a in dict.fromkeys(args))
    if origin is list:
        return f"a list of {_plural(args[0])}"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, _describe(tp))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
