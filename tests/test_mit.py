"""SeMask-MiT / SegFormer: parameter counts vs spec semask_mit.md, shapes, loss, lambda = 0
equivalence, ImageNet and official checkpoint loading in the NVlabs, mmseg and HF key schemes."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import semask
from semask.config import RECIPES_DIR, load_config
from semask.engine.trainer import param_groups
from semask.models import CheckpointError, mit
from semask.models.mit import MixTransformer, SeMaskMiT
from semask.models.semask_fpn.convert import _is_official_fpn
from semask.models.summary import count_parameters

K = 5
TINY = dict(
    embed_dims=(8, 16, 24, 32),
    depths=(1, 2, 1, 1),
    num_heads=(1, 2, 3, 4),
    decoder_channels=16,
    semantic_window_size=4,
    num_classes=K,
)
NVLABS_TINY = dict(TINY, decode_head="nvlabs")

# ---------------------------------------------------------------- spec numbers (semask_mit.md)
WIDE = (64, 128, 320, 512)
VARIANTS = {  # name: (C_i, depths, spec 1.1 encoder params, NVlabs head width E)
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 3_319_392, 256),
    "b1": (WIDE, (2, 2, 2, 2), 13_151_424, 256),
    "b2": (WIDE, (3, 4, 6, 3), 24_196_288, 768),
    "b3": (WIDE, (3, 4, 18, 3), 44_072_128, 768),
    "b4": (WIDE, (3, 8, 27, 3), 60_842_688, 768),
    "b5": (WIDE, (3, 6, 40, 3), 81_443_008, 768),
}
# Spec 1.3 head counts at K = 150, and spec 5.1 totals (NVlabs head) in millions.
SPEC_NVLABS_HEAD_150 = {
    "b0": 433_302,
    "b1": 564_374,
    "b2": 3_265_686,
    "b3": 3_265_686,
    "b4": 3_265_686,
    "b5": 3_265_686,
}
SPEC_MMSEG_HEAD_150 = 565_398  # B1-B5
SPEC_NVLABS_TOTAL_M = {"b0": 3.753, "b1": 13.716, "b2": 27.462, "b3": 47.338, "b4": 64.108, "b5": 84.709}
SR, PATCH = (8, 4, 2, 1), (7, 3, 3, 3)


def encoder_formula(dims: tuple[int, ...], depths: tuple[int, ...]) -> int:
    """Spec Appendix A: patch embeds, blocks, stage norms."""
    total, prev = 0, 3
    for c, d, r, k in zip(dims, depths, SR, PATCH):
        total += prev * c * k * k + c + 2 * c
        block = 2 * c + (c * c + c) + (2 * c * c + 2 * c) + (c * c + c) + 2 * c
        block += (4 * c * c + 4 * c) + (36 * c + 4 * c) + (4 * c * c + c)
        if r > 1:
            block += c * c * r * r + c + 2 * c
        total += d * block + 2 * c
        prev = c
    return total


def nvlabs_head_formula(dims: tuple[int, ...], e: int, k: int) -> int:
    return sum(c * e + e for c in dims) + 4 * e * e + 2 * e + e * k + k


def mmseg_head_formula(dims: tuple[int, ...], k: int, e: int = 256) -> int:
    return sum(c * e + 2 * e for c in dims) + 4 * e * e + 2 * e + e * k + k


def semantic_formula(dims: tuple[int, ...], k: int, layer_norm: bool = True) -> int:
    """Spec 4.4 per SeMask stage: 2(CK + K) + 2(C^2 + C) + 1 (lambda) + 2C (LN_s)."""
    return sum(2 * (c * k + k) + 2 * (c * c + c) + 1 + (2 * c if layer_norm else 0) for c in dims)


def meta_model(name: str, **overrides: object) -> torch.nn.Module:
    with torch.device("meta"):
        return semask.create_model(name, **overrides)


def test_formulas_reproduce_the_spec_numbers() -> None:
    """Guards the test's own formulas against the spec's published [calc] values."""
    for v, (dims, depths, encoder, e) in VARIANTS.items():
        assert encoder_formula(dims, depths) == encoder
        assert nvlabs_head_formula(dims, e, 150) == SPEC_NVLABS_HEAD_150[v]
        assert round((encoder + SPEC_NVLABS_HEAD_150[v]) / 1e6, 3) == SPEC_NVLABS_TOTAL_M[v]
    assert mmseg_head_formula(WIDE, 150) == SPEC_MMSEG_HEAD_150
    assert semantic_formula(WIDE, 150) == 1_082_548 and semantic_formula(WIDE, 19) == 813_212


SPEC_B4_TOTALS_150 = {  # spec 1.3 / 4.4: (preset, head) -> total parameters
    ("mit_b4", "nvlabs"): 64_108_374,
    ("mit_b4", "mmseg"): 61_408_086,
    ("semask_mit_b4", "nvlabs"): 65_190_922,
    ("semask_mit_b4", "mmseg"): 62_490_634,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_segformer_baseline_parameter_counts(variant: str) -> None:
    dims, _depths, encoder, e = VARIANTS[variant]
    for k in (150, 19):
        for head, head_params in (("mmseg", mmseg_head_formula(dims, k)), ("nvlabs", nvlabs_head_formula(dims, e, k))):
            total, enc, sem, dec = count_parameters(meta_model(f"mit_{variant}", num_classes=k, decode_head=head))
            assert (enc, sem, dec) == (encoder, 0, head_params)
            if k == 150 and head == "nvlabs":
                assert dec == SPEC_NVLABS_HEAD_150[variant]
            if k == 150 and head == "mmseg" and variant != "b0":
                assert dec == SPEC_MMSEG_HEAD_150
            if k == 150 and (f"mit_{variant}", head) in SPEC_B4_TOTALS_150:
                assert total == SPEC_B4_TOTALS_150[f"mit_{variant}", head]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_semask_parameter_counts(variant: str) -> None:
    dims, _, encoder, e = VARIANTS[variant]
    for k, head in ((150, "mmseg"), (19, "mmseg"), (150, "nvlabs")):
        head_params = mmseg_head_formula(dims, k) if head == "mmseg" else nvlabs_head_formula(dims, e, k)
        total, enc, sem, dec = count_parameters(meta_model(f"semask_mit_{variant}", num_classes=k, decode_head=head))
        assert (enc, sem, dec) == (encoder, semantic_formula(dims, k), head_params)
        if k == 150 and (f"semask_mit_{variant}", head) in SPEC_B4_TOTALS_150:
            assert total == SPEC_B4_TOTALS_150[f"semask_mit_{variant}", head]
    sem = count_parameters(meta_model(f"semask_mit_{variant}", semantic_placement="after_stage_norm"))[2]
    assert sem == semantic_formula(dims, 150, layer_norm=False)


def test_preset_configs() -> None:
    cfg = semask.get_config("semask_mit_b4")
    assert cfg.depths == (3, 8, 27, 3) and cfg.num_heads == (1, 2, 5, 8) and cfg.sr_ratios == SR
    assert cfg.decode_head == "mmseg" and cfg.decoder_channels == 256 and cfg.drop_path_rate == 0.1
    assert cfg.semantic_placement == "before_stage_norm" and cfg.semantic_loss_weight == 0.4
    assert cfg.semantic_global_stages == (2, 3) and cfg.semantic_window_size == 7  # K = 150: hybrid
    assert semask.get_config("semask_mit_b4", num_classes=19).semantic_global_stages == ()
    assert semask.get_config("mit_b1", decode_head="nvlabs").decoder_channels == 256
    assert semask.get_config("mit_b2", decode_head="nvlabs").decoder_channels == 768
    with pytest.raises(ValueError, match="semantic_placement"):
        semask.get_config("semask_mit_b0", semantic_placement="inside")
    with pytest.raises(ValueError, match="decode_head"):
        semask.get_config("mit_b0", decode_head="fpn")
    with pytest.raises(ValueError, match="num_heads"):
        semask.get_config("mit_b0", num_heads=(1, 2, 3))


# ------------------------------------------------------------------------------ forward
def tiny_mit(name: str = "semask_mit_b0", seed: int = 0, **overrides: object) -> SeMaskMiT:
    torch.manual_seed(seed)
    return semask.create_model(name, **{**TINY, **overrides})  # type: ignore[return-value]


@pytest.mark.parametrize("head", ["mmseg", "nvlabs"])
def test_shapes_for_odd_input_sizes(head: str) -> None:
    model = tiny_mit(decode_head=head, semantic_global_stages=(2, 3)).eval()
    sr_shapes = []
    model.backbone.block1[0].attn.sr.register_forward_hook(lambda m, i, o: sr_shapes.append(tuple(o.shape[-2:])))
    x = torch.randn(2, 3, 67, 45)
    with torch.no_grad():
        out = model(x, output_semantic_logits=True)
        encoded = model.backbone(x)
    assert out.logits.shape == (2, K, 67, 45) and out.semantic_logits.shape == (2, K, 67, 45)
    sizes = [(17, 12), (9, 6), (5, 3), (3, 2)]  # ceil(H / 4), then ceil(. / 2) three times
    assert [tuple(f.shape) for f in encoded.features] == [(2, c, h, w) for c, (h, w) in zip(TINY["embed_dims"], sizes)]
    assert [tuple(p.shape) for p in encoded.semantic_priors] == [(2, K, h, w) for h, w in sizes]
    assert sr_shapes[0] == (17 // 8, 12 // 8)  # SR tokens: floor(H_i / R) x floor(W_i / R)
    assert out.loss is None


def test_input_smaller_than_reduction_ratio_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too small"):
        tiny_mit("mit_b0")(torch.randn(1, 3, 16, 16))


def test_loss_and_gradient_reach_lambda() -> None:
    model = tiny_mit(semantic_global_stages=(3,)).train()
    x = torch.randn(2, 3, 64, 48)
    labels = torch.randint(0, K, (2, 64, 48))
    labels[:, :5] = 255
    out = model(x, labels)
    assert torch.allclose(out.loss, out.loss_main + 0.4 * out.loss_semantic)
    out.loss.backward()
    for i, layer in model.backbone.semantic_layer.items():
        block = layer.class_injection[0]
        assert block.lambda_.grad is not None and block.lambda_.grad.abs().item() > 0, f"stage {i}: dead lambda"
        assert block.mlp_cls_q.weight.grad.abs().sum() > 0
    assert model.decode_head.conv_seg.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed1.proj.weight.grad.abs().sum() > 0

    baseline = tiny_mit("mit_b0").train()
    out = baseline(x, labels)
    assert out.semantic_logits is None and out.loss_semantic is None
    assert torch.equal(out.loss, out.loss_main)


# -------------------------------------------------------------- lambda = 0 equivalence
def randomise_norms(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial LayerNorm/BatchNorm affine parameters, so equivalence is not by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("placement", ["before_stage_norm", "after_stage_norm"])
def test_lambda_zero_semask_equals_plain_mit(placement: str, tmp_path) -> None:
    plain = tiny_mit("mit_b0", seed=3)
    randomise_norms(plain)
    path = tmp_path / "mit_tiny.pth"
    sd = {k[len("backbone.") :]: v for k, v in plain.state_dict().items() if k.startswith("backbone.")}
    sd |= {"head.weight": torch.randn(1000, 32), "head.bias": torch.randn(1000)}
    torch.save(sd, path)
    model = tiny_mit(seed=4, semantic_placement=placement, semantic_global_stages=(2, 3))
    report = model.load_backbone_weights(str(path))
    assert report.unexpected == ["head.bias", "head.weight"]
    assert report.missing and all(k.startswith("semantic_layer.") for k in report.missing)
    model.decode_head.load_state_dict(plain.decode_head.state_dict())
    plain.eval(), model.eval()
    x = torch.randn(2, 3, 71, 53)
    with torch.no_grad():
        ref, got = plain.backbone(x).features, model.backbone(x).features
        ref_logits, out = plain(x).logits, model(x, output_semantic_logits=True)
    tol = dict(rtol=0, atol=0) if placement == "after_stage_norm" else dict(rtol=1e-4, atol=1e-4)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, **tol)
    torch.testing.assert_close(out.logits, ref_logits, **tol)
    assert out.semantic_logits is not None
    with torch.no_grad():  # the check can fail: a non-zero lambda changes the features
        model.backbone.semantic_layer["1"].class_injection[0].lambda_.fill_(0.5)
        assert (model.backbone(x).features[1] - ref[1]).abs().max() > 1e-3


# --------------------------------------------------- checkpoint key schemes, built here
def ours_to_mmseg_encoder(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Spec 2.3 / 2.5 mapping, NVlabs names -> mmseg names (written independently of mit.py)."""
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        m = re.match(r"block(\d)\.(\d+)\.(.+)$", key)
        if m:
            i, j, rest = int(m[1]) - 1, m[2], m[3]
            pre = f"layers.{i}.1.{j}."
            if rest.startswith("attn.q."):
                kind = rest.split(".")[-1]
                out[f"{pre}attn.attn.in_proj_{kind}"] = torch.cat([v, sd[key.replace("attn.q.", "attn.kv.")]])
            elif rest.startswith("attn.kv."):
                continue
            elif rest.startswith("attn.proj."):
                out[pre + "attn.attn.out_proj." + rest.split(".")[-1]] = v
            elif rest.startswith("mlp.fc1.") or rest.startswith("mlp.fc2."):
                idx = 0 if "fc1" in rest else 4
                out[f"{pre}ffn.layers.{idx}.{rest.split('.')[-1]}"] = v[:, :, None, None] if v.ndim == 2 else v
            elif rest.startswith("mlp.dwconv.dwconv."):
                out[f"{pre}ffn.layers.1.{rest.split('.')[-1]}"] = v
            else:  # norm1, norm2, attn.sr, attn.norm
                out[pre + rest] = v
            continue
        m = re.match(r"patch_embed(\d)\.(proj|norm)\.(.+)$", key)
        if m:
            out[f"layers.{int(m[1]) - 1}.0.{'projection' if m[2] == 'proj' else 'norm'}.{m[3]}"] = v
            continue
        m = re.match(r"norm(\d)\.(.+)$", key)
        assert m, key
        out[f"layers.{int(m[1]) - 1}.2.{m[2]}"] = v
    return out


def ours_to_hf_encoder(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Spec 2.4 / 2.5 mapping, NVlabs names -> Hugging Face names (without ``segformer.encoder.``)."""
    names = {
        "norm1": "layer_norm_1",
        "norm2": "layer_norm_2",
        "attn.q": "attention.self.query",
        "attn.sr": "attention.self.sr",
        "attn.norm": "attention.self.layer_norm",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.dense1",
        "mlp.fc2": "mlp.dense2",
        "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    }
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        m = re.match(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            pre, mod, kind = f"block.{int(m[1]) - 1}.{m[2]}.", m[3], m[4]
            if mod == "attn.kv":
                c = v.shape[0] // 2
                out[f"{pre}attention.self.key.{kind}"] = v[:c]
                out[f"{pre}attention.self.value.{kind}"] = v[c:]
            else:
                out[pre + names[mod] + "." + kind] = v
            continue
        m = re.match(r"patch_embed(\d)\.(proj|norm)\.(.+)$", key)
        if m:
            out[f"patch_embeddings.{int(m[1]) - 1}.{'proj' if m[2] == 'proj' else 'layer_norm'}.{m[3]}"] = v
            continue
        m = re.match(r"norm(\d)\.(.+)$", key)
        assert m, key
        out[f"layer_norm.{int(m[1]) - 1}.{m[2]}"] = v
    return out


def ours_to_hf_head(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, v in sd.items():
        key = re.sub(r"^linear_c(\d)\.", lambda m: f"linear_c.{int(m[1]) - 1}.", key)
        key = key.replace("linear_fuse.conv.", "linear_fuse.").replace("linear_fuse.bn.", "batch_norm.")
        out[key.replace("linear_pred.", "classifier.")] = v
    return out


def split(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    sd = model.state_dict()
    encoder = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    head = {k[len("decode_head.") :]: v for k, v in sd.items() if k.startswith("decode_head.")}
    return encoder, head


def spec_nvlabs_keys(dims: tuple[int, ...], depths: tuple[int, ...], sr: tuple[int, ...]) -> set[str]:
    """Every key spec 2.1 + 2.2 lists for an NVlabs SegFormer checkpoint (conv_seg excluded)."""
    keys = set()
    wb = ("weight", "bias")
    for s in range(1, len(dims) + 1):
        keys |= {f"backbone.patch_embed{s}.{m}.{p}" for m in ("proj", "norm") for p in wb}
        keys |= {f"backbone.norm{s}.{p}" for p in wb}
        mods = ["norm1", "attn.q", "attn.kv", "attn.proj", "norm2", "mlp.fc1", "mlp.dwconv.dwconv", "mlp.fc2"]
        if sr[s - 1] > 1:
            mods += ["attn.sr", "attn.norm"]
        keys |= {f"backbone.block{s}.{j}.{m}.{p}" for j in range(depths[s - 1]) for m in mods for p in wb}
        keys |= {f"decode_head.linear_c{s}.proj.{p}" for p in wb}
    keys |= {"decode_head.linear_fuse.conv.weight", "decode_head.linear_pred.weight", "decode_head.linear_pred.bias"}
    keys |= {
        f"decode_head.linear_fuse.bn.{p}"
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    return keys


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random norms and BN statistics, so a converter that drops or swaps them is caught."""
    randomise_norms(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


CLASSES = [f"class{i}" for i in range(K)]
PALETTE = [[i, 2 * i, 3 * i] for i in range(K)]


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(b(x).logits, a(x).logits, rtol=0, atol=0)


def test_nvlabs_key_names_are_ours() -> None:
    model = tiny_mit("mit_b0", decode_head="nvlabs")
    assert set(model.state_dict()) == spec_nvlabs_keys(TINY["embed_dims"], TINY["depths"], SR)


def test_nvlabs_segformer_checkpoint_round_trip(tmp_path) -> None:
    model = trained_like(tiny_mit("mit_b0", **{**NVLABS_TINY, "num_classes": K}))
    sd = dict(model.state_dict())
    sd["decode_head.conv_seg.weight"] = torch.randn(K, 128, 1, 1)  # unused by the all-MLP head
    sd["decode_head.conv_seg.bias"] = torch.randn(K)
    path = tmp_path / "segformer.tiny.ade.pth"
    torch.save({"meta": {"CLASSES": CLASSES, "PALETTE": PALETTE}, "state_dict": sd}, path)
    loaded = semask.load(path, num_heads=TINY["num_heads"]).eval()
    cfg = loaded.config
    assert isinstance(loaded, SeMaskMiT) and cfg.decode_head == "nvlabs" and cfg.decoder_channels == 16
    assert (cfg.embed_dims, cfg.depths, cfg.num_heads, cfg.sr_ratios) == (
        TINY["embed_dims"],
        TINY["depths"],
        (1, 2, 3, 4),
        SR,
    )
    assert cfg.class_names == CLASSES and cfg.palette == PALETTE and not cfg.is_semask
    assert_same_outputs(model, loaded)


def test_mmseg_segformer_checkpoint_round_trip(tmp_path) -> None:
    model = trained_like(tiny_mit("mit_b0"))
    encoder, head = split(model)
    sd = {
        **{"backbone." + k: v for k, v in ours_to_mmseg_encoder(encoder).items()},
        **{"decode_head." + k: v for k, v in head.items()},
    }
    assert "backbone.layers.1.1.1.attn.attn.in_proj_weight" in sd and "decode_head.fusion_conv.conv.weight" in sd
    path = tmp_path / "segformer_mit-tiny_ade20k.pth"
    torch.save({"meta": {"dataset_meta": {"classes": CLASSES, "palette": PALETTE}}, "state_dict": sd}, path)
    loaded = semask.load(path, num_heads=TINY["num_heads"]).eval()
    assert loaded.config.decode_head == "mmseg" and loaded.config.class_names == CLASSES
    assert_same_outputs(model, loaded)


def test_hf_segformer_checkpoint_round_trip(tmp_path) -> None:
    model = trained_like(tiny_mit("mit_b0", **NVLABS_TINY))
    encoder, head = split(model)
    sd = {
        **{"segformer.encoder." + k: v for k, v in ours_to_hf_encoder(encoder).items()},
        **{"decode_head." + k: v for k, v in ours_to_hf_head(head).items()},
    }
    del sd["decode_head.batch_norm.num_batches_tracked"]  # some exports omit it
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = semask.load(path, num_heads=TINY["num_heads"]).eval()
    assert loaded.config.decode_head == "nvlabs"
    assert_same_outputs(model, loaded)


@pytest.mark.parametrize("placement", ["before_stage_norm", "after_stage_norm"])
def test_semask_state_dict_loads_as_official_checkpoint(placement: str, tmp_path) -> None:
    model = trained_like(tiny_mit(semantic_placement=placement, num_semantic_blocks=(1, 1, 2, 1)))
    with torch.no_grad():
        for layer in model.backbone.semantic_layer.values():
            for block in layer.class_injection:
                block.lambda_.fill_(0.7)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "semask.pth")
    # Windows and global stages are not visible in the weights: they are overrides.
    loaded = semask.load(tmp_path / "semask.pth", semantic_window_size=4, num_heads=TINY["num_heads"]).eval()
    assert loaded.config.num_semantic_blocks == (1, 1, 2, 1)
    assert loaded.config.semantic_placement == placement
    assert_same_outputs(model, loaded)


def test_checkpoint_errors_name_the_key(tmp_path) -> None:
    model = tiny_mit("mit_b0", **NVLABS_TINY)
    sd = dict(model.state_dict())
    missing = {k: v for k, v in sd.items() if k != "backbone.block2.1.attn.q.bias"}
    torch.save({"state_dict": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys:\s+backbone\.block2\.1\.attn\.q\.bias"):
        semask.load(tmp_path / "missing.pth", num_heads=TINY["num_heads"])

    bad = dict(sd, **{"backbone.block2.1.attn.kv.weight": torch.zeros(30, 16)})
    torch.save({"state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match=r"backbone\.block2\.1\.attn\.kv\.weight: checkpoint \(30, 16\) vs model \(32, 16\)"
    ):
        semask.load(tmp_path / "bad.pth", num_heads=TINY["num_heads"])

    no_pred = {k: v for k, v in sd.items() if not k.startswith("decode_head.linear_pred.")}
    torch.save({"state_dict": no_pred}, tmp_path / "no_pred.pth")
    with pytest.raises(CheckpointError, match="decode_head.linear_pred.weight"):
        semask.load(tmp_path / "no_pred.pth", num_heads=TINY["num_heads"])

    mm = tiny_mit("mit_b0")
    encoder, head = split(mm)
    mm_sd = {
        **{"backbone." + k: v for k, v in ours_to_mmseg_encoder(encoder).items()},
        **{"decode_head." + k: v for k, v in head.items()},
    }
    mm_sd["backbone.layers.0.1.0.attn.attn.in_proj_weight"] = torch.zeros(20, 8)
    torch.save({"state_dict": mm_sd}, tmp_path / "mm.pth")
    with pytest.raises(CheckpointError, match=r"layers\.0\.1\.0\.attn\.attn\.in_proj_weight has 20 rows"):
        semask.load(tmp_path / "mm.pth", num_heads=TINY["num_heads"])

    encoder, head = split(model)
    hf = {
        **{"segformer.encoder." + k: v for k, v in ours_to_hf_encoder(encoder).items()},
        **{"decode_head." + k: v for k, v in ours_to_hf_head(head).items()},
    }
    del hf["segformer.encoder.block.2.0.attention.self.value.weight"]
    torch.save(hf, tmp_path / "hf.bin")
    with pytest.raises(CheckpointError, match=r"block\.2\.0\.attention\.self\.value\.weight is missing"):
        semask.load(tmp_path / "hf.bin", num_heads=TINY["num_heads"])


def test_detectors_do_not_confuse_swin_fpn_and_mit() -> None:
    swin = semask.create_model(
        "semask_swin_t_fpn",
        num_classes=K,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        num_heads=(1, 2, 2, 4),
        window_size=7,
        decoder_channels=16,
    ).state_dict()
    nv = tiny_mit("mit_b0", **NVLABS_TINY)
    mm = tiny_mit("mit_b0")
    encoder, head = split(mm)
    mm_sd = {
        **{"backbone." + k: v for k, v in ours_to_mmseg_encoder(encoder).items()},
        **{"decode_head." + k: v for k, v in head.items()},
    }
    enc, head = split(nv)
    hf = {
        **{"segformer.encoder." + k: v for k, v in ours_to_hf_encoder(enc).items()},
        **{"decode_head." + k: v for k, v in ours_to_hf_head(head).items()},
    }
    detectors = (mit.convert._is_nvlabs_mit, mit.convert._is_mmseg_segformer, mit.convert._is_hf_segformer)
    assert not any(d(swin) for d in detectors) and _is_official_fpn(swin)
    for sd, own in ((nv.state_dict(), 0), (mm.state_dict(), 0), (mm_sd, 1), (hf, 2)):
        assert not _is_official_fpn(sd)
        assert [d(sd) for d in detectors] == [i == own for i in range(3)]


# -------------------------------------------------------------- ImageNet initialisation
def plain_encoder(seed: int = 5) -> MixTransformer:
    torch.manual_seed(seed)
    encoder = MixTransformer(embed_dims=TINY["embed_dims"], depths=TINY["depths"], num_heads=TINY["num_heads"])
    randomise_norms(encoder)
    return encoder


@pytest.mark.parametrize("layout", ["nvlabs", "mmseg", "hf"])
def test_imagenet_initialisation(layout: str, tmp_path) -> None:
    encoder = plain_encoder()
    sd = encoder.state_dict()
    if layout == "nvlabs":  # mit_b*.pth: bare keys plus the ImageNet classifier
        ckpt, dropped = (
            {**sd, "head.weight": torch.randn(1000, 32), "head.bias": torch.randn(1000)},
            ["head.bias", "head.weight"],
        )
    elif layout == "mmseg":  # mmseg 1.x mit_b*_2022*.pth: layers.* naming, no classifier
        ckpt, dropped = {"state_dict": ours_to_mmseg_encoder(sd)}, []
    else:  # Hugging Face nvidia/mit-b*
        ckpt = {
            **{"segformer.encoder." + k: v for k, v in ours_to_hf_encoder(sd).items()},
            "classifier.weight": torch.randn(1000, 32),
            "classifier.bias": torch.randn(1000),
        }
        dropped = ["classifier.bias", "classifier.weight"]
    path = tmp_path / f"mit_tiny_{layout}.pth"
    torch.save(ckpt, path)
    model = semask.create_model("semask_mit_b0", backbone_weights=str(path), **TINY)
    for key, value in sd.items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value, rtol=0, atol=0, msg=key)
    report = model.load_backbone_weights(str(path))
    assert report.unexpected == dropped and report.loaded == len(sd)
    assert report.missing and all(k.startswith("semantic_layer.") for k in report.missing)


def test_imagenet_errors_name_the_key(tmp_path) -> None:
    sd = plain_encoder().state_dict()
    torch.save({k: v for k, v in sd.items() if k != "block3.0.attn.sr.weight"}, tmp_path / "missing.pth")
    model = tiny_mit()
    with pytest.raises(
        CheckpointError, match=r"ImageNet MiT checkpoint .*missing.pth[\s\S]*block3\.0\.attn\.sr\.weight"
    ):
        model.load_backbone_weights(str(tmp_path / "missing.pth"))
    torch.save({**sd, "block2.1.mlp.fc1.weight": torch.zeros(32, 16)}, tmp_path / "narrow.pth")
    with pytest.raises(
        CheckpointError, match=r"block2\.1\.mlp\.fc1\.weight: checkpoint \(32, 16\) vs model \(64, 16\)"
    ):
        model.load_backbone_weights(str(tmp_path / "narrow.pth"))
    torch.save({**sd, "decode_head.conv_seg.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys:\s+decode_head\.conv_seg\.weight"):
        model.load_backbone_weights(str(tmp_path / "extra.pth"))


# ------------------------------------------------------------------- save / load model
@pytest.mark.parametrize("target", ["folder", "model.safetensors"])
def test_save_load_round_trip(target: str, tmp_path) -> None:
    model = trained_like(
        tiny_mit(
            decode_head="nvlabs",
            semantic_placement="after_stage_norm",
            semantic_global_stages=(1,),
            class_names=CLASSES,
            palette=PALETTE,
        )
    )
    path = model.save_pretrained(tmp_path / target)
    loaded = semask.load(path)
    assert loaded.config == model.config and isinstance(loaded, SeMaskMiT)
    assert loaded.backbone.semantic_layer["1"].global_attention
    assert_same_outputs(model, loaded)


# ------------------------------------------------------------------------- YAML configs
CONFIG_DIR = RECIPES_DIR / "mit"


def test_yaml_configs_follow_the_segformer_recipe() -> None:
    paths = sorted(CONFIG_DIR.glob("*.yaml"))
    names = {p.stem for p in paths}
    expected = {f"{m}_{v}_{d}" for m in ("mit", "semask_mit") for v in VARIANTS for d in ("ade20k", "cityscapes")}
    assert names == expected
    for path in paths:
        cfg = load_config(path)
        config = semask.get_config(cfg.model.name, **cfg.model.overrides)
        assert config.is_semask == cfg.model.name.startswith("semask_"), path
        if config.is_semask:
            assert config.semantic_loss_weight == 0.4
        assert cfg.model.backbone_weights == "imagenet"
        assert cfg.optim.lr * cfg.optim.backbone_lr_mult == pytest.approx(6e-5) and cfg.optim.lr == pytest.approx(6e-4)
        assert cfg.optim.weight_decay == 0.01 and cfg.optim.no_decay_keys is None  # SeMaskMiT: "norm"
        assert (cfg.schedule.iters, cfg.schedule.warmup_iters, cfg.schedule.power) == (160_000, 1500, 1.0)
        assert cfg.data.ratio_range == (0.5, 2.0) and cfg.data.ratios is None
        if path.stem.endswith("cityscapes"):
            assert cfg.data.type == "cityscapes" and cfg.data.crop_size == (1024, 1024)
            assert (cfg.eval.mode, cfg.eval.crop_size, cfg.eval.stride) == ("slide", (1024, 1024), (768, 768))
        else:
            crop = 640 if "_b5_" in path.stem else 512
            assert cfg.data.type == "ade20k" and cfg.data.crop_size == (crop, crop)
            assert cfg.eval.mode == "whole" and cfg.eval.scale == (2048, crop)


def test_recipe_parameter_groups() -> None:
    """Semantic layers train with the encoder lr; LN_s is not decayed, lambda and head BN are."""
    cfg = load_config(CONFIG_DIR / "semask_mit_b4_ade20k.yaml")
    groups = param_groups(tiny_mit(), cfg.optim)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    assert by_name["backbone.semantic_layer.0.norm1.weight"] == (pytest.approx(6e-5), 0.0)
    assert by_name["backbone.semantic_layer.0.class_injection.0.lambda_"] == (pytest.approx(6e-5), 0.01)
    assert by_name["backbone.block1.0.attn.norm.weight"] == (pytest.approx(6e-5), 0.0)
    assert by_name["backbone.block1.0.attn.q.weight"] == (pytest.approx(6e-5), 0.01)
    assert by_name["decode_head.fusion_conv.bn.weight"] == (pytest.approx(6e-4), 0.01)
    assert by_name["decode_head.conv_seg.weight"] == (pytest.approx(6e-4), 0.01)


# ------------------------------------------------------------------ export to Hugging Face
def test_hugging_face_export_is_the_spec_layout_and_round_trips(tmp_path) -> None:
    """The exported folder holds the spec 2.4 / 2.5 names (this file's independent mapping), and our
    importer reads it back to the same weights, classes, colours, normalisation and protocol."""
    from semask.export import export_hf
    from semask.models.io import read_checkpoint

    model = trained_like(tiny_mit("mit_b0", **NVLABS_TINY, drop_path_rate=0.0))
    protocol = {"mode": "slide", "crop_size": [64, 64], "stride": [48, 48], "scale": [128, 96]}
    model.config = dataclasses.replace(model.config, class_names=CLASSES, palette=PALETTE, protocol=protocol)
    out = export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "segformer" and config["architectures"] == ["SegformerForSemanticSegmentation"]
    assert config["id2label"] == {str(i): n for i, n in enumerate(CLASSES)}
    assert config["label2id"] == {n: i for i, n in enumerate(CLASSES)}
    assert (config["hidden_sizes"], config["num_attention_heads"]) == (
        list(TINY["embed_dims"]),
        list(TINY["num_heads"]),
    )
    weights, _ = read_checkpoint(out / "model.safetensors")
    encoder, head = split(model)
    expected = {
        **{"segformer.encoder." + k: v for k, v in ours_to_hf_encoder(encoder).items()},
        **{"decode_head." + k: v for k, v in ours_to_hf_head(head).items()},
    }
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)

    loaded = semask.load(out)
    assert isinstance(loaded, SeMaskMiT) and loaded.config.decode_head == "nvlabs"
    for field in ("class_names", "palette", "protocol", "mean", "std", "embed_dims", "depths", "num_heads"):
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    got = loaded.state_dict()
    assert got.keys() == model.state_dict().keys()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())
    assert_same_outputs(model, loaded)


def test_hugging_face_export_refuses_what_segformer_cannot_hold(tmp_path, capsys) -> None:
    from semask.cli import main
    from semask.export import export_hf

    with pytest.raises(ValueError, match="SeMask-MiT's semantic layers .* have no place in transformers' SegFormer"):
        export_hf(tiny_mit("semask_mit_b0", decode_head="nvlabs"), tmp_path / "a")
    with pytest.raises(ValueError, match="the mmseg SegFormer head .* has no Hugging Face equivalent"):
        export_hf(tiny_mit("mit_b0"), tmp_path / "b")
    fpn = semask.create_model("swin_t_fpn", num_classes=3, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    fpn.save_pretrained(tmp_path / "fpn")
    assert main(["export", str(tmp_path / "fpn"), "--format", "hf"]) == 1
    assert "only SegFormer / MiT models have a Hugging Face layout" in capsys.readouterr().err
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "fpn_hf"))
    segformer = tiny_mit("mit_b0", **NVLABS_TINY)
    segformer.save_pretrained(tmp_path / "seg")
    assert main(["export", str(tmp_path / "seg"), "--format", "hf"]) == 0
    assert_same_outputs(segformer.eval(), semask.load(tmp_path / "seg_hf"))


@pytest.mark.slow
def test_transformers_loads_the_export_with_equal_logits(tmp_path) -> None:
    """SegFormer-B0 (K=150, random weights and BN statistics) through transformers'
    ``SegformerForSemanticSegmentation.from_pretrained`` and ``AutoImageProcessor``."""
    transformers = pytest.importorskip("transformers")
    from semask.data import ADE20K_CLASSES
    from semask.export import export_hf

    torch.manual_seed(0)
    model = trained_like(semask.create_model("segformer_b0", num_classes=150, class_names=list(ADE20K_CLASSES)))
    export_hf(model, tmp_path / "hf")
    hf = transformers.SegformerForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label[20] == "car" and hf.config.label2id["car"] == 20 and hf.config.num_labels == 150
    x = torch.randn(1, 3, 256, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x, upsample_logits=False).logits  # the decoder's stride 4, as transformers returns them
        theirs = hf(pixel_values=x).logits
    assert theirs.shape == ours.shape == (1, 150, 64, 80)
    diff = (theirs - ours).abs().max().item()
    print(f"max |logit difference| transformers vs semask: {diff:.2e} (max |logit| {ours.abs().max().item():.2f})")
    assert diff < 1e-4 * ours.abs().max().item()  # LayerNorm eps (transformers 1e-5, NVlabs 1e-6), summation order
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "hf")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    from semask.data.transforms import normalize

    torch.testing.assert_close(pixels[0], torch.from_numpy(normalize(image, model.config.mean, model.config.std)))
