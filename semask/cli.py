"""The ``semask`` command line: train, eval, predict, score, demo, info, export, plot.

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
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import AUG_TEST_RATIOS, ExperimentConfig, load_config

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
        "--aug-test", action="store_true", help=f"multi-scale {AUG_TEST_RATIOS} + flip testing (averaged softmax)"
    )
    parser.add_argument("--flip", action="store_true", help="also run mirrored images (averaged softmax)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        choices=["bf16", "fp16"],
        help="mixed-precision autocast (bf16 by default; a CPU needs native bf16)",
    )


def _eval_settings(args: argparse.Namespace, base: Any) -> Any:
    """``base`` (an EvalConfig) with the inference flags applied."""
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
        changes.update(scales=list(AUG_TEST_RATIOS), flip=True)
    if args.flip:
        changes["flip"] = True
    return dataclasses.replace(base, **changes)


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    from .engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    work_dir = Path(args.work_dir) if args.work_dir else Path("work_dirs") / Path(args.config).stem
    summary = train(cfg, work_dir, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"]
        if best["value"] is not None:
            print(f"best mIoU {best['value']:.2f} at iteration {best['iteration']}")
        print(f"work dir: {work_dir}  (model: {summary.get('model_dir')}, log: {work_dir / 'metrics.jsonl'})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .data.datasets import build_dataset
    from .engine.amp import autocast, resolve_amp_dtype
    from .engine.evaluate import evaluate
    from .engine.predict import load_model_any

    target = Path(args.target)
    if target.suffix in (".yaml", ".yml"):
        if args.checkpoint is None:
            raise ValueError(f"evaluating with the config {target} needs --checkpoint (weights to test)")
        cfg = load_config(target, args.overrides)
        model, _ = load_model_any(args.checkpoint)
    else:
        if args.checkpoint is not None:
            raise ValueError(f"{target} is a model already; --checkpoint is only used with a YAML config")
        model, embedded = load_model_any(target)
        if embedded is not None:  # a training checkpoint: its config says which data and protocol
            cfg = ExperimentConfig.from_dict(embedded.to_dict(), str(target), args.overrides)
        else:
            if args.data_type is None or args.data_root is None:
                raise ValueError(
                    f"{target} carries no dataset settings; pass --data-type and --data-root (and --split)"
                )
            cfg = ExperimentConfig.from_dict({}, "defaults", args.overrides)
    data = cfg.data
    data_type = args.data_type or data.type
    data_root = args.data_root or data.root
    split = args.split or data.val_split
    if split is None:
        raise ValueError("no split to evaluate: set data.val_split or pass --split")
    dataset = build_dataset(
        data_type,
        data_root,
        split,
        num_classes=data.num_classes,
        reduce_zero_label=data.reduce_zero_label,
        **data.kwargs,
    )
    device = _device(args.device)
    model = model.to(device)
    with autocast(device, resolve_amp_dtype(device, args.amp)):
        result = evaluate(
            model,
            dataset,
            _eval_settings(args, cfg.eval),
            num_workers=args.num_workers,
            pred_dir=args.pred_dir,
            out_json=args.out,
        )
    print(result["table"])
    if args.out:
        print(f"results written to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .config import EvalConfig
    from .engine.amp import autocast, resolve_amp_dtype
    from .engine.predict import load_model_any, predict_folder

    model, embedded = load_model_any(args.model)
    device = _device(args.device)
    model = model.to(device)
    base = embedded.eval if embedded is not None else EvalConfig(scale=None)
    settings = _eval_settings(args, base)
    with autocast(device, resolve_amp_dtype(device, args.amp)):
        written = predict_folder(
            model,
            args.images,
            args.out,
            alpha=args.alpha,
            scale=settings.scale,
            mode=settings.mode,
            crop_size=settings.crop_size,
            stride=settings.stride,
            scales=settings.scales,
            flip=settings.flip,
        )
    print(
        f"{len(written)} image(s): class ids in {Path(args.out) / 'labels'}, colours in "
        f"{Path(args.out) / 'color'}, overlays in {Path(args.out) / 'overlay'}"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .engine.evaluate import to_jsonable
    from .engine.metrics import format_table, score_folders

    result = score_folders(
        args.pred_dir,
        args.gt_dir,
        args.num_classes,
        reduce_zero_label=args.reduce_zero_label,
        pred_suffix=args.pred_suffix,
        gt_suffix=args.gt_suffix,
    )
    print(format_table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .models.summary import describe

    print(describe(args.name, args.num_classes, args.size).table())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .engine.predict import load_model_any
    from .export import export_onnx

    model, _ = load_model_any(args.model)
    path = export_onnx(model.eval(), args.out, args.size, args.dynamic)
    print(f"exported {args.model} to {path or args.out}")
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
    summary = run_demo(out, quick=args.quick, progress=not args.no_progress)
    print(
        f"\ndemo finished in {summary['seconds']:.0f} s: val mIoU {summary['mIoU']:.2f} "
        f"(mAcc {summary['mAcc']:.2f}, aAcc {summary['aAcc']:.2f})"
    )
    print(f"report:      {summary['report']}")
    print(f"predictions: {summary['predictions']}")
    print(f"model:       {summary['model_dir']}  (try: semask predict {summary['model_dir']} IMAGE --out DIR)")
    return 0


# ----------------------------------------------------------------------------- demo


def demo_config(data_root: str, quick: bool = False) -> ExperimentConfig:
    """The built-in demo experiment, ``semask/configs/demo.yaml`` with its data at ``data_root``.

    ``quick`` shrinks it to a smoke test.
    """
    path = Path(__file__).parent / "configs" / "demo.yaml"
    overrides = [f"data.root={data_root}", *(QUICK_OVERRIDES if quick else ())]
    return load_config(path, overrides)


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


def run_demo(out: Path, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Synthetic data -> train -> evaluate the best checkpoint -> predictions, plots and REPORT.md.

    Refuses an ``out`` that holds a demo run already (its checkpoints and logs would mix).
    """
    from .data.datasets import build_dataset
    from .data.synthetic import make_context_dataset
    from .engine.checkpoint import load_model_from_checkpoint
    from .engine.evaluate import evaluate
    from .engine.predict import predict_folder
    from .engine.report import write_report
    from .engine.trainer import holds_run, train

    if holds_run(out / "work"):
        raise FileExistsError(
            f"{out} already holds a demo run; choose a new --out, or leave --out off for a fresh folder"
        )
    start = time.perf_counter()
    sizes = DEMO_DATA[quick]
    data_root = make_context_dataset(out / "data", seed=0, **sizes)
    cfg = demo_config(str(data_root), quick)
    logger.info("synthetic data in %s; training (%d iterations) in %s", data_root, cfg.schedule.iters, out / "work")
    summary = train(cfg, out / "work", progress=progress)
    best_path = out / "work" / "checkpoints" / "best.pth"
    model = load_model_from_checkpoint(best_path)
    val_set = build_dataset("folder", data_root, "val")
    metrics = evaluate(model, val_set, cfg.eval, out_json=out / "eval.json", progress=progress)
    sample = [p for p, _ in val_set.samples[:8]]
    predict_folder(model, sample, out / "predictions", scale=cfg.eval.scale, progress=progress)
    import semask

    model_dir = semask.save_model(model, out / "model")
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
    p.add_argument("config", help="experiment YAML (see configs/)")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="mIoU of a model on a labelled split")
    p.add_argument("target", help="a YAML config (with --checkpoint), a training checkpoint, or a model")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--checkpoint", help="weights to test with a YAML config (checkpoint or model folder)")
    p.add_argument("--data-type", help="dataset type (ade20k, cityscapes, coco_stuff10k, folder)")
    p.add_argument("--data-root", help="dataset folder")
    p.add_argument("--split", help="split to evaluate (default: the config's val split)")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes")
    p.add_argument("--pred-dir", help="also save predicted class-id PNGs here")
    p.add_argument("--out", help="write the metrics as JSON here")
    _add_inference_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="segment images; writes class ids, colour maps and overlays")
    p.add_argument("model", help="model folder, .safetensors, training checkpoint or official .pth")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (1 = colours only)")
    _add_inference_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("score", help="mIoU of predicted label PNGs against ground-truth PNGs")
    p.add_argument("pred_dir")
    p.add_argument("gt_dir")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--reduce-zero-label", action="store_true", help="ground truth uses 0 = ignore (ADE20K files)")
    p.add_argument("--pred-suffix", default=".png")
    p.add_argument("--gt-suffix", default=".png")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("demo", help="synthetic data -> train a small SeMask on CPU -> eval -> report")
    p.add_argument("--out", help="output folder (default: ./semask_demo, or the first free ./semask_demo-N)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke-test version (seconds)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="parameters and FLOPs of a model preset")
    p.add_argument("name", help="preset name, see semask.list_models()")
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--size", type=_size, default=(512, 512), metavar="HxW")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("model", help="model folder, .safetensors, training checkpoint or official .pth")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--size", type=_size, required=True, metavar="HxW", help="example input size")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="loss / mIoU curves from a work dir or metrics.jsonl")
    p.add_argument("log", help="work dir or metrics.jsonl")
    p.add_argument("--out", help="folder for the PNGs (default: next to the log)")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    _gather_overrides(parser, args, extras, argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args))
    except (ValueError, OSError, KeyError, TypeError, FloatingPointError) as exc:
        if args.traceback:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"semask {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
