"""SeMask-FPN family: presets, shapes, exact parameter counts, losses, weights in and out."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, randomize, to_official

import semask
from semask.models import CheckpointError
from semask.models.loss import segmentation_cross_entropy
from semask.models.summary import describe

# spec semask_fpn.md section 1: official models, decoder channels 256, buffers excluded
PARAMS = {
    "swin_t_fpn": (32_650_064, 32_616_397),
    "semask_swin_t_fpn": (34_655_748, 34_243_753),
    "swin_s_fpn": (53_967_968, 53_934_301),
    "semask_swin_s_fpn": (55_973_652, 55_561_657),
    "swin_b_fpn": (93_115_662, 93_081_995),
    "semask_swin_b_fpn": (96_485_826, 95_948_071),
    "swin_l_fpn": (203_648_330, 203_614_663),
    "semask_swin_l_fpn": (210_791_934, 210_002_659),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("k_index,num_classes", [(0, 150), (1, 19)])
def test_exact_parameter_counts(name: str, k_index: int, num_classes: int) -> None:
    with torch.device("meta"):
        model = semask.create_model(name, num_classes=num_classes)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name][k_index]


@pytest.mark.parametrize(
    "name,k,expected",
    [
        ("semask_swin_t_fpn", 150, (2, 3)),
        ("semask_swin_s_fpn", 171, (2, 3)),
        ("semask_swin_l_fpn", 150, (2, 3)),
        ("semask_swin_b_fpn", 150, ()),
        ("semask_swin_t_fpn", 19, ()),
        ("semask_swin_l_fpn", 19, ()),
    ],
)
def test_official_global_stage_rule(name: str, k: int, expected: tuple[int, ...]) -> None:
    with torch.device("meta"):
        model = semask.create_model(name, num_classes=k)
    assert model.config.semantic_global_stages == expected
    flags = tuple(i for i, s in enumerate(model.backbone.layers) if s.semantic_layer.global_attention)
    assert flags == expected
    assert model.config.semantic_window_size == model.config.window_size


def test_overrides_and_unknown_settings() -> None:
    model = semask.create_model(
        "semask_swin_t_fpn", num_classes=7, semantic_global_stages=(3,), num_semantic_blocks=2, **TINY
    )
    assert [len(s.semantic_layer.class_injection) for s in model.backbone.layers] == [2, 2, 2, 2]
    assert [s.semantic_layer.global_attention for s in model.backbone.layers] == [False, False, False, True]
    with pytest.raises(TypeError, match="no settings \\['depth'\\]"):
        semask.create_model("semask_swin_t_fpn", depth=3)
    with pytest.raises(KeyError, match="unknown model"):
        semask.create_model("semask_swin_x_fpn")
    with pytest.raises(ValueError, match="num_heads needs 4 values"):
        semask.create_model("swin_t_fpn", num_heads=(1, 2))


@pytest.mark.parametrize("size", [(64, 64), (45, 77), (33, 100)])
def test_output_shapes(size: tuple[int, int]) -> None:
    model = semask.create_model("semask_swin_t_fpn", num_classes=6, **TINY).eval()
    with torch.inference_mode():
        x = torch.randn(2, 3, *size)
        out = model(x, output_semantic_logits=True)
        plain = model(x)
    assert out.logits.shape == out.semantic_logits.shape == (2, 6, *size)
    assert out.loss is None
    # Inference skips the semantic decoder unless asked; the logits do not depend on it.
    assert plain.semantic_logits is None
    torch.testing.assert_close(plain.logits, out.logits, rtol=0, atol=0)
    base = semask.create_model("swin_t_fpn", num_classes=6, **TINY).eval()
    with torch.inference_mode():
        assert base(torch.randn(1, 3, *size), output_semantic_logits=True).semantic_logits is None


def test_cross_entropy_matches_hand_computation() -> None:
    # two pixels of one image, K=2; pixel 2 ignored
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2, 1, 2)
    labels = torch.tensor([[[1, 255]]])
    ce = -math.log(math.exp(0.0) / (math.exp(2.0) + math.exp(0.0)))  # pixel 1, true class 1
    assert segmentation_cross_entropy(logits, labels, "all").item() == pytest.approx(ce / 2)
    assert segmentation_cross_entropy(logits, labels, "valid").item() == pytest.approx(ce)


def test_model_loss_is_main_plus_0_4_semantic() -> None:
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", num_classes=4, **TINY).eval()
    labels = torch.randint(0, 4, (2, 40, 48))
    labels[:, :3] = 255
    out = model(torch.randn(2, 3, 40, 48), labels=labels)
    log_p = torch.log_softmax(out.logits, 1)
    valid = labels != 255
    picked = log_p.gather(1, labels.clamp(max=3).unsqueeze(1)).squeeze(1)
    main = -(picked * valid).sum() / labels.numel()  # mmseg: mean over all pixels
    log_s = torch.log_softmax(out.semantic_logits, 1).gather(1, labels.clamp(max=3).unsqueeze(1)).squeeze(1)
    sem = -(log_s * valid).sum() / labels.numel()
    torch.testing.assert_close(out.loss_main, main)
    torch.testing.assert_close(out.loss_semantic, sem)
    torch.testing.assert_close(out.loss, main + 0.4 * sem)


def test_bad_labels_are_named() -> None:
    model = semask.create_model("swin_t_fpn", num_classes=3, **TINY)
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"values \[7\] outside \[0, 2\]"):
        model(torch.randn(1, 3, 64, 64), labels=labels)


def test_gradient_reaches_every_semantic_parameter() -> None:
    """lambda starts at 0: one step makes it non-zero, then every semantic parameter learns."""
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", num_classes=4, **TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, labels = torch.randn(2, 3, 48, 48), torch.randint(0, 4, (2, 48, 48))
    semantic = {n: p for n, p in model.named_parameters() if ".semantic_layer." in n}
    assert len(semantic) == 4 * (2 + 4 * 2 + 1)  # per stage: norm1 (2) + 4 Linear (w, b) + lambda
    model(x, labels=labels).loss.backward()
    for name, p in semantic.items():
        if name.endswith(("lambda_", "mlp_cls_q.weight", "mlp_cls_q.bias", "norm1.weight", "norm1.bias")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    opt.zero_grad()
    model(x, labels=labels).loss.backward()
    for name, p in semantic.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient into {name}"


@pytest.mark.parametrize("single_file", [False, True])
def test_save_load_round_trip(tmp_path, single_file: bool) -> None:
    model = randomize(
        semask.create_model(
            "semask_swin_t_fpn",
            num_classes=3,
            class_names=["sky", "sea", "boat"],
            palette=[[0, 0, 255], [0, 255, 0], [255, 0, 0]],
            **TINY,
        )
    )
    path = tmp_path / ("m.safetensors" if single_file else "model_dir")
    model.save_pretrained(path)
    loaded = semask.load(path)
    assert loaded.config == model.config
    x = torch.randn(1, 3, 50, 50)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="a folder without config.json"):
        (tmp_path / "empty").mkdir()
        semask.load(tmp_path / "empty")
    model = semask.create_model("semask_swin_t_fpn", num_classes=3, **TINY)
    model.save_pretrained(tmp_path / "a")
    other = semask.create_model("semask_swin_t_fpn", num_classes=4, **TINY)
    other.save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").replace(tmp_path / "b" / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"18 mis-shaped keys:(\n.*)*layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight: checkpoint \(3, 16\) vs model \(4, 16\)",
    ):
        semask.load(tmp_path / "b")


def test_official_strict_load_lists_bad_keys(tmp_path) -> None:
    model = semask.create_model("semask_swin_t_fpn", num_classes=5, **TINY)
    sd = to_official(model)
    del sd["backbone.norm2.weight"]
    sd["decode_head.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd, "meta": {}}, tmp_path / "ck.pth")
    with pytest.raises(CheckpointError) as info:
        semask.load(tmp_path / "ck.pth")
    msg = str(info.value)
    assert "1 missing keys:\n    backbone.norm2.weight" in msg
    assert "1 unexpected keys:\n    decode_head.extra.weight" in msg


def test_official_inference_of_architecture(tmp_path) -> None:
    sd = to_official(semask.create_model("semask_swin_t_fpn", num_classes=19, **{**TINY, "window_size": 12}))
    torch.save(sd, tmp_path / "bare.pth")  # a bare state dict also loads
    model = semask.load(tmp_path / "bare.pth")
    assert (model.config.num_classes, model.config.window_size, model.config.decoder_channels) == (19, 12, 16)
    assert model.config.semantic_global_stages == ()  # K = 19 -> windowed everywhere
    assert semask.load(tmp_path / "bare.pth", semantic_global_stages=(3,)).config.semantic_global_stages == (3,)
    base = to_official(semask.create_model("swin_t_fpn", num_classes=150, **TINY))
    torch.save({"state_dict": base}, tmp_path / "swin.pth")
    assert not semask.load(tmp_path / "swin.pth").config.is_semask


def test_refuses_to_unpickle_code(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"obj": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused: it would run code"):
        semask.load(tmp_path / "evil.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        semask.load(tmp_path / "junk.pth")


def _imagenet_swin_state_dict(window: int) -> dict[str, torch.Tensor]:
    """A Swin classification checkpoint with the public key names (classifier head, attn masks)."""
    base = semask.create_model("swin_t_fpn", num_classes=3, **{**TINY, "window_size": window})
    sd = {
        k[len("backbone.") :]: v.clone()
        for k, v in base.state_dict().items()
        if k.startswith("backbone.") and not k.startswith("backbone.norm")
    }
    sd["norm.weight"], sd["norm.bias"] = torch.ones(128), torch.zeros(128)
    sd["head.weight"], sd["head.bias"] = torch.zeros(1000, 128), torch.zeros(1000)
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    return sd


def test_backbone_weights_from_imagenet(tmp_path) -> None:
    sd = _imagenet_swin_state_dict(window=7)
    torch.save({"model": sd}, tmp_path / "swin_tiny_patch4_window7_224.pth")
    model = semask.create_model(
        "semask_swin_t_fpn", num_classes=3, backbone_weights=str(tmp_path / "swin_tiny_patch4_window7_224.pth"), **TINY
    )
    torch.testing.assert_close(
        model.backbone.layers[2].blocks[1].mlp.fc1.weight, sd["layers.2.blocks.1.mlp.fc1.weight"]
    )
    report = model.load_backbone_weights(str(tmp_path / "swin_tiny_patch4_window7_224.pth"))
    assert all(k.startswith(("norm", "layers.")) for k in report.missing)
    assert (
        sum(".semantic_layer." in k for k in report.missing) == 4 * 11
        and sum(k.startswith("norm") for k in report.missing) == 8
    )
    assert "head.weight" in report.unexpected and "norm.weight" in report.unexpected


def test_backbone_weights_resample_window_and_reject_wrong_depth(tmp_path) -> None:
    torch.save({"model": _imagenet_swin_state_dict(window=7)}, tmp_path / "w7.pth")
    model = semask.create_model(
        "semask_swin_b_fpn", num_classes=3, backbone_weights=str(tmp_path / "w7.pth"), **{**TINY, "window_size": 12}
    )
    assert model.backbone.layers[0].blocks[0].attn.relative_position_bias_table.shape == (23 * 23, 1)
    query = semask.create_model("query_swin_t_fpn", num_classes=3, backbone_weights=str(tmp_path / "w7.pth"), **TINY)
    assert query.backbone.layers[0].aux_classifier.weight.shape == (3, 16)  # the ablation's new head starts fresh
    deeper = semask.create_model("semask_swin_t_fpn", num_classes=3, **{**TINY, "depths": (2, 2, 4, 2)})
    with pytest.raises(CheckpointError, match="missing keys"):
        deeper.load_backbone_weights(str(tmp_path / "w7.pth"))


def test_summary_matches_paper_convention() -> None:
    s = describe("semask_swin_t_fpn", 150, (512, 512))
    assert s.params_total == 34_655_748
    assert s.params_semantic == 34_655_748 - 32_650_064
    assert s.params_total == s.params_encoder + s.params_semantic + s.params_decoder
    assert round(s.gmacs_conv_linear, 2) == 39.76  # spec: 39.76 G by the paper's convention
    assert round(s.gflops_full, 1) == 83.1  # spec: 83.1 G counting every matmul


def test_ablation_presets() -> None:
    with torch.device("meta"):
        trans = semask.create_model("trans_swin_t_fpn")
        no_lambda = semask.create_model("semask_swin_t_fpn_no_lambda")
        query = semask.create_model("query_swin_t_fpn")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(trans) / 1e6) == 36  # paper Table 3: 36 M
    assert count(no_lambda) == PARAMS["semask_swin_t_fpn"][0] - 4  # the four lambdas
    assert count(query) == PARAMS["swin_t_fpn"][0] + sum((96 * 2**i + 1) * 150 for i in range(4))
    x, labels = torch.randn(1, 3, 40, 40), torch.randint(0, 4, (1, 40, 40))
    for name in ("trans_swin_t_fpn", "swin_t_fpn_aux", "query_swin_t_fpn", "semask_swin_t_fpn_no_prior_loss"):
        out = semask.create_model(name, num_classes=4, **TINY)(x, labels=labels)
        has_prior = name in ("swin_t_fpn_aux", "query_swin_t_fpn")
        assert (out.loss_semantic is not None) == has_prior, name
        if has_prior:
            torch.testing.assert_close(out.loss, out.loss_main + 0.4 * out.loss_semantic)
        else:
            torch.testing.assert_close(out.loss, out.loss_main)


def test_mask_and_index_caches_are_bounded_by_bytes() -> None:
    from semask.models.layers import TensorCache

    cache = TensorCache(max_bytes=1000)
    built = []

    def make(n: int):
        built.append(n)
        return torch.zeros(n, dtype=torch.uint8)

    a = cache.get("a", lambda: make(400))
    assert cache.get("a", lambda: make(400)) is a and built == [400]  # a hit builds nothing
    cache.get("b", lambda: make(400))
    cache.get("a", lambda: make(400))  # a becomes the most recent
    cache.get("c", lambda: make(400))  # 1200 bytes > 1000: the least recent (b) goes
    assert set(cache._items) == {"a", "c"}
    cache.get("big", lambda: make(5000))  # larger than the budget: returned, never kept
    assert "big" not in cache._items and set(cache._items) == {"a", "c"}
    cache.clear()
    assert not cache._items
