"""SegFormer inference vs Hugging Face transformers, same weights, one process, alternating runs.

For each size (B0, B2 by default) a Hugging Face ``SegformerForSemanticSegmentation``
(its default attention) is built, our ``mit_b*`` model with the NVlabs all-MLP head gets
the same random weights through :func:`ours_to_hf` (our keys -> Hugging Face keys,
transformers 4 and 5 namings), and the outputs are checked to agree. Timed: 512x512,
batch 1, K=150, ``torch.inference_mode``; the Hugging Face logits (stride 4) are resized
to the input as its ``post_process_semantic_segmentation`` does, ours come at full size.
Runs alternate ours / ours-with-the-literal-head / HF, the order rotating each round, and
the figure is the median of the per-round ratios (robust to the CPU speed drifting).

``transformers`` is a benchmark-only dependency (``pip install transformers``). Usage:
    python benchmarks/hf_segformer.py --variants b0 b2 --rounds 7 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from measure import machine_info  # noqa: E402
from report import table  # noqa: E402

import semask  # noqa: E402

HF_SIZES = {  # hidden sizes, depths, decoder width (the released SegFormer configs)
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2), 256),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2), 256),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3), 768),
}

# Our key (without "backbone." / "decode_head.") -> transformers 5 / transformers 4 key.
_ENCODER_V5 = [
    (r"patch_embed(\d)\.proj\.(.+)", "segformer.stages.{s}.patch_embeddings.proj.{1}"),
    (r"patch_embed(\d)\.norm\.(.+)", "segformer.stages.{s}.patch_embeddings.layer_norm.{1}"),
    (r"block(\d)\.(\d+)\.norm1\.(.+)", "segformer.stages.{s}.blocks.{1}.layernorm_before.{2}"),
    (r"block(\d)\.(\d+)\.norm2\.(.+)", "segformer.stages.{s}.blocks.{1}.layernorm_after.{2}"),
    (r"block(\d)\.(\d+)\.attn\.q\.(.+)", "segformer.stages.{s}.blocks.{1}.attention.q_proj.{2}"),
    (r"block(\d)\.(\d+)\.attn\.proj\.(.+)", "segformer.stages.{s}.blocks.{1}.attention.o_proj.{2}"),
    (
        r"block(\d)\.(\d+)\.attn\.sr\.(.+)",
        "segformer.stages.{s}.blocks.{1}.attention.sequence_reduction.sequence_reduction.{2}",
    ),
    (
        r"block(\d)\.(\d+)\.attn\.norm\.(.+)",
        "segformer.stages.{s}.blocks.{1}.attention.sequence_reduction.layer_norm.{2}",
    ),
    (r"block(\d)\.(\d+)\.mlp\.fc1\.(.+)", "segformer.stages.{s}.blocks.{1}.mlp.fc1.{2}"),
    (r"block(\d)\.(\d+)\.mlp\.fc2\.(.+)", "segformer.stages.{s}.blocks.{1}.mlp.fc2.{2}"),
    (r"block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(.+)", "segformer.stages.{s}.blocks.{1}.mlp.dwconv.dwconv.{2}"),
    (r"norm(\d)\.(.+)", "segformer.stages.{s}.layer_norm.{1}"),
]
_ENCODER_V4 = [
    (r"patch_embed(\d)\.proj\.(.+)", "segformer.encoder.patch_embeddings.{s}.proj.{1}"),
    (r"patch_embed(\d)\.norm\.(.+)", "segformer.encoder.patch_embeddings.{s}.layer_norm.{1}"),
    (r"block(\d)\.(\d+)\.norm1\.(.+)", "segformer.encoder.block.{s}.{1}.layer_norm_1.{2}"),
    (r"block(\d)\.(\d+)\.norm2\.(.+)", "segformer.encoder.block.{s}.{1}.layer_norm_2.{2}"),
    (r"block(\d)\.(\d+)\.attn\.q\.(.+)", "segformer.encoder.block.{s}.{1}.attention.self.query.{2}"),
    (r"block(\d)\.(\d+)\.attn\.proj\.(.+)", "segformer.encoder.block.{s}.{1}.attention.output.dense.{2}"),
    (r"block(\d)\.(\d+)\.attn\.sr\.(.+)", "segformer.encoder.block.{s}.{1}.attention.self.sr.{2}"),
    (r"block(\d)\.(\d+)\.attn\.norm\.(.+)", "segformer.encoder.block.{s}.{1}.attention.self.layer_norm.{2}"),
    (r"block(\d)\.(\d+)\.mlp\.fc1\.(.+)", "segformer.encoder.block.{s}.{1}.mlp.dense1.{2}"),
    (r"block(\d)\.(\d+)\.mlp\.fc2\.(.+)", "segformer.encoder.block.{s}.{1}.mlp.dense2.{2}"),
    (r"block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(.+)", "segformer.encoder.block.{s}.{1}.mlp.dwconv.dwconv.{2}"),
    (r"norm(\d)\.(.+)", "segformer.encoder.layer_norm.{s}.{1}"),
]
_HEAD = {  # (transformers 5, transformers 4)
    r"linear_c(\d)\.proj\.(.+)": ("decode_head.linear_projections.{s}.proj.{1}", "decode_head.linear_c.{s}.proj.{1}"),
    r"linear_fuse\.conv\.weight": ("decode_head.linear_fuse.weight",) * 2,
    r"linear_fuse\.bn\.(.+)": ("decode_head.batch_norm.{0}",) * 2,
    r"linear_pred\.(.+)": ("decode_head.classifier.{0}",) * 2,
}


def _rename(key: str, pattern: str, template: str) -> str | None:
    """``template`` filled with the groups of ``pattern``; ``{s}`` is group 0, a 1-based stage made 0-based."""
    m = re.fullmatch(pattern, key)
    if m is None:
        return None
    groups = list(m.groups())
    if "{s}" in template:
        groups[0] = str(int(groups[0]) - 1)
    return template.replace("{s}", "{0}").format(*groups)


def ours_to_hf(state_dict: dict[str, torch.Tensor], transformers_v5: bool) -> dict[str, torch.Tensor]:
    """Our SeMaskMiT (SegFormer baseline, NVlabs head) state dict in Hugging Face key naming.

    Our attention keeps keys and values in one ``kv`` Linear (rows 0:C keys, C:2C values);
    Hugging Face has separate key / value Linears, so ``kv`` is split in two.
    """
    encoder_rules = _ENCODER_V5 if transformers_v5 else _ENCODER_V4
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            k = key[len("backbone.") :]
            m = re.fullmatch(r"block(\d)\.(\d+)\.attn\.kv\.(weight|bias)", k)
            if m:
                stage, j, r = int(m[1]) - 1, m[2], m[3]
                c = value.shape[0] // 2
                if transformers_v5:
                    prefix = f"segformer.stages.{stage}.blocks.{j}.attention"
                    out[f"{prefix}.k_proj.{r}"], out[f"{prefix}.v_proj.{r}"] = value[:c], value[c:]
                else:
                    prefix = f"segformer.encoder.block.{stage}.{j}.attention.self"
                    out[f"{prefix}.key.{r}"], out[f"{prefix}.value.{r}"] = value[:c], value[c:]
                continue
            rules = encoder_rules
        elif key.startswith("decode_head."):
            k = key[len("decode_head.") :]
            rules = [(p, t[0] if transformers_v5 else t[1]) for p, t in _HEAD.items()]
        else:
            raise KeyError(f"no Hugging Face name for {key}")
        for pattern, template in rules:
            new = _rename(k, pattern, template)
            if new is not None:
                out[new] = value
                break
        else:
            raise KeyError(f"no Hugging Face name for {key}")
    return out


def build_pair(variant: str, num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    dims, depths, decoder = HF_SIZES[variant]
    torch.manual_seed(0)
    ours = semask.create_model(f"mit_{variant}", num_classes=num_classes, decode_head="nvlabs").eval()
    assert ours.config.decoder_channels == decoder
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a key mix-up cannot hide
        bn = ours.decode_head.linear_fuse.bn
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    config = SegformerConfig(
        num_labels=num_classes, hidden_sizes=list(dims), depths=list(depths), decoder_hidden_size=decoder
    )
    hf = SegformerForSemanticSegmentation(config).eval()
    v5 = any(k.startswith("segformer.stages.") for k in hf.state_dict())
    weights = ours_to_hf(ours.state_dict(), v5)
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"key mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return ours, hf


def hf_step(hf: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = hf(pixel_values=x).logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def compare(variant: str, rounds: int, num_classes: int, size: int) -> dict:
    ours, hf = build_pair(variant, num_classes)
    head = ours.decode_head
    x = torch.randn(1, 3, size, size)
    runs = {
        "ours": lambda: ours(x).logits,
        "ours_literal_head": None,  # set below: the pre-fusion head order, same model
        "hf": lambda: hf_step(hf, x),
    }

    def literal() -> torch.Tensor:
        head.forward = head.reference_forward  # instance attribute shadows the fused forward
        try:
            return ours(x).logits
        finally:
            del head.forward

    runs["ours_literal_head"] = literal
    with torch.inference_mode():
        outputs = {name: fn() for name, fn in runs.items()}  # warm-up + agreement
        agreement = {name: (outputs[name] - outputs["hf"]).abs().max().item() for name in ("ours", "ours_literal_head")}
        scale = outputs["hf"].abs().max().item()
        times: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    return {
        "variant": variant,
        "max_abs_diff_vs_hf": agreement,
        "max_abs_logit": scale,
        "median_ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "runs_ms": {name: [round(1e3 * v, 1) for v in t] for name, t in times.items()},
        "ratio_ours_vs_hf": ratio("ours", "hf"),
        "ratio_literal_head_vs_hf": ratio("ours_literal_head", "hf"),
        "ratio_ours_vs_literal_head": ratio("ours", "ours_literal_head"),
        "best_ms": {name: 1e3 * min(t) for name, t in times.items()},
        "best_ratio_ours_vs_hf": min(times["ours"]) / min(times["hf"]),
        "best_ratio_literal_head_vs_hf": min(times["ours_literal_head"]) / min(times["hf"]),
    }


def write_markdown(path: Path, result: dict) -> None:
    lines = [
        f"# SegFormer inference vs Hugging Face transformers (CPU, {result['size']}x{result['size']}, batch 1, "
        f"K={result['num_classes']})",
        "",
        f"`python benchmarks/hf_segformer.py --rounds {result['rounds']} --threads {result['threads']}`; "
        f"torch {result['torch']}, transformers {result['transformers']}, {result['threads']} threads on "
        f"{result['cpu']}. Load average at start {result['load_average'][0]:.1f}: the machine is shared with "
        "other jobs, so absolute times drift; the ratios are medians of per-round ratios of runs alternating in "
        'one process (same weights, mapped with `ours_to_hf`); "best-run" columns divide the fastest runs '
        "(other jobs only ever slow a run down). Times are medians.",
        "",
    ]
    header = ["model", "ours ms", "ours, literal head ms", "HF ms", "ours / HF", "literal head / HF"]
    header += ["ours / literal head", "best-run ours / HF", "best-run literal / HF", "max abs diff vs HF"]
    rows = []
    for row in result["rows"]:
        ms = row["median_ms"]
        rows.append(
            [
                f"mit_{row['variant']} (nvlabs head)",
                f"{ms['ours']:.0f}",
                f"{ms['ours_literal_head']:.0f}",
                f"{ms['hf']:.0f}",
                f"{row['ratio_ours_vs_hf']:.2f}x",
                f"{row['ratio_literal_head_vs_hf']:.2f}x",
                f"{row['ratio_ours_vs_literal_head']:.2f}x",
                f"{row['best_ratio_ours_vs_hf']:.2f}x",
                f"{row['best_ratio_literal_head_vs_hf']:.2f}x",
                f"{row['max_abs_diff_vs_hf']['ours']:.1e}",
            ]
        )
    lines += table(header, rows)
    lines += [
        "",
        '"Literal head" is the same model running the head in the SegFormer order (project, resize to '
        "stride 4, concatenate, 4E -> E fuse): the code before the fused head. Ours composes each stage's "
        "projection with its slice of the fuse conv (exact; BatchNorm folded in eval mode) and resizes the "
        "E-channel maps with two GEMMs accumulating into the stride-4 map.",
        "",
    ]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["b0", "b2"], choices=sorted(HF_SIZES))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    try:
        import transformers
    except ImportError:
        sys.exit("hf_segformer.py needs the benchmark-only dependency transformers: pip install transformers")
    torch.set_num_threads(args.threads)
    result = {
        "size": args.size,
        "num_classes": args.num_classes,
        "rounds": args.rounds,
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": machine_info(torch.device("cpu"), args.threads)["cpu"],
        "load_average": os.getloadavg(),
        "rows": [],
    }
    for variant in args.variants:
        row = compare(variant, args.rounds, args.num_classes, args.size)
        result["rows"].append(row)
        print(json.dumps({k: row[k] for k in ("variant", "median_ms", "ratio_ours_vs_hf", "max_abs_diff_vs_hf")}))
    result["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "hf_segformer_cpu.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out / "hf_segformer_cpu.json")
    write_markdown(args.out / "hf_segformer_cpu.md", result)


if __name__ == "__main__":
    main()
