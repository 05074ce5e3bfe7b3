"""Data-pipeline rate: per-sample augmentation time of our numpy transforms vs OpenCV.

For an ADE20K-sized (683x512, scale (2048, 512), ratios 0.5..1.75, crop 512) and a
Cityscapes-sized (2048x1024, scale (2048, 1024), ratio range 0.5-2.0, crop 768) image:

* the whole ``TrainTransform`` per sample (resize, crop, flip, photometric distortion,
  normalise, pad) with our numpy steps, and with OpenCV substituted for the resize
  (``cv2.resize`` INTER_LINEAR of the whole image, then the crop, as mmseg does) and the
  HSV conversions (``cv2.cvtColor``), one thread each (a DataLoader worker is one process);
* JPEG decoding with PIL (what the datasets use), reported apart;
* the single steps (the whole image resized for ratio 1.5; the HSV round trip on a crop),
  and how often OpenCV's result differs from ours (fraction of pixels, largest absolute
  difference).

samples/s per worker = 1 / (decode + augmentation); workers needed to feed a GPU step
rate of ``--gpu-rate`` images/s = ceil(rate / per-worker rate). The detectron2 data path of the
mask-classification models (ADE20K 640 crop, Cityscapes 512x1024) is timed too. ``opencv-python-headless``
is optional (benchmark-only); without it only the numpy rows are measured. Usage:
    python benchmarks/data_pipeline.py --samples 20 --gpu-rate 8
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from semask.data import transforms  # noqa: E402

SETTINGS = {
    "ade20k": dict(size=(512, 683), scale=(2048, 512), ratios=transforms.ADE20K_RATIOS, ratio_range=None, crop=512),
    "cityscapes": dict(size=(1024, 2048), scale=(2048, 1024), ratios=None, ratio_range=(0.5, 2.0), crop=768),
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


# ----------------------------------------------------------------------------- OpenCV steps
def cv2_resize_image(image: np.ndarray, size: tuple[int, int], window: tuple[int, int, int, int] | None = None):
    import cv2

    h, w = size
    out = image if image.shape[:2] == (h, w) else cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if window is None:
        return out
    top, left, height, width = window
    return out[top : top + height, left : left + width]


def cv2_rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)


def cv2_hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(hsv), cv2.COLOR_HSV2RGB)


@contextmanager
def opencv_steps() -> Iterator[None]:
    """Swap OpenCV into the module-level steps TrainTransform calls."""
    saved = transforms.resize_image, transforms.rgb_to_hsv, transforms.hsv_to_rgb
    transforms.resize_image, transforms.rgb_to_hsv, transforms.hsv_to_rgb = (
        cv2_resize_image,
        cv2_rgb_to_hsv,
        cv2_hsv_to_rgb,
    )
    try:
        yield
    finally:
        transforms.resize_image, transforms.rgb_to_hsv, transforms.hsv_to_rgb = saved


# ----------------------------------------------------------------------------- timing
def per_call_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def pipeline_ms(transform: transforms.TrainTransform, image, label, samples: int, backend: str) -> float:
    """Median per-sample time over ``samples`` draws (the same rng seeds for both backends)."""
    times = []
    for seed in range(samples):
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        if backend == "opencv":
            with opencv_steps():
                transform(image, label, rng)
        else:
            transform(image, label, rng)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    diff = np.abs(ours.astype(np.int32) - theirs.astype(np.int32))
    return {"fraction_differing": float((diff > 0).any(axis=-1).mean()), "max_abs_diff": int(diff.max())}


def measure(name: str, samples: int, repeats: int, have_cv2: bool) -> dict:
    cfg = SETTINGS[name]
    h, w = cfg["size"]
    image, label = synthetic_photo(h, w, seed=1)
    data = jpeg_bytes(image)
    transform = transforms.TrainTransform(
        crop_size=cfg["crop"], scale=cfg["scale"], ratios=cfg["ratios"], ratio_range=cfg["ratio_range"]
    )
    target = transforms.rescale_size((h, w), transforms.scaled(cfg["scale"], 1.5))  # a typical drawn ratio
    crop = transforms.resize_image(image, target)[: cfg["crop"], : cfg["crop"]].copy()
    row: dict = {
        "image": f"{w}x{h}",
        "jpeg_kib": len(data) / 1024,
        "decode_ms": per_call_ms(lambda: decode(data), repeats),
        "numpy": {
            "pipeline_ms": pipeline_ms(transform, image, label, samples, "numpy"),
            "resize_full_ms": per_call_ms(lambda: transforms.resize_image(image, target), repeats),
            "hsv_round_trip_ms": per_call_ms(lambda: transforms.hsv_to_rgb(transforms.rgb_to_hsv(crop)), repeats),
        },
    }
    if have_cv2:
        row["opencv"] = {
            "pipeline_ms": pipeline_ms(transform, image, label, samples, "opencv"),
            "resize_full_ms": per_call_ms(lambda: cv2_resize_image(image, target), repeats),
            "hsv_round_trip_ms": per_call_ms(lambda: cv2_hsv_to_rgb(cv2_rgb_to_hsv(crop)), repeats),
        }
        hsv_ours = transforms.rgb_to_hsv(crop)
        row["agreement"] = {
            "resize": agreement(transforms.resize_image(image, target), cv2_resize_image(image, target)),
            "rgb_to_hsv": agreement(hsv_ours, cv2_rgb_to_hsv(crop)),
            "hsv_to_rgb": agreement(transforms.hsv_to_rgb(hsv_ours), cv2_hsv_to_rgb(hsv_ours)),
        }
    for backend in ("numpy", "opencv"):
        if backend in row:
            per_sample = row["decode_ms"] + row[backend]["pipeline_ms"]
            row[backend]["samples_per_s_per_worker"] = 1e3 / per_sample
    return row


# ----------------------------------------------------------------------------- detectron2 path
D2_SETTINGS = {  # the mask-classification recipes (semask/configs/mask2former/)
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


def detectron2_rows(samples: int, repeats: int) -> dict:
    """Per-sample time of ShortEdgeTrainTransform (PIL resize, torch-nearest label, crop, SSD colour,
    flip, pad, normalise) plus PIL decode, one thread."""
    import torch

    from semask.data.detectron2 import ShortEdgeTrainTransform

    torch.set_num_threads(1)
    rows = {}
    for name, cfg in D2_SETTINGS.items():
        h, w = cfg["size"]
        image, label = synthetic_photo(h, w, seed=1)
        data = jpeg_bytes(image)
        transform = ShortEdgeTrainTransform(cfg["short_edges"], cfg["max_size"], cfg["crop"], pad_size=cfg["pad_size"])
        decode_ms = per_call_ms(lambda data=data: decode(data), repeats)
        augment_ms = pipeline_ms(transform, image, label, samples, "numpy")  # type: ignore[arg-type]
        rows[name] = {
            "image": f"{w}x{h}",
            "crop": cfg["crop"],
            "decode_ms": decode_ms,
            "pipeline_ms": augment_ms,
            "samples_per_s_per_worker": 1e3 / (decode_ms + augment_ms),
        }
    return rows


def detectron2_markdown(rows: dict) -> list[str]:
    lines = [
        "",
        "detectron2 data path of the mask-classification models (`semask.data.detectron2.ShortEdgeTrainTransform`,"
        " the recipes' settings):",
        "",
        "| image | crop | decode ms | augment ms | samples/s per worker |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        crop = "x".join(str(c) for c in row["crop"])
        lines.append(
            f"| {name} {row['image']} | {crop} | {row['decode_ms']:.1f} | {row['pipeline_ms']:.1f} "
            f"| {row['samples_per_s_per_worker']:.1f} |"
        )
    return lines


def write_markdown(path: Path, result: dict) -> None:
    rate = result["gpu_rate"]
    lines = [
        "# Data pipeline rate (CPU, one thread per worker)",
        "",
        f"`python benchmarks/data_pipeline.py --samples {result['samples']}`; numpy {result['numpy']}, "
        f"OpenCV {result['opencv'] or 'not installed'}. Load average at start {result['load_average'][0]:.1f} on "
        f"{result['cpu_count']} cores shared with other jobs: absolute times drift, the numpy/OpenCV ratios are "
        "from the same minutes. Per sample = PIL JPEG decode + TrainTransform (median over seeded draws).",
        "",
        "| image | backend | decode ms | augment ms | samples/s per worker | workers for "
        f"{rate:g} img/s | resize ms (ratio 1.5, whole image) | HSV round trip ms (crop) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        for backend in ("numpy", "opencv"):
            if backend not in row:
                continue
            b = row[backend]
            workers = math.ceil(rate / b["samples_per_s_per_worker"])
            lines.append(
                f"| {name} {row['image']} | {backend} | {row['decode_ms']:.1f} | {b['pipeline_ms']:.1f} "
                f"| {b['samples_per_s_per_worker']:.1f} | {workers} | {b['resize_full_ms']:.1f} "
                f"| {b['hsv_round_trip_ms']:.1f} |"
            )
    if any("agreement" in row for row in result["rows"].values()):
        lines += [
            "",
            "Agreement of OpenCV with ours (fraction of pixels with any channel differing, max abs diff):",
            "",
        ]
        lines += ["| image | resize | RGB->HSV | HSV->RGB |", "|---|---|---|---|"]
        for name, row in result["rows"].items():
            if "agreement" in row:
                a = row["agreement"]
                cells = [f"{a[k]['fraction_differing']:.2%}, {a[k]['max_abs_diff']}" for k in a]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += detectron2_markdown(result["detectron2"]) if "detectron2" in result else []
    lines += ["", result["decision"], ""]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def decide(result: dict) -> str:
    rows = result["rows"]
    if not result["opencv"]:
        return "OpenCV is not installed: numpy only."
    gains = {n: r["numpy"]["pipeline_ms"] / r["opencv"]["pipeline_ms"] for n, r in rows.items()}
    rate = result["gpu_rate"]
    workers = {
        n: (
            math.ceil(rate / r["numpy"]["samples_per_s_per_worker"]),
            math.ceil(rate / r["opencv"]["samples_per_s_per_worker"]),
        )
        for n, r in rows.items()
    }
    text = "; ".join(
        f"{n}: OpenCV {g:.2f}x faster per sample, workers for {rate:g} img/s {workers[n][0]} (numpy) vs "
        f"{workers[n][1]} (OpenCV)"
        for n, g in gains.items()
    )
    return (
        f"Measured: {text}. Decision: keep numpy as the only backend. A few workers already feed the GPU rate, "
        "while OpenCV would change the augmented pixels (see the agreement table; its HSV->RGB is lower by one "
        "grey level where ours rounds), and an optional backend would make a run's data depend on whether "
        "OpenCV happens to be installed."
    )


def suite_rows(quick: bool, gpu_rate: float = 8.0) -> dict:
    """The numpy rows for benchmarks/run.py (OpenCV comparison only in this script)."""
    samples, repeats = (3, 1) if quick else (10, 3)
    rows = {name: measure(name, samples, repeats, have_cv2=False) for name in SETTINGS}
    return {"gpu_rate": gpu_rate, "rows": rows}


def suite_markdown(entry: dict) -> str:
    rate = entry["gpu_rate"]
    lines = [
        f"| image | decode ms | augment ms | samples/s per worker | workers for {rate:g} img/s |",
        "|---|---|---|---|---|",
    ]
    for name, row in entry["rows"].items():
        b = row["numpy"]
        lines.append(
            f"| {name} {row['image']} | {row['decode_ms']:.1f} | {b['pipeline_ms']:.1f} "
            f"| {b['samples_per_s_per_worker']:.1f} | {math.ceil(rate / b['samples_per_s_per_worker'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gpu-rate", type=float, default=8.0, help="images/s a GPU training step consumes")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    try:
        import cv2

        cv2.setNumThreads(1)  # a DataLoader worker is one process; OpenCV's own pool would hide that
        opencv = cv2.__version__
    except ImportError:
        opencv = None
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = {
        "samples": args.samples,
        "gpu_rate": args.gpu_rate,
        "numpy": np.__version__,
        "opencv": opencv,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "rows": {},
    }
    for name in SETTINGS:
        result["rows"][name] = measure(name, args.samples, args.repeats, opencv is not None)
        print(name, json.dumps(result["rows"][name]), flush=True)
    result["detectron2"] = detectron2_rows(args.samples, args.repeats)
    print("detectron2", json.dumps(result["detectron2"]), flush=True)
    result["decision"] = decide(result)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "data_pipeline_cpu.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.out / "data_pipeline_cpu.json")
    write_markdown(args.out / "data_pipeline_cpu.md", result)
    print(result["decision"])


if __name__ == "__main__":
    main()
