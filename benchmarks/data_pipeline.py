"""Data-pipeline rate: samples/s of one loader worker (PIL JPEG decode + the training transform).

mmseg's path (Semantic-FPN, MiT: ``TrainTransform``) for an ADE20K-sized (683x512, scale (2048, 512),
ratios 0.5..1.75 picked from the list, crop 512) and a Cityscapes-sized (2048x1024, scale
(2048, 1024), ratio uniform in [0.5, 2.0), crop 768) image, and detectron2's path of the
mask-classification models (``ShortEdgeTrainTransform``, the recipes' settings: ADE20K 640 crop,
Cityscapes 512x1024): the median time of the whole augmentation over seeded draws, and the JPEG
decode apart. One thread (a DataLoader worker is one process; ``cv2.setNumThreads(1)``).

samples/s per worker = 1 / (decode + augmentation); workers needed to feed a GPU step rate of
``--gpu-rate`` images/s = ceil(rate / per-worker rate).

``--baseline DIR`` also times an earlier checkout (e.g. the numpy mmseg pipeline before OpenCV:
``git archive 0277528 | tar -x -C /tmp/base``; a tree without the detectron2 path gets mmseg rows
only): every tree runs in its own child process, the trees alternate over ``--rounds`` and the
medians are reported side by side.

    python benchmarks/data_pipeline.py --samples 20
    python benchmarks/data_pipeline.py --baseline /tmp/base --baseline-label 0277528 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SETTINGS = {  # mmseg's path (semask/configs/*_fpn_*, mit/)
    "ade20k": dict(
        size=(512, 683), scale=(2048, 512), ratios=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75], ratio_range=None, crop=512
    ),
    "cityscapes": dict(size=(1024, 2048), scale=(2048, 1024), ratios=None, ratio_range=(0.5, 2.0), crop=768),
}
D2_SETTINGS = {  # detectron2's path of the mask-classification recipes (semask/configs/mask2former/)
    "ade20k": dict(
        size=(512, 683),
        short_edges=[int(x * 0.1 * 640) for x in range(5, 21)],
        max_size=2560,
        crop=(640, 640),
        pad_size=640,
    ),
    "cityscapes": dict(
        size=(1024, 2048),
        short_edges=[int(x * 0.1 * 1024) for x in range(5, 21)],
        max_size=4096,
        crop=(512, 1024),
        pad_size=None,
    ),
}


def synthetic_photo(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth colour image with texture (so JPEG and resizing see realistic content) and a label map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fy, fx, phase = rng.uniform(0.002, 0.02), rng.uniform(0.002, 0.02), rng.uniform(0, 6.3)
        image[..., c] = 127 + 90 * np.sin(fy * yy + fx * xx + phase)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    label = ((yy // 97 + xx // 131) % 150).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), label


def jpeg_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def per_call_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _time_transform(transform, h: int, w: int, samples: int, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    image, label = synthetic_photo(h, w, seed=1)
    data = jpeg_bytes(image)
    times = []
    for seed in range(samples):  # the same draws for every tree
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        transform(image, label, rng)
        times.append(time.perf_counter() - start)
    row = {
        "image": f"{w}x{h}",
        "jpeg_kib": len(data) / 1024,
        "decode_ms": per_call_ms(lambda: decode(data), repeats),
        "augment_ms": 1e3 * statistics.median(times),
    }
    row["samples_per_s_per_worker"] = 1e3 / (row["decode_ms"] + row["augment_ms"])
    return row


def measure(name: str, samples: int, repeats: int) -> dict:
    """One mmseg-path setting with the ``semask`` importable in this process (the tree under test)."""
    from semask.data import transforms

    cfg = SETTINGS[name]
    transform = transforms.TrainTransform(
        crop_size=cfg["crop"], scale=cfg["scale"], ratios=cfg["ratios"], ratio_range=cfg["ratio_range"]
    )
    return _time_transform(transform, *cfg["size"], samples, repeats)


def measure_detectron2(name: str, samples: int, repeats: int) -> dict:
    """One detectron2-path setting (ShortEdgeTrainTransform: PIL resize, torch-nearest label, crop,
    SSD colour, flip, pad, normalise)."""
    import torch

    from semask.data.detectron2 import ShortEdgeTrainTransform

    torch.set_num_threads(1)
    cfg = D2_SETTINGS[name]
    transform = ShortEdgeTrainTransform(cfg["short_edges"], cfg["max_size"], cfg["crop"], pad_size=cfg["pad_size"])
    return {**_time_transform(transform, *cfg["size"], samples, repeats), "crop": list(cfg["crop"])}


def measure_all(samples: int, repeats: int) -> dict:
    """Every row this tree has: ``mmseg NAME`` and (where the tree has it) ``detectron2 NAME``."""
    import importlib.util

    rows = {f"mmseg {name}": measure(name, samples, repeats) for name in SETTINGS}
    if importlib.util.find_spec("semask.data.detectron2") is not None:
        rows.update({f"detectron2 {name}": measure_detectron2(name, samples, repeats) for name in D2_SETTINGS})
    return rows


def _single_thread() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)  # a DataLoader worker is one process; OpenCV's own pool would hide that
    except ImportError:  # an old numpy-only tree in a venv without OpenCV
        pass


def child_main(code: Path, samples: int, repeats: int) -> None:
    sys.path.insert(0, str(code))
    _single_thread()
    print(json.dumps(measure_all(samples, repeats)))


def run_child(code: Path, samples: int, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(code), "--samples", str(samples), "--repeats", str(repeats)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_rows(runs: list[dict]) -> dict:
    rows = {}
    for name in runs[0]:
        keys = ("decode_ms", "augment_ms", "samples_per_s_per_worker")
        rows[name] = {**runs[0][name], **{k: statistics.median(r[name][k] for r in runs) for k in keys}}
    return rows


def write_markdown(path: Path, result: dict) -> None:
    from report import table

    rate = result["gpu_rate"]
    lines = [
        "# Data pipeline rate (CPU, one thread per worker)",
        "",
        f"`{result['command']}`; numpy {result['numpy']}, OpenCV {result['opencv']}. Load average at start "
        f"{result['load_average'][0]:.1f} on {result['cpu_count']} cores shared with other jobs: absolute times "
        "drift; trees alternate over the rounds, so their ratio is from the same minutes. Per sample = PIL JPEG "
        "decode + the training transform (median over seeded draws, then over rounds).",
        "",
    ]
    rows = []
    for tree, per_setting in result["trees"].items():
        for name, row in per_setting.items():
            workers = math.ceil(rate / row["samples_per_s_per_worker"])
            rows.append(
                [
                    f"{name} {row['image']}",
                    tree,
                    f"{row['decode_ms']:.1f}",
                    f"{row['augment_ms']:.1f}",
                    f"{row['samples_per_s_per_worker']:.1f}",
                    str(workers),
                ]
            )
    header = ["image", "code", "decode ms", "augment ms", "samples/s per worker", f"workers for {rate:g} img/s"]
    lines += table(header, rows)
    for label in [t for t in result["trees"] if t != "current"]:
        lines += [""]
        for name in [n for n in result["trees"][label] if n in result["trees"]["current"]]:
            now, base = result["trees"]["current"][name], result["trees"][label][name]
            lines.append(
                f"- {name}: {now['samples_per_s_per_worker'] / base['samples_per_s_per_worker']:.2f}x the "
                f"samples/s of {label} (augmentation {base['augment_ms']:.1f} -> {now['augment_ms']:.1f} ms)."
            )
    lines += [""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def suite_rows(quick: bool, gpu_rate: float = 8.0) -> dict:
    """The current tree's rows for benchmarks/run.py."""
    _single_thread()
    samples, repeats = (3, 1) if quick else (10, 3)
    return {"gpu_rate": gpu_rate, "rows": measure_all(samples, repeats)}


def suite_markdown(entry: dict) -> str:
    from report import table

    rate = entry["gpu_rate"]
    rows = [
        [
            f"{name} {row['image']}",
            f"{row['decode_ms']:.1f}",
            f"{row['augment_ms']:.1f}",
            f"{row['samples_per_s_per_worker']:.1f}",
            str(math.ceil(rate / row["samples_per_s_per_worker"])),
        ]
        for name, row in entry["rows"].items()
    ]
    header = ["image", "decode ms", "augment ms", "samples/s per worker", f"workers for {rate:g} img/s"]
    return "\n".join(table(header, rows))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--baseline", type=Path, help="an earlier checkout to time beside this one")
    p.add_argument("--baseline-label", default="baseline", help="its name in the table (e.g. the commit)")
    p.add_argument("--gpu-rate", type=float, default=8.0, help="images/s a GPU training step consumes")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child_main(args.child, args.samples, args.repeats)
        return
    import cv2

    trees = {"current": ROOT, **({args.baseline_label: args.baseline.resolve()} if args.baseline else {})}
    runs: dict[str, list[dict]] = {tree: [] for tree in trees}
    load = os.getloadavg()
    for _ in range(args.rounds):
        for tree, code in trees.items():
            runs[tree].append(run_child(code, args.samples, args.repeats))
            print(tree, json.dumps(runs[tree][-1]), flush=True)
    command = shlex.join(["python", "benchmarks/data_pipeline.py", *(argv if argv is not None else sys.argv[1:])])
    result = {
        "command": command,
        "samples": args.samples,
        "rounds": args.rounds,
        "gpu_rate": args.gpu_rate,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "cpu_count": os.cpu_count(),
        "load_average": load,
        "trees": {tree: _median_rows(found) for tree, found in runs.items()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "data_pipeline_cpu.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out / "data_pipeline_cpu.json")
    sys.path.insert(0, str(HERE))
    write_markdown(args.out / "data_pipeline_cpu.md", result)
    print((args.out / "data_pipeline_cpu.md").read_text())


if __name__ == "__main__":
    main()
