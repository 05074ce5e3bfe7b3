"""One tester, three families: every model family passes the same checks (smp's BaseModelTester idea).

:class:`FamilyTester` holds the checks; each ``Test*`` subclass names a preset, tiny overrides and
how that family's official checkpoints are laid out. The checks: output shapes at odd sizes, our
own save/load bit-exact, the official layout round trip, ONNX + onnxruntime, ``torch.export`` of
the model itself, ``torch.compile``, gradient checkpointing and fine-tuning on other classes
(``reset_classes``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import conftest
import pytest
import torch
from conftest import TINY, randomize, to_official
from torch import nn

import semask
from semask.models import CheckpointError
from semask.models.outputs import SegmentationOutput
from semask.models.registry import build_model

K = 5


@pytest.fixture(autouse=True, scope="module")
def _single_thread():  # type: ignore[no-untyped-def]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class FamilyTester:
    """The checks; subclasses set the class attributes and :meth:`official_checkpoint`."""

    preset: ClassVar[str]
    overrides: ClassVar[dict[str, Any]]
    odd_sizes: ClassVar[tuple[tuple[int, int], ...]] = ((45, 77), (33, 100))
    export_size: ClassVar[tuple[int, int]] = (45, 77)
    train_size: ClassVar[tuple[int, int]] = (40, 56)

    def make_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return randomize(semask.create_model(self.preset, num_classes=K, **self.overrides), seed=seed)

    def official_checkpoint(self, model: nn.Module) -> dict[str, Any]:
        """What ``torch.save`` writes for ``model`` in its family's official layout."""
        raise NotImplementedError

    def official_load_overrides(self, model: nn.Module) -> dict[str, Any]:
        """Config fields official weights cannot show, passed to ``semask.load``."""
        return {}

    # ------------------------------------------------------------------ checks
    @pytest.mark.parametrize("batch", [1, 2])
    def test_shapes_at_odd_sizes(self, batch: int) -> None:
        model = self.make_model()
        for h, w in self.odd_sizes:
            with torch.no_grad():
                out = model(_image(batch, 3, h, w), output_semantic_logits=True)
                plain = model(_image(batch, 3, h, w))
            assert isinstance(out, SegmentationOutput)
            assert out.logits.shape == (batch, K, h, w), (h, w)
            assert out.semantic_logits.shape == (batch, K, h, w), (h, w)
            assert out.loss is None and plain.semantic_logits is None
            assert torch.isfinite(out.logits).all()
            torch.testing.assert_close(plain.logits, out.logits, rtol=0, atol=0)

    def test_outputs_do_not_depend_on_grad_mode(self) -> None:
        """Heads may pick their memory layout by grad mode (the FPN head trains NCHW on a CPU)."""
        model = self.make_model().eval()
        x = _image(2, 3, *self.odd_sizes[0])
        with_grad = model(x).logits.detach()
        with torch.inference_mode():
            without = model(x).logits
        # equal up to float32 summation order (other kernels; SeMask-FPN: 2e-6 of the largest logit)
        torch.testing.assert_close(with_grad, without, rtol=0, atol=2e-5 * without.abs().max().item())

    def test_no_stale_outputs_after_an_optimizer_step(self) -> None:
        """Predict, take a fused AdamW step (which leaves tensors' version counters alone), predict
        again: the second prediction equals a fresh model's with the stepped weights."""
        model = self.make_model().eval()
        x = _image(1, 3, *self.odd_sizes[0])
        with torch.inference_mode():
            before = model(x).logits
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        model.train()
        labels = torch.randint(0, K, (1, *self.train_size))
        model(_image(1, 3, *self.train_size, seed=1), labels=labels).loss.backward()
        optimizer.step()
        model.eval()
        with torch.inference_mode():
            after = model(x).logits
        fresh = self.make_model(seed=5).eval()
        fresh.load_state_dict(model.state_dict())
        with torch.inference_mode():
            expected = fresh(x).logits
        assert not torch.equal(before, after)
        torch.testing.assert_close(after, expected, rtol=0, atol=0)

    def test_loss_at_an_odd_size(self) -> None:
        """With labels at an odd size the loss is a finite scalar and both logits keep the input size."""
        model = self.make_model().train()
        h, w = self.odd_sizes[0]
        labels = torch.randint(0, K, (1, h, w), generator=torch.Generator().manual_seed(3))
        labels[:, :3] = 255
        torch.manual_seed(0)
        out = model(_image(1, 3, h, w), labels)
        assert out.logits.shape == out.semantic_logits.shape == (1, K, h, w)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)

    def test_save_pretrained_round_trip_is_bit_exact(self, tmp_path: Path) -> None:
        model = self.make_model(seed=1)
        model.save_pretrained(tmp_path / "m")
        loaded = semask.load(tmp_path / "m")
        assert type(loaded) is type(model) and loaded.config == model.config
        assert not loaded.training
        got, want = loaded.state_dict(), model.state_dict()
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
        x = _image(1, 3, *self.odd_sizes[1], seed=2)
        with torch.no_grad():
            assert torch.equal(loaded(x).logits, model(x).logits)

    def test_official_layout_round_trip(self, tmp_path: Path) -> None:
        model = self.make_model(seed=2)
        path = tmp_path / "official.pth"
        torch.save(self.official_checkpoint(model), path)
        loaded = semask.load(path, **self.official_load_overrides(model))
        assert type(loaded) is type(model) and loaded.config.num_classes == K
        x = _image(1, 3, *self.odd_sizes[0], seed=3)
        with torch.no_grad():
            want = model(x).logits
            torch.testing.assert_close(loaded(x).logits, want, rtol=0, atol=1e-6)
            # the check can fail: another model's weights give other logits
            assert (self.make_model(seed=5)(x).logits - want).abs().max() > 1e-3

    @pytest.mark.export
    @pytest.mark.slow
    def test_onnx_matches_onnxruntime(self, tmp_path: Path) -> None:
        ort = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
        from semask.export import export_onnx

        model = self.make_model(seed=3)
        path = export_onnx(model, tmp_path / "m.onnx", size=self.export_size)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = _image(1, 3, *self.export_size, seed=4)
        got = torch.from_numpy(session.run(None, {"pixel_values": x.numpy()})[0])
        with torch.no_grad():
            want = model(x).logits
        assert got.shape == (1, K, *self.export_size)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

    @pytest.mark.export
    @pytest.mark.slow
    def test_torch_export_of_the_model_itself(self) -> None:
        model = self.make_model(seed=4)
        x = _image(1, 3, *self.export_size, seed=5)
        program = torch.export.export(model, (x,))
        out = program.module()(x)
        with torch.no_grad():
            want = model(x)
        assert type(out) is type(want)  # the family's own output dataclass, rebuilt from the pytree
        assert out.logits.shape == (1, K, *self.export_size) and out.semantic_logits is None
        # decomposed ops (layer norm, GELU) round differently: equal to 1e-4 of the logits' range
        torch.testing.assert_close(out.logits, want.logits, rtol=1e-4, atol=1e-4 * float(want.logits.abs().max()))

    @pytest.mark.compile
    @pytest.mark.slow
    def test_torch_compile_matches_eager(self) -> None:
        model = self.make_model(seed=5)
        # aot_eager: dynamo capture + AOT autograd without inductor's C++ build (minutes on 2 CPU cores)
        compiled = torch.compile(model, backend="aot_eager")
        x = _image(1, 3, *self.odd_sizes[0], seed=6)
        with torch.no_grad():
            want = model(x).logits
            torch.testing.assert_close(compiled(x).logits, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))

    def test_gradient_checkpointing_gives_equal_gradients(self) -> None:
        model = self.make_model(seed=6).train()
        h, w = self.train_size
        x = _image(2, 3, h, w, seed=7)
        labels = torch.randint(0, K, (2, h, w), generator=torch.Generator().manual_seed(8))

        def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(123)  # same random draws (drop path, point sampling) in both runs
            loss = model(x, labels).loss
            loss.backward()
            return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        loss_ref, ref = loss_and_grads()
        model.set_grad_checkpointing(True)
        loss_ckpt, got = loss_and_grads()
        model.set_grad_checkpointing(False)
        assert len(ref) == sum(1 for p in model.parameters() if p.requires_grad) - self.unused_in_loss
        assert got.keys() == ref.keys()
        torch.testing.assert_close(loss_ckpt, loss_ref, rtol=0, atol=1e-6)
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6, msg=name)
        assert any(".semantic" in n or "semantic_layer" in n for n in ref)  # priors carry gradient

    def test_training_forward_without_upsampled_logits(self) -> None:
        """The trainer's forward (upsample_logits=False) has the same loss and gradients, and its
        logits stay at the decoder's stride instead of the input size."""
        model = self.make_model(seed=4).train()
        h, w = self.train_size
        x = _image(2, 3, h, w, seed=5)
        labels = torch.randint(0, K, (2, h, w), generator=torch.Generator().manual_seed(6))
        labels[:, :2] = 255

        def run(upsample: bool) -> tuple[SegmentationOutput, dict[str, torch.Tensor]]:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(321)  # same drop path and point sampling in both runs
            out = model(x, labels, upsample_logits=upsample)
            out.loss.backward()
            return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        (full, ref), (low, got) = run(True), run(False)
        assert full.logits.shape == (2, K, h, w)
        assert low.logits.shape[:2] == (2, K) and low.logits.shape[-1] <= (w + 31) // 4 < w
        torch.testing.assert_close(low.loss, full.loss, rtol=0, atol=0)
        assert got.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-7, msg=name)

    def test_reset_classes_loads_the_rest_and_starts_the_classes_fresh(self, tmp_path: Path) -> None:
        """5 named classes -> 3: every other tensor is the weights', the class-specific ones are
        exactly the family's fresh initialisation except the rows of classes of the same name."""
        model = self.make_model(seed=1)
        model.config = dataclasses.replace(model.config, class_names=["sea", "land", "boat", "car", "buoy"])
        model.save_pretrained(tmp_path / "m")
        with pytest.raises(CheckpointError, match="has 5 classes, 3 were asked for: pass reset_classes=True"):
            semask.load(tmp_path / "m", num_classes=3)
        names = ["Car", "road", "sea "]  # case and spaces do not matter
        torch.manual_seed(11)
        source = semask.load(tmp_path / "m")  # the loader builds the source first, then the new model
        fresh = build_model(dataclasses.replace(source.config, num_classes=3, class_names=names, palette=None))
        torch.manual_seed(11)
        got, meta = semask.models.loader.load_with_meta(tmp_path / "m", class_names=names, reset_classes=True)
        report = meta["class_reset"]
        assert got.config.num_classes == 3 and got.config.class_names == names
        assert report.copied == [("Car", 0, 3), ("sea ", 2, 0)] and report.fresh == ["road"]
        assert "car (0 <- 3)" in str(report).lower() and "drawn fresh: road" in str(report)
        reset = set(report.reset)
        assert reset and all(any(re.fullmatch(p, k) for p in self.class_specific) for k in reset)
        assert all(any(re.fullmatch(p, k) for k in reset) for p in self.class_specific)
        new, old, init = got.state_dict(), source.state_dict(), fresh.state_dict()
        assert report.loaded == len(new) - len(reset)
        for key in new:
            if key not in reset:
                assert torch.equal(new[key], old[key]), key
                continue
            assert new[key].shape[0] == 3 + key.endswith(("class_embed.weight", "class_embed.bias")), key
            torch.testing.assert_close(new[key][0], old[key][3], rtol=0, atol=0, msg=key)  # car
            torch.testing.assert_close(new[key][2], old[key][0], rtol=0, atol=0, msg=key)  # sea
            torch.testing.assert_close(new[key][1], init[key][1], rtol=0, atol=0, msg=key)  # road: the family's init
            torch.testing.assert_close(new[key][3:], init[key][3:], rtol=0, atol=0, msg=key)  # "no object"
        with torch.no_grad():
            assert got(_image(1, 3, *self.odd_sizes[0])).logits.shape == (1, 3, *self.odd_sizes[0])

    unused_in_loss: ClassVar[int] = 0
    # the class-specific tensors of the family (regexes over state-dict keys)
    class_specific: ClassVar[tuple[str, ...]] = (
        r"decode_head\.conv_seg\.(weight|bias)",
        r"backbone\.layers\.[0-3]\.semantic_layer\.class_injection\.0\.mlp_cls_[qk]\.(weight|bias)",
    )


class TestSeMaskFPN(FamilyTester):
    preset = "semask_swin_t_fpn"
    overrides: ClassVar[dict[str, Any]] = dict(TINY)

    def official_checkpoint(self, model: nn.Module) -> dict[str, Any]:
        return {"state_dict": to_official(model)}  # mmseg: gamma, relative_position_index buffers


MIT_TINY = dict(conftest.MIT_TINY, semantic_window_size=4)


class TestSeMaskMiT(FamilyTester):
    preset = "semask_mit_b0"
    overrides: ClassVar[dict[str, Any]] = MIT_TINY
    class_specific = (
        r"decode_head\.conv_seg\.(weight|bias)",
        r"backbone\.semantic_layer\.[0-3]\.class_injection\.0\.mlp_cls_[qk]\.(weight|bias)",
    )

    def official_checkpoint(self, model: nn.Module) -> dict[str, Any]:
        return {"state_dict": dict(model.state_dict())}  # NVlabs keys: backbone.patch_embed1..., block1.0...

    def official_load_overrides(self, model: nn.Module) -> dict[str, Any]:
        return dict(num_heads=MIT_TINY["num_heads"], semantic_window_size=4)  # no trace in the weights


M2F_TINY = dict(conftest.M2F_TINY, train_num_points=64, drop_path_rate=0.0)


class TestSeMaskMask2Former(FamilyTester):
    """Pads to a multiple of 32 inside forward: 45 x 77 runs at 64 x 96 and is cropped back."""

    preset = "semask_swin_t_mask2former"
    overrides: ClassVar[dict[str, Any]] = M2F_TINY
    train_size = (40, 56)
    class_specific = (
        r"sem_seg_head\.predictor\.class_embed\.(weight|bias)",
        r"backbone\.layers\.[0-3]\.semantic_layer\.class_injection\.0\.mlp_cls_[qk]\.(weight|bias)",
    )

    def official_checkpoint(self, model: nn.Module) -> dict[str, Any]:
        """detectron2: ``.gamma``, index buffers, the criterion's ``empty_weight``, under ``model``."""
        sd = {re.sub(r"\.lambda_$", ".gamma", k): v.clone() for k, v in model.state_dict().items()}
        for name, buf in model.named_buffers():
            if name.endswith("relative_position_index"):
                sd[name] = buf.clone()
        sd["criterion.empty_weight"] = torch.tensor([1.0] * K + [model.config.no_object_weight])
        return {"model": sd, "iteration": 159999}

    def official_load_overrides(self, model: nn.Module) -> dict[str, Any]:
        return dict(decoder_heads=4, semantic_window_size=model.config.semantic_window_size)

    def test_padding_to_32_is_cropped_back(self) -> None:
        model = self.make_model()
        h, w = self.odd_sizes[0]
        x = _image(1, 3, h, w)
        with torch.no_grad():
            out = model(x)
            padded = model(torch.nn.functional.pad(x, (0, 96 - w, 0, 64 - h)))
        assert out.pred_masks.shape == (1, 8, 16, 24)  # (64 x 96) / 4
        torch.testing.assert_close(out.logits, padded.logits[..., :h, :w], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("preset", "overrides", "class_specific"),
    [
        ("swin_t_fpn", TINY, [r"decode_head\.conv_seg\..*"]),
        ("trans_swin_t_fpn", TINY, [r"decode_head\.conv_seg\..*"]),  # self-attention q/k are C x C: kept
        ("swin_t_fpn_aux", TINY, [r"decode_head\.conv_seg\..*", r"backbone\.layers\.\d\.aux_classifier\..*"]),
        ("query_swin_t_fpn", TINY, [r"decode_head\.conv_seg\..*", r"backbone\.layers\.\d\.aux_classifier\..*"]),
        ("segformer_b0", MIT_TINY, [r"decode_head\.linear_pred\..*"]),
        ("mit_b0", MIT_TINY, [r"decode_head\.conv_seg\..*"]),
        ("semask_swin_t_maskformer", M2F_TINY, [r"sem_seg_head\.predictor\.class_embed\..*", r".*\.mlp_cls_[qk]\..*"]),
        (
            "semask_swin_t_mask2former_msfapn",
            M2F_TINY,
            [r"sem_seg_head\.predictor\.class_embed\..*", r".*\.mlp_cls_[qk]\..*"],
        ),
    ],
)
def test_reset_classes_of_baselines_and_ablations(
    preset: str, overrides: dict[str, Any], class_specific: list[str], tmp_path: Path
) -> None:
    """Each preset's class-specific tensors are exactly its classifiers (and, for SeMask, the
    semantic projections); the rest loads, and the model runs with the new classes."""
    torch.manual_seed(0)
    model = randomize(semask.create_model(preset, num_classes=K, **overrides))
    model.save_pretrained(tmp_path / "m")
    got, meta = semask.models.loader.load_with_meta(tmp_path / "m", num_classes=2, reset_classes=True)
    reset = meta["class_reset"].reset
    assert {p for p in class_specific if any(re.fullmatch(p, k) for k in reset)} == set(class_specific)
    assert all(any(re.fullmatch(p, k) for p in class_specific) for k in reset)
    old = model.state_dict()
    assert all(torch.equal(v, old[k]) for k, v in got.state_dict().items() if k not in reset)
    with torch.no_grad():
        assert got(_image(1, 3, 40, 56)).logits.shape == (1, 2, 40, 56)
