"""Faults planted in the tasks of a Ray build (`build_on_ray(..., run=...)`).

Ray workers are separate processes that import a task's function by module name, so the planted
behaviour lives in this importable module (the test's Ray puts tests/ on the workers' path)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from luab_data.beton.paths import beton_path
from luab_data.ingest import Summary
from luab_data.ray_build import BuildJob, run_shard
from luab_data.sources.sharding import parse_shard


def marker(job: BuildJob) -> Path:
    return Path(job.out).parent / "killed-once"


def _kill_when_under_way(spill: Path) -> None:
    """SIGKILL this worker once its build has started writing (the spill file exists)."""
    deadline = time.monotonic() + 60
    while not spill.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGKILL)


def die_mid_build(job: BuildJob, shard: str) -> Summary:
    """Shard 1's first attempt: its worker process is killed in the middle of the build,
    leaving an unfinished shard behind; the marker beside the output records it."""
    if shard.startswith("1/") and not marker(job).exists():
        marker(job).write_text(str(os.getpid()))
        final = beton_path(Path(job.out), parse_shard(shard))
        spill = final.with_name(final.name + ".spill")
        threading.Thread(target=_kill_when_under_way, args=(spill,), daemon=True).start()
    return run_shard(job, shard)


def fail_shard_one(job: BuildJob, shard: str) -> Summary:
    """Shard 1 fails every time, with a reason the command must pass on."""
    if shard.startswith("1/"):
        raise ValueError(f"planted: shard {shard} cannot be built")
    return run_shard(job, shard)
