"""Issue 11: weights by name, one loader for every format, one model base class.

Every format is built here with the real key layouts; names are fetched from a real HTTP server
on 127.0.0.1 (plain URL and a Hugging Face endpoint), never from the internet.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import M2F_TINY, MIT_TINY, TINY, randomize, to_official
from safetensors.torch import save_file

import semask
from semask.cli import main
from semask.config import RECIPES_DIR, get_recipe, load_config, recipe_names
from semask.engine.predict import load_model_any
from semask.hub import DownloadError
from semask.models import CheckpointError, SeMaskModel, get_config, list_models, pretrained
from semask.models.loader import FORMATS
from semask.models.mit.model import mit_imagenet_name
from semask.models.pretrained import PretrainedCfg, get_pretrained, list_pretrained
from semask.models.registry import register_preset
from semask.models.swin import swin_imagenet_name

ROOT = Path(__file__).resolve().parents[1]
# tiny presets, so registered test weights are small (the real presets are full size)
for _name, _type, _values in (
    ("test_tiny_semask_fpn", "semask_fpn", TINY),
    ("test_tiny_segformer", "semask_mit", dict(MIT_TINY, num_semantic_blocks=0, decode_head="nvlabs")),
):
    if _name not in list_models():
        register_preset(_name, _type, **_values)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEMASK_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("SEMASK_OFFLINE", raising=False)
    torch.set_num_threads(1)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: tuple[int, int] = (40, 56)) -> None:
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(a.eval()(x).logits, b.eval()(x).logits, rtol=0, atol=1e-6)


def tiny_fpn(num_classes: int = 5) -> SeMaskModel:
    torch.manual_seed(0)
    return randomize(semask.create_model("test_tiny_semask_fpn", num_classes=num_classes))


# ----------------------------------------------------------------------------- the registry
def _zoo_rows() -> list[list[str]]:
    text = (ROOT / "tests" / "data" / "model_zoo.md").read_text()
    section = text.split("## 1.")[1].split("## 2.")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    return [r for r in rows[1:] if not set(r[0]) <= {"-"}]


def test_spec_copy_is_current() -> None:
    shared = ROOT.parent / "shared" / "spec" / "model_zoo.md"
    if not shared.is_file():
        pytest.skip(f"{shared} is not beside this checkout (a CI clone): the copy in tests/data is the reference")
    assert shared.read_text() == (ROOT / "tests" / "data" / "model_zoo.md").read_text()


def test_every_released_semask_checkpoint_is_registered_as_in_the_spec() -> None:
    tags = {"ADE20K": "ade20k", "Cityscapes": "cityscapes", "COCO-Stuff-10k": "coco_stuff10k"}
    rows = _zoo_rows()
    assert len(rows) == 17
    for preset, dataset, crop, miou, drive_id, config in rows:
        cfg = get_pretrained(f"{preset}.{tags[dataset]}")
        assert cfg.gdrive_id == drive_id and cfg.official_config == config and cfg.kind == "model"
        assert cfg.paper_miou == tuple(float(v) for v in miou.split(" / "))
        h, w = (int(v) for v in crop.split("x")) if "x" in crop else (int(crop), int(crop))
        assert cfg.crop_size == (h, w)
    section2 = (ROOT / "tests" / "data" / "model_zoo.md").read_text().split("## 2.")[1]
    for size, name in re.findall(r"\| (T|S|B|L)[^|]*\| (swin_\S+\.pth) \|", section2):
        assert get_pretrained(f"swin_{size.lower()}.imagenet").url.endswith("/v1.0.0/" + name)


@pytest.mark.parametrize("name", list_pretrained(kind="model"))
def test_each_entry_fits_its_preset_and_recipe(name: str) -> None:
    cfg = get_pretrained(name)
    assert cfg.preset in list_models()
    config = get_config(cfg.preset, num_classes=cfg.num_classes)  # builds: classes fit the preset
    assert config.num_classes == {"ade20k": 150, "cityscapes": 19, "coco_stuff10k": 171}[cfg.dataset]
    if cfg.ms_sizes is not None:  # the registered m.s. protocol is what --aug-test runs for the model
        assert (list(cfg.ms_sizes), cfg.ms_max_size) == (config.test_sizes, config.test_max_size)
    elif cfg.ms_scales is not None:
        assert cfg.ms_scales == semask.models.base.MS_RATIOS
    recipe = next((n for n in recipe_names() if n in (f"{cfg.preset}_{cfg.tag}", cfg.preset)), None)
    if recipe is None:  # the SegFormer releases come from NVIDIA's recipes, not ours
        assert cfg.hf_repo is not None
        return
    run = get_recipe(recipe)
    assert run.model.name == cfg.preset and run.data.type == cfg.dataset
    assert tuple(run.data.crop_size) == cfg.crop_size
    assert run.eval.mode == cfg.eval["mode"] and tuple(run.eval.scale) == cfg.eval["scale"]


def test_list_pretrained_cli(capsys: pytest.CaptureFixture) -> None:
    assert main(["list-pretrained", "semask_swin_t_fpn*"]) == 0
    out = capsys.readouterr().out
    assert "semask_swin_t_fpn.ade20k" in out and "42.06 / 43.36" in out
    assert "https://drive.google.com/file/d/1L0daUHWQGNGCXHF-cKWEauPSyBV0GLOR/view" in out
    assert "mit_b0.imagenet" not in out


# ----------------------------------------------------------------------------- formats
def test_mmseg_official_file_with_meta_optimizer_and_numpy(tmp_path: Path) -> None:
    model = tiny_fpn()
    names = ("sky", "tree", "road", "car", "boat")
    palette = [[i, 2 * i, 3 * i] for i in range(5)]
    meta = {
        "env_info": "sys.platform: linux",
        "config": "norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(type='EncoderDecoder')\n",
        "seed": np.int64(0),
        "exp_name": "semfpn.py",
        "mmseg_version": "0.11.0+abc",
        "mmcv_version": "1.3.0",
        "CLASSES": names,
        "PALETTE": palette,
        "time": "Sat Dec 25 10:00:00 2021",
        "epoch": np.int64(1),
        "iter": 80000,
        "hist": np.array([0.5, 0.25]),
        "best": np.float64(42.06),
    }
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.1}]}
    path = tmp_path / "semfpn_semask_swin_tiny_patch4_window7_512x512_80k_ade20k.pth"
    torch.save({"meta": meta, "state_dict": to_official(model), "optimizer": optimizer}, path)
    loaded = semask.load(path)
    assert loaded.config.class_names == list(names) and loaded.config.palette == palette
    same_outputs(model, loaded)


def _d2_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = {k.replace(".lambda_", ".gamma"): v for k, v in model.state_dict().items()}
    sd["criterion.empty_weight"] = torch.tensor([1.0] * model.config.num_classes + [0.1])
    return sd


def test_detectron2_pth_and_model_zoo_pkl(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomize(semask.create_model("semask_swin_t_mask2former", num_classes=5, **M2F_TINY))
    sd = _d2_state(model)
    torch.save(
        {"model": sd, "iteration": 159999, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last": 1}},
        tmp_path / "model_final.pth",
    )
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "semask test"}, f)
    for name in ("model_final.pth", "model_final.pkl"):
        # heads and the semantic window leave no trace in the weights: given here, assumed (and logged) otherwise
        loaded = semask.load(tmp_path / name, decoder_heads=4, semantic_window_size=model.config.semantic_window_size)
        assert loaded.config.family == "mask2former" and loaded.config.num_classes == 5
        same_outputs(model, loaded, size=(64, 64))


class _RunsCode:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.target),))


def test_pkl_that_would_run_code_is_refused(tmp_path: Path) -> None:
    evil = _RunsCode()
    evil.target = str(tmp_path / "pwned")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "x": evil}, f)
    with pytest.raises(CheckpointError, match="refused: it would run code"):
        semask.load(tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


def _hf_config(model: SeMaskModel) -> dict:
    c = model.config
    return {
        "model_type": "segformer",
        "architectures": ["SegformerForSemanticSegmentation"],
        "num_channels": 3,
        "num_encoder_blocks": 4,
        "depths": list(c.depths),
        "sr_ratios": list(c.sr_ratios),
        "hidden_sizes": list(c.embed_dims),
        "patch_sizes": list(c.patch_sizes),
        "strides": list(c.strides),
        "num_attention_heads": list(c.num_heads),
        "mlp_ratios": [4, 4, 4, 4],
        "decoder_hidden_size": c.decoder_channels,
        "id2label": {str(i): f"class{i}" for i in range(c.num_classes)},
    }


def _hf4(model: SeMaskModel) -> dict[str, torch.Tensor]:
    from test_mit import ours_to_hf_encoder, ours_to_hf_head, split

    encoder, head = split(model)
    return {
        **{"segformer.encoder." + k: v for k, v in ours_to_hf_encoder(encoder).items()},
        **{"decode_head." + k: v for k, v in ours_to_hf_head(head).items()},
    }


# transformers 5's renaming of SegFormer weights (its conversion_mapping.py), applied forwards
_TO_HF5 = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)", r"stages.\1.layer_norm"),
    (r"attention\.self\.query", "attention.q_proj"),
    (r"attention\.self\.key", "attention.k_proj"),
    (r"attention\.self\.value", "attention.v_proj"),
    (r"attention\.self\.sr", "attention.sequence_reduction.sequence_reduction"),
    (r"attention\.self\.layer_norm", "attention.sequence_reduction.layer_norm"),
    (r"attention\.output\.dense", "attention.o_proj"),
    (r"mlp\.dense1", "mlp.fc1"),
    (r"mlp\.dense2", "mlp.fc2"),
    (r"layer_norm_1", "layernorm_before"),
    (r"layer_norm_2", "layernorm_after"),
    (r"decode_head\.linear_c", "decode_head.linear_projections"),
]


def _hf5(model: SeMaskModel) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in _hf4(model).items():
        for pattern, repl in _TO_HF5:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def test_hugging_face_folders_and_bare_state_dicts_of_transformers_4_and_5(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomize(semask.create_model("test_tiny_segformer", num_classes=4))
    v4, v5 = _hf4(model), _hf5(model)
    assert "segformer.stages.1.blocks.0.attention.q_proj.weight" in v5
    assert not any(k.startswith("segformer.encoder.") for k in v5)
    for name, weights, writer in (
        ("hf4", v4, lambda sd, d: save_file(sd, d / "model.safetensors")),
        ("hf5", v5, lambda sd, d: torch.save(sd, d / "pytorch_model.bin")),
    ):
        folder = tmp_path / name
        folder.mkdir()
        writer(weights, folder)
        (folder / "config.json").write_text(json.dumps(_hf_config(model)))
        loaded = semask.load(folder)
        assert loaded.config.class_names == ["class0", "class1", "class2", "class3"]
        same_outputs(model, loaded)
        bare = tmp_path / f"{name}.bin"
        torch.save(weights, bare)
        with pytest.raises(CheckpointError, match=r"attention heads are not stored.*pass num_heads"):
            semask.load(bare)  # tiny widths: the heads cannot be known, so no silent guess
        same_outputs(model, semask.load(bare, num_heads=(1, 2, 3, 4)))


def test_broken_hf_config_names_the_file_and_setting(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = semask.create_model("test_tiny_segformer", num_classes=4)
    save_file(_hf4(model), tmp_path / "model.safetensors")
    config = _hf_config(model)
    del config["num_attention_heads"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json lacks the SegFormer settings \['num_attention_heads'\]"):
        semask.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        semask.load(tmp_path)


def test_our_folder_and_file_and_base_class_round_trip(tmp_path: Path) -> None:
    model = tiny_fpn()
    for target in (tmp_path / "folder", tmp_path / "one.safetensors"):
        model.save_pretrained(target)
        loaded = SeMaskModel.from_pretrained(target)
        assert type(loaded).from_pretrained(target).config == model.config
        same_outputs(model, loaded)
    with pytest.raises(TypeError, match="not a SeMaskMiT"):
        type(semask.create_model("test_tiny_segformer", num_classes=4)).from_pretrained(tmp_path / "folder")
    with pytest.raises(ValueError, match="cannot change the saved model"):
        semask.load(tmp_path / "folder", embed_dim=32)
    with pytest.raises(CheckpointError, match="has 5 classes, 7 were asked for: pass reset_classes=True"):
        semask.load(tmp_path / "folder", num_classes=7)
    assert semask.load(tmp_path / "folder", num_classes=5).config == model.config  # the same classes: fine


def test_anything_else_lists_the_formats_tried(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2, 2)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as info:
        semask.load(tmp_path / "odd.pth")
    for line in FORMATS:
        assert line in str(info.value)
    assert "first keys are weights" in str(info.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pth is empty \(0 bytes\)"):
        semask.load(tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match="no pretrained weights 'semask_swin_t_fpn.imagenet'"):
        semask.load("semask_swin_t_fpn.imagenet")


# ----------------------------------------------------------------------------- names over HTTP
class _Files(BaseHTTPRequestHandler):
    """Serves ``server.files`` by path; for ``/org/...`` answers like the Hugging Face hub does."""

    def log_message(self, *args: object) -> None:
        pass

    def _head(self) -> bytes | None:
        self.server.log.append((self.command, self.path))  # type: ignore[attr-defined]
        body = self.server.files.get(self.path)  # type: ignore[attr-defined]
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", "c" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        return body

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        body = self._head()
        if body is not None:
            self.wfile.write(body)


@pytest.fixture()
def server():  # type: ignore[no-untyped-def]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    srv.files, srv.log = {}, []
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def _register(monkeypatch: pytest.MonkeyPatch, cfg: PretrainedCfg) -> None:
    monkeypatch.setitem(pretrained._PRETRAINED, cfg.name, cfg)


def test_name_downloads_once_verifies_and_loads(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_fpn()
    torch.save({"state_dict": to_official(model), "meta": {"CLASSES": tuple("abcde")}}, tmp_path / "w.pth")
    server.files["/w.pth"] = (tmp_path / "w.pth").read_bytes()
    cfg = PretrainedCfg(
        "test_tiny_semask_fpn",
        "local",
        file_name="w.pth",
        url=server.url + "/w.pth",
        dataset="ade20k",
        num_classes=5,
        eval={"mode": "whole", "scale": (256, 64)},
    )
    _register(monkeypatch, cfg)
    loaded = semask.load("test_tiny_semask_fpn.local")
    same_outputs(model, loaded)
    assert loaded.config.class_names == list("abcde")
    assert loaded.config.protocol == {"mode": "whole", "scale": [256, 64]}  # the registered test protocol
    again = semask.create_model("test_tiny_semask_fpn", pretrained="local")  # from the cache: no request
    same_outputs(model, again)
    assert server.log == [("GET", "/w.pth")]
    cached = tmp_path / "cache" / "w.pth"
    assert (
        cached.is_file()
        and (tmp_path / "cache" / "w.pth.sha256").read_text().split()[0]
        == hashlib.sha256(server.files["/w.pth"]).hexdigest()
    )
    # the registered protocol comes with the model, for `semask eval NAME.TAG --data-root R`
    _, run = load_model_any("test_tiny_semask_fpn.local")
    assert (run.data.type, run.data.num_classes, run.eval.mode, run.eval.scale) == ("ade20k", 5, "whole", (256, 64))
    # a wrong registered hash: the download is deleted and both hashes named
    _register(
        monkeypatch,
        PretrainedCfg(
            "test_tiny_semask_fpn", "bad", file_name="w2.pth", url=server.url + "/w.pth", sha256="0" * 64, num_classes=5
        ),
    )
    with pytest.raises(
        DownloadError, match=f"expected {'0' * 64}, got {hashlib.sha256(server.files['/w.pth']).hexdigest()}"
    ):
        semask.load("test_tiny_semask_fpn.bad")
    assert not (tmp_path / "cache" / "w2.pth").exists()


def test_offline_uses_only_the_cache_and_says_what_to_fetch(server, tmp_path, monkeypatch) -> None:
    torch.save({"state_dict": to_official(tiny_fpn())}, tmp_path / "w.pth")
    server.files["/w.pth"] = (tmp_path / "w.pth").read_bytes()
    _register(
        monkeypatch,
        PretrainedCfg("test_tiny_semask_fpn", "local", file_name="w.pth", url=server.url + "/w.pth", num_classes=5),
    )
    monkeypatch.setenv("SEMASK_OFFLINE", "1")
    with pytest.raises(
        DownloadError, match=rf"download it from {re.escape(server.url)}/w.pth and put it at .*cache/w.pth"
    ):
        semask.load("test_tiny_semask_fpn.local")
    assert server.log == []
    monkeypatch.delenv("SEMASK_OFFLINE")
    assert main(["download", "test_tiny_semask_fpn.local", "--no-progress"]) == 0
    monkeypatch.setenv("SEMASK_OFFLINE", "1")
    semask.load("test_tiny_semask_fpn.local")  # cached: fine offline
    assert server.log == [("GET", "/w.pth")]


def test_a_hand_placed_truncated_copy_never_costs_the_complete_one(tmp_path, monkeypatch) -> None:
    """Issue 23: an interrupted copy into the cache fails to load and records nothing; the complete
    copy put over it loads (and only then is its hash recorded); a later bad copy is moved aside."""
    torch.save({"state_dict": to_official(tiny_fpn())}, tmp_path / "w.pth")
    good = (tmp_path / "w.pth").read_bytes()
    _register(  # the real file's URL is unreachable: everything here comes from the cache
        monkeypatch,
        PretrainedCfg("test_tiny_semask_fpn", "hand", file_name="w.pth", url="http://127.0.0.1:9/w.pth", num_classes=5),
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "w.pth").write_bytes(good[: len(good) // 2])  # the copy was interrupted
    with pytest.raises(CheckpointError):
        semask.load("test_tiny_semask_fpn.hand")
    assert not (cache / "w.pth.sha256").exists()  # a file that does not load is no reference
    (cache / "w.pth").write_bytes(good)  # the user copies the complete file over it
    same_outputs(tiny_fpn(), semask.load("test_tiny_semask_fpn.hand"))
    assert (cache / "w.pth").read_bytes() == good
    assert (cache / "w.pth.sha256").read_text().split()[0] == hashlib.sha256(good).hexdigest()
    semask.load("test_tiny_semask_fpn.hand")  # checked against the record: still fine
    (cache / "w.pth").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # now it rots
    with pytest.raises(DownloadError, match="moved aside to .*w.pth.mismatch-"):
        semask.load("test_tiny_semask_fpn.hand")
    assert [p.read_bytes()[:-1] for p in cache.glob("w.pth.mismatch-*")] == [good[:-1]]  # kept, not deleted


def test_download_cli_to_a_folder(server, tmp_path, monkeypatch, capsys) -> None:
    server.files["/b.pth"] = b"\x00" * 10
    _register(
        monkeypatch, PretrainedCfg("swin_t", "testfile", file_name="b.pth", url=server.url + "/b.pth", kind="backbone")
    )
    assert main(["download", "swin_t.testfile", "--to", str(tmp_path / "dir"), "--no-progress"]) == 0
    assert (tmp_path / "dir" / "b.pth").read_bytes() == b"\x00" * 10
    assert str(tmp_path / "dir" / "b.pth") in capsys.readouterr().out


def test_backbone_weights_by_name_and_by_tag(server, tmp_path, monkeypatch) -> None:
    from test_models import _imagenet_swin_state_dict

    torch.save({"model": _imagenet_swin_state_dict(window=7)}, tmp_path / "in1k.pth")
    server.files["/in1k.pth"] = (tmp_path / "in1k.pth").read_bytes()
    _register(
        monkeypatch,
        PretrainedCfg("tiny_swin", "imagenet", file_name="in1k.pth", url=server.url + "/in1k.pth", kind="backbone"),
    )
    model = semask.create_model("semask_swin_t_fpn", num_classes=3, backbone_weights="tiny_swin.imagenet", **TINY)
    ref = torch.load(tmp_path / "in1k.pth", weights_only=True)["model"]
    assert torch.equal(model.backbone.layers[1].blocks[0].mlp.fc1.weight, ref["layers.1.blocks.0.mlp.fc1.weight"])
    report = model.load_backbone_weights("tiny_swin.imagenet")
    assert report.missing and all(k.startswith(("norm", "layers.")) for k in report.missing)
    with pytest.raises(ValueError, match="no released ImageNet Swin has embed_dim=16"):
        model.load_backbone_weights("imagenet")  # a tag needs a released size
    with pytest.raises(ValueError, match="are encoder weights"):
        semask.load("tiny_swin.imagenet")


def test_hugging_face_repo_through_huggingface_hub(server, tmp_path, monkeypatch) -> None:
    pytest.importorskip("huggingface_hub", reason="the [hf] extra is not installed")
    torch.manual_seed(0)
    model = randomize(semask.create_model("test_tiny_segformer", num_classes=4))
    torch.save(_hf5(model), tmp_path / "pytorch_model.bin")
    server.files["/org/tiny-seg/resolve/main/pytorch_model.bin"] = (tmp_path / "pytorch_model.bin").read_bytes()
    server.files["/org/tiny-seg/resolve/main/config.json"] = json.dumps(_hf_config(model)).encode()
    monkeypatch.setenv("SEMASK_HF_ENDPOINT", server.url)
    _register(
        monkeypatch,
        PretrainedCfg(
            "test_tiny_segformer", "ade", file_name="pytorch_model.bin", hf_repo="org/tiny-seg", num_classes=4
        ),
    )
    same_outputs(model, semask.load("test_tiny_segformer.ade"))
    monkeypatch.setenv("SEMASK_OFFLINE", "1")  # huggingface_hub's own cache serves it offline
    same_outputs(model, semask.load("test_tiny_segformer.ade"))
    _register(
        monkeypatch,
        PretrainedCfg("test_tiny_segformer", "gone", file_name="pytorch_model.bin", hf_repo="org/gone", num_classes=4),
    )
    with pytest.raises(DownloadError, match=r"cannot get pytorch_model.bin of org/gone.*huggingface.co/org/gone"):
        semask.load("test_tiny_segformer.gone")


def test_recipes_start_from_imagenet_weights_by_name() -> None:
    recipes = sorted(RECIPES_DIR.rglob("*.yaml"))
    starts = {p: (yaml.safe_load(p.read_text()).get("model") or {}).get("backbone_weights") for p in recipes}
    named = {p: w for p, w in starts.items() if w is not None}
    assert len(named) >= 30 and set(named.values()) == {"imagenet"}
    for path in named:
        backbone = semask.get_config(load_config(path).model.name)
        name = (swin_imagenet_name if hasattr(backbone, "embed_dim") else mit_imagenet_name)(backbone)
        assert get_pretrained(f"{name}.imagenet").kind == "backbone"


def test_readme_zoo_table_is_the_generated_one() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_table", ROOT / "scripts" / "zoo_table.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    readme = (ROOT / "README.md").read_text()
    assert f"{zoo.START}\n{zoo.table()}\n{zoo.END}" in readme, "run: python scripts/zoo_table.py --write"


def test_eval_by_name_runs_the_registered_protocol(server, tmp_path, monkeypatch) -> None:
    from semask.data import make_context_dataset
    from semask.data.synthetic import CONTEXT_CLASSES

    k = len(CONTEXT_CLASSES)
    data = make_context_dataset(tmp_path / "data", num_train=0, num_val=2, size=48, seed=3)
    model = tiny_fpn(num_classes=k)
    torch.save({"state_dict": to_official(model)}, tmp_path / "w.pth")
    server.files["/w.pth"] = (tmp_path / "w.pth").read_bytes()
    scale = (96, 24)  # an unusual test resize: the results below show it was used
    _register(
        monkeypatch,
        PretrainedCfg(
            "test_tiny_semask_fpn",
            "toy",
            file_name="toy.pth",
            url=server.url + "/w.pth",
            dataset="folder",
            num_classes=k,
            eval={"mode": "whole", "scale": scale},
        ),
    )
    out = tmp_path / "eval.json"
    assert (
        main(["eval", "test_tiny_semask_fpn.toy", "--data-root", str(data), "--num-workers", "0", "--out", str(out)])
        == 0
    )
    by_name = json.loads(out.read_text())
    from semask.config import EvalConfig
    from semask.data.datasets import build_dataset
    from semask.engine.evaluate import evaluate

    expected = evaluate(
        model, build_dataset("folder", data, "val", num_classes=k), EvalConfig(scale=scale), progress=False
    )
    assert by_name["IoU"] == pytest.approx(expected["IoU"], nan_ok=True)
    other = evaluate(model, build_dataset("folder", data, "val", num_classes=k), EvalConfig(scale=None), progress=False)
    assert other["IoU"] != pytest.approx(expected["IoU"], nan_ok=True)


# ----------------------------------------------------------------------------- the base class hooks
def test_no_weight_decay_is_each_official_recipe() -> None:
    fpn = tiny_fpn()
    rule = ("absolute_pos_embed", "relative_position_bias_table", "norm")
    assert fpn.no_weight_decay() == {n for n, _ in fpn.named_parameters() if any(k in n for k in rule)}
    assert "backbone.layers.0.blocks.0.attn.relative_position_bias_table" in fpn.no_weight_decay()
    mit = semask.create_model("test_tiny_segformer", num_classes=4)
    assert mit.no_weight_decay() == {n for n, _ in mit.named_parameters() if "norm" in n}
    m2f = semask.create_model("semask_swin_t_mask2former", num_classes=5, **M2F_TINY)
    assert {
        "sem_seg_head.predictor.query_feat.weight",
        "sem_seg_head.predictor.level_embed.weight",
        "sem_seg_head.pixel_decoder.input_proj.0.1.weight",
    } <= m2f.no_weight_decay()
    mf = semask.create_model("semask_swin_t_maskformer", num_classes=5, **M2F_TINY)
    assert "sem_seg_head.predictor.query_embed.weight" in mf.no_weight_decay()
    assert not any("input_proj" in n and n.endswith(".1.weight") for n in mf.no_weight_decay())


def test_freeze_encoder_computes_no_encoder_gradients() -> None:
    model = tiny_fpn()
    model.train().freeze_encoder()
    out = model(torch.randn(2, 3, 64, 64), labels=torch.randint(0, 5, (2, 64, 64)))
    out.loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.decode_head.parameters())
    model.freeze_encoder(False)
    assert all(p.requires_grad for p in model.parameters())
