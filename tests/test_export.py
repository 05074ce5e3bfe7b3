"""ONNX export: onnxruntime reproduces the PyTorch logits (skipped without the onnx extra)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
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


def test_static_export_matches_torch(tmp_path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    model = small_model().train()  # export must use eval mode and restore the caller's mode
    caplog.set_level(logging.INFO)  # as the CLI runs: root logger at INFO
    path = export_onnx(model, tmp_path / "sub" / "model.onnx", size=(45, 58))
    assert path.is_file() and model.training
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporary file left
    # quiet: the exporter stack (torch.onnx, onnxscript, symbolic shapes) logs and prints nothing,
    # semask.export logs one summary line
    assert [(r.name, r.levelno) for r in caplog.records] == [("semask.export", logging.INFO)]
    assert caplog.records[0].getMessage().startswith(f"exported {path}: 1 x 3 x 45 x 58 -> logits, opset 18")
    assert "onnxruntime max |diff|" in caplog.records[0].getMessage()
    out, err = capfd.readouterr()
    assert out == "" and err == ""
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


@pytest.mark.export
@pytest.mark.slow  # about 35 s on 2 cores (2 min before the fake-tensor cache was turned off for it)
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


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_onnx_example() -> str:
    """The onnxruntime block of the README's ONNX section, as users copy it."""
    section = README.read_text().split("## Export: ONNX", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_metadata_and_the_readme_example_reproduce_semask_predict(tmp_path, monkeypatch) -> None:
    """The README's 10 lines (onnxruntime, OpenCV, Pillow) give the class ids `semask predict` writes,
    on a photo resized to the model's test protocol; the metadata carries what they need."""
    cv2 = pytest.importorskip("cv2")
    from matplotlib import cbook
    from PIL import Image

    from semask.cli import main
    from semask.data.transforms import rescale_size

    names = ["sky", "wall", "person", "tie", "background"]
    model = small_model()
    # the protocol halves the photo: there OpenCV's bilinear (the README's) and semask's image resize
    # agree bit for bit (at other factors the numpy version of OpenCV's rule rounds ~10 % of values
    # one step apart, and ids near a tie can flip)
    protocol = {"mode": "whole", "scale": [75, 64]}
    model.config = dataclasses.replace(model.config, class_names=names, protocol=protocol)
    model.save_pretrained(tmp_path / "m")
    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    photo.resize((150, 128), Image.BILINEAR).save(tmp_path / "image.png")  # lossless: both read the same pixels
    h, w = rescale_size((128, 150), (75, 64))  # the size the protocol feeds the graph: static export at it
    assert (h, w) == (64, 75)
    assert main(["export", str(tmp_path / "m"), "--size", f"{h}x{w}", "--out", str(tmp_path / "model.onnx")]) == 0
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "image.png"), "--out", str(tmp_path / "pred")]) == 0
    expected = np.array(Image.open(tmp_path / "pred" / "labels" / "image.png"))

    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["mean"] == list(model.config.mean) and meta["std"] == list(model.config.std)
    assert meta["class_names"] == names and meta["num_classes"] == 5 and meta["in_channels"] == 3
    assert meta["palette"] == semask.models.palettes.default_palette(5) and meta["protocol"] == protocol
    assert meta["resize"] == "mmseg"

    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(readme_onnx_example(), scope)  # the README block as it stands
    assert scope["x"].shape == (1, 3, h, w) and scope["labels"].shape == expected.shape == (128, 150)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(scope["labels"], expected)
    assert cv2 is scope["cv2"]
