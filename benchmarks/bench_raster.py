"""Rasterisation benchmark: maps/s of the numba kernel vs a naive numpy and an OpenCV path.

All paths make the same map (64x64 by default, 2 channels: clicks and dwell-weighted trace,
max-normalised, uint8) from the same synthetic records (random-walk traces at ~30 Hz, one click,
ImageNet-like image sizes). They run side by side in one process, repetitions interleaved
(numba, numpy, opencv, numba, ...) because this machine is shared and noisy; figures are medians
with min-max. Then the numba kernel alone across trace lengths and map sizes.

    python benchmarks/bench_raster.py [--records 4096] [--reps 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numba
import numpy as np

from luab_data.raster.arrow import rasterise_batch
from luab_data.raster.config import RasterConfig
from luab_data.raster.ragged import Ragged, rasterise
from luab_data.records import Record, records_to_batch

RESULTS = Path(__file__).parent / "results"
SIZES = [(500, 375), (375, 500), (500, 333), (640, 480), (400, 400), (800, 600)]


def synthetic(n: int, n_trace: int, seed: int = 0) -> tuple[Ragged, Ragged, np.ndarray, np.ndarray]:
    """n records: one click, an n_trace-sample random walk (slightly leaving the image)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 0.02, (n, n_trace, 2)).cumsum(axis=1)
    walk = np.clip(rng.uniform(0.2, 0.8, (n, 1, 2)) + steps, -0.05, 1.05).astype(np.float32)
    t = rng.choice([16, 17, 33, 50, 400], (n, n_trace), p=[0.4, 0.3, 0.2, 0.07, 0.03]).cumsum(1)
    click = walk[:, -1]
    wh = np.array(SIZES)[rng.integers(0, len(SIZES), n)]
    trace = Ragged(
        np.arange(n + 1, dtype=np.int64) * n_trace,
        walk[..., 0].ravel(),
        walk[..., 1].ravel(),
        t.ravel().astype(np.int64),
        np.zeros(n * n_trace, np.int16),
    )
    clicks = Ragged(np.arange(n + 1, dtype=np.int64), click[:, 0].copy(), click[:, 1].copy())
    return clicks, trace, wh[:, 0], wh[:, 1]


def as_batch(clicks: Ragged, trace: Ragged, width: np.ndarray, height: np.ndarray):
    recs = []
    for i in range(len(width)):
        c, s = slice(*clicks.offsets[i : i + 2]), slice(*trace.offsets[i : i + 2])
        recs.append(
            Record(
                key=str(i),
                source="imagenet-ab",
                image="",
                width=int(width[i]),
                height=int(height[i]),
                click_x=clicks.x[c],
                click_y=clicks.y[c],
                click_t=np.zeros(1, np.int64),
                click_class=np.zeros(1, np.int32),
                click_ann=np.zeros(1, np.int16),
                trace_x=trace.x[s],
                trace_y=trace.y[s],
                trace_t=trace.t[s],
                trace_ann=trace.ann[s],
            )
        )
    return records_to_batch(recs)


# --- per-record baselines (Python loop over records, numpy/OpenCV inside) ------------------
def _record(clicks, trace, width, height, cfg, i):
    """One record's samples in cell coordinates, weights and σ in cells (shared by baselines)."""
    h, w = cfg.size
    c, s = slice(*clicks.offsets[i : i + 2]), slice(*trace.offsets[i : i + 2])
    t = trace.t[s]
    dwell = np.clip(np.append(np.diff(t), cfg.dwell_min_ms), cfg.dwell_min_ms, cfg.dwell_cap_ms)
    sigma = cfg.sigma * max(width[i], height[i])
    groups = [
        (clicks.x[c], clicks.y[c], np.ones(c.stop - c.start)),
        (trace.x[s], trace.y[s], dwell),
    ]
    return groups, sigma * w / width[i], sigma * h / height[i]


def _to_uint8(acc: np.ndarray) -> np.ndarray:
    peak = acc.max(axis=(1, 2), keepdims=True)
    return np.floor(acc / np.where(peak > 0, peak, 1) * 255 + 0.5).astype(np.uint8)


def naive_numpy(clicks, trace, width, height, cfg) -> np.ndarray:
    """A dense exp over the whole map for every sample."""
    h, w = cfg.size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((len(width), 2, h, w), np.uint8)
    for i in range(len(width)):
        groups, sx, sy = _record(clicks, trace, width, height, cfg, i)
        acc = np.zeros((2, h, w))
        for ch, (x, y, wt) in enumerate(groups):
            for px, py, pw in zip(x, y, wt, strict=True):
                if 0 <= px <= 1 and 0 <= py <= 1:
                    u, v = px * w - 0.5, py * h - 0.5
                    acc[ch] += pw * np.exp(-0.5 * (((xs - u) / sx) ** 2 + ((ys - v) / sy) ** 2))
        out[i] = _to_uint8(acc)
    return out


def opencv(clicks, trace, width, height, cfg, rows=None) -> np.ndarray:
    """Weighted histogram of the samples, then cv2.GaussianBlur per channel."""
    h, w = cfg.size
    rows = range(len(width)) if rows is None else rows
    out = np.empty((len(rows), 2, h, w), np.uint8)
    for k, i in enumerate(rows):
        groups, sx, sy = _record(clicks, trace, width, height, cfg, i)
        acc = np.zeros((2, h, w), np.float32)
        for ch, (x, y, wt) in enumerate(groups):
            ok = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
            ix = np.minimum((x[ok] * w).astype(np.int64), w - 1)
            iy = np.minimum((y[ok] * h).astype(np.int64), h - 1)
            np.add.at(acc[ch], (iy, ix), wt[ok])
            acc[ch] = cv2.GaussianBlur(
                acc[ch], (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_CONSTANT
            )
        out[k] = _to_uint8(acc)
    return out


def opencv_threads(clicks, trace, width, height, cfg, threads: int) -> np.ndarray:
    """The OpenCV path over a thread pool, one chunk of records per core."""
    chunks = np.array_split(np.arange(len(width)), threads)
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(lambda r: opencv(clicks, trace, width, height, cfg, r), chunks)
        return np.concatenate(list(parts))


def _one_thread(fn, *args):
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        numba.set_num_threads(threads)


# --- timing ---------------------------------------------------------------------------------
def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _summary(rates: list[float]) -> dict:
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "reps": len(rates),
    }


def side_by_side(n: int, reps: int, cfg: RasterConfig) -> dict:
    clicks, trace, width, height = synthetic(n, 100)
    batch = as_batch(clicks, trace, width, height)
    n_naive, n_cv = min(n, 32), min(n, 512)
    threads = numba.get_num_threads()
    methods = {
        "numba (ragged arrays)": (lambda: rasterise(clicks, trace, width, height, cfg), n),
        "numba (Arrow batch)": (lambda: rasterise_batch(batch, cfg), n),
        "numba (Arrow batch), 1 thread": (lambda: _one_thread(rasterise_batch, batch, cfg), n),
        "naive numpy per point": (
            lambda: naive_numpy(clicks, trace, width[:n_naive], height[:n_naive], cfg),
            n_naive,
        ),
        "opencv hist+GaussianBlur": (
            lambda: opencv(clicks, trace, width[:n_cv], height[:n_cv], cfg),
            n_cv,
        ),
        f"opencv, {threads} threads": (
            lambda: opencv_threads(clicks, trace, width[:n_cv], height[:n_cv], cfg, threads),
            n_cv,
        ),
    }
    for fn, _ in methods.values():  # warm-up: numba compile / cache load, allocator
        fn()
    rates = {name: [] for name in methods}
    for _ in range(reps):
        for name, (fn, count) in methods.items():
            rates[name].append(_rate(fn, count))
    agree = _agreement(clicks, trace, width, height, cfg, n_cv)
    return {
        "maps_per_s": {k: _summary(v) for k, v in rates.items()},
        "agreement": agree,
        "rates": rates,
    }


def _agreement(clicks, trace, width, height, cfg, n) -> dict:
    """Mean |difference| in uint8 levels against the numba maps (sanity: same maps)."""
    ours = rasterise(clicks, trace, width, height, cfg)[0][:n].astype(np.int16)
    cv = opencv(clicks, trace, width[:n], height[:n], cfg).astype(np.int16)
    nv = naive_numpy(clicks, trace, width[:32], height[:32], cfg).astype(np.int16)
    return {
        "opencv_mean_abs_levels": float(np.abs(ours - cv).mean()),
        "naive_mean_abs_levels": float(np.abs(ours[:32] - nv).mean()),
    }


def scaling(n: int, reps: int, cfg: RasterConfig) -> list[dict]:
    """The numba kernel alone; cases interleaved within each repetition like side_by_side."""
    cases = [(length, (64, 64)) for length in (10, 100, 1000)]
    cases += [(100, size) for size in ((32, 32), (128, 128))]
    data = {length: synthetic(n if length < 1000 else n // 4, length) for length in (10, 100, 1000)}
    args = [(*data[length], replace(cfg, size=size)) for length, size in cases]
    for a in args:
        rasterise(*a)
    rates = [[] for _ in cases]
    for _ in range(reps):
        for a, r in zip(args, rates, strict=True):
            r.append(_rate(lambda a=a: rasterise(*a), len(a[2])))
    rows = []
    for (length, size), r in zip(cases, rates, strict=True):
        s = _summary(r)
        rows.append(
            {
                "trace_samples": length,
                "size": list(size),
                "maps_per_s": s,
                "us_per_map": 1e6 / s["median"],
            }
        )
    return rows


def run(quick: bool, data: Path, tiny: bool = False) -> list[dict]:
    """For `luab-data bench`: the numba kernel beside the numpy and OpenCV paths."""
    n, reps = (64, 1) if tiny else ((1024, 3) if quick else (4096, 11))
    res = side_by_side(n, reps, RasterConfig())
    rates = res["rates"]
    ours = "numba (Arrow batch)"
    results = {
        k: _summary(rates[k]) for k in (ours, "naive numpy per point", "opencv hist+GaussianBlur")
    }
    ratios = {
        f"{ours} / {b}": _summary([a / c for a, c in zip(rates[ours], rates[b], strict=True)])
        for b in list(results)[1:]
    }
    return [
        {
            "stage": "raster",
            "name": "64x64x2 maps, 100-sample traces",
            "unit": "maps/s",
            "results": results,
            "ratios": ratios,
            "agreement": res["agreement"],
        }
    ]


def markdown(result: dict) -> str:
    sbs = result["side_by_side"]["maps_per_s"]
    ref = sbs["opencv hist+GaussianBlur"]["median"]
    head = "| path (64x64, 2 ch, 100-sample traces, uint8) | maps/s median | min-max | vs OpenCV |"
    lines = [head, "|---|---:|---:|---:|"]
    for name, s in sbs.items():
        lines.append(
            f"| {name} | {s['median']:,.0f} | {s['min']:,.0f}-{s['max']:,.0f} "
            f"| {s['median'] / ref:.2f}x |"
        )
    lines += [
        "",
        "| trace samples | map | maps/s median | min-max | us/map |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in result["scaling"]:
        s = row["maps_per_s"]
        lines.append(
            f"| {row['trace_samples']} | {row['size'][0]}x{row['size'][1]} "
            f"| {s['median']:,.0f} | {s['min']:,.0f}-{s['max']:,.0f} "
            f"| {row['us_per_map']:.1f} |"
        )
    return "\n".join(lines)


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": numba.threading_layer(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "raster.json")
    args = ap.parse_args()
    cfg = RasterConfig()  # 64x64, clicks + trace, σ = 3% of the long side, uint8
    load = os.getloadavg()
    result = {
        "side_by_side": side_by_side(args.records, args.reps, cfg),
        "scaling": scaling(args.records, args.reps, cfg),
    }
    result = {
        "machine": {**machine(), "loadavg_at_start": load, "loadavg_at_end": os.getloadavg()},
        "config": asdict(cfg),
        "records_per_call": args.records,
        **result,
    }
    result["markdown"] = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=list) + "\n")
    print(result["markdown"])
    print(json.dumps(result["side_by_side"]["agreement"]), f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
