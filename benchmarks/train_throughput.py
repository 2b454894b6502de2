"""Training images/s of train/fast_train.py fed by a loader vs by synthetic tensors already on
the device (the ceiling: no decoding, no transfer), one machine, back to back.

    # on a GPU machine (ResNet-50, bf16 autocast + channels-last are the trainer's defaults):
    .venv/bin/python benchmarks/train_throughput.py --n 20000 --workers 16
    # a CPU smoke run:
    .venv/bin/python benchmarks/train_throughput.py --model resnet_small --res 64 --n 512 \\
        --batch-size 32 --epochs 2 --workers 2 --threads 1

It writes a .beton of photo-like JPEGs the size of ImageNet's (~500 x 375, quality 90, with a
2 x 64 x 64 map and a point, as the ImageNet-AB recipe stores them), then trains with LUAB
heads on (λ = μ = 1) from each feed for a few epochs; the first epoch (warm-up, cudnn autotune,
compilation) is left out of the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class PhotoLike:
    """Smooth colour fields, a few shapes and sensor-like noise: JPEG entropy (hence decode
    cost) close to a photograph's, unlike flat synthetic images."""

    def __init__(self, n: int, classes: int = 1000) -> None:
        self.n, self.classes = n, classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        rng = np.random.default_rng(i)
        h, w = (375, 500) if rng.random() < 0.7 else (500, 375)
        small = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(4):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            radius = int(rng.integers(10, min(h, w) // 3))
            cv2.circle(img, centre, radius, tuple(float(c) for c in rng.uniform(0, 255, 3)), -1)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        amap = np.zeros((2, 64, 64), np.uint8)
        py, px = rng.integers(8, 56, 2)
        amap[:, py - 4 : py + 4, px - 4 : px + 4] = 255
        point = np.array([(px + 0.5) / 64, (py + 0.5) / 64], np.float32)
        return img, i % self.classes, amap, point


def write_beton(path: Path, n: int, workers: int) -> None:
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    from luab_data.beton.ffcv_workers import plain_ffcv_write

    fields = {
        "image": RGBImageField(write_mode="jpg", jpeg_quality=90, max_resolution=500),
        "label": IntField(),
        "map": NDArrayField(np.dtype("uint8"), (2, 64, 64)),
        "point": NDArrayField(np.dtype("float32"), (2,)),
    }
    tmp = path.with_suffix(".tmp")
    plain_ffcv_write(str(tmp), fields, PhotoLike(n), workers)
    os.replace(tmp, path)


def train(feed: list[str], args: argparse.Namespace, out: Path) -> dict:
    """One fast_train run; images/s of each epoch after the first."""
    cmd = [
        sys.executable,
        str(ROOT / "train" / "fast_train.py"),
        "--model",
        args.model,
        "--batch-size",
        str(args.batch_size),
        "--min-res",
        str(args.res),
        "--max-res",
        str(args.res),
        "--epochs",
        str(args.epochs),
        "--workers",
        str(args.workers),
        "--lam",
        "1",
        "--mu",
        "1",
        "--num-classes",
        "1000",
        "--lr",
        "0.1",
        "--out",
        str(out),
        "--quiet",
        *feed,
        *args.extra,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    (out / "metrics.jsonl").unlink(missing_ok=True)
    subprocess.run(cmd, check=True)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r["event"] == "epoch" and r["epoch"] > 0]
    start = next(r for r in records if r["event"] == "start")
    return {
        "command": " ".join(cmd[1:]),
        "device": start["device"],
        "epoch_rates": rates,
        "images_per_s": statistics.median(rates) if rates else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "train_throughput")
    parser.add_argument("--n", type=int, default=20000, help="images in the .beton")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--res", type=int, default=192, help="training resolution")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (CPU runs)")
    parser.add_argument("--loaders", nargs="+", default=["ffcv"], choices=["ffcv", "dali", "torch"])
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="more fast_train flags for every run, e.g. --compile",
    )
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    beton = args.work / f"photolike-{args.n}.beton"
    if not beton.exists():
        start = time.perf_counter()
        write_beton(beton, args.n, args.workers)
        print(f"wrote {beton} in {time.perf_counter() - start:.1f} s", flush=True)
    steps = max(1, args.n // args.batch_size)
    results = {
        "synthetic": train(
            ["--synthetic", "--synthetic-steps", str(steps)], args, args.work / "synthetic"
        )
    }
    for loader in args.loaders:
        results[loader] = train(
            ["--train", str(beton), "--loader", loader], args, args.work / loader
        )
    ceiling = results["synthetic"]["images_per_s"]
    for name, r in results.items():
        share = r["images_per_s"] / ceiling if ceiling and r["images_per_s"] else float("nan")
        print(
            f"{name:<10} {r['images_per_s'] or float('nan'):>10,.0f} images/s  "
            f"({share:.0%} of synthetic)  on {r['device']}"
        )
    record = {
        "what": "fast_train images/s: loader-fed vs synthetic on-device input",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": _machine(),
        "results": results,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(record, indent=1) + "\n")


def _machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "loadavg": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
