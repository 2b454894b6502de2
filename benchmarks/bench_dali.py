"""Images/s of the DALI loader against the coupled FFCV loader, on the same .beton, in one run.

Both loaders produce the full batch contract (image + label + crop box/flip + map cropped to
14x14 + point), RandomResizedCrop 224 + flip, uint8 images, the same batches of the same
samples (same seed). Repetitions are interleaved (and their order rotated) because the machine
is shared; figures are medians with min-max, and the load average before/after is recorded.

CPU mode (default): DALI's CPU-only pipeline (``device_id=None``, ``--threads`` threads) vs
FFCV with as many workers. GPU mode (``--device gpu``): DALI with ``mixed`` decoding (nvJPEG;
the hardware JPEG decoder takes ``--hw-decoder-load`` of the JPEGs, one contender per value)
and GPU resizing, vs FFCV decoding on the CPU and copying to the same GPU, vs DALI's CPU
pipeline on the same host; every epoch ends with a CUDA synchronisation. GPU mode needs a CUDA
build of torch beside nvidia-dali-cuda12x; it writes results/dali-gpu.json.

    python benchmarks/bench_dali.py                      # synthetic file, CPU, all cores
    python benchmarks/bench_dali.py --device gpu --n 5000 --batch 256 --hw-decoder-load 0.65 0.9
    python benchmarks/bench_dali.py --beton data/sample.beton --out /tmp/dali.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------- a synthetic file


def photo_like(index: int, size_range: tuple[int, int]) -> np.ndarray:
    """A reproducible RGB image with photo-like JPEG cost: smooth colour fields, hard-edged
    shapes and sensor-like noise (pure noise or flat colour would mislead a JPEG benchmark)."""
    rng = np.random.default_rng(index)
    height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    coarse = rng.uniform(0, 255, (4 + index % 5, 4 + index % 7, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(8, width // 2)), int(rng.integers(8, height // 2))
        colour = [float(c) for c in rng.uniform(0, 255, 3)]
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness=int(rng.integers(-1, 6)))
    image += rng.normal(0, 16, image.shape).astype(np.float32)  # ~0.5 byte/px at q90
    return np.clip(image, 0, 255).astype(np.uint8)


class _Synthetic:
    """Samples in the layout luab-data's writer uses: image, label, map (2, 64, 64), point."""

    def __init__(self, n: int, size_range: tuple[int, int]) -> None:
        self.n, self.size_range = n, size_range

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        rng = np.random.default_rng(10_000 + i)
        amap = rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)
        point = rng.uniform(0, 1, 2).astype(np.float32)
        return photo_like(i, self.size_range), i % 1000, amap, point


def write_synthetic(path: Path, n: int, size_range: tuple[int, int], workers: int) -> None:
    from ffcv.fields import IntField, NDArrayField, RGBImageField

    from luab_data.beton.ffcv_workers import plain_ffcv_write

    fields = {
        "image": RGBImageField(write_mode="jpg", jpeg_quality=90),
        "label": IntField(),
        "map": NDArrayField(np.dtype("uint8"), (2, 64, 64)),
        "point": NDArrayField(np.dtype("float32"), (2,)),
    }
    plain_ffcv_write(str(path), fields, _Synthetic(n, size_range), workers)


# ---------------------------------------------------------------- loaders and timing


def make_loaders(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The contenders, all yielding the same batches of the same samples."""
    from luab_data.loaders.contract import make_loader

    common = {
        "batch_size": args.batch,
        "image_size": args.image_size,
        "seed": 0,
        "map_size": args.map_size,
        "normalize": args.normalize,
        "workers": args.threads,
        "drop_last": True,
    }
    gpu = args.device == "gpu"
    loaders = {
        "ffcv": make_loader("ffcv", path, device="cuda:0" if gpu else None, **common),
        "dali_cpu": make_loader("dali", path, device=None, **common),
    }
    for load in args.hw_decoder_load if gpu else []:  # one contender per hardware share
        loaders[f"dali_mixed@{load:g}"] = make_loader(
            "dali", path, device="cuda:0", hw_decoder_load=load, **common
        )
    return loaders


def epoch_rate(loader: Iterable, sync: Callable[[], None]) -> float:
    """Images/s of one epoch, from the first request to the last batch being ready."""
    n = 0
    start = time.perf_counter()
    for batch in loader:
        n += len(batch.indices)
    sync()
    return n / (time.perf_counter() - start)


def measure(loaders: dict[str, Any], reps: int, sync: Callable[[], None]) -> dict[str, list]:
    names = list(loaders)
    for name in names:  # compile, build, fill the page cache
        epoch_rate(loaders[name], sync)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)  # rotate who goes first: drift hits all alike
        for name in names[shift:] + names[:shift]:
            rates[name].append(epoch_rate(loaders[name], sync))
            print(f"  rep {rep}: {name:16s} {rates[name][-1]:8.0f} img/s", flush=True)
    return rates


def summary(values: list[float]) -> dict[str, Any]:
    r = 3 if max(values) < 10 else 1  # ratios keep 3 decimals, rates 1
    return {
        "median": round(statistics.median(values), r),
        "min": round(min(values), r),
        "max": round(max(values), r),
        "runs": [round(v, r) for v in values],
    }


# ---------------------------------------------------------------- the record


def machine(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    import nvidia.dali

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    info = {
        "cpu": models[0] if models else platform.machine(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "dali": nvidia.dali.__version__,
        "ffcv": version("ffcv"),  # ffcv.__version__ says 0.0.3rc1 in the 1.0.2 wheel
        "torch": torch.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    if args.device == "gpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beton", type=Path, help="benchmark this file instead of a synthetic one")
    ap.add_argument("--n", type=int, default=1000, help="synthetic images")
    ap.add_argument("--sizes", type=int, nargs=2, default=(256, 400), help="synthetic px range")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="DALI CPU threads = FFCV workers",
    )
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--map-size", type=int, default=14)
    ap.add_argument("--normalize", action="store_true", help="float normalised images")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument(
        "--hw-decoder-load",
        type=float,
        nargs="+",
        default=[0.65],
        help="JPEG share of the hardware decoder; several values: a sweep",
    )
    ap.add_argument("--out", type=Path, default=None, help="default: results/dali[-gpu].json")
    return ap.parse_args(argv)


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Write (or open) the file, time the loaders, return the record that goes to JSON."""
    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu needs a CUDA build of torch and a visible GPU")
    sync = torch.cuda.synchronize if args.device == "gpu" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.beton
        if path is None:
            path = Path(tmp) / "bench.beton"
            start = time.perf_counter()
            write_synthetic(path, args.n, tuple(args.sizes), args.threads)
            print(
                f"wrote {args.n} JPEGs in {time.perf_counter() - start:.1f} s, "
                f"{path.stat().st_size / 2**20:.1f} MiB"
            )
        load_before = os.getloadavg()
        rates = measure(make_loaders(path, args), args.reps, sync)
        load_after = os.getloadavg()
    results = {name: summary(values) for name, values in rates.items()}
    for name, entry in results.items():  # ratios paired by repetition (they ran side by side)
        entry["x_ffcv"] = summary([a / b for a, b in zip(rates[name], rates["ffcv"], strict=True)])
    info = machine(args) | {"loadavg_before": load_before, "loadavg_after": load_after}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {"machine": info, "config": config, "images_per_s": results}


def label(name: str) -> str:
    """Report names: ffcv, dali_cpu, dali_mixed@<hw_decoder_load>."""
    if name.startswith("dali_mixed@"):
        return f"DALI mixed (GPU, hw load {name.split('@')[1]})"
    return {"ffcv": "FFCV coupled", "dali_cpu": "DALI CPU"}[name]


def run(quick: bool = False, data: Path | None = None, tiny: bool = False) -> list[dict]:
    """Entries for ``luab-data bench`` (see luab_data/bench.py): DALI vs FFCV, on the GPU when
    one is visible. ``data`` is unused: the synthetic file lives in a temporary folder."""
    n, reps = (128, 1) if tiny else (500, 3) if quick else (1000, 5)
    gpu = torch.cuda.is_available()
    argv = ["--n", str(n), "--reps", str(reps), "--device", "gpu" if gpu else "cpu"]
    record = benchmark(parse_args(argv + (["--batch", "32"] if tiny else [])))
    rates = record["images_per_s"]
    results = {label(k): _spread(v) for k, v in rates.items()}
    ratios = {
        f"{label(k)} / {label('ffcv')}": _spread(v["x_ffcv"])
        for k, v in rates.items()
        if k != "ffcv"
    }
    return [
        {
            "stage": "dali",
            "name": "RRC 224 + map + point",
            "unit": "images/s",
            "results": results,
            "ratios": ratios,
            "notes": f"{n} synthetic JPEGs 256-400 px, batch {record['config']['batch']}, "
            f"{record['config']['threads']} threads/workers, same batches in both",
        }
    ]


def _spread(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "median": entry["median"],
        "min": entry["min"],
        "max": entry["max"],
        "n": len(entry["runs"]),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    record = benchmark(args)
    out = args.out or RESULTS / ("dali-gpu.json" if args.device == "gpu" else "dali.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    m = record["machine"]
    load = f"load {m['loadavg_before'][0]:.2f} -> {m['loadavg_after'][0]:.2f}"
    print(
        f"{m['cpu']}, {m['cores_available']} cores, {load}; batch {args.batch}, "
        f"{args.threads} threads, RRC {args.image_size} + map {args.map_size} + point, "
        f"median of {args.reps}"
    )
    for name, r in record["images_per_s"].items():
        x = r["x_ffcv"]
        print(
            f"{name:16s} {r['median']:8.0f} img/s  [{r['min']:.0f}-{r['max']:.0f}]  "
            f"{x['median']:.2f} x FFCV [{x['min']:.2f}-{x['max']:.2f}]"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
