"""`luab-data build --workers 1` against `--workers 2` on the same sample, in one run.

Each build is the command as a user runs it (a fresh process, `--recipe imagenet-ab`, a .beton
of a generated ImageNet-sized sample). The build's summary times its phases: the records pass
(source -> Arrow spill, in this process), the writers' start (until every writer process is
writing: FFCV's imports in the forkserver and the build process), the pack (writer processes:
maps, JPEG checks and re-encoding), the manifest (checksums over the written file). The pack
rate is images / pack seconds (also given with the writers' start); the build rate images /
whole command. Repetitions alternate the order so that a
slow moment of the shared machine hits both.

    python benchmarks/bench_workers.py --n 2500 --reps 3
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

RESULTS = Path(__file__).resolve().parent / "results" / "workers.json"
PHASES = ("records", "writers_start", "pack", "manifest")


def one_build(sample: Path, out: Path, workers: int, extra: list[str]) -> dict:
    """Whole-command seconds and the phases the build's manifest records."""
    cmd = build_command(sample, out, "--workers", str(workers), *extra)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - start
    summary = json.loads(out.with_name(out.name + ".json").read_text())["summary"]
    phases = summary["phases"]
    started = phases["writers_start"] + phases["pack"]
    return {"command": total, **phases, "pack_and_start": started, "images": summary["records"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2500, help="images in the sample")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/tmp/luab-bench-merge"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.epilog = "Any other option goes to `luab-data build` (e.g. --write-mode jpg)."
    args, extra = ap.parse_known_args()
    from luab_data.bench import machine_info

    machine = machine_info()
    sample = prepare(args.data, args.n)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for rep in range(args.reps):
        for w in (1, 2) if rep % 2 == 0 else (2, 1):
            runs[w].append(one_build(sample, args.data / "workers-bench" / f"w{w}.beton", w, extra))
            print(f"rep {rep} workers {w}: {runs[w][-1]}", flush=True)
    machine["load_average_end"] = list(os.getloadavg())
    rate = {
        w: {
            "pack_img_per_s": spread([r["images"] / r["pack"] for r in rs]),
            "pack_and_start_img_per_s": spread([r["images"] / r["pack_and_start"] for r in rs]),
            "build_img_per_s": spread([r["images"] / r["command"] for r in rs]),
            "seconds": {p: spread([r[p] for r in rs]) for p in ("command", *PHASES)},
        }
        for w, rs in runs.items()
    }
    ratio = {  # rate with 2 workers / rate with 1, per repetition
        f"{kind}_2_over_1": spread(
            [r1[key] / r2[key] for r1, r2 in zip(runs[1], runs[2], strict=True)]
        )
        for kind, key in (
            ("pack", "pack"),
            ("pack_and_start", "pack_and_start"),
            ("build", "command"),
        )
    }
    report = {
        "machine": machine,
        "images": args.n,
        "recipe": "imagenet-ab",
        "build_options": extra,
        "workers": {str(w): v for w, v in rate.items()},
        **ratio,
        "goal": "pack_2_over_1 >= 1.7",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for w, v in rate.items():
        s = v["seconds"]
        print(
            f"workers {w}: pack {v['pack_img_per_s']['median']:,.0f} img/s, build "
            f"{v['build_img_per_s']['median']:,.0f} img/s; "
            + ", ".join(f"{p} {s[p]['median']:.1f} s" for p in ("command", *PHASES))
        )
    print(
        f"2 workers / 1: pack {report['pack_2_over_1']['median']:.2f}x, with the writers' "
        f"start {report['pack_and_start_2_over_1']['median']:.2f}x, "
        f"build {report['build_2_over_1']['median']:.2f}x"
    )


if __name__ == "__main__":
    main()
