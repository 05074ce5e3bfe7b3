"""Health of the SeMask semantic layers: the learned lambda per stage and training warnings.

lambda (``lambda_`` of each semantic block, ``gamma`` in the official checkpoints) weighs
the semantic attention added to the features; it starts at 0, and the paper reports values
of about 0.05-0.3 after training. A lambda that stays at ~0 means the semantic layers have
no effect on the features (the symptom of official issue 27: zero-initialised ``mlp_res``
and lambda give the branch no gradient); a semantic-prior loss that does not move means the
prior maps do not learn.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from torch import nn

from ..models.semantic_layer import SemanticLayer

logger = logging.getLogger("semask.train")

LAMBDA_ZERO = 1e-4  # |lambda| below this after warm-up counts as "stayed at 0"
LOSS_STILL = 1e-3  # relative change of the semantic loss below this counts as "did not move"


def semantic_layers(model: nn.Module) -> list[tuple[int, SemanticLayer]]:
    """(stage index, layer) of every semantic layer, in stage order.

    The stage is the last number in the module name (``backbone.layers.2.semantic_layer``
    for Swin, ``backbone.semantic_layer.2`` for MiT).
    """
    found = []
    for position, (name, module) in enumerate((n, m) for n, m in model.named_modules() if isinstance(m, SemanticLayer)):
        numbers = re.findall(r"(?:^|\.)(\d+)(?=\.|$)", name)
        found.append((int(numbers[-1]) if numbers else position, module))
    return sorted(found, key=lambda item: item[0])


def semantic_lambdas(model: nn.Module) -> dict[str, float]:
    """Learned lambda of every semantic block: ``{"stage0": 0.12, ...}``.

    A stage with several semantic blocks gives ``stage{i}.block{k}`` keys. Empty for models
    without semantic layers (the baselines).
    """
    values: dict[str, float] = {}
    for stage, layer in semantic_layers(model):
        blocks = list(layer.class_injection)
        for k, block in enumerate(blocks):
            key = f"stage{stage}" if len(blocks) == 1 else f"stage{stage}.block{k}"
            values[key] = float(block.lambda_.detach().float().reshape(-1)[0])
    return values


def lambdas_learnable(model: nn.Module) -> bool:
    """Whether the model's lambdas are parameters (False for the fixed-lambda ablation)."""
    return any(
        isinstance(block.lambda_, nn.Parameter)
        for _, layer in semantic_layers(model)
        for block in layer.class_injection
    )


class SemanticHealthMonitor:
    """Watches the train records after warm-up and warns once per problem.

    ``check(record)`` takes a train record with ``iter``, ``lambda`` (as
    :func:`semantic_lambdas`) and ``loss_semantic``; returns the warnings it issued.
    """

    def __init__(self, warmup_iters: int, learnable: bool = True) -> None:
        self.warmup_iters = warmup_iters
        self.learnable = learnable
        self.first_loss: float | None = None
        self.warned: set[str] = set()

    def check(self, record: dict[str, Any]) -> list[str]:
        loss = record.get("loss_semantic")
        if loss is not None and math.isfinite(loss) and self.first_loss is None:
            self.first_loss = float(loss)
            return []  # the reference point
        if record["iter"] <= self.warmup_iters:
            return []
        issued = []
        lambdas = record.get("lambda") or {}
        if (
            self.learnable
            and lambdas
            and "lambda" not in self.warned
            and all(abs(v) < LAMBDA_ZERO for v in lambdas.values())
        ):
            issued.append(
                f"iteration {record['iter']}: every semantic-layer lambda is still ~0 "
                f"(|lambda| < {LAMBDA_ZERO:g}: {', '.join(f'{k}={v:.2e}' for k, v in lambdas.items())}); "
                "the semantic layers do not change the features. Check that mlp_res and lambda are not "
                "both zero-initialised, that lambda is in the optimiser, and the learning rate."
            )
            self.warned.add("lambda")
        if (
            loss is not None
            and self.first_loss is not None
            and "loss" not in self.warned
            and abs(loss - self.first_loss) <= LOSS_STILL * max(abs(self.first_loss), 1e-12)
        ):
            issued.append(
                f"iteration {record['iter']}: the semantic-prior loss has not moved since the first log "
                f"({self.first_loss:.4f} -> {loss:.4f}); the prior maps are not learning. Check "
                "model.semantic_loss_weight, the labels and the learning rate."
            )
            self.warned.add("loss")
        for message in issued:
            logger.warning(message)
        return issued
