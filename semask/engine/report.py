"""Training curves from the JSONL metrics log, and a short Markdown run report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models.io import atomic_write


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file; a malformed line is an error naming the file and line."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number} is not valid JSON: {exc}") from None
    return records


def plot_curves(log_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (total, main and semantic loss + lr), ``lambda.png`` (lambda per stage, SeMask
    models) and, if evaluated, ``miou.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    train = [r for r in records if r["type"] == "train"]
    if train:
        fig, ax = plt.subplots(figsize=(7, 4))
        iters = [r["iter"] for r in train]
        for key, style in (("loss", "-"), ("loss_main", "--"), ("loss_semantic", ":")):
            values = [r.get(key) for r in train]
            if any(v is not None for v in values):
                ax.plot(iters, [float("nan") if v is None else v for v in values], style, label=key)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        lr_ax = ax.twinx()
        lr_ax.plot(iters, [r["lr"] for r in train], color="grey", alpha=0.5, label="lr")
        lr_ax.set_ylabel("learning rate")
        handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="upper right")
        ax.set_title("training loss")
        fig.tight_layout()
        written.append(out_dir / "loss.png")
        _save_figure(fig, written[-1])
        plt.close(fig)
    with_lambda = [r for r in train if r.get("lambda")]
    if with_lambda:  # the learned lambda per stage (issue 14)
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in with_lambda[-1]["lambda"]:
            ax.plot([r["iter"] for r in with_lambda], [r["lambda"].get(key) for r in with_lambda], label=key)
        ax.axhspan(0.05, 0.3, color="green", alpha=0.08, label="paper: 0.05-0.3")
        ax.set_xlabel("iteration")
        ax.set_ylabel("lambda")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("semantic-layer lambda per stage")
        fig.tight_layout()
        written.append(out_dir / "lambda.png")
        _save_figure(fig, written[-1])
        plt.close(fig)
    val = [r for r in records if r["type"] == "val"]
    if val:
        fig, ax = plt.subplots(figsize=(7, 4))
        iters = [r["iter"] for r in val]
        for key in ("mIoU", "mAcc", "aAcc"):
            ax.plot(iters, [float("nan") if r[key] is None else r[key] for r in val], "o-", label=key)
        ax.set_xlabel("iteration")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("validation")
        fig.tight_layout()
        written.append(out_dir / "miou.png")
        _save_figure(fig, written[-1])
        plt.close(fig)
    return written


def write_report(
    path: str | Path,
    title: str,
    facts: dict[str, Any],
    class_table: str | None = None,
    images: list[str | Path] = (),
) -> Path:
    """A Markdown page: a facts table, the per-class table, and the plots/overlays (relative links)."""
    path = Path(path)
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in facts.items()]
    if class_table:
        lines += ["", "## Per-class results", "", "```", class_table.rstrip(), "```"]
    if images:
        lines += ["", "## Figures", ""]
        for image in images:
            rel = Path(image).resolve().relative_to(path.parent.resolve())
            lines.append(f"![{rel.stem}]({rel.as_posix()})")
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _save_figure(fig: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
