"""`luab-data build --engine ray`: the N shards of one build as Ray tasks.

Each task runs exactly what `luab-data build --shard i/N --workers 1 --quiet` runs (the
function the local command calls), on one CPU of the cluster at `--address` or of a local Ray
that the command starts and stops. A task whose worker dies is retried: a shard build is atomic
and restartable (an unfinished shard has no manifest and is rebuilt over its leftovers), so the
result is the one a local build writes. A shard that fails for good fails the command with its
reason; the other shards stay complete and nothing is merged. The .beton shards are then merged
into `--out` (`--no-merge` keeps them); Parquet shards already form one dataset in their folder.

Every node must see the source, the images and the output at the same paths (a shared
filesystem) and have luab-data installed. Ray itself is imported only here, and only when used.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from luab_data.ingest import Summary

__all__ = ["BuildJob", "ShardsFailed", "build_on_ray", "ray_options", "run_shard"]

# Attempts after a task's worker process dies (killed, out of memory, node lost).
MAX_RETRIES = 3


@dataclass(frozen=True)
class BuildJob:
    """One `luab-data build` as given on the command line, less --shard: what each shard task
    runs with."""

    src: str
    out: str
    fmt: str  # "parquet" or "beton"
    kind: str | None = None
    classes_file: str | None = None
    coco_policy: str = "replay"
    images: str | None = None
    with_images: bool = False
    strict: bool = False
    rows_per_file: int = 250_000
    recipe: dict = field(default_factory=dict)
    beton: dict = field(default_factory=dict)  # the .beton options as the command got them


class ShardsFailed(RuntimeError):
    """Shards of a Ray build failed for good (after the retries of dead workers)."""


def run_shard(job: BuildJob, shard: str) -> Summary:
    """One shard, through the local command's own function, with one writer process (the task
    holds one CPU) and overwrite (a retried task rebuilds over an unfinished shard)."""
    if job.fmt == "beton":
        from luab_data.writers.beton_cli import run_beton_build

        given = {**job.beton, "with_images": job.with_images}
        return run_beton_build(
            job.src,
            job.kind,
            job.classes_file,
            job.coco_policy,
            job.images,
            job.out,
            shard,
            job.strict,
            True,
            1,
            True,
            job.recipe,
            given,
        )
    from luab_data.build import run_parquet_build

    return run_parquet_build(
        job.src,
        job.kind,
        job.classes_file,
        job.coco_policy,
        job.images,
        job.with_images,
        job.out,
        shard,
        job.strict,
        True,
        job.rows_per_file,
        1,
        True,
    )


def _task(run: Callable[[BuildJob, str], Summary], job: BuildJob, shard: str) -> Summary:
    return run(job, shard)


# ---------------------------------------------------------------- the driver


def build_on_ray(
    job: BuildJob,
    *,
    address: str | None = None,
    shards: int | None = None,
    merge: bool = True,
    overwrite: bool = False,
    quiet: bool = False,
    run: Callable[[BuildJob, str], Summary] = run_shard,
) -> Summary:
    """Build every shard of `job` as a Ray task, then merge .beton shards into `job.out`.
    `run` is what each task calls (a module-level function workers can import by name)."""
    import ray

    start = time.perf_counter()
    job = _absolute(job)
    started = _connect(ray, address)
    try:
        n = shards or int(ray.cluster_resources().get("CPU", 1))
        _refuse_complete(job, n, merge, overwrite)
        summaries = _run_tasks(ray, job, n, run, not quiet)
    finally:
        if started:
            ray.shutdown()
    summary = _total(summaries)
    where = address or "a local Ray"
    summary.notes.append(f"engine          ray: {n} shard tasks on {where}")
    summary.outputs = _finish(job, n, merge, overwrite, summary.notes)
    summary.seconds = time.perf_counter() - start
    return summary


def _absolute(job: BuildJob) -> BuildJob:
    """Paths as every node sees them (tasks run in other working folders); each must exist
    here, on the driver: on a cluster, a shared filesystem mounted alike on every node."""
    paths = {
        k: os.path.abspath(getattr(job, k))
        for k in ("src", "out", "images", "classes_file")
        if getattr(job, k)
    }
    for name in ("src", "images", "classes_file"):
        if name in paths and not os.path.exists(paths[name]):
            raise FileNotFoundError(
                f"{paths[name]} does not exist on this machine: every node "
                "must see the inputs at the same path"
            )
    folder = Path(paths["out"]) if job.fmt == "parquet" else Path(paths["out"]).parent
    folder.mkdir(parents=True, exist_ok=True)
    return replace(job, **paths)


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray on this machine's cores; an already
    connected Ray (a caller's) is used as it is. Returns whether this call connected."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        ray.init(num_cpus=cores or os.cpu_count(), include_dashboard=False, **quiet)
    return True


def _shard_manifests(job: BuildJob, n: int) -> list[Path]:
    if job.fmt == "beton":
        from luab_data.beton.paths import beton_path, manifest_path

        return [manifest_path(beton_path(Path(job.out), (i, n))) for i in range(n)]
    from luab_data.writers.parquet import legacy_manifest_path, manifest_path

    out = Path(job.out)
    return [
        p for i in range(n) for p in (manifest_path(out, (i, n)), legacy_manifest_path(out, (i, n)))
    ]


def _refuse_complete(job: BuildJob, n: int, merge: bool, overwrite: bool) -> None:
    """Like a local build, a finished shard (or merged file) is not rebuilt without
    --overwrite; checked before any task starts, so that tasks may overwrite when retried."""
    done = [p for p in _shard_manifests(job, n) if p.exists()]
    if job.fmt == "beton" and merge and n > 1:
        from luab_data.beton.paths import manifest_path

        done += [manifest_path(Path(job.out))] if manifest_path(Path(job.out)).exists() else []
    if done and not overwrite:
        raise FileExistsError(
            f"{done[0]} exists ({len(done)} complete outputs of this build): "
            "already built (use --overwrite to redo)"
        )


def _run_tasks(ray: Any, job: BuildJob, n: int, run: Callable, progress: bool) -> list[Summary]:
    """Submit the n shards, wait for all of them (one bar), raise with every failed shard's
    reason."""
    from tqdm import tqdm

    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(_task)
    pending = {task.remote(run, job, f"{i}/{n}"): i for i in range(n)}
    done: dict[int, Summary] = {}
    failed: dict[int, str] = {}
    with tqdm(
        total=n, desc="shards", unit="shard", disable=not progress, dynamic_ncols=True
    ) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    done[i] = ray.get(ref)
                except Exception as err:  # the task's own error, or its worker died for good
                    failed[i] = _reason(err)
                bar.update(1)
    if failed:
        lines = [f"  shard {i}/{n}: {failed[i]}" for i in sorted(failed)]
        raise ShardsFailed(
            f"{len(failed)} of {n} shards failed (nothing merged; the other "
            "shards are complete):\n" + "\n".join(lines)
        )
    return [done[i] for i in range(n)]


def _reason(err: Exception) -> str:
    """The exception a task raised (its message), not Ray's wrapper and traceback."""
    cause = getattr(err, "cause", None) or err
    text = str(cause) if getattr(err, "cause", None) else str(err).strip().splitlines()[0]
    return f"{type(cause).__name__}: {text}"


def _total(summaries: list[Summary]) -> Summary:
    total = Summary(rejects=Counter())
    for s in summaries:
        total.records += s.records
        total.rejects.update(s.rejects)
    total.notes = list(summaries[0].notes[:1]) if summaries and summaries[0].notes else []
    return total


def _finish(job: BuildJob, n: int, merge: bool, overwrite: bool, notes: list[str]) -> list[str]:
    """Merge the .beton shards into `job.out` (and drop them), or say where the output is."""
    out = Path(job.out)
    if job.fmt == "parquet":
        notes.append(f"dataset         the {n} shards form one dataset in {out} (no merge needed)")
        return [str(out)]
    from luab_data.beton.paths import beton_path, manifest_path, rejects_path

    parts = [beton_path(out, (i, n)) for i in range(n)]
    if not merge or n == 1:
        return [str(p) for p in parts]
    from luab_data.writers.merge import merge_betons

    merge_betons(out, parts, overwrite=overwrite)
    for part in parts:  # the merged file holds them all; manifest first, nothing half-kept
        for path in (manifest_path(part), part, rejects_path(part)):
            path.unlink(missing_ok=True)
    notes.append(f"merged          {n} shards into {out}")
    return [str(out), str(rejects_path(out)), str(manifest_path(out))]


# ---------------------------------------------------------------- command-line options

_OPTIONS = [
    click.option(
        "--engine",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="ray: run the shards as Ray tasks (one CPU each), then merge .beton "
        "shards. Inputs and output must be on a filesystem every node shares.",
    ),
    click.option(
        "--address",
        default=None,
        help="--engine ray: the Ray cluster to join (default: start a local Ray on "
        "this machine's cores for this command).",
    ),
    click.option(
        "--shards",
        type=click.IntRange(1),
        default=None,
        help="--engine ray: number of shards  [default: the cluster's CPUs]",
    ),
    click.option(
        "--no-merge",
        is_flag=True,
        help="--engine ray, .beton: keep the shards instead of merging them.",
    ),
]


def ray_options(f):
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def check_engine(ctx: click.Context, engine: str) -> None:
    """The Ray options need --engine ray; --shard and --workers are the engine's own then."""
    typed = click.core.ParameterSource.COMMANDLINE
    given = {n for n in ctx.params if ctx.get_parameter_source(n) == typed}
    if engine != "ray" and (bad := sorted(given & {"address", "shards", "no_merge"})):
        names = ", ".join("--" + n.replace("_", "-") for n in bad)
        raise click.UsageError(f"{names} only apply to --engine ray")
    if engine == "ray" and (bad := sorted(given & {"shard", "workers"})):
        raise click.UsageError(
            f"--{bad[0]} does not apply to --engine ray: it runs --shards "
            "tasks, one writer process each"
        )
