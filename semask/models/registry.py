"""Model presets by name, timm style: ``create_model(name, **overrides)``.

An *architecture* is a model class whose ``config_class`` is a :class:`ModelConfig`
subclass; a *preset* is a name bound to an architecture and a set of config values.
Families register both when :mod:`semask.models` is imported, together with the converters of
their official key layouts and readers of other libraries' ``config.json``; the loader finds
them here, so nothing in the package imports a family to load it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

_ARCHITECTURES: dict[str, type[nn.Module]] = {}
_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}


def register_architecture(model_cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``model_cls`` buildable from its config's ``model_type``."""
    model_type = model_cls.config_class.model_type  # type: ignore[attr-defined]
    _ARCHITECTURES[model_type] = model_cls
    return model_cls


def register_preset(name: str, model_type: str, **config: Any) -> None:
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _PRESETS[name] = (model_type, config)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered presets matching a shell-style ``pattern``."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def config_class(model_type: str) -> Any:
    """The config dataclass (a :class:`semask.models.base.ModelConfig` subclass) of ``model_type``."""
    if model_type not in _ARCHITECTURES:
        raise KeyError(f"unknown model_type {model_type!r}; known: {sorted(_ARCHITECTURES)}")
    return _ARCHITECTURES[model_type].config_class  # type: ignore[attr-defined]


def get_config(name: str, **overrides: Any) -> Any:
    """The config of preset ``name`` with ``overrides`` applied (validated by the dataclass)."""
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, list(_PRESETS), n=5, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "`semask list-models` lists them"
        raise KeyError(f"unknown model {name!r}; {hint}")
    model_type, values = _PRESETS[name]
    cls = config_class(model_type)
    known = {f for f in cls.__dataclass_fields__}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{name} has no settings {unknown}; valid settings: {sorted(known)}")
    return cls(**{**values, **overrides})


def build_model(config: Any) -> nn.Module:
    """Instantiate the architecture ``config`` describes (random initialisation)."""
    return _ARCHITECTURES[config.model_type](config)


# Official-checkpoint converters: (detector, converter) pairs tried in order.
Detector = Callable[[dict[str, Any]], bool]
Converter = Callable[..., nn.Module]
_CONVERTERS: list[tuple[str, Detector, Converter]] = []


def register_converter(family: str, detect: Detector, convert: Converter) -> None:
    """Teach :func:`semask.load` a family's official key layout."""
    _CONVERTERS.append((family, detect, convert))


def converters() -> list[tuple[str, Detector, Converter]]:
    return list(_CONVERTERS)


# Readers of another library's config.json (by its model_type) -> our config fields.
ConfigReader = Callable[[dict[str, Any], str], dict[str, Any]]
_CONFIG_READERS: dict[str, ConfigReader] = {}


def register_config_reader(model_type: str, reader: ConfigReader) -> None:
    """Teach :func:`semask.load` folders whose ``config.json`` has another library's ``model_type``."""
    _CONFIG_READERS[model_type] = reader


def config_reader(model_type: Any) -> ConfigReader | None:
    return _CONFIG_READERS.get(model_type) if isinstance(model_type, str) else None
