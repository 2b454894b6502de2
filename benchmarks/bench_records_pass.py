"""The ImageNet-AB records pass, thread by thread: what bounds it, and gzip by zlib vs ISA-L.

The records pass (release tar.gz -> Arrow batches, before any image work) runs in one process
with threads: the archive is decompressed and cut into members in a producer thread, the
members are checked in the main thread, and the numba XML scanner and Arrow assembly run in a
pool of threads (all of them release the GIL in their heavy part). This bench reads a generated
no-images archive through `ImageNetAB.batches()` and samples every thread's CPU seconds from
/proc, once with the decompressor luab-data uses (ISA-L) and once with Python's zlib, alternating
in one process. The decompressor alone (the archive through each, no tar parsing) is timed too.
The producer thread is the part that cannot be split: its CPU seconds bound the pass on a
machine with as many cores as wanted.

    python benchmarks/bench_records_pass.py --n 200000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

from isal import isal_zlib

from luab_data.bench import machine_info, spread
from luab_data.sources import open_source, tar_stream

RESULTS = Path(__file__).resolve().parent / "results" / "records-pass.json"
GUNZIP = {"isal": isal_zlib, "zlib": zlib}


def thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, by native id."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended between the listing and the read
            continue
        out[int(tid)] = (int(stat[11]) + int(stat[12])) / tick
    return out


class ThreadSampler:
    """Every 0.1 s: the last CPU seconds of every thread and the role its name gives it (a
    thread that ends between two samples loses at most its last 0.1 s: ~2 % of a pool thread)."""

    def __init__(self) -> None:
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {threading.main_thread().native_id: "main (checks)"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.1)

    def _sample(self) -> None:
        for t in threading.enumerate():
            if t.native_id not in self.role and t.native_id is not None:
                self.role[t.native_id] = _role(t.name)
        self.cpu.update(thread_cpu())

    def __enter__(self) -> ThreadSampler:
        self._base = thread_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, cpu in self.cpu.items():
            role = self.role.get(tid, "other")
            if role != "sampler":
                out[role] = out.get(role, 0.0) + cpu - self._base.get(tid, 0.0)
        return out


def _role(name: str) -> str:
    if "produce" in name:
        return "producer (gunzip, tar)"
    if name.startswith("ThreadPoolExecutor"):
        return "pool (XML scan, Arrow)"
    return "sampler" if name == "sampler" else "other"


def with_gunzip(name: str) -> None:
    """Make the tar reader use `name`'s decompressor (the zlib run is this bench's baseline)."""
    module = GUNZIP[name]
    tar_stream._gunzip = lambda: module.decompressobj(16 + module.MAX_WBITS)


def records_pass(archive: Path, gunzip: str) -> dict:
    with_gunzip(gunzip)
    source = open_source(archive)
    source.class_list()  # its own small read, outside the timing
    rows, start, cpu0 = 0, time.perf_counter(), time.process_time()
    with ThreadSampler() as threads:
        for batch, _ in source.batches():
            rows += batch.num_rows
    wall = time.perf_counter() - start
    return {
        "records": rows,
        "wall_s": wall,
        "process_cpu_s": time.process_time() - cpu0,
        "threads_cpu_s": threads.by_role(),
    }


def gunzip_alone(archive: Path, gunzip: str) -> dict:
    module, out = GUNZIP[gunzip], 0
    decompressor = module.decompressobj(16 + module.MAX_WBITS)
    start = time.perf_counter()
    with open(archive, "rb") as f:
        while piece := f.read(tar_stream.READ_SIZE):
            out += len(decompressor.decompress(piece))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb_per_s": out / seconds / 1e6, "decompressed_bytes": out}


def generate(work: Path, n: int) -> Path:
    out = work / f"imagenet-ab-{n}-no-images"
    if not (out / "sample.json").exists():
        luab = str(Path(sys.executable).parent / "luab-data")
        cmd = [luab, "sample", "--out", str(out), "--size", str(n), "--no-images", "--quiet"]
        subprocess.run(cmd, check=True)
    return out / "imagenet_ab_v1_0.tar.gz"


def summarise(runs: list[dict]) -> dict:
    roles = sorted({r for run in runs for r in run["threads_cpu_s"]})
    return {
        "wall_s": spread([r["wall_s"] for r in runs]),
        "records_per_s": spread([r["records"] / r["wall_s"] for r in runs]),
        "process_cpu_s": spread([r["process_cpu_s"] for r in runs]),
        "threads_cpu_s": {k: spread([r["threads_cpu_s"].get(k, 0.0) for r in runs]) for k in roles},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="records in the generated archive")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/luab-bench-records"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    archive = generate(args.work, args.n)
    names = list(GUNZIP)
    passes: dict[str, list] = {k: [] for k in names}
    alone: dict[str, list] = {k: [] for k in names}
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            alone[name].append(gunzip_alone(archive, name))
            passes[name].append(records_pass(archive, name))
            print(f"rep {rep} {name}: {json.dumps(passes[name][-1])}", flush=True)
    report = {
        "what": "ImageNet-AB records pass (ImageNetAB.batches) of a generated no-images archive, "
        "per-thread CPU from /proc, gzip by ISA-L (used) vs zlib, interleaved in one process",
        "command": f"python benchmarks/bench_records_pass.py --n {args.n} --reps {args.reps}",
        "machine": {**machine_info(), "load_average_end": list(os.getloadavg())},
        "records": args.n,
        "archive_bytes": archive.stat().st_size,
        "records_pass": {k: summarise(v) for k, v in passes.items()},
        "gunzip_alone": {
            k: {m: spread([r[m] for r in v]) for m in ("seconds", "mb_per_s")}
            for k, v in alone.items()
        },
        "isal_over_zlib_wall": spread(
            [z["wall_s"] / i["wall_s"] for i, z in zip(passes["isal"], passes["zlib"], strict=True)]
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, s in report["records_pass"].items():
        threads = ", ".join(f"{k} {v['median']:.1f}" for k, v in s["threads_cpu_s"].items())
        print(
            f"{name}: {s['wall_s']['median']:.2f} s wall, {s['records_per_s']['median']:,.0f} "
            f"records/s, CPU s by thread: {threads}; gunzip alone "
            f"{report['gunzip_alone'][name]['mb_per_s']['median']:,.0f} MB/s"
        )
    print(f"records pass, zlib / isal wall: {report['isal_over_zlib_wall']['median']:.2f}x")


if __name__ == "__main__":
    main()
