"""ONNX export: onnxruntime reproduces the PyTorch logits (skipped without the onnx extra)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import randomize

import semask
from semask.export import ExportError, check_onnx, export_onnx, generic_size

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Two stages keep the export fast yet cover shifted windows (depth 2), windowed and global
# semantic attention, padding to the window and odd patch-merging sizes.
SMALL = dict(
    embed_dim=16, depths=(2, 1), num_heads=(1, 2), decoder_channels=16, drop_path_rate=0.0, semantic_global_stages=(1,)
)


def small_model() -> torch.nn.Module:
    return randomize(semask.create_model("semask_swin_t_fpn", num_classes=5, **SMALL), seed=4)


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])


def test_static_export_matches_torch(tmp_path) -> None:
    model = small_model().train()  # export must use eval mode and restore the caller's mode
    path = export_onnx(model, tmp_path / "sub" / "model.onnx", size=(45, 58))
    assert path.is_file() and model.training
    x = torch.randn(1, 3, 45, 58, generator=torch.Generator().manual_seed(0))
    got = run_onnx(path, x)
    with torch.inference_mode():
        want = model.eval()(x).logits
    assert got.shape == (1, 5, 45, 58)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

    other = small_model()
    with torch.no_grad():
        other.decode_head.conv_seg.bias.add_(1.0)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_onnx(path, lambda t: other(t).logits, x)


def test_generic_size_exercises_every_padding_branch() -> None:
    for n in (1, 64, 224, 512, 1000):
        g = generic_size(n)
        assert g >= n and g % 4
        s = -(-g // 4)
        for _ in range(4):
            assert s % 2 and s % 7 and s % 12
            s = -(-s // 2)


def test_export_rejects_bad_size(tmp_path) -> None:
    with pytest.raises(ValueError, match="positive"):
        export_onnx(small_model(), tmp_path / "m.onnx", size=(0, 32))


@pytest.mark.skipif(
    os.environ.get("SEMASK_SLOW_TESTS") != "1",
    reason="dynamic-shape export takes minutes on 2 cores; set SEMASK_SLOW_TESTS=1",
)
def test_dynamic_export_any_size_and_batch(tmp_path) -> None:
    model = small_model()
    path = export_onnx(model, tmp_path / "dyn.onnx", size=(64, 64), dynamic=True)
    for shape in ((1, 3, 64, 64), (2, 3, 75, 61), (1, 3, 97, 200)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            want = model(x).logits
        torch.testing.assert_close(run_onnx(path, x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.export
def test_torch_export_of_the_model_itself_returns_its_output_dataclass() -> None:
    """The output dataclass is a registered pytree: no wrapper module is needed for torch.export."""
    from semask.models.outputs import SegmentationOutput

    model = small_model()
    x = torch.randn(1, 3, 37, 45, generator=torch.Generator().manual_seed(0))
    program = torch.export.export(model, (x,))
    out = program.module()(x)
    assert isinstance(out, SegmentationOutput) and out.semantic_logits is None
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x).logits, rtol=0, atol=1e-5)
