"""The ``semask`` command line: train, eval, predict, explain, serve, score, demo, info, export, plot.

Every subcommand is a thin layer over the library functions of the same name, so what the
CLI does can also be done from Python. Multi-GPU training:
``torchrun --nproc_per_node N -m semask.cli train CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import AUG_TEST_RATIOS, ExperimentConfig, get_recipe, load_config
from .engine.allocator import LONG_COMMANDS, reexec_with_tuned_malloc

logger = logging.getLogger("semask")


# ----------------------------------------------------------------------------- argument helpers


def _size(text: str) -> tuple[int, int]:
    """``512x512`` or ``512`` -> (h, w)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 512x512), got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"size must look like HxW with positive numbers, got {text!r}")
    return values  # type: ignore[return-value]


def _scale_arg(text: str) -> tuple[int, int] | None:
    return None if text.strip() == "0" else _size(text)


_UNSET = object()  # "--scale not given" (None means "keep the original size")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=["whole", "slide"], help="whole-image or sliding-window inference")
    parser.add_argument("--crop-size", type=_size, metavar="HxW", help="sliding-window crop size")
    parser.add_argument("--stride", type=_size, metavar="HxW", help="sliding-window stride")
    parser.add_argument(
        "--scale",
        type=_scale_arg,
        default=_UNSET,
        metavar="LONGxSHORT",
        help="resize images to fit these edge bounds first (e.g. 2048x512 for ADE20K); "
        "'--scale 0' keeps the original size",
    )
    parser.add_argument(
        "--aug-test",
        action="store_true",
        help=f"the model's multi-scale + flip test (ratios {AUG_TEST_RATIOS}; mask classification: its short-edge sizes)",
    )
    parser.add_argument("--flip", action="store_true", help="also run mirrored images (averaged softmax)")
    parser.add_argument(
        "--window-batch",
        type=int,
        metavar="N",
        help="sliding windows per forward pass (default: sized to free GPU memory; 1 on a CPU)",
    )


def _add_run_options(
    parser: argparse.ArgumentParser, *, progress: bool = True, device: bool = True, amp: bool = True
) -> None:
    """The flags every long-running command shares, with one spelling and meaning everywhere."""
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    if amp:
        parser.add_argument(
            "--amp",
            nargs="?",
            const="bf16",
            choices=["bf16", "fp16"],
            help="mixed-precision autocast (bf16 by default; a CPU needs native bf16)",
        )


def _training_overrides(args: argparse.Namespace) -> list[str]:
    """``--device`` / ``--amp`` of train and demo as the config overrides they stand for."""
    extra = []
    if args.device != "auto":
        if args.device not in ("cpu", "cuda"):
            raise ValueError(
                f"--device {args.device}: training takes auto, cpu or cuda (torchrun gives each process its GPU)"
            )
        extra.append(f"train.device={args.device}")
    if args.amp is not None:
        extra += ["train.amp=true", f"train.amp_dtype={args.amp}"]
    return extra


def _eval_settings(args: argparse.Namespace, base: Any, model: Any) -> Any:
    """``base`` (an EvalConfig) with the inference flags applied; ``--aug-test`` is the model
    family's own multi-scale + flip protocol (``model.aug_test()``)."""
    import dataclasses

    changes: dict[str, Any] = {}
    if args.mode is not None:
        changes["mode"] = args.mode
    if args.crop_size is not None:
        changes["crop_size"] = args.crop_size
    if args.stride is not None:
        changes["stride"] = args.stride
    if args.scale is not _UNSET:
        changes["scale"] = args.scale
    if args.aug_test:
        changes.update(model.aug_test())
    if args.flip:
        changes["flip"] = True
    if args.window_batch is not None:
        changes["window_batch"] = args.window_batch
    return dataclasses.replace(base, **changes)


def _device(name: str) -> Any:
    """``--device``: auto, cpu, cuda or cuda:N, checked against what this machine has."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {name}: {why}; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: semask runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    return device


_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)+=")  # section.key=value


def _gather_overrides(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str], argv: Sequence[str]
) -> None:
    """Collect ``section.key=value`` overrides from anywhere on the line, in command-line order.

    argparse gives the ``overrides`` positional only the ones before the first option; later ones
    come back as ``extras``, and ``--resume key=value`` lands in ``--resume`` (a bare ``--resume``
    followed by an override). Any other leftover token is argparse's usual error.
    """
    takes_overrides = hasattr(args, "overrides")
    unknown = [tok for tok in extras if not (takes_overrides and _OVERRIDE.match(tok))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not takes_overrides:
        return
    found = list(args.overrides) + extras
    resume = getattr(args, "resume", None)
    if isinstance(resume, str) and _OVERRIDE.match(resume) and not Path(resume).exists():
        found.append(resume)
        args.resume = True
    ordered = []
    for tok in argv:
        if tok in found:
            found.remove(tok)
            ordered.append(tok)
    args.overrides = ordered


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.trainer import TrainingInterrupted, train

    overrides = [*args.overrides, *_training_overrides(args)]
    cfg = load_config(args.config, overrides)
    work_dir = Path(args.work_dir) if args.work_dir else Path("work_dirs") / Path(args.config).stem
    try:
        summary = train(cfg, work_dir, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    except TrainingInterrupted as stopped:  # a checkpoint was written: say how to go on, exit 128 + signal
        if int(os.environ.get("RANK", "0")) == 0:
            world, local = (int(os.environ.get(k, "1")) for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"))
            launcher = ["torchrun", "--nproc_per_node", str(local), "-m", "semask.cli"] if world > 1 else ["semask"]
            command = [*launcher, "train", args.config, *overrides, "--work-dir", str(work_dir), "--resume"]
            nodes = f" (and your torchrun options for the {world // local} nodes)" if world > local else ""
            print(f"semask train: {stopped}\nresume with: {shlex.join(command)}{nodes}", file=sys.stderr)
        return stopped.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"]
        if best["value"] is not None:
            print(
                f"best mIoU {best['value']:.2f} at iteration {best['iteration']} (checkpoints/best.pth); the "
                f"official numbers are the final iteration's: semask eval {work_dir}"
            )
        print(f"work dir: {work_dir}  (model: {summary.get('model_dir')}, log: {work_dir / 'metrics.jsonl'})")
    return 0


#: The validation split of each dataset format, for ``eval --data-type T`` without ``--split``.
VAL_SPLITS = {"ade20k": "validation", "cityscapes": "val", "coco_stuff10k": "val", "folder": "val"}


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.datasets import build_dataset
    from .engine.amp import autocast, resolve_amp_dtype
    from .engine.checkpoint import describe_weights, final_checkpoint
    from .engine.evaluate import evaluate
    from .engine.predict import load_model_any

    target = Path(args.target)
    if target.is_dir() and (target / "config.yaml").is_file() and (target / "checkpoints").is_dir():
        target = target / "config.yaml"  # a training work dir: its config and its final checkpoint
    if target.suffix in (".yaml", ".yml"):
        weights = args.checkpoint
        if weights is None and (target.parent / "checkpoints").is_dir():  # a work dir's config.yaml
            weights = final_checkpoint(target.parent / "checkpoints")
        if weights is None:
            raise ValueError(f"evaluating with the config {target} needs --checkpoint (weights to test)")
        cfg = load_config(target, args.overrides)
        model, _ = load_model_any(weights)
    else:
        if args.checkpoint is not None:
            raise ValueError(f"{target} is a model already; --checkpoint is only used with a YAML config")
        weights = target
        model, embedded = load_model_any(target)
        if embedded is not None:  # a training checkpoint: its config says which data and protocol
            cfg = ExperimentConfig.from_dict(embedded.to_dict(), str(target), args.overrides)
        else:
            if args.data_type is None or args.data_root is None:
                raise ValueError(
                    f"{target} carries no dataset settings; pass --data-type and --data-root (and --split)"
                )
            protocol = model.config.protocol  # the model's own test protocol, under the overrides
            cfg = ExperimentConfig.from_dict({"eval": protocol} if protocol else {}, "defaults", args.overrides)
    data = cfg.data
    data_type = args.data_type or data.type
    data_root = args.data_root or data.root
    split = args.split or data.val_split
    if args.split is None and args.data_type is not None and args.data_type != data.type:
        split = VAL_SPLITS.get(args.data_type, split)  # that format's own validation split
    if split is None:
        raise ValueError("no split to evaluate: set data.val_split or pass --split")
    dataset = build_dataset(
        data_type,
        data_root,
        split,
        **(data.dataset_kwargs() if data_type == data.type else _base_dataset_kwargs(data)),
    )
    checkpoint = describe_weights(weights, cfg.schedule.iters)
    print(f"checkpoint: {checkpoint['path']}{_iteration_note(checkpoint, cfg.schedule.iters)}")
    device = _device(args.device)
    model = model.to(device)
    with autocast(device, resolve_amp_dtype(device, args.amp)):
        result = evaluate(
            model,
            dataset,
            _eval_settings(args, cfg.eval, model),
            checkpoint=checkpoint,
            num_workers=args.num_workers,
            pred_dir=args.pred_dir,
            out_json=args.out,
            confusion_png=args.confusion,
            normalize_confusion=args.normalize_confusion,
            progress=not args.no_progress,
        )
    print(result["table"])
    if args.confusion:
        print(f"confusion matrix drawn to {args.confusion}")
    if args.out:
        print(f"results written to {args.out}")
    if result["skipped"]:  # the metrics above leave these out: say so and fail, as predict does
        lines = "\n  ".join(result["skipped"])
        print(
            f"semask eval: error: {len(result['skipped'])} of {result['num_images']} image(s) could not be "
            f"segmented and are left out of the metrics above:\n  {lines}",
            file=sys.stderr,
        )
        return 1
    return 0


def _iteration_note(checkpoint: dict[str, Any], total: int) -> str:
    if checkpoint["iteration"] is None:
        return ""
    if checkpoint["final"]:
        return f" (iteration {checkpoint['iteration']} of {total}: the final weights, as the official numbers)"
    return (
        f" (iteration {checkpoint['iteration']} of {total}; the official numbers are the final iteration's: "
        "evaluate the work dir or checkpoints/latest.pth of a finished run)"
    )


def _base_dataset_kwargs(data: Any) -> dict[str, Any]:
    """Dataset options of a config whose dataset type --data-type replaced (folder options left out)."""
    return {**data.kwargs, "num_classes": data.num_classes, "reduce_zero_label": data.reduce_zero_label}


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.distributed import cleanup_distributed, init_distributed
    from .engine.predict import DISTRIBUTED_TIMEOUT, UnreadableImagesError

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1 (overlay opacity), got {args.alpha}")
    if Path(args.out).is_file():
        raise ValueError(f"--out {args.out} is a file; give a folder for the labels/, color/ and overlay/ PNGs")
    info = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: each rank predicts every world_size-th image
        if args.device not in ("auto", "cpu", "cuda"):
            raise ValueError(
                f"--device {args.device}: under torchrun each rank takes the GPU of its LOCAL_RANK; "
                "use --device auto, cpu or cuda"
            )
        info = init_distributed(args.device, timeout=DISTRIBUTED_TIMEOUT)
        device = info.device
    else:
        device = _device(args.device)
    try:
        return _predict(args, device, info)
    except UnreadableImagesError:
        if info is not None and not info.is_main:
            return 1  # rank 0 reports it
        raise
    finally:
        cleanup_distributed()


def _predict(args: argparse.Namespace, device: Any, info: Any) -> int:
    from .engine.amp import autocast, resolve_amp_dtype
    from .engine.predict import UnreadableImagesError, load_model_any, model_protocol, predict_folder

    model, _ = load_model_any(args.model)
    extra = {}
    if args.save_priors:
        from .engine.health import semantic_layers
        from .explain import explain

        if not semantic_layers(model):
            raise ValueError(f"--save-priors: {args.model} has no semantic layers (a baseline), so no prior maps")

        def priors(image: Path, folder: Path) -> list[Path]:
            return explain(model, image, top_k=3, scale=settings.scale).save_heatmaps(folder, image.stem)

        extra["priors"] = priors
    model = model.to(device)
    settings = _eval_settings(args, model_protocol(model), model)
    failure = None
    with autocast(device, resolve_amp_dtype(device, args.amp)):
        try:
            written = predict_folder(
                model,
                args.images,
                args.out,
                alpha=args.alpha,
                strict=args.strict,
                progress=not args.no_progress,
                skip_existing=args.skip_existing,
                extra_outputs=extra,
                info=info,
                **settings.predict_options(),
            )
        except UnreadableImagesError as exc:  # the readable images are written; say so, then fail
            written, failure = exc.written, exc
    if info is None or info.is_main:
        print(
            f"{len(written)} image(s): class ids in {Path(args.out) / 'labels'}, colours in "
            f"{Path(args.out) / 'color'}, overlays in {Path(args.out) / 'overlay'}"
            + (f", semantic-prior heatmaps (top-3 classes x stage) in {Path(args.out) / 'priors'}" if extra else "")
        )
    if failure is not None:
        raise failure
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .engine.evaluate import to_jsonable
    from .engine.metrics import format_table, score_folders

    result = score_folders(
        args.pred_dir,
        args.gt_dir,
        args.num_classes,
        reduce_zero_label=args.reduce_zero_label,
        ignore_index=args.ignore_index,
        pred_suffix=args.pred_suffix,
        gt_suffix=args.gt_suffix,
    )
    print(format_table(result))
    if args.out:
        from .models.io import atomic_write

        text = json.dumps(to_jsonable(result), indent=2) + "\n"
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from .data.check import check_data

    result = check_data(
        args.target,
        args.overrides,
        out_dir=args.out,
        num_samples=args.samples,
        num_threads=args.workers,
        progress=not args.no_progress,
    )
    return 0 if result["ok"] else 1


def cmd_info(args: argparse.Namespace) -> int:
    from .models.pretrained import is_pretrained_name
    from .models.summary import describe

    if Path(args.name).exists() or is_pretrained_name(args.name):  # a model: architecture, learned lambda
        from .engine.health import semantic_lambdas
        from .engine.predict import load_model_any

        model, _ = load_model_any(args.name)
        config = model.config
        params = sum(p.numel() for p in model.parameters())
        print(f"{args.name}: {type(model).__name__}, {config.num_classes} classes, {params:,} parameters")
        lambdas = semantic_lambdas(model)
        if not lambdas:
            print("no semantic layers (a baseline): no lambda")
        else:
            print("learned lambda per stage (the paper reports about 0.05-0.3 after training):")
            for key, value in lambdas.items():
                print(f"  {key:<14} {value:.4f}")
        return 0
    print(describe(args.name, args.num_classes, args.size).table())
    return 0


def cmd_list_pretrained(args: argparse.Namespace) -> int:
    from .models.pretrained import get_pretrained, list_pretrained

    rows = []
    for name in list_pretrained(args.pattern):
        cfg = get_pretrained(name)
        miou = f"{cfg.paper_miou[0]:.2f} / {cfg.paper_miou[1]:.2f}" if cfg.paper_miou else "-"
        rows.append((name, cfg.kind, cfg.dataset or "ImageNet", miou, cfg.source))
    _print_table(("name", "kind", "data", "paper mIoU", "source"), rows)
    return 0


def cmd_list_models(args: argparse.Namespace) -> int:
    import torch

    from .models import build_model, get_config, list_models, list_pretrained

    rows = []
    for name in list_models(args.pattern):
        config = get_config(name)
        with torch.device("meta"):  # parameter counts without allocating or initialising weights
            params = sum(p.numel() for p in build_model(config).parameters())
        weights = ", ".join(n.rsplit(".", 1)[1] for n in list_pretrained(f"{name}.*")) or "-"
        rows.append((name, f"{params:,}", str(config.num_classes), weights))
    _print_table(("model", "parameters", "classes", "released weights"), rows)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from .config import format_miou, paper_miou, recipe_names, recipe_path

    if args.name is None:
        rows = []
        for name in recipe_names():
            cfg = get_recipe(name)
            miou = format_miou(paper_miou(name, cfg))
            rows.append((name, cfg.model.name, cfg.data.type, f"{cfg.schedule.iters:,}", miou))
        _print_table(("recipe", "model", "dataset", "iterations", "paper mIoU (s.s. / m.s.)"), rows)
        print("\nsemask config NAME prints one resolved; semask train NAME [key=value ...] trains it")
        return 0
    cfg = load_config(args.name, args.overrides)
    source = args.name if Path(args.name).is_file() else recipe_path(args.name)
    print(f"# {args.name} ({source}), resolved{' with ' + ' '.join(args.overrides) if args.overrides else ''}")
    print("# semask train FILE accepts this file as it is")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_download(args: argparse.Namespace) -> int:
    from .hub import download

    path = download(args.name, to=args.to, progress=not args.no_progress)
    print(f"{args.name}: {path}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .engine.amp import autocast, resolve_amp_dtype
    from .engine.predict import load_model_any
    from .explain import explain

    model, _ = load_model_any(args.model)
    device = _device(args.device)
    model = model.to(device)
    options = {} if args.scale is _UNSET else {"scale": args.scale}  # default: the model's protocol
    with autocast(device, resolve_amp_dtype(device, args.amp)):
        found = explain(model, args.image, classes=args.classes, top_k=args.top_k, **options)
    files = found.save(args.out, f"{Path(args.image).stem}_explain")
    print(f"composite: {files['composite']}\narrays:    {files['arrays']}")
    print("lambda: " + (", ".join(f"{k}={v:.4f}" for k, v in found.lambdas.items()) or "none"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_side=args.max_side,
        device=_device(args.device),
        amp=args.amp,
        **({} if args.scale is _UNSET else {"scale": args.scale}),
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .engine.predict import load_model_any
    from .export import export_hf, export_onnx

    source = Path(args.model)
    if args.format == "hf":
        out = Path(args.out) if args.out else source.parent / f"{source.stem}_hf"
        model, _ = load_model_any(args.model)
        print(f"exported {args.model} to {export_hf(model, out)} (transformers SegformerForSemanticSegmentation)")
        return 0
    if args.size is None:
        raise ValueError("--format onnx needs --size HxW (the traced input size; with --dynamic any size works)")
    out = Path(args.out) if args.out else source.parent / f"{source.stem}.onnx"
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the .onnx file to write, e.g. {out / 'model.onnx'}")
    if out.suffix != ".onnx":
        raise ValueError(f"--out {out}: the ONNX file name must end in .onnx")
    model, _ = load_model_any(args.model)
    path = export_onnx(model.eval(), out, args.size, args.dynamic)
    print(f"exported {args.model} to {path or out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .engine.report import plot_curves

    log = Path(args.log)
    if log.is_dir():
        log = log / "metrics.jsonl"
    for path in plot_curves(log, args.out or log.parent):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else fresh_dir(Path("semask_demo"))
    summary = run_demo(out, quick=args.quick, progress=not args.no_progress, overrides=_training_overrides(args))
    print(
        f"\ndemo finished in {summary['seconds']:.0f} s: val mIoU {summary['mIoU']:.2f} "
        f"(mAcc {summary['mAcc']:.2f}, aAcc {summary['aAcc']:.2f})"
    )
    print(f"report:      {summary['report']}")
    print(f"predictions: {summary['predictions']}")
    print(f"model:       {summary['model_dir']}  (try: semask predict {summary['model_dir']} IMAGE --out DIR)")
    return 0


# ----------------------------------------------------------------------------- demo


def demo_config(data_root: str, quick: bool = False, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The built-in demo experiment, the packaged recipe ``demo`` with its data at ``data_root``.

    ``quick`` shrinks it to a smoke test; ``overrides`` (``key=value``) come last.
    """
    return get_recipe("demo", [f"data.root={data_root}", *(QUICK_OVERRIDES if quick else ()), *overrides])


QUICK_OVERRIDES = (
    "data.crop_size=[64,64]",
    "data.scale=[128,128]",
    "eval.scale=[128,128]",
    "schedule.iters=12",
    "schedule.warmup_iters=2",
    "train.batch_size=4",
    "train.log_interval=4",
    "train.eval_interval=6",
    "train.ckpt_interval=6",
)
DEMO_DATA = {False: dict(num_train=200, num_val=40, size=128), True: dict(num_train=16, num_val=6, size=64)}


def fresh_dir(base: Path) -> Path:
    """``base`` if it holds no demo run yet, else the first free ``base-2``, ``base-3``, ..."""
    from .engine.trainer import holds_run

    path, n = base, 2
    while holds_run(path / "work"):
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def run_demo(out: Path, quick: bool = False, progress: bool = True, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Synthetic data -> train -> evaluate the best checkpoint -> predictions, plots and REPORT.md.

    Refuses an ``out`` that holds a demo run already (its checkpoints and logs would mix).
    """
    from .data.datasets import build_dataset
    from .data.synthetic import make_context_dataset
    from .engine.evaluate import evaluate
    from .engine.predict import predict_folder
    from .engine.report import write_report
    from .engine.trainer import holds_run, train
    from .models import load

    if holds_run(out / "work"):
        raise FileExistsError(
            f"{out} already holds a demo run; choose a new --out, or leave --out off for a fresh folder"
        )
    start = time.perf_counter()
    sizes = DEMO_DATA[quick]
    data_root = make_context_dataset(out / "data", seed=0, **sizes)
    cfg = demo_config(str(data_root), quick, overrides)
    logger.info("synthetic data in %s; training (%d iterations) in %s", data_root, cfg.schedule.iters, out / "work")
    summary = train(cfg, out / "work", progress=progress)
    best_path = out / "work" / "checkpoints" / "best.pth"
    model = load(best_path)
    val_set = build_dataset("folder", data_root, "val")
    metrics = evaluate(model, val_set, cfg.eval, out_json=out / "eval.json", progress=progress)
    sample = [p for p, _ in val_set.samples[:8]]
    predict_folder(model, sample, out / "predictions", scale=cfg.eval.scale, progress=progress)
    model_dir = model.save_pretrained(out / "model")
    seconds = time.perf_counter() - start
    overlays = sorted((out / "predictions" / "overlay").glob("*.png"))[:4]
    report = write_report(
        out / "REPORT.md",
        "semask demo: SeMask Swin-FPN on synthetic context scenes",
        {
            "model": f"{cfg.model.name} with {cfg.model.overrides}",
            "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
            "data": f"{sizes['num_train']} train / {sizes['num_val']} val images, {sizes['size']}x{sizes['size']} "
            f"({data_root})",
            "iterations": f"{cfg.schedule.iters} x batch {cfg.train.batch_size}",
            "best checkpoint": f"{best_path} (iteration {summary['best']['iteration']})",
            "val mIoU / mAcc / aAcc": f"{metrics['mIoU']:.2f} / {metrics['mAcc']:.2f} / {metrics['aAcc']:.2f}",
            "total time": f"{seconds:.0f} s",
        },
        class_table=metrics["table"],
        images=[p for p in (out / "work" / "loss.png", out / "work" / "miou.png") if p.exists()] + overlays,
    )
    return {
        "seconds": seconds,
        "mIoU": metrics["mIoU"],
        "mAcc": metrics["mAcc"],
        "aAcc": metrics["aAcc"],
        "report": str(report),
        "predictions": str(out / "predictions"),
        "model_dir": str(model_dir),
        "train": summary,
    }


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semask", description="SeMask semantic segmentation: train, test, predict.")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train from a YAML config (torchrun for several GPUs)")
    p.add_argument("config", help="a packaged recipe name (`semask config` lists them) or an experiment YAML")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.batch_size=4")
    p.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="PATH",
        help="continue from PATH, or from the work dir's latest checkpoint when no PATH is given",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="the work dir holds a run: move it aside to <work dir>.old-<time> and start afresh",
    )
    _add_run_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="mIoU of a model on a labelled split")
    p.add_argument(
        "target",
        help="a training work dir (its final checkpoint, the weights the official numbers report), a YAML "
        "config (with --checkpoint; a work dir's config.yaml defaults to its final checkpoint), a training "
        "checkpoint (best.pth: the best validation score, not the official protocol), or a model",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--checkpoint", help="weights to test with a YAML config (checkpoint or model folder)")
    p.add_argument("--data-type", help="dataset type (ade20k, cityscapes, coco_stuff10k, folder)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--split", help="split to evaluate (default: the config's val split)")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes")
    p.add_argument("--pred-dir", help="also save predicted class-id PNGs here")
    p.add_argument("--out", help="write the metrics (with the confusion matrix) as JSON here")
    p.add_argument("--confusion", metavar="PNG", help="draw the confusion matrix as a heatmap here")
    p.add_argument("--normalize-confusion", action="store_true", help="heatmap rows as fractions of each true class")
    _add_inference_options(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="segment images; writes class ids, colour maps and overlays")
    p.add_argument("model", help="model folder, .safetensors, training checkpoint or official .pth")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (1 = colours only)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image (default: skip it, report it at the end, exit 1)",
    )
    p.add_argument(
        "--save-priors", action="store_true", help="also write semantic-prior heatmaps (top-3 classes) to OUT/priors"
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="continue a killed run: skip images whose outputs in OUT are complete and made with the same "
        "model and settings (default: predict every image again)",
    )
    _add_inference_options(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="semantic-prior maps of one image: composite PNG + raw arrays (.npz)")
    p.add_argument("model", help="model folder, .safetensors, training checkpoint or official .pth")
    p.add_argument("image", help="image file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", help="comma-separated class names or ids for the heatmaps (default: top-k present)")
    p.add_argument("--top-k", type=int, default=3, help="heatmaps for the k most frequent predicted classes")
    p.add_argument(
        "--scale", type=_scale_arg, default=_UNSET, metavar="LONGxSHORT", help="resize to fit first; 0 = original"
    )
    _add_run_options(p, progress=False)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="local web demo + JSON endpoint POST /predict (standard library only)")
    p.add_argument("model", help="model folder, .safetensors, training checkpoint or official .pth")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads get 413")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="larger images get 422")
    p.add_argument("--max-side", type=int, default=8192, help="images with a longer side get 422")
    p.add_argument(
        "--scale",
        type=_scale_arg,
        default=_UNSET,
        metavar="LONGxSHORT",
        help="resize uploads to fit first; 0 = the original size (default: the model's test protocol)",
    )
    _add_run_options(p, progress=False)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("score", help="mIoU of predicted label PNGs against ground-truth PNGs")
    p.add_argument("pred_dir")
    p.add_argument("gt_dir")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--reduce-zero-label", action="store_true", help="ground truth uses 0 = ignore (ADE20K files)")
    p.add_argument("--ignore-index", type=int, default=255, help="ground-truth value that is not scored")
    p.add_argument("--pred-suffix", default=".png")
    p.add_argument("--gt-suffix", default=".png")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("check-data", help="validate a dataset, show class statistics and augmented samples")
    p.add_argument("target", help="an experiment YAML (its data section) or a folder-dataset ROOT")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.crop_size=[256,256]")
    p.add_argument("--out", help="folder for augmented_samples.png (default: ROOT/check or <config>_check)")
    p.add_argument("--samples", type=int, default=16, help="augmented training samples to draw (0: none)")
    p.add_argument("--workers", type=int, default=8, help="reader threads")
    _add_run_options(p, device=False, amp=False)
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("demo", help="synthetic data -> train a small SeMask on CPU -> eval -> report")
    p.add_argument("--out", help="output folder (default: ./semask_demo, or the first free ./semask_demo-N)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke-test version (seconds)")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list-pretrained", help="released weights by name (preset.tag), with paper mIoU and source")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'semask_*fpn*'")
    p.set_defaults(func=cmd_list_pretrained)

    p = sub.add_parser("list-models", help="model presets with parameter counts and their released weights")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'semask_*mask2former*'")
    p.set_defaults(func=cmd_list_models)

    p = sub.add_parser("config", help="list the packaged recipes, or print one resolved (YAML for semask train)")
    p.add_argument("name", nargs="?", help="a recipe name (or YAML file) to print resolved; none: list them all")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied before printing")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("download", help="fetch released weights NAME.TAG into the cache (or --to DIR)")
    p.add_argument("name", help="preset.tag, e.g. semask_swin_t_fpn.ade20k (see semask list-pretrained)")
    p.add_argument(
        "--to",
        help="folder to put the file in (default: $SEMASK_HOME or ~/.cache/semask; Hugging Face entries go to huggingface_hub's cache)",
    )
    _add_run_options(p, device=False, amp=False)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("info", help="parameters and FLOPs of a preset, or a model's learned lambda per stage")
    p.add_argument("name", help="preset name (see semask.list_models()) or a model folder / checkpoint")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--size", type=_size, default=(512, 512), metavar="HxW")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="export a model to ONNX, or a SegFormer to a Hugging Face folder")
    p.add_argument("model", help="model folder, .safetensors, training checkpoint or official .pth")
    p.add_argument(
        "--format",
        choices=["onnx", "hf"],
        default="onnx",
        help="onnx: one graph pixel_values -> logits; hf: transformers' SegFormer layout (SegFormer models)",
    )
    p.add_argument("--size", type=_size, metavar="HxW", help="ONNX: example input size (required)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch and image size")
    p.add_argument("--out", help="output .onnx file or hf folder (default: MODEL.onnx / MODEL_hf beside the model)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="loss / mIoU curves from a work dir or metrics.jsonl")
    p.add_argument("log", help="work dir or metrics.jsonl")
    p.add_argument("--out", help="folder for the PNGs (default: next to the log)")
    p.set_defaults(func=cmd_plot)
    return parser


def console() -> int:
    """The ``semask`` command (and ``python -m semask.cli``): :func:`main` on ``sys.argv``, with
    the long commands re-run with glibc's malloc tuned (semask/engine/allocator.py)."""
    return main(tune_malloc=True)


def main(argv: Sequence[str] | None = None, *, tune_malloc: bool = False) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    _gather_overrides(parser, args, extras, argv)
    if tune_malloc and args.command in LONG_COMMANDS:
        reexec_with_tuned_malloc()  # returns where it is tuned already, off or unavailable
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `semask config | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside a training loop: nothing to save, no traceback
        print(f"\nsemask {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.traceback or not _is_user_error(exc):
            raise  # a bug of semask itself: the traceback is what a bug report needs
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"semask {args.command}: error: {message}", file=sys.stderr)
        return 1


#: Where a KeyError / TypeError means "no such name / setting" for a name the user typed
#: (model presets, weight names, config fields); anywhere else they are programming errors.
_LOOKUP_MODULES = {("models", "registry.py"), ("models", "pretrained.py"), ("models", "base.py")}


def _is_user_error(exc: BaseException) -> bool:
    """Errors about the user's input, files or machine: printed as one line, exit code 1."""
    if isinstance(exc, (ValueError, OSError, FloatingPointError)):
        return True
    if type(exc).__module__ in ("semask.hub.download", "semask.export"):  # DownloadError, ExportError
        return True
    if isinstance(exc, ImportError):
        return "pip install" in str(exc)  # a missing optional dependency, with the install line
    if isinstance(exc, (KeyError, TypeError)):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is None:
            return False
        where = Path(tb.tb_frame.f_code.co_filename)
        return (where.parent.name, where.name) in _LOOKUP_MODULES
    return False


if __name__ == "__main__":
    sys.exit(console())
