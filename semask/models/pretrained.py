"""Released weights by name (timm's ``default_cfgs`` idea): ``"preset.tag"`` -> one :class:`PretrainedCfg`.

Each family module registers the checkpoints of its presets beside the model code. This module
only describes and finds them; fetching a file is the hub's job, installed here through
:func:`set_weights_resolver` so that ``semask.models`` never imports ``semask.hub``.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# ImageNet statistics in 0-255 RGB, the input normalisation of every released SeMask / Swin / SegFormer file.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# mmseg's ratio list: the ADE20K / COCO-Stuff training resize choices and the multi-scale test ratios.
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class PretrainedCfg:
    """One released weight file: where it lives, how to check it, and how the paper tested it.

    ``eval`` holds :class:`semask.config.EvalConfig` fields of the single-scale test protocol;
    ``ms_scales`` the multi-scale ratios (FPN / MiT) and ``ms_sizes`` the short-edge sizes of the
    mask-classification models' multi-scale test. ``kind="backbone"`` marks ImageNet encoder
    weights, loaded with ``create_model(..., backbone_weights=TAG)``.
    """

    preset: str
    tag: str
    file_name: str
    url: str | None = None
    gdrive_id: str | None = None
    hf_repo: str | None = None
    sha256: str | None = None
    kind: Literal["model", "backbone"] = "model"
    dataset: str | None = None
    num_classes: int | None = None
    crop_size: tuple[int, int] | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    ms_scales: tuple[float, ...] | None = None
    ms_sizes: tuple[int, ...] | None = None
    ms_max_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the input normalisation the weights were trained with
    std: tuple[float, float, float] = IMAGENET_STD
    paper_miou: tuple[float, float] | None = None
    official_config: str | None = None
    license: str = "Apache-2.0"

    def __post_init__(self) -> None:
        sources = [s for s in (self.url, self.gdrive_id, self.hf_repo) if s]
        if len(sources) != 1:
            raise ValueError(f"{self.name}: give exactly one of url, gdrive_id, hf_repo")

    @property
    def name(self) -> str:
        return f"{self.preset}.{self.tag}"

    @property
    def source(self) -> str:
        """Where a person would fetch the file by hand."""
        if self.url:
            return self.url
        if self.gdrive_id:
            return f"https://drive.google.com/file/d/{self.gdrive_id}/view"
        return f"https://huggingface.co/{self.hf_repo}/resolve/main/{self.file_name}"

    @property
    def cache_name(self) -> str:
        """The file's name in the cache: unique per entry (HF repos all call theirs the same)."""
        return f"{self.preset}.{self.tag}.{self.file_name}" if self.hf_repo else self.file_name


_PRETRAINED: dict[str, PretrainedCfg] = {}
Resolver = Callable[[PretrainedCfg], Path]
Loaded = Callable[[PretrainedCfg, Path], None]
_resolver: Resolver | None = None
_loaded: Loaded | None = None


def register_pretrained(*cfgs: PretrainedCfg) -> None:
    for cfg in cfgs:
        if cfg.name in _PRETRAINED:
            raise ValueError(f"pretrained weights {cfg.name!r} are already registered")
        _PRETRAINED[cfg.name] = cfg


def list_pretrained(pattern: str = "*", kind: str | None = None) -> list[str]:
    """``preset.tag`` names of the registered weights matching a shell-style ``pattern``."""
    return sorted(n for n, c in _PRETRAINED.items() if fnmatch.fnmatch(n, pattern) and (kind is None or c.kind == kind))


def is_pretrained_name(spec: str) -> bool:
    return spec in _PRETRAINED


def get_pretrained(name: str) -> PretrainedCfg:
    """The entry ``preset.tag``; an unknown name lists the tags its preset does have."""
    if name in _PRETRAINED:
        return _PRETRAINED[name]
    preset = name.rsplit(".", 1)[0]
    tags = [n for n in _PRETRAINED if n.rsplit(".", 1)[0] == preset]
    close = difflib.get_close_matches(name, list(_PRETRAINED), n=5, cutoff=0.6)
    if tags:
        hint = f"weights of {preset}: {tags}"
    else:
        hint = f"closest: {', '.join(close)}" if close else "`semask list-pretrained` lists them"
    raise KeyError(f"no pretrained weights {name!r}; {hint}")


def set_weights_resolver(resolver: Resolver, loaded: Loaded | None = None) -> None:
    """Install the function that turns an entry into a local file (the hub's cached download),
    and the one told when that file has loaded (the hub records its hash then, never before)."""
    global _resolver, _loaded
    _resolver, _loaded = resolver, loaded


@contextlib.contextmanager
def resolved_weights(cfg: PretrainedCfg) -> Iterator[Path]:
    """Local path of ``cfg``'s file, fetched into the cache first if needed; load it inside the
    ``with`` block. Only when the block ends without an error is the file taken as good (its hash
    recorded), so an incomplete copy that fails to load never becomes the reference."""
    if _resolver is None:
        raise RuntimeError("no weights downloader installed: import semask (semask.hub installs it)")
    path = _resolver(cfg)
    yield path
    if _loaded is not None:
        _loaded(cfg, path)
