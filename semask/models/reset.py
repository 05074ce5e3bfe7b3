"""Released weights on other classes: every tensor that does not depend on the class count is
loaded, the class-specific ones start fresh (:func:`reset_classes`).

Which tensors are class-specific is not listed per family: the family is built a second time
for K + 1 classes on the ``meta`` device (no memory, no compute) and every tensor whose shape
changes is class-specific, along the one axis that grew. That finds each family's decoder
classifier (``conv_seg`` / ``linear_pred``), the semantic layers' K-channel query and key
projections (``mlp_cls_q`` / ``mlp_cls_k``), the ablations' auxiliary classifiers and the
mask-classification ``class_embed`` (K + 1 rows: the last, "no object", is not a class and
starts fresh too). The fresh tensors come from building the family for the new classes, so
they are initialised exactly as the family initialises them (e.g. ``conv_seg`` normal(0.01),
Swin semantic projections trunc-normal(0.02), detectron2 semantic projections kaiming).
Buffers the constructor derives from the class count (the set criterion's ``empty_weight``)
are rebuilt with it.

Where a new class has the name of a class of the weights (case and surrounding spaces
ignored), its rows are copied instead of drawn, so e.g. "car" keeps what ADE20K taught it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .registry import build_model
from .strict import CheckpointError, load_state_dict_checked


@dataclass
class ClassResetReport:
    """What :func:`reset_classes` loaded, started fresh and copied (``str()`` is the logged report)."""

    source: str
    old_classes: int
    new_classes: int
    loaded: int  # tensors taken from the weights as they are
    reset: list[str]  # class-specific tensors, initialised as the family does (then matched rows copied)
    copied: list[tuple[str, int, int]] = field(default_factory=list)  # (name, new id, id in the weights)
    fresh: list[str] = field(default_factory=list)  # new classes without a match, drawn fresh

    def __str__(self) -> str:
        lines = [
            f"{self.source}: {self.old_classes} -> {self.new_classes} classes; loaded {self.loaded} tensors that "
            f"do not depend on the classes; {len(self.reset)} class-specific tensors start fresh, initialised "
            "as the family initialises them:",
            *(f"  {key}" for key in self.reset),
        ]
        if self.copied:
            pairs = ", ".join(f"{name} ({new} <- {old})" for name, new, old in self.copied)
            lines.append(f"rows copied from the weights for {len(self.copied)} class(es) of the same name: {pairs}")
        else:
            lines.append("no new class has the name of a class of the weights: every class row is drawn fresh")
        if self.fresh and self.copied:
            lines.append(f"drawn fresh: {', '.join(self.fresh)}")
        return "\n".join(lines)


def class_axes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{key: (axis, extra)}`` for every tensor of ``model``'s state dict whose shape depends on
    the class count: the axis holds K class rows followed by ``extra`` others (class_embed's
    "no object"). Found by building the family for K + 1 classes on the ``meta`` device."""
    config = model.config  # type: ignore[union-attr]
    with torch.device("meta"):
        grown = build_model(
            dataclasses.replace(config, num_classes=config.num_classes + 1, class_names=None, palette=None)
        )
    own, other = model.state_dict(), grown.state_dict()
    axes = {}
    for key, value in own.items():
        if key not in other or other[key].shape == value.shape:
            continue
        changed = [d for d, (a, b) in enumerate(zip(value.shape, other[key].shape)) if a != b]
        if len(changed) != 1 or other[key].shape[changed[0]] != value.shape[changed[0]] + 1:
            raise ValueError(f"{key}: shape {tuple(value.shape)} depends on the class count in more than one way")
        axes[key] = (changed[0], value.shape[changed[0]] - config.num_classes)
    return axes


def _normalise(name: str) -> str:
    return " ".join(str(name).split()).lower()


def matching_classes(new_names: list[str] | None, old_names: list[str] | None) -> list[tuple[str, int, int]]:
    """(name, new id, old id) for each new class whose name is a class name of the weights."""
    if not new_names or not old_names:
        return []
    old = {}
    for j, name in enumerate(old_names):
        old.setdefault(_normalise(name), j)
    return [(name, i, old[_normalise(name)]) for i, name in enumerate(new_names) if _normalise(name) in old]


def reset_classes(
    source: nn.Module,
    num_classes: int,
    class_names: list[str] | None = None,
    palette: list[list[int]] | None = None,
    source_name: str = "the weights",
) -> tuple[nn.Module, ClassResetReport]:
    """``source``'s family, config and weights for ``num_classes`` classes (module docstring).

    ``class_names`` / ``palette`` describe the new classes (None: unnamed, default colours);
    names equal to ``source``'s class names get their rows copied. Returns the new model (in
    ``source``'s training mode) and the report.
    """
    old_config = source.config  # type: ignore[union-attr]
    config = dataclasses.replace(old_config, num_classes=num_classes, class_names=class_names, palette=palette)
    model = build_model(config)
    axes = class_axes(model)
    weights = {k: v for k, v in source.state_dict().items() if k not in axes}
    loaded = load_state_dict_checked(model, weights, source_name, may_start_fresh=lambda key: key in axes)
    copied = matching_classes(class_names, old_config.class_names)
    old_state, new_state = source.state_dict(), model.state_dict()
    with torch.no_grad():
        for key, (axis, _) in axes.items():
            target: Tensor = new_state[key]  # shares storage with the parameter / buffer
            for _, new, old in copied:
                target.select(axis, new).copy_(old_state[key].select(axis, old))
    matched = {new for _, new, _ in copied}
    names = config.names()
    report = ClassResetReport(
        source=source_name,
        old_classes=old_config.num_classes,
        new_classes=num_classes,
        loaded=loaded.loaded,
        reset=sorted(axes),
        copied=copied,
        fresh=[name for i, name in enumerate(names) if i not in matched],
    )
    return model.train(source.training), report


def fit_classes(model: nn.Module, wanted: dict[str, Any], reset: bool, source_name: str) -> tuple[nn.Module, Any]:
    """``model`` with the classes ``wanted`` asks for (``num_classes``, ``class_names``, ``palette``):
    new names or colours for the same count are set; another count needs ``reset`` (a
    :func:`reset_classes`), else it is an error that names ``reset_classes``. Returns (model, the
    :class:`ClassResetReport` or None)."""
    config = model.config  # type: ignore[union-attr]
    names = wanted.get("class_names")
    count = wanted.get("num_classes", len(names) if names is not None else config.num_classes)
    if reset:
        return reset_classes(model, count, names, wanted.get("palette"), source_name)
    if count != config.num_classes:
        raise CheckpointError(
            f"{source_name} has {config.num_classes} classes, {count} were asked for: pass reset_classes=True to "
            "load every tensor that does not depend on the classes and start the class-specific ones fresh "
            "(in a YAML config: model.reset_classes: true)"
        )
    if wanted:
        model.config = dataclasses.replace(config, **{k: v for k, v in wanted.items() if v is not None})
    return model, None
