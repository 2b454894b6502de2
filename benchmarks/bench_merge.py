"""`luab-data merge` against a plain file copy of the same bytes (`cp`), side by side.

The shards of one `--shard i/n` build of a generated ImageNet-sized sample are merged, and the
same shard files copied with `cp`, in interleaved repetitions (a slow moment of the shared
machine hits both). Rates are MiB of shard data per second; the ratio is merge / cp per
repetition. Both read and write through the page cache (the shards were just written).

    python benchmarks/bench_merge.py --n 1000 --shards 4 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import prepare, spread  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "merge.json"


def build_shards(sample: Path, out: Path, n: int) -> list[Path]:
    from luab_data.beton.paths import beton_path, manifest_path
    from luab_data.recipes import beton_options, load_recipe
    from luab_data.sources import open_source
    from luab_data.writers.beton import build_beton

    options = beton_options(load_recipe("imagenet-ab")["build"])
    paths = [beton_path(out, (i, n)) for i in range(n)]
    for i, path in enumerate(paths):
        if not manifest_path(path).exists():
            source = open_source(sample / "imagenet_ab_v1_0.tar.gz", images=sample)
            build_beton(source, out, (i, n), options=options, show_progress=False)
    return paths


def time_merge(shards: list[Path], out: Path) -> float:
    from luab_data.writers.merge import merge_betons

    start = time.perf_counter()
    merge_betons(out, shards, overwrite=True)
    return time.perf_counter() - start


def time_cp(shards: list[Path], folder: Path) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", *map(str, shards), str(folder)], check=True)
    for shard in shards:  # merge fsyncs its output: the copies are flushed too
        fd = os.open(folder / shard.name, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="images in the sample")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--data", type=Path, default=Path("/tmp/luab-bench-merge"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from luab_data.bench import machine_info

    machine = machine_info()
    sample = prepare(args.data, args.n)
    shards = build_shards(sample, args.data / "parts" / "train.beton", args.shards)
    mib = sum(s.stat().st_size for s in shards) / 2**20
    rates: dict[str, list[float]] = {"merge": [], "cp": []}
    for rep in range(args.reps):
        order = ["merge", "cp"] if rep % 2 == 0 else ["cp", "merge"]
        for name in order:
            if name == "merge":
                seconds = time_merge(shards, args.data / "merged.beton")
            else:
                seconds = time_cp(shards, args.data / "copy")
                shutil.rmtree(args.data / "copy")
            rates[name].append(mib / seconds)
    ratios = [m / c for m, c in zip(rates["merge"], rates["cp"], strict=True)]
    machine["load_average_end"] = list(os.getloadavg())
    report = {
        "machine": machine,
        "shards": len(shards),
        "images": args.n,
        "mib": round(mib, 1),
        "mib_per_s": {k: spread(v) for k, v in rates.items()},
        "ratio_merge_over_cp": spread(ratios),
        "goal": ">= 0.5",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    r = report["ratio_merge_over_cp"]
    print(
        f"{len(shards)} shards, {mib:,.0f} MiB: merge {spread(rates['merge'])['median']:,.0f} "
        f"MiB/s, cp {spread(rates['cp'])['median']:,.0f} MiB/s, merge/cp {r['median']:.2f} "
        f"({r['min']:.2f}-{r['max']:.2f})"
    )


if __name__ == "__main__":
    main()
