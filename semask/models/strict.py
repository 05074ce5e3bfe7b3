"""Strict weight loading, the bottom of :mod:`semask.models`: the one checkpoint error and the
key-checked loader every reader and family uses (imports nothing from semask)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every offending key."""


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail with a message naming missing, unexpected and mis-shaped keys."""
    load_state_dict_checked(model, state_dict, source)


def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    may_start_fresh: Callable[[str], bool] = lambda key: False,
    unused: Iterable[str] = (),
) -> BackboneLoadReport:
    """The one strict loader: every key must match except those ``may_start_fresh`` allows to be
    missing (e.g. semantic layers absent from ImageNet weights); ``unused`` keys dropped by the
    caller are only reported."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    bad_missing = [k for k in missing if not may_start_fresh(k)]
    if bad_missing or unexpected or mis_shaped:
        raise CheckpointError(format_key_report(source, bad_missing, unexpected, mis_shaped))
    model.load_state_dict(state_dict, strict=not missing)
    return BackboneLoadReport(loaded=len(state_dict), missing=missing, unexpected=sorted(unused))


def format_key_report(source: str, missing: list[str], unexpected: list[str], mis_shaped: list[str]) -> str:
    lines = [f"{source} does not match the model:"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if keys:
            shown = "\n    ".join(keys[:25]) + (f"\n    ... and {len(keys) - 25} more" if len(keys) > 25 else "")
            lines.append(f"  {len(keys)} {title} keys:\n    {shown}")
    return "\n".join(lines)


@dataclass
class BackboneLoadReport:
    """What an ImageNet initialisation did not fill (new SeMask parts) or did not use."""

    loaded: int
    missing: list[str]
    unexpected: list[str]

    def __str__(self) -> str:
        return (
            f"loaded {self.loaded} tensors; {len(self.missing)} start fresh "
            f"({', '.join(sorted({k.split('.')[0] if k.startswith('norm') else k.split('.class_injection')[0] for k in self.missing}))}); "
            f"{len(self.unexpected)} unused ({', '.join(self.unexpected[:6])}{'...' if len(self.unexpected) > 6 else ''})"
        )
