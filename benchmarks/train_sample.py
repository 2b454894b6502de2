"""Baseline vs LUAB on the bundled shortcut sample: in-distribution and out-of-distribution
accuracy and localisation, several seeds, with train/fast_train.py on the CPU.

    .venv/bin/python benchmarks/train_sample.py              # the recorded experiment
    .venv/bin/python benchmarks/train_sample.py --quick      # README demo: 1 seed, ~2 minutes

The sample (``luab-data sample``) puts each class on its own background family with
probability rho in the training split and in val_id; val_ood draws backgrounds independently
of the class. A classifier that reads the background scores ~rho on val_id and ~chance (or
below: it names the background's class) on val_ood. Localisation: share of val_ood images
whose class-activation-map peak (every model) or head prediction (point head, attention head)
falls inside the object's box.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [str(Path(PY).parent / "luab-data")]  # the console script of this environment
VARIANTS = {
    "baseline": [],
    "luab-point": ["--lam", "1"],
    "luab-attention": ["--mu", "1"],
    "luab-attention-pool": ["--mu", "1", "--att-pool"],
}
METRICS = (  # (column, split, key)
    ("val_id top-1", "val_id", "top1"),
    ("val_ood top-1", "val_ood", "top1"),
    ("loc CAM (ood)", "val_ood", "loc_cam"),
    ("loc head (ood)", "val_ood", "loc_head"),
)


def make_data(work: Path, rho: float, size: int, seed: int) -> tuple[Path, Path]:
    """The sample folder and its training .beton (built once, reused)."""
    sample = work / f"sample-rho{rho}-n{size}-s{seed}"
    if not (sample / "sample.json").exists():
        subprocess.run(
            [
                *CLI,
                "sample",
                "--out",
                str(sample),
                "--rho",
                str(rho),
                "--size",
                str(size),
                "--seed",
                str(seed),
                "--quiet",
            ],
            check=True,
        )
    beton = sample.parent / f"{sample.name}.beton"
    if not Path(f"{beton}.json").exists():
        subprocess.run(
            [
                *CLI,
                "build",
                "--src",
                str(sample / "imagenet_ab_v1_0.tar.gz"),
                "--images",
                str(sample),
                "--out",
                str(beton),
                "--recipe",
                "sample",
                "--classes",
                str(sample / "classes.txt"),  # 10-way, not ImageNet-1k
                "--overwrite",
                "--quiet",
            ],
            check=True,
        )
    return sample, beton


def run_one(
    variant: str, seed: int, sample: Path, beton: Path, out: Path, extra: list[str]
) -> dict:
    """One training run in its own process; its final metrics record."""
    run_dir = out / f"{variant}-seed{seed}"
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    cmd = [
        PY,
        str(ROOT / "train" / "fast_train.py"),
        "--config",
        str(ROOT / "luab_data" / "pipelines" / "train" / "sample-cpu.json"),
        "--train",
        str(beton),
        "--val",
        str(sample / "val_id"),
        str(sample / "val_ood"),
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
        "--quiet",
        *VARIANTS[variant],
        *extra,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    final = json.loads(lines[-1])
    for split in ("val_id", "val_ood"):  # the trained head's localisation, if any
        m = final[split]
        m["loc_head"] = m.get("loc_point", m.get("loc_attention"))
    return {"variant": variant, "seed": seed, **final}


def reference_levels(split: Path) -> dict[str, float]:
    """Localisation scores that need no model: the crop's centre (a 'predict the middle'
    head; the validation crop is centred) and a uniformly random point (the box's share of
    the image)."""
    import csv

    with open(split / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    box = [
        [float(r[k]) for k in ("width", "height", "box_x0", "box_y0", "box_x1", "box_y1")]
        for r in rows
    ]
    centre = [x0 <= w / 2 <= x1 and y0 <= h / 2 <= y1 for w, h, x0, y0, x1, y1 in box]
    area = [(x1 - x0) * (y1 - y0) / (w * h) for w, h, x0, y0, x1, y1 in box]
    return {"centre_in_box": statistics.fmean(centre), "random_point": statistics.fmean(area)}


def summarise(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """Per variant and metric: mean, sample standard deviation, min, max over seeds."""
    table: dict[str, dict[str, dict]] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        row = {}
        for column, split, key in METRICS:
            values = [r[split][key] for r in mine if r[split].get(key) is not None]
            if values:
                row[column] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                }
        row["cpu_s"] = {"mean": statistics.fmean(r["cpu_s"] for r in mine)}
        table[variant] = row
    return table


def markdown(table: dict[str, dict[str, dict]]) -> str:
    head = ["variant", *(c for c, _, _ in METRICS), "CPU s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, row in table.items():
        cells = [variant]
        for column, _, _ in METRICS:
            cell = row.get(column)
            cells.append("–" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}")
        cells.append(f"{row['cpu_s']['mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "train_sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rho", type=float, default=0.9)
    parser.add_argument("--size", type=int, default=2500, help="training images")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (one thread each)")
    parser.add_argument(
        "--quick", action="store_true", help="the README demo: seed 0, 6 epochs, two runs at once"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="write the JSON here (e.g. benchmarks/results/train_sample.json)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.jobs = [0], 6, 2
    args.work.mkdir(parents=True, exist_ok=True)
    start, load_before = time.time(), os.getloadavg()
    sample, beton = make_data(args.work, args.rho, args.size, args.sample_seed)
    extra = ["--epochs", str(args.epochs)]
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: _report(run_one(*j, sample, beton, args.work, extra)), jobs))
    table = summarise(runs)
    refs = {split: reference_levels(sample / split) for split in ("val_id", "val_ood")}
    print(markdown(table))
    ood = refs["val_ood"]
    print(
        f"\nval_ood localisation without a model: centre of the crop {ood['centre_in_box']:.3f}, "
        f"random point {ood['random_point']:.3f}"
    )
    if args.results:
        record = {
            "what": "baseline vs LUAB on the bundled shortcut sample (train/fast_train.py)",
            "settings": {
                **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "config": "luab_data/pipelines/train/sample-cpu.json",
                "variants": {v: VARIANTS[v] for v in args.variants},
            },
            "machine": {**machine(), "loadavg_before": load_before},
            "wall_s": time.time() - start,
            "summary": table,
            "localisation_without_a_model": refs,
            "runs": runs,
        }
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(record, indent=1) + "\n")


def _report(run: dict) -> dict:
    ood, iid = run["val_ood"], run["val_id"]
    print(
        f"{run['variant']:<20} seed {run['seed']}  val_id {iid['top1']:.3f}  "
        f"val_ood {ood['top1']:.3f}  loc_cam {ood['loc_cam']:.3f}  "
        f"{run['cpu_s']:.0f} CPU s",
        flush=True,
    )
    return run


if __name__ == "__main__":
    main()
