"""Per-stage gradient checkpointing: same loss and gradients, with drop path and dropout active."""

from __future__ import annotations

import pytest
import torch

import semask
from semask.models import swin
from semask.models.mit import encoder as mit_encoder

SWIN = dict(
    num_classes=5,
    embed_dim=16,
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 4),
    window_size=4,
    semantic_window_size=4,
    decoder_channels=16,
    drop_path_rate=0.2,
)
MIT = dict(
    num_classes=5,
    embed_dims=(8, 16, 24, 32),
    depths=(1, 2, 1, 1),
    num_heads=(1, 2, 3, 4),
    decoder_channels=16,
    semantic_window_size=4,
    drop_path_rate=0.2,
)
CASES = [("semask_swin_t_fpn", SWIN, swin), ("semask_mit_b0", MIT, mit_encoder)]
IDS = ["swin", "mit"]


def _loss_and_grads(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # same drop-path / dropout draws in every run
    out = model(images, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.item(), grads


def _counting(monkeypatch: pytest.MonkeyPatch, module) -> list[int]:
    """Count calls of the checkpoint function the encoder module uses."""
    calls = []
    real = module.checkpoint

    def wrapper(*args, **kwargs):
        calls.append(1)
        assert kwargs.get("use_reentrant") is False
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "checkpoint", wrapper)
    return calls


@pytest.mark.parametrize("name,overrides,module", CASES, ids=IDS)
def test_checkpointed_gradients_equal(name: str, overrides: dict, module, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch, module)
    torch.manual_seed(0)
    model = semask.create_model(name, **overrides).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    loss_ref, ref = _loss_and_grads(model, images, labels)
    assert calls == []

    model.set_grad_checkpointing(True)
    loss_ckpt, got = _loss_and_grads(model, images, labels)
    assert len(calls) == 4  # one checkpoint per encoder stage
    assert loss_ckpt == pytest.approx(loss_ref, abs=1e-6)
    assert set(got) == set(ref) and len(ref) > 10
    assert any("semantic" in n for n in got)  # the priors returned by a stage carry gradient out
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=0, msg=n)

    # drop path really is random here: another seed gives another loss
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    assert model(images, labels=labels).loss.item() != pytest.approx(loss_ref, abs=1e-6)

    model.set_grad_checkpointing(False)
    calls.clear()
    loss_off, off = _loss_and_grads(model, images, labels)
    assert calls == []
    assert loss_off == loss_ref
    for n in ref:
        torch.testing.assert_close(off[n], ref[n], atol=0, rtol=0, msg=n)


@pytest.mark.parametrize("name,overrides,module", CASES, ids=IDS)
def test_checkpointing_only_in_training_with_grad(
    name: str, overrides: dict, module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch, module)
    torch.manual_seed(0)
    model = semask.create_model(name, **overrides).eval()
    images = torch.randn(1, 3, 64, 64)
    ref = model(images).logits  # grad enabled in both (no_grad may pick other kernels)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(images).logits, ref, atol=0, rtol=0)  # eval, grad enabled
    model.train()
    with torch.no_grad():
        model(images)  # training mode but no autograd: nothing to save
    assert calls == []


def test_checkpointing_saves_fewer_tensors() -> None:
    """Fewer activations are kept for backward (what the memory saving is made of)."""
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", **SWIN).train()
    images = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))

    def saved_elements() -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(images, labels=labels).loss.backward()
        return total

    plain = saved_elements()
    model.set_grad_checkpointing(True)
    checkpointed = saved_elements()  # counts include the recomputation in backward
    model.set_grad_checkpointing(False)
    assert saved_elements() == plain
    assert checkpointed != plain


def test_config_field_parses() -> None:
    from semask.config import ExperimentConfig

    assert ExperimentConfig.from_dict({}, "defaults").model.grad_checkpointing is False
    cfg = ExperimentConfig.from_dict({}, "defaults", ["model.grad_checkpointing=true"])
    assert cfg.model.grad_checkpointing is True
