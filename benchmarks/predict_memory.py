"""Peak memory (RSS) of single-image prediction with K=150 classes on large photos (issue 12).

Each setting runs in a fresh subprocess (peak RSS is per process). A tiny SeMask Swin-FPN
(K=150, random weights) segments a random image of the given megapixels (4:3) at its original
size (``scale=None``, what ``semask predict`` does for a model folder), slide mode with the
ADE20K test windows (crop 512, stride 341). ``--path full`` runs the unbounded reference path
(softmax of all K classes at the original size, as before issue 12) for comparison.

    python benchmarks/predict_memory.py --mp 3 6 12 --out benchmarks/results/predict_memory_cpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

TINY = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=7, decoder_channels=16)


def size_of(megapixels: float) -> tuple[int, int]:
    """(H, W) of a 4:3 image with about ``megapixels`` million pixels."""
    h = int(math.sqrt(megapixels * 1e6 * 3 / 4))
    return h, round(h * 4 / 3)


def one(megapixels: float, path: str, classes: int, crop: int, stride: int) -> dict:
    import numpy as np
    import torch

    import semask
    from semask.data.transforms import normalize
    from semask.engine import inference

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = semask.create_model("semask_swin_t_fpn", num_classes=classes, **TINY).eval()
    h, w = size_of(megapixels)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    mean, std = model.config.mean, model.config.std
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    options = dict(mode="slide", crop_size=(crop, crop), stride=(stride, stride), num_classes=classes)
    with torch.inference_mode():
        if path == "bounded":
            label = inference.predict_image(model, image, mean, std, None, **options)
        else:
            x = torch.from_numpy(normalize(image, mean, std))[None]
            probs = inference._average_probabilities(
                model, [x], False, (h, w), "slide", (crop, crop), (stride, stride), classes
            )
            label = probs.argmax(dim=1)[0].numpy()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "megapixels": megapixels,
        "size": f"{w}x{h}",
        "path": path,
        "classes": classes,
        "peak_rss_mib": round(peak),
        "before_mib": round(base),
        "seconds": round(seconds, 1),
        "classes_found": len(np.unique(label)),
    }


def measure(mps: list[float], paths: list[str], classes: int, crop: int, stride: int) -> list[dict]:
    rows = []
    for path in paths:
        for mp in mps:
            cmd = [sys.executable, __file__, "--child", "--mp", str(mp), "--path", path, "--classes", str(classes)]
            cmd += ["--crop", str(crop), "--stride", str(stride)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bound_mib(megapixels: float, classes: int, crop: int) -> float:
    """The accumulator of the bounded slide path: K x crop rows x W float32."""
    _, w = size_of(megapixels)
    return classes * crop * w * 4 / 2**20


def report(rows: list[dict], classes: int, crop: int, stride: int) -> str:
    lines = [
        f"# Prediction memory, K={classes}, slide {crop}/{stride}, original size (CPU, 1 thread)",
        "",
        "Peak RSS of a fresh process segmenting one random 4:3 image with a tiny SeMask Swin-FPN "
        "(`python benchmarks/predict_memory.py`). `full` = the unbounded path (softmax of all K "
        "classes at the original size, what `predict` did before issue 12); `bounded` = today's "
        "`predict_image`. 'before' is the RSS after building the model and the image.",
        "",
        "| MP | image (WxH) | path | peak RSS MiB | before MiB | added MiB | accumulator bound MiB | s |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        added = r["peak_rss_mib"] - r["before_mib"]
        bound = f"{bound_mib(r['megapixels'], classes, crop):.0f}" if r["path"] == "bounded" else "-"
        lines.append(
            f"| {r['megapixels']:g} | {r['size']} | {r['path']} | {r['peak_rss_mib']} | {r['before_mib']} | "
            f"{added} | {bound} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mp", type=float, nargs="+", default=[3, 6, 12])
    parser.add_argument("--path", choices=["bounded", "full"], nargs="+", default=["bounded"])
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--stride", type=int, default=341)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="write the Markdown table here (and the rows as .json beside it)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.mp[0], args.path[0], args.classes, args.crop, args.stride)))
        return
    rows = measure(args.mp, args.path, args.classes, args.crop, args.stride)
    text = report(rows, args.classes, args.crop, args.stride)
    print(text)
    if args.out:
        from pathlib import Path

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
