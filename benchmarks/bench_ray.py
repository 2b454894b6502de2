"""`luab-data build --engine ray` against the local build of the same sample, in one run.

Both are the command as a user runs it (a fresh process each time, `--recipe imagenet-ab`, a
.beton of a generated ImageNet-sized sample): the local build with its default writer
processes (all cores), the Ray build with its defaults (a local Ray started and stopped by the
command, one shard task per core, one writer each, then the merge). Repetitions are interleaved
so that a slow moment of the shared machine hits both; the ratio is Ray / local per repetition.

    python benchmarks/bench_ray.py --n 1000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import build_command, prepare, spread  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ray.json"


def time_build(sample: Path, out: Path, engine: str) -> float:
    """Seconds of one whole `luab-data build` (process start to exit)."""
    cmd = build_command(sample, out, "--engine", engine)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="images in the sample")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/tmp/luab-bench-merge"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from luab_data.bench import machine_info

    machine = machine_info()
    sample = prepare(args.data, args.n)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    for rep in range(args.reps):
        for engine in ["local", "ray"] if rep % 2 == 0 else ["ray", "local"]:
            out = args.data / "ray-bench" / f"{engine}.beton"
            times[engine].append(time_build(sample, out, engine))
            print(f"rep {rep} {engine}: {times[engine][-1]:.1f} s", flush=True)
    ratios = [r / loc for r, loc in zip(times["ray"], times["local"], strict=True)]
    machine["load_average_end"] = list(os.getloadavg())
    report = {
        "machine": machine,
        "images": args.n,
        "format": "beton",
        "recipe": "imagenet-ab",
        "seconds": {k: spread(v) for k, v in times.items()},
        "ratio_ray_over_local": spread(ratios),
        "goal": "<= 1.3",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    r = report["ratio_ray_over_local"]
    print(
        f"{args.n} images: local {report['seconds']['local']['median']:.1f} s, ray "
        f"{report['seconds']['ray']['median']:.1f} s, ray/local {r['median']:.2f} "
        f"({r['min']:.2f}-{r['max']:.2f})"
    )


if __name__ == "__main__":
    main()
