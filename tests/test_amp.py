"""Mixed precision: device/dtype resolution and bf16 outputs close to float32 (CPU, forced path).

Only a GPU can test fp16 autocast with the GradScaler and bf16 speed; these tests cover the CPU
bf16 path, which the forced override makes available on any CPU (emulated, slow, same numerics).
"""

from __future__ import annotations

import pytest
import torch

import semask
from semask.engine import amp

TINY = dict(
    embed_dim=16,
    depths=(1, 1, 1, 1),
    num_heads=(1, 2, 2, 4),
    decoder_channels=16,
    semantic_window_size=4,
    num_classes=5,
    drop_path_rate=0.0,
)
# bf16 keeps 8 mantissa bits: logits of this tiny model stay within 5 % of their range of fp32
LOGIT_TOLERANCE = 0.05


def test_resolution_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert amp.resolve_amp_dtype("cpu", None) is None
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        amp.resolve_amp_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="'bf16' or 'fp16'"):
        amp.resolve_amp_dtype("cpu", "int8")  # type: ignore[arg-type]
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv(amp.ALLOW_SLOW_ENV, raising=False)
    with pytest.raises(ValueError, match="emulated"):
        amp.resolve_amp_dtype("cpu", "bf16")
    monkeypatch.setenv(amp.ALLOW_SLOW_ENV, "1")
    assert amp.resolve_amp_dtype("cpu", "bf16") is torch.bfloat16
    monkeypatch.delenv(amp.ALLOW_SLOW_ENV)
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: True)
    assert amp.resolve_amp_dtype("cpu", "bf16") is torch.bfloat16


def test_bf16_inference_close_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(amp.ALLOW_SLOW_ENV, "1")
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", **TINY).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = model(images).logits
        with amp.autocast("cpu", amp.resolve_amp_dtype("cpu", "bf16")):
            got = model(images).logits
    assert got.shape == ref.shape
    spread = (ref.max() - ref.min()).item()
    assert (got.float() - ref).abs().max().item() <= LOGIT_TOLERANCE * spread
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.9


def test_bf16_training_loss_and_grads_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(amp.ALLOW_SLOW_ENV, "1")
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", **TINY).train()
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))

    def step(dtype: torch.dtype | None) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with amp.autocast("cpu", dtype):
            loss = model(images, labels=labels).loss
        assert loss.dtype == torch.float32  # losses are computed in fp32 under autocast
        loss.backward()
        return loss.item(), model.decode_head.conv_seg.weight.grad.clone()

    loss32, grad32 = step(None)
    loss16, grad16 = step(torch.bfloat16)
    assert loss16 == pytest.approx(loss32, rel=0.02)
    cos = torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0)
    assert cos.item() > 0.99
