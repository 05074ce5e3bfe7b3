"""The paper's ablations (Tables 3-5) at toy scale, rerunnable on a CPU in under an hour.

Every variant is trained on the same synthetic "context" scenes (semask.data.synthetic: boats
and cars look identical and differ only by the sea or land around them) with the built-in
demo recipe, for several seeds, and evaluated once at the end of training (final weights, no
best-checkpoint selection). Writes ``ablation_study.{json,md,png}`` into ``--out``.

    python benchmarks/ablation_study.py                 # full study: 7 models x 3 seeds x 500 iterations (~40 min)
    python benchmarks/ablation_study.py --quick         # smoke run (~2 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import semask
from semask.cli import DEMO_DATA, demo_config
from semask.config import ExperimentConfig
from semask.data.synthetic import BOAT, CAR, make_context_dataset
from semask.engine.trainer import train

# (preset, what it ablates) -- all at the demo's tiny width, see demo_config
VARIANTS = {
    "swin_t_fpn": "baseline (no semantic layer)",
    "semask_swin_t_fpn": "SeMask",
    "trans_swin_t_fpn": "Table 3: plain single-head self-attention instead of the SeMask block",
    "semask_swin_t_fpn_no_lambda": "Table 4: no learnable lambda (branch added with weight 1)",
    "semask_swin_t_fpn_no_prior_loss": "Table 5: SeMask without the semantic-prior loss",
    "swin_t_fpn_aux": "Table 5: baseline + auxiliary CE on each stage's output",
    "query_swin_t_fpn": "Table 5: baseline + auxiliary CE on the last block's queries",
}


def variant_config(base: ExperimentConfig, preset: str, seed: int, iters: int) -> ExperimentConfig:
    """The demo recipe with another preset (same width overrides) and seed."""
    raw = base.to_dict()
    raw["model"]["name"] = preset
    raw["train"]["seed"] = seed
    raw["schedule"]["iters"] = iters
    raw["train"]["eval_interval"] = iters
    raw["train"]["ckpt_interval"] = iters
    return ExperimentConfig.from_dict(raw, f"ablation {preset} seed {seed}")


def summarise(runs: dict[str, list[dict[str, float]]]) -> list[dict[str, object]]:
    rows = []
    for preset, results in runs.items():

        def stat(key: str, results: list[dict] = results) -> tuple[float, float]:
            values = [r[key] for r in results]
            return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        miou, boat_car = stat("mIoU"), stat("boat_car_IoU")
        rows.append(
            {
                "preset": preset,
                "ablates": VARIANTS[preset],
                "seeds": len(results),
                "mIoU_mean": miou[0],
                "mIoU_std": miou[1],
                "boat_car_IoU_mean": boat_car[0],
                "boat_car_IoU_std": boat_car[1],
                "params": results[0]["params"],
                "minutes_per_run": statistics.fmean(r["seconds"] for r in results) / 60,
            }
        )
    return rows


def write_outputs(rows: list[dict[str, object]], meta: dict[str, object], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation_study.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"# Ablation study on synthetic context scenes ({meta['seeds']} seeds, {meta['iters']} iterations each)",
        "",
        f"Command: `{meta['command']}`; total {meta['total_minutes']:.1f} min on {meta['threads']} CPU threads.",
        "mIoU over the 5 classes and mean IoU of the two context-only classes (boat, car), mean +- std over seeds,",
        "final weights of each run evaluated on the validation split.",
        "",
        "| model | ablates | params | mIoU (%) | boat+car IoU (%) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['ablates']} | {r['params']:,} | {r['mIoU_mean']:.2f} +- {r['mIoU_std']:.2f} "
            f"| {r['boat_car_IoU_mean']:.2f} +- {r['boat_car_IoU_std']:.2f} |"
        )
    (out / "ablation_study.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [str(r["preset"]) for r in rows]
    x = range(len(rows))
    ax.bar(
        [i - 0.2 for i in x],
        [r["mIoU_mean"] for r in rows],
        0.4,
        yerr=[r["mIoU_std"] for r in rows],
        capsize=3,
        label="mIoU",
    )
    ax.bar(
        [i + 0.2 for i in x],
        [r["boat_car_IoU_mean"] for r in rows],
        0.4,
        yerr=[r["boat_car_IoU_std"] for r in rows],
        capsize=3,
        label="boat+car IoU",
    )
    ax.set_xticks(list(x), names, rotation=25, ha="right")
    ax.set_ylabel("%")
    ax.set_title(f"Ablations on synthetic context scenes ({meta['seeds']} seeds, mean +- std)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ablation_study.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/ablation_study"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--iters", type=int, default=500, help="training iterations per run (the demo recipe, shortened)"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: 2 seeds, few iterations, small data")
    args = parser.parse_args(argv)

    import torch

    base = demo_config(str(args.work_dir / "data"), quick=args.quick)
    iters = base.schedule.iters if args.quick else args.iters
    seeds = 2 if args.quick else args.seeds
    data = DEMO_DATA[args.quick]
    make_context_dataset(args.work_dir / "data", seed=1234, **data)

    runs: dict[str, list[dict[str, float]]] = {}
    start = time.time()
    # Seed-major order and finished runs reused: an interrupted study restarts where it stopped,
    # and stopping early still leaves every variant with the same number of seeds.
    for seed in range(seeds):
        for preset in args.variants:
            work_dir = args.work_dir / f"{preset}_seed{seed}"
            t0 = time.time()
            if (work_dir / "summary.json").is_file():
                summary = json.loads((work_dir / "summary.json").read_text())
            else:
                summary = train(variant_config(base, preset, seed, iters), work_dir, progress=False)
                summary["study_seconds"] = time.time() - t0
                (work_dir / "summary.json").write_text(json.dumps(summary, default=str, indent=2))
            metrics = summary["metrics"]
            params = sum(p.numel() for p in semask.load(summary["model_dir"]).parameters())
            result = {
                "mIoU": metrics["mIoU"],
                "boat_car_IoU": (metrics["IoU"][BOAT] + metrics["IoU"][CAR]) / 2,
                "params": params,
                "seconds": summary.get("study_seconds", summary["train_seconds"]),
            }
            runs.setdefault(preset, []).append(result)
            print(
                f"{preset:34s} seed {seed}: mIoU {result['mIoU']:.2f}  boat+car {result['boat_car_IoU']:.2f}  "
                f"({result['seconds'] / 60:.1f} min)",
                flush=True,
            )
    meta = {
        "seeds": seeds,
        "iters": iters,
        "threads": torch.get_num_threads(),
        "total_minutes": (time.time() - start) / 60,
        "command": " ".join(["python benchmarks/ablation_study.py", *(argv if argv is not None else sys.argv[1:])]),
        "data": data,
    }
    rows = summarise(runs)
    write_outputs(rows, meta, args.out)
    print((args.out / "ablation_study.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
