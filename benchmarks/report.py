"""Benchmark results -> JSON, a Markdown report and a PNG scaling plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    paths[1].write_text(markdown(results) + "\n")
    plot(results, paths[2])
    return paths


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines (every benchmark's tables are written by this)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(results: dict[str, Any]) -> str:
    m, s, g = results["machine"], results["settings"], results["gemm"]
    device = m["device"]
    lines = [
        f"# SeMask benchmark ({device}{', quick' if s['quick'] else ''})",
        "",
        f"- machine: {m.get('gpu') or m['cpu']}, {m['threads']} threads, torch {m['torch']}, "
        f"load average at start {', '.join(f'{v:.1f}' for v in m['load_average_at_start'])}",
        f"- precision: {s['amp']}; K = {s['num_classes']}; allocator: {m['allocator']}",
        f"- fp32 GEMM peak ({g['start']['n']}^3 matmul, best of all runs): {g['peak_flops'] / 1e9:.1f} GFLOP/s "
        f"(best at start {g['start']['peak_flops'] / 1e9:.1f}, at end {g['end']['peak_flops'] / 1e9:.1f})"
        + (f"; bf16: {g['bf16']['peak_flops'] / 1e12:.1f} TFLOP/s" if "bf16" in g else ""),
        "- FLOPs are full counts (2 per multiply-accumulate of every conv, linear and attention matmul);"
        " '% peak' = FLOPs / median time / GEMM peak; '% conc.' = the same against the median rate of a"
        " GEMM timed between the latency runs (robust to other load on a shared machine)."
        " Training FLOPs = 3 x forward.",
    ]
    busy = max(m["load_average_at_start"][0], m.get("load_average_at_end", [0])[0]) > m["threads"] + 0.5
    if busy or g["end"]["peak_flops"] < 0.85 * g["start"]["peak_flops"]:
        lines.append(
            "- **Warning: other processes competed for the CPU during this run (load average or a slower"
            " GEMM at the end); the absolute numbers are pessimistic.**"
        )
    if device == "cpu":
        lines.append("- GPU numbers are not measured in this run (`--device cuda` on a GPU machine).")
    lines += ["", "## Summary (512x512)", ""]
    rows = []
    for name, e in results["models"].items():
        inf, bat, tr = e["inference_512"], e["batch8_512"], e["train"]
        rows.append(
            [
                name,
                f"{e['params'] / 1e6:.2f} M",
                f"{e['flops_512'] / 1e9:.1f}",
                f"{_ms(inf['median_s'])} (best {_ms(inf['best_s'])})",
                f"{inf['achieved_flops'] / 1e9:.1f}",
                _pct(inf["fraction_of_peak"]),
                _pct(inf["fraction_of_concurrent_gemm"]),
                f"{inf['memory']['peak_mib']:,.0f}",
                f"{bat['images_per_s']:.2f}",
                f"{tr['median_s']:.2f} s (b{tr['batch']})",
                f"{tr['images_per_s']:.2f}",
                _pct(tr["fraction_of_peak"]),
                f"{tr['memory']['peak_mib']:,.0f}",
            ]
        )
    lines += table(
        [
            "model",
            "params",
            "GFLOP",
            "latency ms",
            "GFLOP/s",
            "% peak",
            "% conc.",
            "peak mem MiB",
            "img/s b8",
            "train step",
            "train img/s",
            "train % peak",
            "train mem MiB",
        ],
        rows,
    )

    alt = []
    for name, e in results["models"].items():
        if "onnx_512" in e:
            o = e["onnx_512"]
            alt.append(
                [
                    name,
                    "onnxruntime CPU",
                    *(
                        ["skipped", o["skipped"]]
                        if "skipped" in o
                        else [
                            _ms(o["median_s"]),
                            f"max abs diff vs torch {o['max_abs_diff_vs_torch']:.1e} "
                            f"(max abs logit {o['max_abs_logit']:.1f})",
                        ]
                    ),
                ]
            )
        if "compiled_512" in e:
            c = e["compiled_512"]
            alt.append([name, "torch.compile", _ms(c["median_s"]), f"compile {c['compile_s']:.0f} s"])
        other = results.get("other_allocator", {})
        if name in other:
            d = other[name]
            alt.append(
                [
                    name,
                    f"PyTorch, allocator: {other['allocator']}",
                    _ms(d["median_s"]),
                    f"{e['flops_512'] / d['median_s'] / 1e9:.1f} GFLOP/s = "
                    f"{_pct(e['flops_512'] / d['median_s'] / g['peak_flops'])} of peak",
                ]
            )
    if alt:
        lines += ["", "## Other runtimes and settings (512x512, batch 1)", ""]
        lines += table(["model", "runtime", "latency ms", "note"], alt)

    lines += ["", "## Scaling over input size (batch 1)", ""]
    rows = []
    for name, e in results["models"].items():
        for r in e["scaling"]:
            rows.append(
                [
                    name,
                    f"{r['size']}",
                    f"{r['flops'] / 1e9:,.0f}",
                    _ms(r["median_s"]),
                    f"{r['achieved_flops'] / 1e9:.1f}",
                    _pct(r["fraction_of_peak"]),
                    f"{r['memory']['peak_mib']:,.0f}",
                    f"{r['memory']['increase_mib']:,.0f}",
                ]
            )
    lines += table(
        ["model", "size", "GFLOP", "latency ms", "GFLOP/s", "% peak", "peak mem MiB", "mem increase MiB"], rows
    )

    for name, e in results["models"].items():
        p = e["profile_512"]
        lines += ["", f"## Profile: {name}, 512x512 inference (self time, one run)", ""]
        lines += table(
            ["category", "ms", "share"],
            [[c, f"{ms:.0f}", _pct(ms / p["total_self_ms"])] for c, ms in p["categories_ms"].items()],
        )
        lines += [""]
        lines += table(
            ["op", "self ms", "calls"], [[o["op"], f"{o['self_ms']:.1f}", str(o["calls"])] for o in p["top_ops"][:10]]
        )
    if results.get("train_memory"):
        from train_memory import to_markdown

        lines += [
            "",
            "## Peak training memory, gradient checkpointing off / on (fresh process per row, "
            "one step: forward + L1 + 0.4 L2 + backward + AdamW)",
            "",
            to_markdown(results["train_memory"]),
        ]
    if results.get("data_pipeline"):
        from data_pipeline import suite_markdown

        lines += ["", "## Data pipeline (TrainTransform with OpenCV + PIL JPEG decode, one thread per worker)", ""]
        lines += [suite_markdown(results["data_pipeline"])]
    lines += ["", f"Total benchmark wall time: {results.get('wall_s', 0):.0f} s."]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, e in results["models"].items():
        mp = [r["size"] ** 2 / 1e6 for r in e["scaling"]]
        ax_t.plot(mp, [r["median_s"] for r in e["scaling"]], "o-", label=name)
        ax_m.plot(mp, [r["memory"]["increase_mib"] for r in e["scaling"]], "o-", label=name)
    for ax, title, unit in ((ax_t, "latency", "s"), (ax_m, "peak memory increase", "MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("megapixels (square input)")
        ax.set_ylabel(unit)
        ax.set_title(f"{title}, batch 1, {results['machine']['device']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
