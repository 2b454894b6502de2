"""Images/s of the coupled FFCV loader (image + map + points sharing one crop) against plain FFCV
(RandomResizedCrop + flip, image + label only), on the same .beton, in one process, alternating.

    .venv/bin/python benchmarks/ffcv_coupled_vs_plain.py [--n 500] [--epochs 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from ffcv.fields import IntField, NDArrayField, RGBImageField
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

from luab_data.beton.ffcv_workers import plain_ffcv_write
from luab_data.loaders.contract import FieldNames
from luab_data.loaders.ffcv_loader import CoupledLoader


class _Synthetic:
    """Photo-like JPEG content (smooth shapes, mild noise), 256-400 px, with a map and point."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        rng = np.random.default_rng(i)
        h, w = (int(v) for v in rng.integers(256, 401, 2))
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([(c0 + c1 * xx + c2 * yy) for c0, c1, c2 in rng.uniform(0, 120, (3, 3))], -1)
        for _ in range(6):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(10, w // 3)), int(rng.integers(10, h // 3)))
            colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        amap = rng.integers(0, 255, (2, 64, 64), dtype=np.uint8)
        return img, i % 1000, amap, rng.uniform(0, 1, 2).astype(np.float32)


def write(path: Path, n: int, workers: int) -> None:
    fields = {
        "image": RGBImageField(write_mode="jpg", jpeg_quality=90),
        "label": IntField(),
        "map": NDArrayField(np.dtype("uint8"), (2, 64, 64)),
        "point": NDArrayField(np.dtype("float32"), (2,)),
    }
    plain_ffcv_write(str(path), fields, _Synthetic(n), workers)


def plain(path: Path, batch: int, workers: int, flip: bool = True) -> Loader:
    flips = [RandomHorizontalFlip()] if flip else []
    image = [RandomResizedCropRGBImageDecoder((224, 224)), *flips, ToTensor()]
    return Loader(
        str(path),
        batch,
        num_workers=workers,
        order=OrderOption.RANDOM,
        drop_last=True,
        pipelines={
            "image": [*image, ToTorchImage(channels_last=True)],
            "label": [IntDecoder(), ToTensor(), Squeeze(1)],
            "map": None,
            "point": None,
        },
    )


def epoch_rate(loader, n_images: int) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return n_images / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.beton"
        start = time.perf_counter()
        write(path, args.n, args.workers)
        print(
            f"wrote {args.n} images in {time.perf_counter() - start:.1f}s, "
            f"{path.stat().st_size / 2**20:.1f} MiB"
        )
        common = {"image_size": 224, "map_size": 14, "workers": args.workers}
        loaders = {
            "plain FFCV (image+label)": plain(path, args.batch, args.workers),
            "plain FFCV, no flip": plain(path, args.batch, args.workers, flip=False),
            "coupled (image+label+crop)": CoupledLoader(
                path, args.batch, names=FieldNames(map=None, point=None), **common
            ),
            "coupled (+map 14x14 +point)": CoupledLoader(path, args.batch, **common),
        }
        n_images = (args.n // args.batch) * args.batch
        for loader in loaders.values():
            epoch_rate(loader, n_images)  # compile + warm the page cache
        rates = {name: [] for name in loaders}
        for _ in range(args.epochs):  # alternate, so drift hits all alike
            for name, loader in loaders.items():
                rates[name].append(epoch_rate(loader, n_images))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(
        f"{machine}, {args.workers} workers, batch {args.batch}, RRC 224, median of {args.epochs}"
    )
    base = statistics.median(rates["plain FFCV (image+label)"])
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:30s} {med:8.0f} img/s  ({med / base:.2f} x plain)")


if __name__ == "__main__":
    main()
