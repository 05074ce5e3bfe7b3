"""semask.explain: per-stage semantic-prior maps, lambda health, and their CLI commands."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import M2F_TINY, NAMED_TINY

import semask
from semask.cli import main
from semask.engine.health import SemanticHealthMonitor, semantic_lambdas
from semask.engine.predict import load_model_any
from semask.explain import NoSemanticLayersError, explain

K = NAMED_TINY["num_classes"]
NAMES = NAMED_TINY["class_names"]


def tiny(name: str = "semask_swin_t_fpn", seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = semask.create_model(name, **{**NAMED_TINY, **overrides})
    # lambda starts at 0; give the semantic layers an effect and each stage its own value
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, semask.models.semantic_layer.SemanticLayer)):
        for block in layer.class_injection:
            block.lambda_.data.fill_(0.1 * (i + 1))
    return model.eval()


def random_image(h: int = 70, w: int = 90, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_prior_maps_are_the_last_blocks_queries_and_shapes_follow_the_strides() -> None:
    # global attention everywhere: the last block's mlp_cls_q sees (B, H*W, C) row-major tokens
    model = tiny(semantic_global_stages=(0, 1, 2, 3), num_semantic_blocks=2)
    queries: dict[int, torch.Tensor] = {}
    layers = [m for m in model.modules() if isinstance(m, semask.models.semantic_layer.SemanticLayer)]
    for i, layer in enumerate(layers):
        layer.class_injection[-1].mlp_cls_q.register_forward_hook(
            lambda mod, args, out, i=i: queries.__setitem__(i, out.detach().clone())
        )
    image = random_image()
    e = explain(model, image, top_k=2)
    # 70x90 input, patch embedding pads to multiples of 4, merging pads to even sizes:
    # ceil(70/4)=18, ceil(90/4)=23 -> 9x12 -> 5x6 -> 3x3
    assert e.stages == [0, 1, 2, 3]
    assert [p.shape for p in e.priors] == [(K, 18, 23), (K, 9, 12), (K, 5, 6), (K, 3, 3)]
    for i, (prior, ids) in enumerate(zip(e.priors, e.prior_ids)):
        h, w = prior.shape[1:]
        s_q = queries[i][0].view(h, w, K).numpy()
        np.testing.assert_allclose(prior, s_q.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(ids, s_q.argmax(axis=-1))
    assert e.heatmaps.shape == (2, 4, 70, 90)
    assert e.prediction.shape == e.semantic.shape == e.disagreement.shape == (70, 90)
    # two blocks per stage -> lambda reported per block
    assert semantic_lambdas(model) == pytest.approx(
        {f"stage{s}.block{b}": 0.1 * (s + 1) for s in range(4) for b in range(2)}
    )


def test_prediction_disagreement_and_heatmaps() -> None:
    model = tiny()
    image = random_image(seed=1)
    e = explain(model, image, classes=list(range(K)))
    # the final prediction is exactly what semask.predict gives
    np.testing.assert_array_equal(e.prediction, semask.predict(model, image))
    agree = e.semantic == e.prediction
    assert (~agree).any() and agree.any()  # a random model: both cases occur
    assert np.all(e.disagreement[agree] == 0)
    np.testing.assert_allclose(e.disagreement[~agree], (e.confidence * e.semantic_confidence)[~agree], rtol=1e-6)
    assert np.all(e.disagreement[~agree] > 0)
    # all K classes selected: the heatmaps are a softmax over classes, summing to 1 per pixel
    assert e.heatmaps.shape == (K, 4, 70, 90)
    np.testing.assert_allclose(e.heatmaps.sum(axis=0), 1.0, atol=1e-5)
    assert e.heatmaps.min() >= 0
    # confidences are probabilities
    assert e.confidence.min() >= 1 / K - 1e-6 and e.confidence.max() <= 1


def test_the_model_protocol_sets_the_default_scale() -> None:
    model = tiny()
    image = random_image(40, 56, seed=1)
    model.config = dataclasses.replace(model.config, protocol={"mode": "whole", "scale": [112, 80]})
    by_protocol = semask.explain(model, image)
    assert by_protocol.prediction.shape == (40, 56)
    np.testing.assert_array_equal(by_protocol.prediction, semask.explain(model, image, scale=(112, 80)).prediction)
    assert not np.array_equal(by_protocol.prediction, semask.explain(model, image, scale=None).prediction)


def test_classes_by_name_and_top_k() -> None:
    model = tiny()
    image = random_image(seed=2)
    e = explain(model, image, classes="car, sea")
    assert e.classes == [3, 0]
    assert explain(model, image, classes=["2", 1]).classes == [2, 1]
    counts = np.bincount(e.prediction.ravel(), minlength=K)
    top = explain(model, image, top_k=2).classes
    assert len(top) == 2 and counts[top[0]] >= counts[top[1]] >= np.delete(counts, top).max()
    shares = e.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares[NAMES[top[0]]] == pytest.approx(counts[top[0]] / e.prediction.size)
    with pytest.raises(ValueError, match="unknown class 'plane'.*sea, land, boat, car"):
        explain(model, image, classes=["plane"])
    with pytest.raises(ValueError, match="class id 7 is out of range"):
        explain(model, image, classes=[7])


def test_baselines_have_no_priors() -> None:
    with pytest.raises(NoSemanticLayersError, match="no semantic layers"):
        explain(semask.create_model("swin_t_fpn", **NAMED_TINY).eval(), random_image())
    with pytest.raises(NoSemanticLayersError, match="self-attention ablation"):
        explain(semask.create_model("trans_swin_t_fpn", **NAMED_TINY).eval(), random_image())


def test_mit_and_mask_classification_families() -> None:
    mit = semask.create_model(
        "semask_mit_b0",
        num_classes=K,
        embed_dims=(8, 16, 24, 32),
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 3, 4),
        decoder_channels=16,
        semantic_window_size=4,
    ).eval()
    e = explain(mit, random_image(64, 48), top_k=1)
    # MiT: overlapping patch embeddings with stride 4, 2, 2, 2 (padding keeps ceil sizes)
    assert [p.shape[1:] for p in e.priors] == [(16, 12), (8, 6), (4, 3), (2, 2)]
    np.testing.assert_array_equal(e.prediction, semask.predict(mit, random_image(64, 48)))
    torch.manual_seed(0)
    m2f = semask.create_model(
        "semask_swin_t_mask2former",
        num_classes=K,
        **{**M2F_TINY, "depths": (1, 1, 1, 1), "encoder_layers": 1, "dec_layers": 2},
    ).eval()
    image = random_image(40, 50)
    e = explain(m2f, image, top_k=2)
    # the input is padded to 64x64 (multiple of 32): the priors cover the padded canvas
    assert [p.shape[1:] for p in e.priors] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert e.heatmaps.shape[2:] == (40, 50)
    np.testing.assert_array_equal(e.prediction, semask.predict(m2f, image))
    assert np.all(e.disagreement[e.semantic == e.prediction] == 0)


def test_save_writes_composite_and_arrays(tmp_path: Path) -> None:
    e = explain(tiny(), random_image(40, 50), classes=["boat", "car"])
    files = e.save(tmp_path / "out", "scene")
    assert files["composite"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = np.load(files["arrays"])
    np.testing.assert_array_equal(data["prior_ids_stage2"], e.prior_ids[2])
    np.testing.assert_array_equal(data["classes"], [2, 3])
    assert list(data["class_names"]) == NAMES
    assert dict(zip(data["lambda_names"], data["lambda_values"])) == pytest.approx(
        {"stage0": 0.1, "stage1": 0.2, "stage2": 0.3, "stage3": 0.4}
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scene.npz", "scene.png"]


def test_cli_explain_info_and_predict_save_priors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    model_dir = tiny().save_pretrained(tmp_path / "model")
    image = tmp_path / "img.png"
    Image.fromarray(random_image()).save(image)
    assert main(["explain", str(model_dir), str(image), "--out", str(tmp_path / "ex"), "--classes", "boat"]) == 0
    assert (tmp_path / "ex" / "img_explain.png").exists() and (tmp_path / "ex" / "img_explain.npz").exists()
    assert np.load(tmp_path / "ex" / "img_explain.npz")["classes"].tolist() == [2]
    capsys.readouterr()
    assert main(["info", str(model_dir)]) == 0
    out = capsys.readouterr().out
    for stage, value in enumerate((0.1, 0.2, 0.3, 0.4)):
        assert f"stage{stage}" in out and f"{value:.4f}" in out
    assert main(["predict", str(model_dir), str(image), "--out", str(tmp_path / "pred"), "--save-priors"]) == 0
    priors = sorted(p.name for p in (tmp_path / "pred" / "priors").iterdir())
    # the top-3 predicted classes x 4 stages, beside the overlays
    top = explain(load_model_any(model_dir)[0], str(image)).classes
    expected = sorted(f"img_{NAMES[c]}_stage{s}.png" for c in top for s in range(4))
    assert priors == expected
    assert (tmp_path / "pred" / "overlay" / "img.png").exists()
    baseline = semask.create_model("swin_t_fpn", **NAMED_TINY).save_pretrained(tmp_path / "baseline")
    assert main(["explain", str(baseline), str(image), "--out", str(tmp_path / "b")]) == 1
    assert "no semantic layers" in capsys.readouterr().err
    assert main(["predict", str(baseline), str(image), "--out", str(tmp_path / "b"), "--save-priors"]) == 1
    assert "--save-priors" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_health_monitor_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    monitor = SemanticHealthMonitor(warmup_iters=10)
    zero = {"stage0": 0.0, "stage1": 5e-5}
    with caplog.at_level(logging.WARNING, logger="semask.train"):
        assert monitor.check({"iter": 5, "lambda": zero, "loss_semantic": 2.0}) == []  # reference point
        assert monitor.check({"iter": 10, "lambda": zero, "loss_semantic": 2.0}) == []  # still warming up
        issued = monitor.check({"iter": 15, "lambda": zero, "loss_semantic": 2.0005})
        assert len(issued) == 2 and "lambda is still ~0" in issued[0] and "has not moved" in issued[1]
        assert monitor.check({"iter": 20, "lambda": zero, "loss_semantic": 2.0}) == []  # once only
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    healthy = SemanticHealthMonitor(warmup_iters=10)
    healthy.check({"iter": 5, "lambda": zero, "loss_semantic": 2.0})
    assert healthy.check({"iter": 15, "lambda": {"stage0": 0.02, "stage1": 0.0}, "loss_semantic": 1.5}) == []
    fixed = SemanticHealthMonitor(warmup_iters=0, learnable=False)  # the fixed-lambda ablation
    fixed.check({"iter": 1, "lambda": {"stage0": 1.0}, "loss_semantic": 2.0})
    assert fixed.check({"iter": 2, "lambda": {"stage0": 0.0}, "loss_semantic": 1.0}) == []


def test_trainer_logs_lambda_and_semantic_loss(tmp_path: Path) -> None:
    from test_train import tiny_config

    from semask.data import make_context_dataset
    from semask.engine.trainer import train

    root = make_context_dataset(tmp_path / "data", num_train=2, num_val=1, size=32, seed=0)
    cfg = tiny_config(root, "schedule.iters=2", "train.eval_interval=100", "data.crop_size=[32,32]")
    train(cfg, tmp_path / "work", progress=False)
    records = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["type"] == "train"]
    assert len(train_records) == 2
    for r in train_records:
        assert sorted(r["lambda"]) == ["stage0", "stage1", "stage2", "stage3"]
        assert r["loss_semantic"] is not None
    # AdamW moves every lambda off its zero init from the first step on
    assert all(abs(v) > 0 for v in train_records[-1]["lambda"].values())
    assert (tmp_path / "work" / "lambda.png").exists()  # the lambda curve beside loss.png
