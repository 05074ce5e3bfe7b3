"""SeMask Swin with mask-classification heads (spec semask_mask2former.md)."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import M2F_TINY, randomize

import semask
from semask.models import CheckpointError
from semask.models.mask2former import model as m2f
from semask.models.mask2former.criterion import SetCriterion, labels_to_targets
from semask.models.mask2former.matcher import (
    HungarianMatcher,
    pairwise_dice,
    pairwise_sigmoid_ce,
    pairwise_sigmoid_focal,
)
from semask.models.mask2former.ops import MSDeformAttn, modulated_deform_conv2d, ms_deform_attn
from semask.models.mask2former.transformer_decoders import Predictions
from semask.models.registry import build_model, get_config
from semask.models.semantic_layer import SemanticLayer

FAMILIES = ("maskformer", "mask2former", "fapn", "msfapn")
TINY = dict(M2F_TINY, num_classes=5, train_num_points=64, deformable_groups=2)


@pytest.fixture(autouse=True, scope="module")
def single_thread():  # type: ignore[no-untyped-def]
    """Tiny models gain nothing from threads, and spinning OpenMP threads stall on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_model(family: str, **overrides: object) -> m2f.SeMaskMaskFormer:
    return semask.create_model("semask_swin_t_mask2former", **{**TINY, "family": family, **overrides})  # type: ignore[return-value]


# --------------------------------------------------------------------------- operators
def bilinear_reference(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img (C, H, W) at pixel coordinates (y, x); corners outside the image count as 0."""
    _, h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, xx in itertools.product((y0, y0 + 1), (x0, x0 + 1)):
        if 0 <= yy < h and 0 <= xx < w:
            out += (1 - abs(y - yy)) * (1 - abs(x - xx)) * img[:, yy, xx]
    return out


def test_ms_deform_attn_matches_loop_reference() -> None:
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 3)]
    b, heads, dh, q, points = 2, 2, 3, 5, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, dh, dtype=torch.float64)
    loc = torch.rand(b, q, heads, len(shapes), points, 2, dtype=torch.float64) * 1.4 - 0.2  # some outside
    weights = torch.rand(b, q, heads, len(shapes), points, dtype=torch.float64)
    out = ms_deform_attn(value, shapes, loc, weights)
    starts = [0, shapes[0][0] * shapes[0][1]]
    expected = torch.zeros(b, q, heads, dh, dtype=torch.float64)
    for bi, qi, hi, li, pi in itertools.product(range(b), range(q), range(heads), range(len(shapes)), range(points)):
        h, w = shapes[li]
        img = value[bi, starts[li] : starts[li] + h * w, hi].T.reshape(dh, h, w)
        x, y = loc[bi, qi, hi, li, pi].tolist()
        sample = bilinear_reference(img, y * h - 0.5, x * w - 0.5)  # align_corners=False convention
        expected[bi, qi, hi] += weights[bi, qi, hi, li, pi] * sample
    torch.testing.assert_close(out, expected.reshape(b, q, heads * dh))


def test_msdeform_attn_initial_offsets_form_a_ring() -> None:
    attn = MSDeformAttn(dim=32, levels=3, heads=8, points=4)
    offsets = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    # head 0 points along +x, head 2 along +y; the radius of point p is p + 1 on every level
    torch.testing.assert_close(offsets[0, :, :, 0], torch.arange(1.0, 5.0).expand(3, 4))
    torch.testing.assert_close(offsets[2, :, :, 1], torch.arange(1.0, 5.0).expand(3, 4))
    assert offsets.abs().amax(-1).min() >= 1.0 - 1e-6
    assert torch.count_nonzero(attn.attention_weights.weight) == 0


def test_modulated_deform_conv_matches_loop_reference() -> None:
    torch.manual_seed(0)
    b, c, h, w, c_out, groups = 1, 4, 5, 6, 3, 2
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    weight = torch.randn(c_out, c, 3, 3, dtype=torch.float64)
    bias = torch.randn(c_out, dtype=torch.float64)
    offset = torch.randn(b, 2 * groups * 9, h, w, dtype=torch.float64) * 1.5
    mask = torch.rand(b, groups * 9, h, w, dtype=torch.float64)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, padding=1)
    expected = bias.view(1, -1, 1, 1).repeat(b, 1, h, w)
    cg = c // groups
    for i, j, g, k in itertools.product(range(h), range(w), range(groups), range(9)):
        ki, kj = divmod(k, 3)
        dy, dx = offset[0, 2 * (g * 9 + k), i, j].item(), offset[0, 2 * (g * 9 + k) + 1, i, j].item()
        sample = bilinear_reference(x[0, g * cg : (g + 1) * cg], i - 1 + ki + dy, j - 1 + kj + dx)
        sample = sample * mask[0, g * 9 + k, i, j]
        expected[0, :, i, j] += weight[:, g * cg : (g + 1) * cg, ki, kj] @ sample
    torch.testing.assert_close(out, expected)


def test_modulated_deform_conv_without_offsets_is_a_convolution() -> None:
    torch.manual_seed(1)
    x, weight, bias = torch.randn(2, 8, 7, 5), torch.randn(6, 8, 3, 3), torch.randn(6)
    offset, mask = torch.zeros(2, 2 * 4 * 9, 7, 5), torch.ones(2, 4 * 9, 7, 5)
    torch.testing.assert_close(
        modulated_deform_conv2d(x, offset, mask, weight, bias),
        F.conv2d(x, weight, bias, padding=1),
        atol=1e-4,
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="deformable groups"):
        modulated_deform_conv2d(x, torch.zeros(2, 10, 7, 5), mask, weight, bias)


# --------------------------------------------------------------------------- matcher
def test_pairwise_costs_match_per_pair_losses() -> None:
    torch.manual_seed(0)
    pred, tgt = torch.randn(4, 30), (torch.rand(3, 30) > 0.5).float()
    for q, t in itertools.product(range(4), range(3)):
        bce = F.binary_cross_entropy_with_logits(pred[q], tgt[t])
        p = pred[q].sigmoid()
        dice = 1 - (2 * (p * tgt[t]).sum() + 1) / (p.sum() + tgt[t].sum() + 1)
        pt = p * tgt[t] + (1 - p) * (1 - tgt[t])
        at = 0.25 * tgt[t] + 0.75 * (1 - tgt[t])
        focal = (at * F.binary_cross_entropy_with_logits(pred[q], tgt[t], reduction="none") * (1 - pt) ** 2).mean()
        torch.testing.assert_close(pairwise_sigmoid_ce(pred, tgt)[q, t], bce)
        torch.testing.assert_close(pairwise_dice(pred, tgt)[q, t], dice)
        torch.testing.assert_close(pairwise_sigmoid_focal(pred, tgt)[q, t], focal)


@pytest.mark.parametrize("num_points", [0, 200])
def test_hungarian_matching_is_optimal_against_brute_force(num_points: int) -> None:
    torch.manual_seed(num_points)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points)
    q, k = 5, 4
    logits, masks = torch.randn(2, q, k + 1), torch.randn(2, q, 6, 6)
    targets = [
        (torch.tensor([0, 2, 3]), (torch.rand(3, 24, 24) > 0.5).float()),
        (torch.tensor([1]), torch.ones(1, 24, 24)),
    ]
    for b, (rows, cols) in enumerate(matcher(logits, masks, targets)):
        n = len(targets[b][0])
        assert len(rows) == n and sorted(cols.tolist()) == list(range(n)) and len(set(rows.tolist())) == n
        torch.manual_seed(123)  # same random points for the brute-force cost
        cost = matcher.cost_matrix(logits[b], masks[b], *targets[b])
        torch.manual_seed(123)
        rows2, cols2 = matcher(logits[b : b + 1], masks[b : b + 1], targets[b : b + 1])[0]
        best = min(sum(cost[perm[t], t] for t in range(n)) for perm in itertools.permutations(range(q), n))
        torch.testing.assert_close(cost[rows2, cols2].sum(), torch.as_tensor(best))


def test_labels_to_targets_drops_ignore() -> None:
    labels = torch.tensor([[[0, 0, 255], [3, 3, 255]]])
    ((classes, masks),) = labels_to_targets(labels)
    assert classes.tolist() == [0, 3]
    assert masks.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [1, 1, 0]]]


def test_criterion_prefers_the_right_masks_and_weights_no_object() -> None:
    criterion = SetCriterion(3, 2.0, 5.0, 5.0, 0.1, num_points=256)
    labels = torch.zeros(1, 16, 16, dtype=torch.int64)
    labels[:, 8:] = 2
    big = 30.0
    logits = torch.full((1, 3, 4), -big)
    logits[0, 0, 0] = logits[0, 1, 2] = logits[0, 2, 3] = big  # query 2 says "no object"
    masks = torch.full((1, 3, 16, 16), -big)
    masks[0, 0, :8] = big
    masks[0, 1, 8:] = big
    total, terms = criterion(Predictions([logits], [masks]), labels)
    assert float(terms["loss_ce"]) < 1e-3
    assert criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    # importance sampling concentrates on boundary/border points, so even a perfect mask costs something
    masks[0, 0] = -masks[0, 0]  # wrong mask for class 0
    total_bad, terms_bad = criterion(Predictions([logits], [masks]), labels)
    assert float(terms_bad["loss_dice"]) > 0.4 > float(terms["loss_dice"])
    assert float(total_bad) > 3 * float(total)


# --------------------------------------------------------------------------- model
SPEC_PARAMS = {  # spec section 6
    "semask_swin_l_maskformer": (218_719_231, 6_246_144, 10_128_279),
    "semask_swin_l_mask2former": (222_632_383, 5_790_144, 14_497_431),
    "semask_swin_l_mask2former_cityscapes": (221_843_108, 5_790_144, 14_463_764),
    "semask_swin_l_mask2former_fapn": (226_745_479, 9_903_240, 14_497_431),
    "semask_swin_l_mask2former_msfapn": (223_851_415, 7_009_176, 14_497_431),
}


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_full_size_parameter_counts_match_spec(name: str) -> None:
    with torch.device("meta"):
        model = build_model(get_config(name))
    total, pixel, predictor = SPEC_PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.sem_seg_head.pixel_decoder.parameters()) == pixel
    assert sum(p.numel() for p in model.sem_seg_head.predictor.parameters()) == predictor


def official_layout(name: str) -> dict[str, tuple[int, ...]]:
    """Our model's keys mapped back to the detectron2 names, with the entries our model rebuilds."""
    with torch.device("meta"):
        model = build_model(get_config(name))
    layout = {k.replace(".lambda_", ".gamma"): tuple(v.shape) for k, v in model.state_dict().items()}
    for key in list(layout):
        if key.endswith("attn.relative_position_bias_table"):
            n = model.config.window_size**2
            layout[key.replace("relative_position_bias_table", "relative_position_index")] = (n, n)
        shared = re.match(r"(.*)layer_(\d)\.norm\.(\w+)$", key)  # FaPN's duplicated GroupNorm keys
        if shared and f"{shared.group(1)}align_{shared.group(2)}.offset.weight" in layout:
            layout[f"{shared.group(1)}align_{shared.group(2)}.offset.norm.{shared.group(3)}"] = layout[key]
    layout["criterion.empty_weight"] = (model.config.num_classes + 1,)
    return layout


@pytest.mark.parametrize(
    "name,keys",
    [
        ("semask_swin_l_mask2former", 694),
        ("semask_swin_l_maskformer", 546),
        ("semask_swin_l_mask2former_fapn", 621),
        ("semask_swin_l_mask2former_msfapn", 701),
    ],
)
def test_official_key_layout(name: str, keys: int) -> None:
    """Key counts of spec 5.6 and shapes of spec 5.1-5.5 tables."""
    layout = official_layout(name)
    assert len(layout) == keys
    p, pd = "sem_seg_head.predictor.", "sem_seg_head.pixel_decoder."
    expected = {
        "backbone.layers.2.blocks.17.attn.relative_position_bias_table": (529, 24),
        "backbone.layers.3.semantic_layer.class_injection.0.mlp_cls_q.weight": (150, 1536),
        "backbone.layers.2.downsample.reduction.weight": (1536, 3072),
        "backbone.norm3.weight": (1536,),
        f"{p}class_embed.weight": (151, 256),
        f"{p}mask_embed.layers.2.weight": (256, 256),
    }
    if name.endswith("maskformer"):
        expected.update(
            {
                f"{p}transformer.decoder.layers.5.multihead_attn.in_proj_weight": (768, 256),
                f"{p}input_proj.weight": (256, 1536, 1, 1),
                f"{pd}layer_4.weight": (256, 1536, 3, 3),
                f"{pd}mask_features.weight": (256, 256, 3, 3),
                f"{pd}adapter_3.weight": (256, 768, 1, 1),
            }
        )
    else:
        expected.update(
            {
                f"{p}transformer_cross_attention_layers.8.multihead_attn.in_proj_weight": (768, 256),
                f"{p}query_feat.weight": (100, 256),
                f"{p}level_embed.weight": (3, 256),
            }
        )
    if name.endswith(("mask2former", "msfapn")):
        expected.update(
            {
                f"{pd}input_proj.0.0.weight": (256, 1536, 1, 1),
                f"{pd}input_proj.2.0.weight": (256, 384, 1, 1),
                f"{pd}transformer.level_embed": (3, 256),
                f"{pd}transformer.encoder.layers.5.self_attn.sampling_offsets.weight": (192, 256),
                f"{pd}transformer.encoder.layers.5.linear1.weight": (1024, 256),
                f"{pd}mask_features.weight": (256, 256, 1, 1),
                f"{pd}adapter_1.weight": (256, 192, 1, 1),
            }
        )
    if name.endswith("fapn"):
        expected.update(
            {
                f"{pd}align_1.offset.weight": (256, 512, 1, 1),
                f"{pd}align_1.offset.norm.weight": (256,),
                f"{pd}align_1.dcpack_L2.weight": (256, 256, 3, 3),
                f"{pd}align_1.dcpack_L2.conv_offset_mask.weight": (216, 256, 3, 3),
            }
        )
    for key, shape in expected.items():
        assert layout.get(key) == shape, key


def test_semantic_attention_rule_per_family() -> None:
    rules = {
        ("maskformer", 150): (3,),
        ("mask2former", 150): (3,),
        ("mask2former", 19): (),
        ("fapn", 150): (2, 3),
        ("msfapn", 150): (2, 3),
    }
    for (family, k), stages in rules.items():
        assert get_config("semask_swin_l_mask2former", family=family, num_classes=k).semantic_global_stages == stages
    cfg = get_config("semask_swin_l_mask2former_cityscapes")
    assert (cfg.semantic_window_size, cfg.window_size, cfg.semantic_global_stages) == (7, 12, ())
    model = tiny_model("fapn")
    flags = [layer.semantic_layer.global_attention for layer in model.backbone.layers]
    assert flags == [False, False, True, True]
    with pytest.raises(ValueError, match="family"):
        get_config("semask_swin_l_mask2former", family="detr")


def test_semantic_layers_start_as_identity_on_normalised_features() -> None:
    model = tiny_model("mask2former").eval()
    layer = model.backbone.layers[0].semantic_layer
    assert isinstance(layer, SemanticLayer)
    block = layer.class_injection[0]
    assert torch.count_nonzero(block.mlp_res.weight) == 0 and float(block.lambda_.detach()) == 0.0
    assert block.mlp_cls_q.weight.std() > 0.1  # kaiming, not trunc-normal(0.02)
    x = torch.randn(2, 16, 32)
    y, _ = layer(x, 4, 4)
    torch.testing.assert_close(y, layer.norm1(x))


def test_semantic_head_uses_align_corners_true() -> None:
    torch.manual_seed(0)
    priors = [torch.randn(1, 3, 8 // 2**i, 12 // 2**i) for i in range(4)]
    pred = m2f.semantic_head(priors)
    assert pred.shape == (1, 3, 32, 48)
    # align_corners=True keeps corner values exactly: the corners are sums of the priors' corners
    torch.testing.assert_close(pred[..., 0, 0], sum(p[..., 0, 0] for p in priors))
    torch.testing.assert_close(pred[..., -1, -1], sum(p[..., -1, -1] for p in priors))


def test_semantic_inference_combines_classes_and_masks() -> None:
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 4, 6), torch.randn(2, 4, 3, 5)
    out = m2f.semantic_inference(logits, masks)
    expected = torch.zeros(2, 5, 3, 5)
    for b, q in itertools.product(range(2), range(4)):
        expected[b] += logits[b, q].softmax(-1)[:5, None, None] * masks[b, q].sigmoid()
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_outputs_and_loss(family: str) -> None:
    torch.manual_seed(0)
    model = tiny_model(family)
    x = torch.randn(2, 3, 50, 70)
    labels = torch.randint(0, 5, (2, 50, 70))
    labels[:, :4] = 255
    out = model(x, labels)
    assert out.logits.shape == out.semantic_logits.shape == (2, 5, 50, 70)
    assert out.pred_logits.shape == (2, 8, 6) and out.pred_masks.shape == (2, 8, 16, 24)  # padded to 64 x 96
    n_sets = 3 if family == "maskformer" else 4
    assert len(out.aux_outputs) == n_sets - 1 and len(out.loss_terms) == 3 * n_sets
    torch.testing.assert_close(out.loss, out.loss_main + 0.4 * out.loss_semantic)
    w = (1.0, 20.0, 1.0) if family == "maskformer" else (2.0, 5.0, 5.0)
    weighted = sum(
        wt * v
        for k, v in out.loss_terms.items()
        for name, wt in zip(("loss_ce", "loss_mask", "loss_dice"), w)
        if k.rsplit("_", 1)[0] == name or k == name
    )
    torch.testing.assert_close(out.loss_main, weighted)
    masks = F.interpolate(out.pred_masks, size=(64, 96), mode="bilinear", align_corners=False)[..., :50, :70]
    torch.testing.assert_close(out.logits, m2f.semantic_inference(out.pred_logits, masks))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_deep_supervision_off_and_bad_labels() -> None:
    model = tiny_model("mask2former", deep_supervision=False)
    x, labels = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.int64)
    assert sorted(model(x, labels).loss_terms) == ["loss_ce", "loss_dice", "loss_mask"]
    with pytest.raises(ValueError, match=r"\[7\]"):
        model(x, torch.full((1, 64, 64), 7))
    with pytest.raises(ValueError, match="do not match"):
        model(x, torch.zeros(1, 16, 64, dtype=torch.int64))


def test_autocast_keeps_deformable_decoder_in_float32() -> None:
    model = tiny_model("msfapn")
    x, labels = torch.randn(1, 3, 64, 64), torch.randint(0, 5, (1, 64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mask_features, multi_scale = model.sem_seg_head.pixel_decoder(model.backbone(x).features)
        out = model(x, labels)
    assert mask_features.dtype == multi_scale[0].dtype == torch.float32
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("family", FAMILIES)
def test_official_checkpoint_loads_strictly(family: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A detectron2-style file (gamma, index buffers, empty_weight, shared-GN duplicates) round-trips."""
    model = randomize(tiny_model(family, num_classes=150, drop_path_rate=0.0))  # lambda != 0: semantic attention active
    sd = {k.replace(".lambda_", ".gamma"): v for k, v in model.state_dict().items()}
    for key in [k for k in sd if k.endswith("relative_position_bias_table")]:
        sd[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(
            16, 16, dtype=torch.int64
        )
    for key in [k for k in sd if ".align_" in k and k.endswith("offset.weight")]:
        layer = key.replace("align_", "layer_").replace(".offset.weight", ".norm.")
        sd[key.replace(".weight", ".norm.weight")] = sd[layer + "weight"]
        sd[key.replace(".weight", ".norm.bias")] = sd[layer + "bias"]
    sd["criterion.empty_weight"] = torch.tensor([1.0] * 150 + [0.1])
    path = tmp_path / "model_final.pth"
    torch.save({"model": sd, "iteration": 3}, path)
    loaded = semask.load(path, drop_path_rate=0.0, decoder_heads=4).eval()
    cfg = loaded.config
    assert (cfg.family, cfg.num_classes, cfg.dec_layers, cfg.num_queries, cfg.depths, cfg.no_object_weight) == (
        family,
        150,
        3,
        8,
        (1, 1, 2, 1),
        pytest.approx(0.1),
    )
    if family in ("mask2former", "msfapn"):
        assert (cfg.encoder_layers, cfg.encoder_ffn_dim, cfg.encoder_points) == (2, 64, 4)
    if family in ("fapn", "msfapn"):
        assert cfg.deformable_groups == 2
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    if family in ("fapn", "msfapn"):
        shared = sd["sem_seg_head.pixel_decoder.align_1.offset.norm.weight"]
        sd["sem_seg_head.pixel_decoder.align_1.offset.norm.weight"] = torch.zeros(32)
        torch.save({"model": sd}, path)
        with pytest.raises(CheckpointError, match="shared GroupNorm"):
            semask.load(path, decoder_heads=4)
        sd["sem_seg_head.pixel_decoder.align_1.offset.norm.weight"] = shared
    del sd["sem_seg_head.predictor.mask_embed.layers.0.bias"]
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="mask_embed.layers.0.bias"):
        semask.load(path, decoder_heads=4)


def test_save_and_load_model_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model("fapn").eval()
    model.save_pretrained(tmp_path / "m")
    loaded = semask.load(tmp_path / "m")
    x = torch.randn(1, 3, 40, 40)
    torch.testing.assert_close(loaded(x).logits, model(x).logits)


def test_multi_scale_flip_test_averages_scores_at_short_edge_sizes() -> None:
    """--aug-test of a mask-classification model: detectron2's short-edge sizes, scores averaged as they are."""
    from semask.data.transforms import normalize
    from semask.engine.inference import predict_image

    torch.manual_seed(0)
    model = tiny_model("mask2former").eval()
    assert model.aug_test() == {"sizes": [320, 480, 640, 800, 960, 1120], "max_size": 4480, "flip": True}
    cityscapes = semask.create_model("semask_swin_t_mask2former_cityscapes", **{**TINY, "num_classes": 19})
    assert cityscapes.aug_test()["sizes"] == [512, 768, 1024, 1280, 1536, 1792]
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    mean, std = model.config.mean, model.config.std
    x = torch.from_numpy(normalize(image, mean, std))[None]
    with torch.no_grad():
        plain = model(x).logits
        mirrored = model(x.flip(-1)).logits.flip(-1)
    got = predict_image(model, image, mean, std, None, sizes=[64], max_size=4480, flip=True)
    np.testing.assert_array_equal(got, ((plain + mirrored) / 2).argmax(1)[0].numpy())  # no softmax
    two = predict_image(model, image, mean, std, None, sizes=[48, 80], max_size=4480, flip=True)
    assert two.shape == (64, 96)


def test_tiny_overfit_loss_decreases() -> None:
    torch.manual_seed(0)
    model = tiny_model("mask2former", num_classes=3, drop_path_rate=0.0, train_num_points=128)
    x = torch.randn(1, 3, 64, 64)
    labels = torch.zeros(1, 64, 64, dtype=torch.int64)
    labels[:, :, 32:] = 1
    labels[:, 40:, :20] = 2
    x = x + labels[:, None].float()  # make the classes visible in the image
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        out = model(x, labels)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).logits.argmax(1) == labels).float().mean()
    assert accuracy > 0.8, float(accuracy)
