"""Iteration-based training with the official SeMask-FPN recipe (spec section 6).

``train(cfg, work_dir)`` runs in one process or under ``torchrun`` (one process per device,
DDP). Everything that decides the numbers is restored on ``resume``: weights, AdamW moments,
scheduler, AMP scaler, RNG states of every rank and the data position (epoch + batches
consumed), so an interrupted run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import ExperimentConfig, ModelSection, OptimConfig, ScheduleConfig, dump_config, load_config
from ..data.check import crop_padding_warning
from ..data.datasets import DataError
from ..models.io import atomic_write
from .amp import resolve_amp_dtype
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import VERSION as CHECKPOINT_VERSION
from .checkpoint import (
    CheckpointManager,
    TrainingCheckpointError,
    capture_rng_state,
    load_training_checkpoint,
    model_from_state,
    remove_stale_temporaries,
    restore_rng_state,
)
from .criterion import build_criterion, training_forward
from .distributed import (
    DistInfo,
    ShardedBatchSampler,
    agree_stop,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
    prepare_model,
    unwrap,
)
from .evaluate import evaluate, to_jsonable
from .health import SemanticHealthMonitor, lambdas_learnable, semantic_lambdas
from .lock import FolderLock, lock_for_ranks
from .signals import StopSignals, ignore_stop_signals, worker_pool

logger = logging.getLogger("semask.train")

METRICS_LOG = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; raised before the optimiser step, so no weights were touched."""


# ----------------------------------------------------------------------------- optimiser


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay for the model's ``no_weight_decay()`` parameters (the official
    recipe of its family), or, when ``no_decay_keys`` is set, for names containing one of them
    (mmseg's substring rule: ``norm`` catches every LayerNorm); ``backbone_lr_mult`` x lr for the encoder."""
    if cfg.no_decay_keys is None:
        no_decay = model.no_weight_decay()  # type: ignore[operator]
    else:
        no_decay = {n for n, _ in model.named_parameters() if any(key in n for key in cfg.no_decay_keys)}
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = name not in no_decay
        backbone = name.startswith("backbone.")
        if (decay, backbone) not in groups:
            lr = cfg.lr * (cfg.backbone_lr_mult if backbone else 1.0)
            groups[(decay, backbone)] = {
                "params": [],
                "param_names": [],
                "lr": lr,
                "base_lr": lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            }
        groups[(decay, backbone)]["params"].append(param)
        groups[(decay, backbone)]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused kernel (one pass per tensor, same update up
    to float rounding; 3-5x faster than the per-tensor loop on CPU) when every parameter is a
    float tensor on one CPU or CUDA device, else torch's default implementation."""
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    fusable = bool(params) and len({p.device for p in params}) == 1
    fusable = fusable and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True if fusable else None
    )


def lr_at(iteration: int, base_lr: float, schedule: ScheduleConfig) -> float:
    """Learning rate used for the update of 0-based ``iteration`` (mmcv 0.x poly + linear warmup).

    poly: ``(base - min) * (1 - it / iters) ** power + min``; during warmup that value is scaled
    by ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)``, so iteration 0 uses
    ``warmup_ratio * base`` and the ramp meets the poly curve at ``warmup_iters``.
    """
    regular = (base_lr - schedule.min_lr) * (1.0 - iteration / schedule.iters) ** schedule.power + schedule.min_lr
    if iteration < schedule.warmup_iters:
        k = (1.0 - iteration / schedule.warmup_iters) * (1.0 - schedule.warmup_ratio)
        return regular * (1.0 - k)
    return regular


class WarmupPolyLR:
    """Sets every param group's lr from its ``base_lr`` with :func:`lr_at` before each update."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: ScheduleConfig) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.iteration = 0

    def step(self, iteration: int) -> float:
        """Apply the lr for ``iteration``; returns the lr of the first group (for logging)."""
        self.iteration = iteration
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(iteration, group["base_lr"], self.schedule)
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])


# ----------------------------------------------------------------------------- model + data


def model_for_run(
    cfg: ModelSection,
    num_classes: int,
    class_names: list[str] | None = None,
    palette: list[list[int]] | None = None,
    in_channels: int = 3,
) -> nn.Module:
    """The model ``cfg`` names, for ``num_classes`` classes (and ``in_channels`` input bands),
    initialised as ``cfg`` asks."""
    from ..models import create_model
    from ..models.loader import load_with_meta

    overrides = dict(cfg.overrides)
    if in_channels != 3:
        overrides["in_channels"] = in_channels
    if overrides.setdefault("num_classes", num_classes) != num_classes:
        raise ValueError(f"model.overrides.num_classes={overrides['num_classes']} but the dataset has {num_classes}")
    if cfg.pretrained is not None:
        if cfg.backbone_weights is not None:
            raise ValueError("set model.pretrained or model.backbone_weights, not both")
        # a name preset.tag or any file semask.load reads; overrides settle what official weights cannot show;
        # the dataset's classes: the same count renames them, another needs model.reset_classes
        classes = {"num_classes": num_classes, "class_names": class_names, "palette": palette}
        overrides.update({k: v for k, v in classes.items() if v is not None})
        model, meta = load_with_meta(cfg.pretrained, reset_classes=cfg.reset_classes, **overrides)
        if meta["class_reset"] is not None:
            logger.info("model.reset_classes: %s", meta["class_reset"])
        return model.train()
    if class_names is not None:
        overrides.setdefault("class_names", list(class_names))
    if palette is not None:
        overrides.setdefault("palette", [list(c) for c in palette])
    # backbone_weights: a tag ("imagenet"), a name or a file; the report of what starts fresh is logged
    # (a silently random backbone costs 30 mIoU, SeMask issue 15)
    return create_model(cfg.name, backbone_weights=cfg.backbone_weights, **overrides)


def build_datasets(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """(train, val) datasets of ``cfg.data``; val is None without ``val_split``.

    The training transform is attached by :func:`attach_train_transform` once the model (and
    so its normalisation) is known.
    """
    from ..data.datasets import build_dataset

    d = cfg.data
    kwargs = d.dataset_kwargs()
    train_set = build_dataset(d.type, d.root, d.train_split, seed=cfg.train.seed, **kwargs)
    val_set = build_dataset(d.type, d.root, d.val_split, **kwargs) if d.val_split is not None else None
    return train_set, val_set


def check_training_data(cfg: ExperimentConfig) -> None:
    """Raise ``ValueError`` naming the ``data.*`` training fields the model family's data path needs
    and ``cfg`` lacks (config loading passes test-only configs)."""
    from ..data.pipelines import pipeline_for
    from ..models import get_config

    pipeline_for(get_config(cfg.model.name, **cfg.model.overrides)).check(cfg.data, training=True)


def attach_train_transform(cfg: ExperimentConfig, train_set: Any, model_config: Any) -> None:
    """The training augmentation of the model family's data path (mmseg's or detectron2's,
    :func:`semask.data.pipelines.pipeline_for`), normalising with the model's mean/std.

    (Evaluation reads raw samples and applies the test resize itself, see :mod:`.evaluate`.)
    """
    from ..data.pipelines import pipeline_for

    pipeline = pipeline_for(model_config)
    ignore_index = getattr(train_set, "ignore_index", 255)
    train_set.transform = pipeline.train_transform(cfg.data, model_config.mean, model_config.std, ignore_index)


# ----------------------------------------------------------------------------- training loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    cfg: ExperimentConfig | str | Path,
    work_dir: str | Path,
    resume: bool | str | Path = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` (a config or a YAML path) into ``work_dir``; returns a summary (metrics, paths, timing).

    ``resume=True`` continues from ``work_dir/checkpoints/latest.pth`` (a fresh start if there
    is none yet); a path continues from that checkpoint. Launch with
    ``torchrun --nproc_per_node N -m semask.cli train ...`` for DDP.

    Writes into ``work_dir``: ``config.yaml`` (resolved), ``train.log``, ``metrics.jsonl``,
    ``checkpoints/`` (``iter_*.pth``, ``latest.pth``, ``best.pth``), ``model/`` (final weights
    for :func:`semask.load`), ``loss.png``/``miou.png`` and ``summary.json``.

    A ``work_dir`` that already holds a run is refused unless ``resume`` is given (continue it)
    or ``overwrite=True`` (move it aside to ``<work_dir>.old-<YYYYmmdd-HHMMSS>``; nothing is
    deleted): training into it would mix both runs' checkpoints and logs. While it runs, rank 0
    holds ``work_dir``'s lock (a second run there is refused, naming this one). SIGTERM, SIGINT
    and SIGUSR1 stop it after the current step with a checkpoint it resumes from exactly:
    :class:`TrainingInterrupted` (:mod:`.signals`).
    """
    if not isinstance(cfg, ExperimentConfig):
        cfg = load_config(cfg)
    check_training_data(cfg)  # a test-only config is refused before the work dir or the data is touched
    work_dir = Path(work_dir)
    used = holds_run(work_dir)  # decided before any rank touches the folder
    if resume and overwrite:
        raise ValueError(f"--resume continues the run in {work_dir} and --overwrite moves it aside: pass only one")
    info = init_distributed(cfg.train.device, timedelta(seconds=cfg.train.dist_timeout))
    lock = handler = None
    try:
        # before anything reads, cleans or truncates the folder: a second train or resume there (say, beside
        # workers a killed launcher left running) would truncate and interleave its logs and clean up its temporaries
        lock = lock_for_ranks(work_dir, WORK_DIR_LOCK, "semask train", "--work-dir", info)
        if used and not resume and not overwrite:
            raise FileExistsError(
                f"{work_dir} already holds a training run; pass --resume to continue it, choose a new --work-dir, "
                f"or pass --overwrite to move it aside to {work_dir}.old-<YYYYmmdd-HHMMSS>"
            )
        if info.is_main:
            if used and overwrite:
                moved = move_aside(work_dir)  # the lock file moves along, still held: nobody can start there
                held, lock = lock, FolderLock(work_dir, WORK_DIR_LOCK, "semask train", "--work-dir")
                held.release(moved_to=moved)  # type: ignore[union-attr]
                logger.warning("moved the previous run in %s to %s", work_dir, moved)
            handler = logging.FileHandler(work_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        trainer = _Trainer(cfg, work_dir, info, progress)
        try:
            return trainer.run(resume)
        except RuntimeError as exc:  # gloo: "Timed out waiting ...", NCCL: DistBackendError (a RuntimeError)
            if not (info.distributed and "timed out" in str(exc).lower()):
                raise
            raise TimeoutError(
                f"process {info.rank}: another process did not reach a collective within train.dist_timeout="
                f"{cfg.train.dist_timeout:g} s (it stopped, hangs or died); the last checkpoint is "
                f"{trainer.last_checkpoint}. ({str(exc).splitlines()[0]})"
            ) from exc
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
        if lock is not None:
            lock.release()
        if info.distributed:
            cleanup_distributed()


WORK_DIR_LOCK = ".semask-train.lock"


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint it resumes from exactly."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path | None) -> None:
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after iteration {iteration}; checkpoint: {checkpoint}"
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended."""
        return 128 + self.signum


class _Trainer:
    """State of one training run; every rank holds one."""

    def __init__(self, cfg: ExperimentConfig, work_dir: Path, info: DistInfo, progress: bool) -> None:
        self.cfg = cfg
        self.work_dir = work_dir
        self.info = info
        self.progress = progress
        self.ckpt = CheckpointManager(work_dir / "checkpoints", cfg.train.keep_last)
        self.log_path = work_dir / METRICS_LOG
        self.best: dict[str, Any] = {"metric": "mIoU", "value": None, "iteration": None}
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, Any] | None = None
        self.position = (0, 0)  # (epoch, batches of that epoch consumed)
        self.window: list[torch.Tensor] = []  # losses since the last log record
        self.eval_pending = False  # stopped on a signal before the evaluation this iteration was due

    # -- setup --------------------------------------------------------------------------

    def _setup(self, resume: bool | str | Path) -> int:
        """Build data, model, optimiser; restore a checkpoint if resuming. Returns the start iteration."""
        cfg, info = self.cfg, self.info
        resume_path = self.ckpt.resolve_resume(resume)
        state = load_training_checkpoint(resume_path) if resume_path is not None else None
        if state is not None:
            check_resume_config(state["config"], cfg, resume_path)  # type: ignore[arg-type]
            if state["iteration"] > cfg.schedule.iters:
                raise TrainingCheckpointError(
                    f"{resume_path} is at iteration {state['iteration']}, past schedule.iters={cfg.schedule.iters}: "
                    f"resuming would train nothing and label the result as a {cfg.schedule.iters}-iteration run; "
                    f"set schedule.iters >= {state['iteration']} (or leave it as it was)"
                )
        if info.is_main:  # under the work dir's lock: no live run writes temporaries here
            for stale in remove_stale_temporaries(self.ckpt.directory):
                logger.info("removed %s, a partial write of an interrupted run", stale)

        seed_everything(cfg.train.seed)  # identical initial weights on every rank
        self.train_set, self.val_set = build_datasets(cfg)
        self._check_data()
        meta = self.train_set
        if state is not None:
            model = model_from_state(state, str(resume_path))  # type: ignore[arg-type]
        else:
            model = model_for_run(cfg.model, meta.num_classes, meta.class_names, meta.palette, cfg.data.in_channels)
        if model.config.num_classes != meta.num_classes:
            raise ValueError(
                f"the model has {model.config.num_classes} classes but the {cfg.data.type} dataset at "
                f"{cfg.data.root} has {meta.num_classes}"
            )
        # the test protocol travels with the weights: every checkpoint and model/ record cfg.eval
        model.config = dataclasses.replace(model.config, protocol=cfg.eval.to_dict())
        attach_train_transform(cfg, self.train_set, model.config)
        self.ignore_index = getattr(self.train_set, "ignore_index", 255)
        self.criterion = build_criterion(cfg.loss, model.config, self.train_set, self.ignore_index)
        if cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if cfg.model.freeze_encoder:
            model.freeze_encoder()
        self.model: nn.Module = model.to(info.device).train()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = WarmupPolyLR(self.optimizer, cfg.schedule)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.sampler = ShardedBatchSampler(
            len(self.train_set), cfg.train.batch_size, info.rank, info.world_size, cfg.train.seed
        )
        if info.is_main:  # only now: a start that fails on its data or model leaves no run behind to refuse
            dump_config(cfg, self.work_dir / "config.yaml")
        if state is None:
            seed_everything(cfg.train.seed + info.rank)  # different dropout / drop-path per rank
            return 0
        if info.is_main:
            logger.info("resuming from %s (iteration %d)", resume_path, state["iteration"])
        return self._restore(state, resume_path)  # type: ignore[arg-type]

    def _check_data(self) -> None:
        """``data.check`` of both splits before the first iteration (the main process checks, every
        process raises), so bad files surface now, not at the batch or evaluation that loads them;
        the val labels are decoded for their class ids in any mode. Warns about a crop far larger
        than every training image."""
        mode = self.cfg.data.check
        if mode == "none":
            return
        problems = []
        if self.info.is_main:
            for split in (s for s in (self.train_set, self.val_set) if s is not None):
                try:  # the val labels are always decoded: the split is small, and an evaluation is hours away
                    found = split.check(
                        full=mode == "full" or split is self.val_set, num_threads=8, progress=self.progress
                    )
                except DataError as exc:
                    problems.append(str(exc))
                    continue
                if split is self.train_set and (crop := crop_padding_warning(found["sizes"], self.cfg.data)):
                    logger.warning(crop)
                if found["rotated"]:
                    logger.info(
                        "%s: %d of %d images carry an EXIF orientation and are read upright; "
                        "their labels are used as stored",
                        split.description,
                        found["rotated"],
                        found["samples"],
                    )
        problem = "\n".join(all_gather_objects(problems, self.info)[0])
        if problem:
            raise DataError(f"{problem}\n(checked before training with data.check={mode}; data.check=none skips it)")

    def _amp_dtype(self) -> torch.dtype | None:
        """bf16/fp16 on CUDA (fp16 gets a GradScaler), bf16 on CPUs with native bf16 (else an error)."""
        tc = self.cfg.train
        return resolve_amp_dtype(self.info.device, tc.amp_dtype if tc.amp else None)

    def _restore(self, state: dict[str, Any], path: Path) -> int:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise TrainingCheckpointError(f"{path}: optimiser/scheduler state does not fit this run: {exc}") from exc
        if len(state["rng"]) == self.info.world_size:
            restore_rng_state(state["rng"][self.info.rank])
        else:
            seed_everything(self.cfg.train.seed + self.info.rank + state["iteration"])
            if self.info.is_main:
                logger.warning(
                    "%s was written by %d process(es), this run has %d: RNG streams are re-seeded, "
                    "so the continuation is not bit-identical",
                    path,
                    len(state["rng"]),
                    self.info.world_size,
                )
        self.best = dict(state.get("best", self.best))
        self.position = (int(state["epoch"]), int(state["offset"]))
        self.window = list(state.get("log_window", torch.zeros(0, 3)))
        self.eval_pending = bool(state.get("eval_pending", False))
        self.last_checkpoint = path
        if self.info.is_main:
            _truncate_log(self.log_path, state["iteration"])
        return int(state["iteration"])

    # -- loop ---------------------------------------------------------------------------

    def run(self, resume: bool | str | Path) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        start = self._setup(resume)
        self.model = prepare_model(self.model, info, cfg.train.sync_bn)
        writer = self._tensorboard()
        total = cfg.schedule.iters
        batches = self._batches(*self.position)
        bar = self._progress_bar(start, total)
        if info.is_main:
            logger.info(
                "training %s from iteration %d to %d (%d process(es) x batch %d x accum %d) in %s",
                cfg.model.name,
                start,
                total,
                info.world_size,
                cfg.train.batch_size,
                cfg.train.grad_accum,
                self.work_dir,
            )
            if info.distributed:
                logger.info(
                    "a collective that waits %g s for another process fails the run (train.dist_timeout)",
                    cfg.train.dist_timeout,
                )
        t_start = t_window = time.perf_counter()
        health = SemanticHealthMonitor(cfg.schedule.warmup_iters, lambdas_learnable(unwrap(self.model)))
        self.model.train()
        if self.eval_pending and self.val_set is not None:  # the evaluation a signal put off
            self._evaluate(start, writer)
            self._save(start)  # replaces the stop's checkpoint: without it, each resume would evaluate again
        it = start
        with StopSignals(announce=info.is_main) as stop, contextlib.closing(batches):  # closing: workers end
            while it < total:
                lr = self.scheduler.step(it)
                losses = self._step(batches, it)
                it += 1
                self.window.append(losses)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[0].item():.4f}", lr=f"{lr:.2e}", refresh=False)
                if it % cfg.train.log_interval == 0 or it == total:
                    now = time.perf_counter()
                    mean = torch.stack(self.window).mean(0).tolist()
                    record = {
                        "type": "train",
                        "iter": it,
                        "epoch": self.position[0],
                        "loss": mean[0],
                        "loss_main": mean[1],
                        "loss_semantic": None if math.isnan(mean[2]) else mean[2],
                        "lambda": semantic_lambdas(unwrap(self.model)) or None,  # per stage (issue 14)
                        "lr": lr,
                        "time": (now - t_window) / len(self.window),
                        "elapsed": now - t_start,
                    }
                    self._log(record, writer)
                    if info.is_main:
                        health.check(record)  # warns once: lambda stuck at ~0 / semantic loss flat
                    self.window, t_window = [], now
                evaluate_now = self.val_set is not None and (it % cfg.train.eval_interval == 0 or it == total)
                signum = agree_stop(stop.signum, info)  # every rank stops at the same step
                if signum:
                    self.eval_pending = evaluate_now  # an evaluation can take minutes: the resumed run does it
                    self._save(it)
                    if bar is not None:
                        bar.close()
                    raise TrainingInterrupted(signum, it, self.last_checkpoint)
                if evaluate_now:
                    self._evaluate(it, writer)
                if it % cfg.train.ckpt_interval == 0 or it == total:
                    self._save(it)
            if bar is not None:
                bar.close()
            return self._finish(time.perf_counter() - t_start, writer)

    def _batches(self, epoch: int, offset: int) -> Iterator[dict[str, Any]]:
        """Endless batches over epochs, starting ``offset`` batches into ``epoch``.

        ``self.position`` is updated after every batch, so a checkpoint records exactly where
        the next one starts; a resumed sampler skips indices without loading their samples.
        """
        loader = DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=self.cfg.data.num_workers,
            worker_init_fn=ignore_stop_signals,
            pin_memory=self.info.device.type == "cuda",
            # A private generator: worker seeding must not draw from the global torch RNG,
            # whose state is part of the checkpoint (augmentation is seeded per sample anyway).
            generator=torch.Generator().manual_seed(self.cfg.train.seed),
        )
        while True:
            self.train_set.set_epoch(epoch)
            self.sampler.set_epoch(epoch, offset)
            with worker_pool(loader) as epoch_batches:
                for batch in epoch_batches:
                    offset += 1
                    self.position = (epoch, offset)
                    yield batch
            epoch, offset = epoch + 1, 0
            self.position = (epoch, offset)

    def _step(self, batches: Iterator[dict[str, Any]], it: int) -> torch.Tensor:
        """One optimiser update over ``grad_accum`` micro-batches.

        Returns the (loss, loss_main, loss_semantic) means over micro-batches and ranks;
        loss_semantic is NaN for models without a semantic branch.
        """
        cfg, info = self.cfg.train, self.info
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(3, dtype=torch.float64)
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            images = batch["image"].to(info.device, non_blocking=True)
            labels = batch["label"].to(info.device, non_blocking=True)
            last = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if last or not ddp else self.model.no_sync():
                with torch.autocast(
                    info.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
                ):
                    out = training_forward(self.model, self.criterion, images, labels, self.ignore_index)
                self.scaler.scale(out.loss / cfg.grad_accum).backward()
            semantic = out.loss_semantic if out.loss_semantic is not None else torch.tensor(float("nan"))
            sums += torch.stack([out.loss.detach(), out.loss_main.detach(), semantic.detach()]).double().cpu()
        losses = all_reduce_mean(sums / cfg.grad_accum, info).cpu()
        if not bool(torch.isfinite(losses[:2]).all()) or bool(torch.isinf(losses[2])):
            self._non_finite(it, losses)
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return losses.float()

    def _non_finite(self, it: int, losses: torch.Tensor) -> None:
        if self.last_checkpoint is not None:
            kept = f"the last good checkpoint {self.last_checkpoint} is untouched"
        else:
            kept = "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"non-finite loss at iteration {it + 1}: loss={losses[0].item()}, loss_main={losses[1].item()}, "
            f"loss_semantic={losses[2].item()}; stopped before the optimiser step, {kept}. "
            "Lower optim.lr, set train.clip_grad, or check the labels of the training data."
        )

    def _evaluate(self, it: int, writer: Any) -> None:
        self.eval_pending = False
        broadcast_buffers(self.model, self.info)
        model = unwrap(self.model)
        metrics = evaluate(
            model,
            self.val_set,
            self.cfg.eval,
            info=self.info,
            progress=False,
            num_workers=min(self.cfg.data.num_workers, 2),
        )
        model.train()
        self.last_metrics = metrics
        if metrics["skipped"] and self.info.is_main:
            lines = "\n  ".join(metrics["skipped"])
            logger.warning("iteration %d: the val mIoU leaves out images the model cannot segment:\n  %s", it, lines)
        self._log({"type": "val", "iter": it, **{k: metrics[k] for k in ("mIoU", "mAcc", "aAcc")}}, writer)
        score = metrics["mIoU"]
        if math.isfinite(score) and (self.best["value"] is None or score > self.best["value"]):
            self.best = {"metric": "mIoU", "value": score, "iteration": it}
            state = self._state(it)
            if self.info.is_main:
                self.ckpt.save_best(state)
            barrier(self.info)

    def _state(self, it: int) -> dict[str, Any]:
        """Checkpoint contents; collective (gathers every rank's RNG state), so all ranks call it."""
        rng = all_gather_objects(capture_rng_state(), self.info)
        model = unwrap(self.model)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "iteration": it,
            "epoch": self.position[0],
            "offset": self.position[1],
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "best": dict(self.best),
            "log_window": torch.stack(self.window) if self.window else torch.zeros(0, 3),
            "eval_pending": self.eval_pending,
            "config": self.cfg.to_dict(),
            "world_size": self.info.world_size,
        }

    def _save(self, it: int) -> None:
        state = self._state(it)
        if self.info.is_main:
            self.last_checkpoint = self.ckpt.save(state)
        barrier(self.info)

    def _log(self, record: dict[str, Any], writer: Any) -> None:
        if not self.info.is_main:
            return
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(to_jsonable(record)) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key not in ("type", "iter", "epoch") and isinstance(value, float) and math.isfinite(value):
                    writer.add_scalar(f"{record['type']}/{key}", value, record["iter"])
        if record["type"] == "val":
            logger.info(
                "iter %d: mIoU %.2f  mAcc %.2f  aAcc %.2f",
                record["iter"],
                record["mIoU"],
                record["mAcc"],
                record["aAcc"],
            )
        else:
            logger.info(
                "iter %d: loss %.4f  lr %.3e  %.3f s/it", record["iter"], record["loss"], record["lr"], record["time"]
            )

    def _tensorboard(self) -> Any:
        if not (self.cfg.train.tensorboard and self.info.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard is not installed; metrics go to %s only", self.log_path)
            return None
        return SummaryWriter(str(self.work_dir / "tensorboard"))

    def _progress_bar(self, start: int, total: int) -> Any:
        if not (self.progress and self.info.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=start, desc="train", unit="it", dynamic_ncols=True)

    def _replica_digests(self) -> list[str]:
        """SHA-256 of every rank's parameters; DDP replicas must be bit-identical, else fail loudly.

        (BatchNorm running statistics are rank-local without SyncBN, so buffers are not compared;
        the checkpoint holds rank 0's.)
        """
        digest = hashlib.sha256()
        for param in unwrap(self.model).parameters():
            digest.update(param.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        digests = all_gather_objects(digest.hexdigest(), self.info)
        if len(set(digests)) > 1:
            raise RuntimeError(f"DDP replicas hold different weights after training: digests per rank {digests}")
        return digests

    def _finish(self, seconds: float, writer: Any) -> dict[str, Any]:
        if writer is not None:
            writer.close()
        summary: dict[str, Any] = {
            "work_dir": str(self.work_dir),
            "world_size": self.info.world_size,
            "parameter_digests": self._replica_digests(),
            "iterations": self.cfg.schedule.iters,
            "train_seconds": seconds,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "best": dict(self.best),
            "metrics": self.last_metrics,
        }
        if self.info.is_main:
            from .report import plot_curves

            summary["model_dir"] = str(unwrap(self.model).save_pretrained(self.work_dir / "model"))
            summary["plots"] = [str(p) for p in plot_curves(self.log_path, self.work_dir)]
            text = json.dumps(to_jsonable(summary), indent=2)
            atomic_write(self.work_dir / "summary.json", lambda tmp: Path(tmp).write_text(text))
        barrier(self.info)
        return summary


# ----------------------------------------------------------------------------- resume checks

#: Settings that may differ between a checkpoint and the config that resumes it: they change
#: how a run is watched, stored, fed or evaluated, never which updates the weights receive.
#: (``schedule.iters`` lengthens or shortens the run; the poly lr of the remaining iterations
#: then follows the new length.) Any other difference is refused.
RESUME_MAY_CHANGE = (
    "train.log_interval",
    "train.eval_interval",
    "train.ckpt_interval",
    "train.keep_last",
    "train.tensorboard",
    "train.device",
    "train.dist_timeout",
    "data.num_workers",
    "data.root",
    "data.check",
    "schedule.iters",
    "model.grad_checkpointing",
    "eval.*",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree and not prefix.endswith(("overrides.", "kwargs.")):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _may_change(key: str) -> bool:
    return any(
        key == allowed or (allowed.endswith(".*") and key.startswith(allowed[:-1])) for allowed in RESUME_MAY_CHANGE
    )


def check_resume_config(saved: dict[str, Any], cfg: ExperimentConfig, path: Path) -> None:
    """Refuse to resume the checkpoint at ``path`` (whose config is ``saved``) with a ``cfg`` that
    differs in anything but :data:`RESUME_MAY_CHANGE`; the message lists every differing key.

    Keys the checkpoint's config does not have (settings added to semask since) are not compared.
    """
    old, new = _flatten(saved), _flatten(cfg.to_dict())
    differing = sorted(k for k in old.keys() & new.keys() if old[k] != new[k] and not _may_change(k))
    if not differing:
        return
    lines = [f"  {key}: {old[key]!r} in the checkpoint, {new[key]!r} now" for key in differing]
    hint = ""
    if "train.batch_size" in differing:
        hint = (
            f" The batch size changed ({old['train.batch_size']} -> {new['train.batch_size']}): the saved data "
            "position (epoch, batches consumed) and the learning-rate schedule count batches of the old size."
        )
    raise TrainingCheckpointError(
        f"cannot resume {path} with this config: {len(differing)} setting(s) differ from the ones it was "
        f"trained with.{hint} Resume with the run's own config.yaml (only {', '.join(RESUME_MAY_CHANGE)} may "
        f"change), or start a new run in a new --work-dir.\n" + "\n".join(lines)
    )


# ----------------------------------------------------------------------------- helpers

RUN_MARKERS = ("config.yaml", "checkpoints", METRICS_LOG)


def holds_run(work_dir: Path) -> bool:
    """Whether ``work_dir`` has files of an earlier training run (which a fresh run would mix with)."""
    return any((work_dir / name).exists() for name in RUN_MARKERS)


def move_aside(work_dir: Path) -> Path:
    """Rename ``work_dir`` to a free ``<name>.old-<YYYYmmdd-HHMMSS>[-N]`` beside it; returns the new path."""
    stem = f"{work_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = work_dir.with_name(stem), 1
    while target.exists():
        target, n = work_dir.with_name(f"{stem}-{n}"), n + 1
    os.rename(work_dir, target)  # one atomic rename: the old run is never half moved
    return target


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log records written after ``iteration`` by an interrupted run, so a resume does not duplicate them."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by the interruption
            continue
        if record["iter"] <= iteration:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))
