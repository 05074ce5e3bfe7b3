"""One loader for every way a SeMask model is stored (:func:`load`), and the factory by name
(:func:`create_model`).

Reads (never unpickling code): registered names ``preset.tag``; our model folders and
``.safetensors`` files; our training checkpoints; official mmseg 0.x ``.pth`` files (with their
``meta``, ``optimizer`` and numpy scalars), detectron2 ``.pth`` and model-zoo ``.pkl`` files;
Hugging Face SegFormer folders and bare state dicts (transformers 4 and 5 key names).

The loader imports no family: each family registers its architectures, presets, released weights
and official key layouts (:mod:`.registry`, :mod:`.pretrained`) when :mod:`semask.models` is
imported, so imports inside the package run one way (:mod:`.strict` and :mod:`.io` at the bottom,
then the registries, this loader, :mod:`.base`, the shared layers and the families).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .io import CONFIG_METADATA_KEY, CONFIG_NAME, WEIGHTS_NAME, read_checkpoint, read_json, read_safetensors
from .palettes import DATASET_CLASSES
from .pretrained import PretrainedCfg, get_pretrained, is_pretrained_name, resolved_weights
from .registry import build_model, config_class, config_reader, converters, get_config
from .reset import fit_classes
from .strict import CheckpointError, load_state_dict_strict

logger = logging.getLogger(__name__)

#: What a model's classes are; the loader sets them after loading the weights as they are.
CLASS_FIELDS = ("num_classes", "class_names", "palette")

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".pkl", ".safetensors")
FORMATS = (
    "a registered name preset.tag (semask.list_pretrained())",
    "a semask model folder (config.json + model.safetensors) or .safetensors file",
    "a semask training checkpoint (checkpoints/*.pth)",
    "an official SeMask / mmseg .pth (state_dict + meta)",
    "a detectron2 .pth ({'model': ...}) or model-zoo .pkl (numpy arrays)",
    "a Hugging Face SegFormer folder (config.json + model.safetensors / pytorch_model.bin) or state dict",
)


# ----------------------------------------------------------------------------- building models
def config_from_dict(data: dict[str, Any]) -> Any:
    data = dict(data)
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise CheckpointError("config has no 'model_type'")
    return config_class(model_type).from_dict(data)


def model_from_config_and_state(config: dict[str, Any], state_dict: dict[str, Tensor], source: str) -> nn.Module:
    """Our own format: the config says the architecture, the weights must fit it exactly."""
    model = build_model(config_from_dict(config))
    load_state_dict_strict(model, state_dict, source)
    return model


def convert_official(state_dict: dict[str, Tensor], meta: dict[str, Any], source: str, **overrides: Any) -> nn.Module:
    """Build the model an official (mmseg / detectron2 / NVlabs / HF) state dict describes."""
    for _family, detect, convert in converters():
        if detect(state_dict):
            return convert(state_dict, meta, source=source, **overrides)
    sample = ", ".join(sorted(state_dict)[:5])
    raise CheckpointError(_unknown(source, f"a state dict whose first keys are {sample}"))


def _unknown(source: str, looked_like: str) -> str:
    tried = "\n  ".join(FORMATS)
    return f"{source} is none of the formats semask reads:\n  {tried}\nIt looked like {looked_like}."


def _load_folder(path: Path, overrides: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(_unknown(str(path), f"a folder without {CONFIG_NAME} (holding {found})"))
    config = read_json(config_file)
    foreign = config_reader(config.get("model_type"))
    if foreign is not None:  # another library's folder, e.g. Hugging Face SegFormer (a family registers it)
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(
                f"{path} has a {config['model_type']} config.json but no model.safetensors or pytorch_model.bin"
            )
        state_dict, meta = read_checkpoint(weights)
        values = {**foreign(config, str(config_file)), **overrides}
        return convert_official(state_dict, meta, str(weights), **values), meta
    if "model_type" not in config:
        raise CheckpointError(f"{config_file} has no 'model_type': neither a semask nor a Hugging Face config")
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; is {path} a folder written by save_pretrained?")
    _refuse_overrides(overrides, path)
    state_dict, meta = read_safetensors(weights)
    return model_from_config_and_state(config, state_dict, str(path)), meta


def _refuse_overrides(overrides: dict[str, Any], path: Path) -> None:
    if overrides:
        raise ValueError(f"{sorted(overrides)} cannot change the saved model {path}: its config.json decides")


def _load_file(path: Path, overrides: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    state_dict, meta = read_checkpoint(path)
    if CONFIG_METADATA_KEY in meta:  # our single-file .safetensors
        _refuse_overrides(overrides, path)
        return model_from_config_and_state(json.loads(meta[CONFIG_METADATA_KEY]), state_dict, str(path)), meta
    if "model_config" in meta:  # our training checkpoint
        _refuse_overrides(overrides, path)
        return model_from_config_and_state(meta["model_config"], state_dict, str(path)), meta
    return convert_official(state_dict, meta, str(path), **overrides), meta


def pretrained_overrides(cfg: PretrainedCfg) -> dict[str, Any]:
    """The preset's settings for the entry's classes: they decide what the weights cannot show
    (semantic window, which stages attend globally, heads). Class names come from the file."""
    values = get_config(cfg.preset, num_classes=cfg.num_classes, mean=cfg.mean, std=cfg.std).to_dict()
    for key in ("model_type", "class_names", "palette", "protocol"):
        values.pop(key)
    return values


def load(spec: str | os.PathLike[str], *, reset_classes: bool = False, **overrides: Any) -> nn.Module:
    """A model, in eval mode, from a name ``preset.tag`` or any file or folder in :data:`FORMATS`.

    ``overrides`` (config fields) settle what official weights cannot show; our own formats
    carry their config and refuse them. ``num_classes`` / ``class_names`` / ``palette`` ask for
    classes: the same number renames them; another number is an error unless ``reset_classes``,
    which loads every tensor that does not depend on the classes, starts the class-specific ones
    fresh and copies the rows of classes whose names the weights know
    (:func:`semask.models.reset.reset_classes`; the report is logged).
    """
    model, meta = load_with_meta(spec, reset_classes=reset_classes, **overrides)
    if meta.get("class_reset") is not None:
        logger.info("%s", meta["class_reset"])
    return model


def load_with_meta(
    spec: str | os.PathLike[str], *, reset_classes: bool = False, **overrides: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load`, plus what the file says besides the weights: an mmseg ``meta``, a training
    checkpoint's ``config`` and ``model_config``, ``pretrained_cfg`` for a registered name, and
    ``class_reset`` (the :class:`~semask.models.reset.ClassResetReport`, or None)."""
    wanted = {k: overrides.pop(k) for k in CLASS_FIELDS if k in overrides}
    model, meta = _load_as_stored(spec, overrides)
    model, report = fit_classes(model, wanted, reset_classes, os.fspath(spec))
    return model.eval(), {**meta, "class_reset": report}


def _load_as_stored(spec: str | os.PathLike[str], overrides: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The model ``spec`` holds, with the classes of its weights."""
    if is_pretrained_name(os.fspath(spec)) and not Path(spec).exists():
        cfg = get_pretrained(os.fspath(spec))
        if cfg.kind != "model":
            raise ValueError(f"{spec} are encoder weights: use create_model(..., backbone_weights={cfg.tag!r})")
        values = {**pretrained_overrides(cfg), **overrides}
        with resolved_weights(cfg) as path:
            model, meta = _load_folder(path, values) if path.is_dir() else _load_file(path, values)
        _name_dataset_classes(model, cfg)
        if model.config.protocol is None and cfg.eval:  # type: ignore[union-attr]  # the paper's test
            model.config = dataclasses.replace(model.config, protocol=dict(cfg.eval))  # type: ignore[union-attr]
        return model, {**meta, "pretrained_cfg": cfg}
    path = Path(spec)
    if not path.exists():
        hint = ""
        if "/" not in os.fspath(spec) and path.suffix not in WEIGHT_SUFFIXES:
            try:
                get_pretrained(os.fspath(spec))
            except KeyError as err:
                hint = f"; as a name: {err.args[0]}"
        raise FileNotFoundError(f"model {spec} is neither a registered name nor an existing file or folder{hint}")
    return _load_folder(path, overrides) if path.is_dir() else _load_file(path, overrides)


def _name_dataset_classes(model: nn.Module, cfg: PretrainedCfg) -> None:
    """Class names and colours of the entry's dataset for files that carry none (detectron2)."""
    config = model.config  # type: ignore[union-attr]
    names, palette = DATASET_CLASSES.get(cfg.dataset or "", (None, None))
    if config.class_names is None and names is not None and len(names) == config.num_classes:
        config.class_names = list(names)
        config.palette = config.palette or [list(c) for c in palette]


def create_model(
    name: str,
    *,
    pretrained: str | None = None,
    backbone_weights: str | None = None,
    reset_classes: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build preset ``name`` (timm style).

    ``pretrained`` is a tag of the preset's released weights (``"ade20k"``; see
    :func:`semask.list_pretrained`): downloaded once, verified and loaded strictly; with
    ``num_classes`` other than the weights' and ``reset_classes=True`` the class-specific
    tensors start fresh (:func:`load`). ``backbone_weights`` initialises only the encoder: a tag
    (``"imagenet"``) or a file.
    """
    if pretrained is not None:
        if backbone_weights is not None:
            raise ValueError("pass pretrained (the whole model) or backbone_weights (the encoder), not both")
        return load(f"{name}.{pretrained}", reset_classes=reset_classes, **overrides)
    if reset_classes:
        raise ValueError("reset_classes=True applies to pretrained weights: pass pretrained=TAG as well")
    model = build_model(get_config(name, **overrides))
    if backbone_weights is not None:
        model.load_backbone_weights(backbone_weights)  # type: ignore[operator]
    return model
