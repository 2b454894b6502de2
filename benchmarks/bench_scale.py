"""ImageNet scale without the images: 1,281,167 ImageNet-AB records through every stage.

The JPEGs of ImageNet cannot be had here, so the byproducts are generated at full scale (the
sample generator without images, in the release format) and every stage that does not need
real pixels runs on them, each as the command a user runs (a fresh process, its peak RSS):

1. `luab-data sample --no-images`: the release-format tar.gz of 1,281,167 XML files;
2. `luab-data build --format parquet`: records/s and peak RSS (goal: bounded, < 2 GB);
3. `luab-data build` to a .beton where every record points at one tiny JPEG (a folder of
   symlinks), 8x8 maps: build rate, peak RSS, file and manifest size;
4. opening that .beton: the coupled FFCV loader's constructor and its first batch, and the
   trainer's read of the manifest's class names, each in a fresh process.

    python benchmarks/bench_scale.py --n 1281167 --work /tmp/luab-scale
    python benchmarks/bench_scale.py --only-beton --baseline /tmp/luab-base   # vs an older commit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
BIN = Path(sys.executable).parent
LUAB = str(BIN / "luab-data")
ROOT = Path(__file__).resolve().parents[1]


# A small launcher runs each command: the peak RSS that wait4 reports for a child starts at its
# parent's size at fork (Linux carries it across exec), so this process forks none itself.
LAUNCH = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(usage.ru_maxrss, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str]) -> dict:
    """Run `cmd` to completion: its wall seconds, the peak RSS (MB) of the largest process of
    its tree that was waited for (the command and the writer processes it reaps), and the
    tree's memory sampled every 0.2 s from /proc by kind (anonymous: the heap; file: mapped
    files such as the spill and the written .beton, page cache that the kernel can drop;
    shmem: shared memory such as FFCV's metadata table), summed over the tree at each sample,
    peak over time."""
    import psutil

    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peaks = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    by_role: dict[str, int] = {}  # peak anonymous memory of one process, by its role
    while proc.poll() is None:
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            break
        sums = dict.fromkeys(peaks, 0)
        for p in tree:
            mem = _status_kb(p.pid)
            for kind, kb in mem.items():
                sums[kind] += kb
            role = _role(p)
            by_role[role] = max(by_role.get(role, 0), mem.get("RssAnon", 0))
        peaks = {k: max(v, sums[k]) for k, v in peaks.items()}
        time.sleep(0.2)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(int(out) / 1024, 1),
        "tree_peak_mb": {k: round(v / 1024, 1) for k, v in peaks.items()},
        "process_peak_anon_mb": {k: round(v / 1024, 1) for k, v in by_role.items()},
    }


def _role(proc) -> str:
    """build / forkserver / writer / resource_tracker / other, from the command line."""
    try:
        line = " ".join(proc.cmdline())
        parent = " ".join(proc.parent().cmdline()) if proc.parent() else ""
    except Exception:  # gone meanwhile
        return "other"
    if "forkserver" in line:
        return "forkserver"
    if "resource_tracker" in line:
        return "resource_tracker"
    if "forkserver" in parent:
        return "writer"
    return "command" if "luab-data" in line else "other"


def _status_kb(pid: int) -> dict[str, int]:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # gone meanwhile
        return {}
    fields = (line.split() for line in lines if line.startswith(("RssAnon", "RssFile", "RssShmem")))
    return {f[0].rstrip(":"): int(f[1]) for f in fields}


def generate(work: Path, n: int) -> tuple[Path, dict]:
    src = work / "src"
    if (src / "sample.json").exists():
        return src, json.loads((work / "generate.json").read_text())
    cmd = [LUAB, "sample", "--out", str(src), "--size", str(n), "--no-images", "--quiet"]
    run = measured(cmd)
    run["records_per_s"] = round(n / run["seconds"])
    (work / "generate.json").write_text(json.dumps(run))
    return src, run


def parquet_build(src: Path, work: Path, n: int) -> dict:
    out = work / "parquet"
    cmd = [LUAB, "build", "--src", str(src / "imagenet_ab_v1_0.tar.gz"), "--out", str(out)]
    run = measured([*cmd, "--format", "parquet", "--overwrite", "--quiet"])
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return run | {"records_per_s": round(n / run["seconds"]), "output_mb": round(size / 2**20)}


def symlink_images(work: Path, n: int) -> Path:
    """A folder where every record's `train/<wnid>/<stem>.JPEG` is a link to one 48x48 JPEG."""
    import cv2
    import numpy as np
    import pyarrow.dataset as ds

    images = work / "images"
    done = images / ".complete"
    if done.exists():
        return images
    one = work / "one.JPEG"
    pixels = np.full((48, 48, 3), 128, np.uint8)
    cv2.imwrite(str(one), pixels)
    paths = ds.dataset(work / "parquet", format="parquet").to_table(columns=["image"])
    seen_dirs: set[str] = set()
    for rel in paths.column("image").to_pylist():
        folder = rel.rpartition("/")[0]
        if folder not in seen_dirs:
            (images / folder).mkdir(parents=True, exist_ok=True)
            seen_dirs.add(folder)
        link = images / rel
        if not link.is_symlink():
            link.symlink_to(one)
    done.touch()
    return images


def beton_build(src: Path, images: Path, work: Path, n: int) -> dict:
    out = work / "scale.beton"
    cmd = [
        LUAB,
        "build",
        "--src",
        str(src / "imagenet_ab_v1_0.tar.gz"),
        "--images",
        str(images),
        "--out",
        str(out),
        "--map-size",
        "8",
        "--write-mode",
        "jpg",
        "--size-tolerance",
        "1000",  # every record's declared size differs from the one shared JPEG
        "--overwrite",
        "--quiet",
    ]
    run = measured(cmd)
    summary = json.loads(Path(f"{out}.json").read_text())["summary"]
    return run | {
        "records_per_s": round(n / run["seconds"]),
        "phases_s": {k: round(v, 1) for k, v in summary["phases"].items()},
        "file_mb": round(out.stat().st_size / 2**20),
        "manifest_mb": round(Path(f"{out}.json").stat().st_size / 2**20, 1),
    }


def baseline_build(checkout: Path, src: Path, images: Path, args: argparse.Namespace) -> dict:
    """The .beton build with the package of `checkout` first on the path (its commit noted)."""
    rev = ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(rev, capture_output=True, text=True, check=True).stdout.strip()
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(checkout.resolve())
    try:
        # -P: as the console script, which does not put the working folder first on the path
        where = [sys.executable, "-P", "-c", "import luab_data; print(luab_data.__file__)"]
        found = subprocess.run(where, capture_output=True, text=True, check=True).stdout
        if not found.startswith(str(checkout.resolve())):  # an installed package comes first
            raise SystemExit(f"--baseline: luab_data is imported from {found.strip()}")
        return {"commit": commit, **beton_build(src, images, args.work, args.n)}
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before


OPEN_LOADER = """
import os, sys, time
t0 = time.perf_counter()
from luab_data.loaders.contract import make_loader
t1 = time.perf_counter()
loader = make_loader("ffcv", sys.argv[1], batch_size=256, image_size=32, map_size=8, workers=2)
t2 = time.perf_counter()
next(iter(loader))
t3 = time.perf_counter()
print(round(t1 - t0, 2), round(t2 - t1, 2), round(t3 - t2, 2), flush=True)
os._exit(0)  # FFCV's loader threads abort the interpreter's shutdown
"""

CLASS_NAMES = """
import time, sys
sys.path.insert(0, sys.argv[2])
t0 = time.perf_counter()
from train.data import json_member
names = (json_member(sys.argv[1], "metadata") or {}).get("classes")
print(round(time.perf_counter() - t0, 2), len(names or []))
"""


def open_times(work: Path) -> dict:
    beton = work / "scale.beton"
    py = str(BIN / "python")
    out = subprocess.run([py, "-c", OPEN_LOADER, str(beton)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    imports, construct, first = (float(x) for x in out.stdout.split()[-3:])
    names = subprocess.run(
        [py, "-c", CLASS_NAMES, f"{beton}.json", str(ROOT)], capture_output=True, text=True
    )
    if names.returncode:
        raise SystemExit(names.stderr[-2000:])
    secs, count = names.stdout.split()[-2:]
    return {
        "import_s": imports,
        "loader_constructor_s": construct,
        "first_batch_s": first,
        "class_names_from_manifest_s": float(secs),
        "class_names": int(count),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_281_167, help="training records")
    ap.add_argument("--work", type=Path, default=Path("/tmp/luab-scale"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only-beton", action="store_true", help="the .beton steps alone (3, 4)")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier commit (git worktree add DIR REV): its .beton build runs "
        "too, just before this one's, for a side-by-side comparison (PYTHONPATH=DIR)",
    )
    args = ap.parse_args()
    from luab_data.bench import machine_info

    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine_info(), "records": args.n}
    src, report["generate"] = generate(args.work, args.n)
    print("generate", report["generate"], flush=True)
    if not args.only_beton:
        report["parquet_build"] = parquet_build(src, args.work, args.n)
        print("parquet", report["parquet_build"], flush=True)
    start = time.perf_counter()
    images = symlink_images(args.work, args.n)
    report["symlinks_s"] = round(time.perf_counter() - start, 1)
    if args.baseline:
        report["beton_build_baseline"] = baseline_build(args.baseline, src, images, args)
        print("beton, baseline", report["beton_build_baseline"], flush=True)
    report["beton_build"] = beton_build(src, images, args.work, args.n)
    print("beton", report["beton_build"], flush=True)
    report["open"] = open_times(args.work)
    print("open", report["open"], flush=True)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
