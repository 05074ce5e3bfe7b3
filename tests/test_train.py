"""Training engine: LR schedule, param groups, checkpoints, exact resume, NaN stop, 2-process DDP."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import semask
from semask.config import ExperimentConfig, OptimConfig, ScheduleConfig, dump_config
from semask.data import build_dataset, make_context_dataset
from semask.engine import checkpoint as ckpt_module
from semask.engine.checkpoint import (
    CheckpointManager,
    TrainingCheckpointError,
    atomic_save,
    load_training_checkpoint,
)
from semask.engine.distributed import ShardedBatchSampler
from semask.engine.evaluate import evaluate
from semask.engine.trainer import NonFiniteLossError, WarmupPolyLR, build_optimizer, lr_at, param_groups, train

TINY_MODEL = dict(
    embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, decoder_channels=16, drop_path_rate=0.1
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_context_dataset(tmp_path_factory.mktemp("context"), num_train=10, num_val=3, size=64, seed=0)


def tiny_config(data_root: Path, *overrides: str) -> ExperimentConfig:
    """A 2-second SeMask run on 64x64 synthetic scenes, with every random augmentation on."""
    raw = {
        "model": {"name": "semask_swin_t_fpn", "overrides": dict(TINY_MODEL)},
        "data": {
            "type": "folder",
            "root": str(data_root),
            "train_split": "train",
            "val_split": "val",
            "crop_size": [48, 48],
            "scale": [64, 64],
            "ratios": [0.75, 1.0, 1.25],
            "ratio_range": None,
            "num_workers": 0,
        },
        "optim": {"lr": 1e-3, "weight_decay": 0.01},
        "schedule": {"iters": 6, "warmup_iters": 2, "warmup_ratio": 0.1},
        "train": {
            "batch_size": 2,
            "device": "cpu",
            "log_interval": 1,
            "eval_interval": 3,
            "ckpt_interval": 3,
            "keep_last": 2,
        },
        "eval": {"scale": [64, 64]},
    }
    return ExperimentConfig.from_dict(raw, "tiny", list(overrides))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a busy 2-core box
    two spinning OpenMP threads per process slow training down several times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- schedule + optimiser


def test_lr_schedule_matches_hand_computation() -> None:
    s = ScheduleConfig(iters=100, warmup_iters=10, warmup_ratio=0.1, power=1.0, min_lr=0.0)
    # warmup: poly value x (1 - (1 - it/10) * (1 - 0.1)); afterwards the poly value
    assert lr_at(0, 2.0, s) == pytest.approx(2.0 * 0.1)
    assert lr_at(5, 2.0, s) == pytest.approx(2.0 * 0.95 * (1 - 0.5 * 0.9))
    assert lr_at(10, 2.0, s) == pytest.approx(2.0 * 0.9)
    assert lr_at(55, 2.0, s) == pytest.approx(2.0 * 0.45)
    assert lr_at(99, 2.0, s) == pytest.approx(2.0 * 0.01)
    s2 = ScheduleConfig(iters=100, warmup_iters=0, warmup_ratio=0.1, power=2.0, min_lr=0.1)
    assert lr_at(50, 1.0, s2) == pytest.approx((1.0 - 0.1) * 0.25 + 0.1)
    official = ScheduleConfig()  # 80k iterations, 1500 warmup, ratio 1e-6
    assert lr_at(0, 1e-4, official) == pytest.approx(1e-10)
    assert lr_at(1500, 1e-4, official) == pytest.approx(1e-4 * (1 - 1500 / 80000))
    assert lr_at(79999, 1e-4, official) == pytest.approx(1e-4 / 80000)


def _tiny_model(**extra: object) -> torch.nn.Module:
    return semask.create_model("semask_swin_t_fpn", num_classes=5, **{**TINY_MODEL, **extra})


def test_param_groups_follow_the_no_decay_keys_and_backbone_multiplier() -> None:
    model = _tiny_model()
    groups = param_groups(model, OptimConfig(lr=0.1, weight_decay=0.05, backbone_lr_mult=0.5))
    names = [n for g in groups for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    where = {n: g for g in groups for n in g["param_names"]}
    for name in (
        "backbone.layers.0.blocks.0.attn.relative_position_bias_table",
        "backbone.norm3.weight",
        "backbone.layers.1.semantic_layer.norm1.bias",
        "backbone.patch_embed.norm.weight",
        "backbone.layers.0.downsample.norm.weight",
    ):
        assert where[name]["weight_decay"] == 0.0, name
    for name in (
        "backbone.layers.0.blocks.0.attn.qkv.weight",
        "backbone.layers.0.blocks.0.attn.qkv.bias",
        "decode_head.conv_seg.weight",
        "decode_head.scale_heads.0.0.bn.weight",
    ):
        assert where[name]["weight_decay"] == 0.05, name
    for name, group in where.items():
        assert group["lr"] == pytest.approx(0.05 if name.startswith("backbone.") else 0.1)

    optimizer = build_optimizer(model, OptimConfig(lr=0.1, backbone_lr_mult=0.5))
    scheduler = WarmupPolyLR(optimizer, ScheduleConfig(iters=10, warmup_iters=0))
    scheduler.step(5)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.025, 0.05])


def test_sharded_sampler_is_deterministic_disjoint_and_resumable() -> None:
    ranks = [ShardedBatchSampler(23, 3, rank=r, world_size=2, seed=7) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    batches = [list(s) for s in ranks]
    assert [len(b) for b in batches] == [3, 3]  # 11 indices per rank -> 3 full batches
    flat = [i for b in batches for batch in b for i in batch]
    assert len(set(flat)) == len(flat)  # no sample on two ranks
    again = ShardedBatchSampler(23, 3, rank=0, world_size=2, seed=7)
    again.set_epoch(4)
    assert list(again) == batches[0]
    again.set_epoch(5)
    assert list(again) != batches[0]
    again.set_epoch(4, offset=2)
    assert list(again) == batches[0][2:]
    with pytest.raises(ValueError, match="fewer than one batch"):
        ShardedBatchSampler(5, 3, rank=0, world_size=2)


# ----------------------------------------------------------------------------- checkpoint files


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = atomic_save({"x": torch.arange(3)}, tmp_path / "c.pth")
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        atomic_save({"x": lambda: 0}, path)  # lambdas cannot be pickled: fails mid-write
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temp file left behind


def test_checkpoint_manager_keeps_last_n_and_points_latest(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "ck", keep_last=2)
    assert manager.resolve_resume(True) is None
    for it in (2, 4, 6):
        manager.save({"iteration": it})
    assert [p.name for p in manager.iteration_checkpoints()] == ["iter_00000004.pth", "iter_00000006.pth"]
    assert torch.load(manager.latest_path, weights_only=True) == {"iteration": 6}
    assert manager.resolve_resume(True).name == "iter_00000006.pth"
    with pytest.raises(TrainingCheckpointError, match="nope.pth does not exist"):
        manager.resolve_resume(tmp_path / "nope.pth")


def test_loading_errors_name_the_file_and_problem(tmp_path: Path) -> None:
    with pytest.raises(TrainingCheckpointError, match="missing.pth does not exist"):
        load_training_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingCheckpointError, match="cannot read training checkpoint.*garbage.pth"):
        load_training_checkpoint(tmp_path / "garbage.pth")
    torch.save({"state_dict": {}}, tmp_path / "official.pth")
    with pytest.raises(TrainingCheckpointError, match="official.pth is not a semask training checkpoint"):
        load_training_checkpoint(tmp_path / "official.pth")
    torch.save({"format": ckpt_module.FORMAT, "version": ckpt_module.VERSION, "model": {}}, tmp_path / "partial.pth")
    with pytest.raises(TrainingCheckpointError, match="partial.pth is missing the entries .*optimizer"):
        load_training_checkpoint(tmp_path / "partial.pth")
    torch.save({"format": ckpt_module.FORMAT, "code": Path("x")}, tmp_path / "code.pth")  # a pickled object
    with pytest.raises(TrainingCheckpointError, match="cannot read training checkpoint .*code.pth"):
        load_training_checkpoint(tmp_path / "code.pth")


# ----------------------------------------------------------------------------- training runs


class _Interrupt(Exception):
    pass


def _records(work_dir: Path) -> list[dict]:
    drop = {"time", "elapsed"}
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (work_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_resume_continues_exactly(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 images / batch 2 = 5 batches per epoch; 2 batches per update; the stop after update 3
    # falls mid-epoch (epoch 1, 1 batch consumed). One loader worker, dropout and drop-path on.
    cfg = tiny_config(data_root, "train.grad_accum=2", "data.num_workers=1")
    straight = train(cfg, tmp_path / "straight", progress=False)

    real_save = CheckpointManager.save

    def save_then_die(self: CheckpointManager, state: dict) -> Path:
        path = real_save(self, state)
        raise _Interrupt(path)

    monkeypatch.setattr(CheckpointManager, "save", save_then_die)
    with pytest.raises(_Interrupt):
        train(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    first = load_training_checkpoint(tmp_path / "resumed" / "checkpoints" / "latest.pth")
    assert (first["iteration"], first["epoch"], first["offset"]) == (3, 1, 1)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)

    a = torch.load(tmp_path / "straight" / "checkpoints" / "iter_00000006.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "iter_00000006.pth", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][name]), (pid, name)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert (a["epoch"], a["offset"]) == (b["epoch"], b["offset"]) == (2, 2)
    assert _records(tmp_path / "straight") == _records(tmp_path / "resumed")  # same losses, lr, mIoU; no duplicates
    assert straight["best"] == resumed["best"]
    assert straight["parameter_digests"] == resumed["parameter_digests"]
    # the exported model equals the final checkpoint weights
    exported = semask.load(tmp_path / "resumed" / "model")
    assert all(torch.equal(v, b["model"][k]) for k, v in exported.state_dict().items())
    best = semask.load(tmp_path / "resumed" / "checkpoints" / "best.pth")
    assert best.config.num_classes == 5 and best.config.class_names == ["sea", "land", "boat", "car", "buoy"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create = semask.create_model

    def create_model_going_nan(*args: object, **kwargs: object) -> torch.nn.Module:
        model = real_create(*args, **kwargs)
        forward, calls = model.forward, [0]

        def poisoned(pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **options: bool) -> object:
            out = forward(pixel_values, labels, **options)
            calls[0] += 1
            if calls[0] == 5 and labels is not None:
                out.loss = out.loss * float("nan")
            return out

        model.forward = poisoned
        return model

    monkeypatch.setattr(semask.models, "create_model", create_model_going_nan)  # what the trainer calls
    cfg = tiny_config(data_root, "train.ckpt_interval=2", "train.eval_interval=100")
    work = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"iteration 5: loss=nan.*iter_00000004\.pth is untouched"):
        train(cfg, work, progress=False)
    names = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert names == ["iter_00000002.pth", "iter_00000004.pth", "latest.pth"]
    state = load_training_checkpoint(work / "checkpoints" / "latest.pth")
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_two_process_gloo_training_keeps_replicas_identical(data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(data_root, "schedule.iters=3", "train.ckpt_interval=3", "train.eval_interval=3")
    config_path = dump_config(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "semask.cli",
        "train",
        str(config_path),
        "--work-dir",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    digests = summary["parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    state = load_training_checkpoint(tmp_path / "ddp" / "checkpoints" / "latest.pth")
    assert state["iteration"] == 3 and len(state["rng"]) == 2
    model = semask.load(tmp_path / "ddp" / "checkpoints" / "latest.pth")
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.detach().reshape(-1).view(torch.uint8).numpy().tobytes())
    assert digest.hexdigest() == digests[0]
    # each rank trained on its own half: 10 images / 2 ranks / batch 2 = 2 batches per epoch
    assert (state["epoch"], state["offset"]) == (1, 1)
    # the val set was split over the ranks and the counts summed: same mIoU as one process
    logged = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    ddp_miou = [r["mIoU"] for r in logged if r["type"] == "val"]
    val_set = build_dataset("folder", data_root, "val")
    assert ddp_miou == [pytest.approx(evaluate(model, val_set, cfg.eval, progress=False)["mIoU"], abs=1e-9)]


def test_freeze_encoder_trains_only_the_decoder(data_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", num_classes=5, **TINY_MODEL)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "start")
    cfg = tiny_config(
        data_root,
        "model.freeze_encoder=true",
        "schedule.iters=2",
        "train.eval_interval=2",
        "train.ckpt_interval=2",
        f"model.pretrained={tmp_path / 'start'}",
        "model.overrides={}",
    )
    train(cfg, tmp_path / "frozen", progress=False)
    end = semask.load(tmp_path / "frozen" / "model").state_dict()
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed and all(k.startswith("decode_head.") for k in changed if not k.endswith("num_batches_tracked"))
