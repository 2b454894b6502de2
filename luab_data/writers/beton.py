"""The .beton build: a source's shard packed into one FFCV file, its rejects and manifest.

The format (fields, samples, paths, manifest) is `luab_data.beton`'s; this module runs the
build. Two passes keep memory bounded whatever the source's size: the records are streamed
once into a memory-mapped Arrow spill file (FFCV must know the sample count before it writes),
then FFCV's writer processes read blocks of it (`beton.samples.PackSamples`), rasterise the
maps of a block at a time and read and re-encode the JPEGs. The file, its rejects and its
manifest are committed in that order; the manifest's presence marks the shard complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from luab_data import __version__
from luab_data.beton.ffcv_workers import prestart, write_indexed
from luab_data.beton.fields import BetonOptions, label_width, make_fields
from luab_data.beton.manifest import make_manifest
from luab_data.beton.paths import beton_path, manifest_path, rejects_path
from luab_data.beton.samples import BAD_IMAGE, FAILED_IMAGE, FAILED_OTHER, PackSamples
from luab_data.ingest import NothingKept, StrictError, Summary, iterate
from luab_data.records import Reject
from luab_data.records.schema import FORMAT_VERSION
from luab_data.sources import Source
from luab_data.writers.atomic import write_json_atomic

_SPILL_COLUMNS = (
    "key",
    "image",
    "label",
    "labels",
    "width",
    "height",
    "point_x",
    "point_y",
    "click_x",
    "click_y",
    "click_t",
    "click_class",
    "click_ann",
    "trace_x",
    "trace_y",
    "trace_t",
    "trace_ann",
    "ann_selected",
)


# ---------------------------------------------------------------- pass 1: records -> spill


@dataclass
class Spill:
    path: Path
    rows: int = 0
    keys: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def spill_records(
    source: Source,
    path: Path,
    shard: tuple[int, int],
    *,
    images: Path | None,
    strict: bool,
    show_progress: bool,
    summary: Summary,
) -> Spill:
    """Stream the shard's records into an Arrow file; records whose image is missing (sources
    that do not check images themselves) are rejected here."""
    spill = Spill(path)
    check = images is not None and getattr(source, "images", None) is None
    writer = None
    try:
        for batch in iterate(source, shard, strict, show_progress, spill.rejects.extend, summary):
            if check:
                batch = _drop_missing(batch, images, spill, strict, summary)
            columns = [c for c in (*_SPILL_COLUMNS, "jpeg") if c in batch.schema.names]
            batch = batch.select(columns)
            if writer is None:
                writer = pa.ipc.new_file(str(path), batch.schema.remove_metadata())
            writer.write_batch(batch.replace_schema_metadata(None))
            spill.rows += batch.num_rows
            spill.keys += batch.column("key").to_pylist()
    finally:
        if writer is not None:
            writer.close()
    return spill


def _drop_missing(
    batch: pa.RecordBatch, images: Path, spill: Spill, strict: bool, summary: Summary
) -> pa.RecordBatch:
    paths = batch.column("image").to_pylist()
    ok = [(images / p).is_file() for p in paths]
    if all(ok):
        return batch
    keys = batch.column("key").to_pylist()
    bad = [
        Reject(k, "missing-image", f"{images / p} is missing", str(images / p))
        for k, p, good in zip(keys, paths, ok, strict=True)
        if not good
    ]
    if strict:
        raise StrictError(bad[0])
    spill.rejects += bad
    summary.records -= len(bad)
    summary.rejects.update(r.reason for r in bad)
    return batch.filter(pa.array(ok))


# ---------------------------------------------------------------- pass 2: spill -> .beton


def write_samples(
    dataset: PackSamples, path: Path, keep: np.ndarray, workers: int, show_progress: bool
) -> float:
    """Write the kept samples; returns when the last writer process began (time.monotonic)."""
    from tqdm import tqdm

    bar = tqdm(
        total=len(keep), desc="pack", unit="img", disable=not show_progress, dynamic_ncols=True
    )
    with bar:
        return write_indexed(
            str(path),
            dataset.fields,
            dataset,
            keep,
            workers=workers,
            chunk_size=dataset.options.chunk_size,
            page_size=dataset.options.page_size,
            progress=bar,
        )


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def pack(
    spill: Spill,
    tmp: Path,
    options: BetonOptions,
    n_labels: int,
    images: Path | None,
    workers: int,
    strict: bool,
    show_progress: bool,
) -> tuple[np.ndarray, float]:
    """Write the .beton from the spill; returns the kept record indices (possibly none) and
    the seconds spent before the writer processes were writing (FFCV's imports, set-up).
    Records whose image is refused are rejected (or stop the build when strict) and the file
    rewritten without them."""
    keep, starting, began = np.arange(spill.rows), 0.0, time.monotonic()
    fields_ = make_fields(options, n_labels)
    while True:
        dataset = PackSamples(spill.path, spill.rows, fields_, options, images, n_labels, keep)
        starting += write_samples(dataset, tmp, keep, workers, show_progress) - began
        flags = np.frombuffer(dataset.failures, np.int8)
        if (flags == FAILED_OTHER).any():
            dataset.sample(int(np.argmax(flags == FAILED_OTHER)))  # raises it here, with context
            raise RuntimeError("a writer process failed on a sample that packs in this process")
        bad = np.flatnonzero(flags == FAILED_IMAGE)
        if not len(bad):
            return keep, starting
        rejects = [dataset.image_problem(int(i)) for i in bad]
        if strict:
            raise StrictError(rejects[0])
        spill.rejects += rejects
        keep = np.setdiff1d(keep, bad)
        if not len(keep):
            return keep, starting
        began = time.monotonic()  # a rewrite's start: its writers, not the rejecting above


# ---------------------------------------------------------------- the whole build


def build_beton(
    source: Source,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    *,
    options: BetonOptions = BetonOptions(),
    images: Path | None = None,
    strict: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    show_progress: bool = True,
    notes: Sequence[str] = (),
) -> Summary:
    """Pack shard `shard` of a source into `out` (a .beton; shards get `-<i>-of-<n>`).

    JPEGs come from the records' `jpeg` column if they have one, else from `images` (default:
    the source's own `--images` folder) joined with each record's `image` path. `notes` go
    into the summary (e.g. the image layout found). A shard where no record is kept raises
    NothingKept, after writing its rejects file.
    """
    final = beton_path(out, shard)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_previous(final, overwrite)
    images = Path(images) if images is not None else getattr(source, "images", None)
    tmp, spill_file = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".spill")
    metadata = {
        **source.metadata(),
        "format_version": FORMAT_VERSION,
        "luab_data": __version__,
        "shard": list(shard),
    }
    n_labels = label_width(metadata)
    summary, start = Summary(notes=list(notes)), time.perf_counter()
    try:
        prestart()  # the writer processes' imports overlap the records pass
        spill = spill_records(
            source,
            spill_file,
            shard,
            images=images,
            strict=strict,
            show_progress=show_progress,
            summary=summary,
        )
        summary.phases["records"] = time.perf_counter() - start
        if (
            spill.rows
            and images is None
            and "jpeg" not in pa.ipc.open_file(str(spill_file)).schema.names
        ):
            raise ValueError("the records carry no JPEG bytes: give the image folder (--images)")
        keep = np.arange(0)
        if spill.rows:
            keep, starting = pack(
                spill,
                tmp,
                options,
                n_labels,
                images,
                workers or default_workers(),
                strict,
                show_progress,
            )
            packing = time.perf_counter() - start - summary.phases["records"]
            summary.phases["writers_start"] = starting
            summary.phases["pack"] = packing - starting
        summary.records = len(keep)
        if n_bad := spill.rows - len(keep):
            summary.rejects[BAD_IMAGE] += n_bad
        summary.seconds = time.perf_counter() - start
        if not len(keep):
            _write_rejects(final, spill)
            raise NothingKept(summary, spill.rejects, rejects_path(final), shard, images)
        keys = [spill.keys[i] for i in keep]
        manifest = make_manifest(final, tmp, keys, source, metadata, options, images, {})
        summary.seconds = time.perf_counter() - start
        summary.phases["manifest"] = summary.seconds - sum(summary.phases.values())
        manifest["summary"] = summary.as_dict()
        _commit(final, tmp, spill, manifest)
    finally:
        for path in (tmp, spill_file):
            path.unlink(missing_ok=True)
    summary.outputs = [str(final), str(rejects_path(final)), str(manifest_path(final))]
    return summary


def _clear_previous(final: Path, overwrite: bool) -> None:
    """Drop the manifest of a build being redone: the old file then no longer looks complete
    (it is replaced by a rename only once the new one is)."""
    done = manifest_path(final)
    if done.exists() and not overwrite:
        raise FileExistsError(f"{done} exists: shard already built (use --overwrite to redo)")
    done.unlink(missing_ok=True)


def _write_rejects(final: Path, spill: Spill) -> None:
    rejects = rejects_path(final)
    with open(rejects.with_name(rejects.name + ".tmp"), "w") as f:
        f.writelines(json.dumps(r.as_dict()) + "\n" for r in spill.rejects)
    os.replace(rejects.with_name(rejects.name + ".tmp"), rejects)


def _commit(final: Path, tmp: Path, spill: Spill, manifest: dict) -> None:
    _write_rejects(final, spill)
    os.replace(tmp, final)
    write_json_atomic(manifest_path(final), manifest)
