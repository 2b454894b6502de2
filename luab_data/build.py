"""The Parquet build: a source's records into Parquet shards, rejects beside them, committed
atomically. Reading, counting and the summary are `luab_data.ingest`'s (shared with the .beton
build in `luab_data.writers.beton`). A build that keeps no record fails (`NothingKept`): it
writes its rejects file and no manifest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from luab_data import __version__
from luab_data.ingest import NothingKept, Summary, iterate, resolve_images
from luab_data.records import Reject, record_schema
from luab_data.records.schema import FORMAT_VERSION
from luab_data.sources import Source, detect_kind, open_source, read_class_file
from luab_data.sources.sharding import parse_shard
from luab_data.writers.parquet import (
    ParquetShardWriter,
    legacy_manifest_path,
    manifest_path,
    rejects_name,
)


def build_parquet(
    source: Source,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    *,
    strict: bool = False,
    overwrite: bool = False,
    rows_per_file: int = 250_000,
    show_progress: bool = True,
    notes: Sequence[str] = (),
) -> Summary:
    """Write a source's records as Parquet shard `shard` of folder `out`. A build that keeps
    no record (all rejected, or an empty source) raises NothingKept, leaving its rejects file
    and no manifest; one shard of several may be empty."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for done in (manifest_path(out, shard), legacy_manifest_path(out, shard)):
        if done.exists():
            if not overwrite:
                raise FileExistsError(
                    f"{done} exists: shard already built (use --overwrite to redo)"
                )
            _remove_shard(out, done)
    metadata = {
        **source.metadata(),
        "format_version": FORMAT_VERSION,
        "luab_data": __version__,
        "shard": list(shard),
    }
    with_jpeg = bool(getattr(source, "with_jpeg", False))
    writer = ParquetShardWriter(out, shard, record_schema(with_jpeg, metadata), rows_per_file)
    summary, first = Summary(notes=list(notes)), {}

    def on_rejects(rejects: list[Reject]) -> None:
        writer.reject(rejects)
        for r in rejects:
            first.setdefault(r.reason, r)

    try:
        for batch in iterate(source, shard, strict, show_progress, on_rejects, summary):
            writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    if summary.records == 0 and (summary.rejects or shard[1] == 1):  # not just a small shard
        rejects_file = writer.keep_rejects()
        raise NothingKept(
            summary, list(first.values()), rejects_file, shard, getattr(source, "images", None)
        )
    manifest = {
        "metadata": metadata,
        "source": _describe(source),
        "summary": summary.as_dict(),
        "rejects_file": rejects_name(shard),
    }
    manifest_file = writer.commit(manifest)
    summary.outputs = [str(out / f) for f in [*writer.files, manifest["rejects_file"]]]
    summary.outputs.append(str(manifest_file))
    return summary


def _remove_shard(out: Path, manifest: Path) -> None:
    """Drop a finished shard (manifest first, so the folder never looks complete meanwhile)."""
    listed = json.loads(manifest.read_text())
    manifest.unlink()
    for name in [*listed.get("files", []), listed.get("rejects_file", "")]:
        if name and (out / name).exists():
            (out / name).unlink()


def _describe(source: Source) -> dict:
    path = Path(source.path)
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "kind": source.kind,
        "size": stat.st_size,
        "mtime": int(stat.st_mtime),
    }


def run_parquet_build(
    src,
    kind,
    classes_file,
    coco_policy,
    images,
    with_images,
    out,
    shard,
    strict,
    overwrite,
    rows_per_file,
    workers,
    quiet,
) -> Summary:
    """The Parquet part of `luab-data build`: open the source and write shard `shard` ('i/n')
    of it into the folder `out` (the local command and each task of `--engine ray` call it)."""
    shard_ = parse_shard(shard)
    notes = []
    if images:
        images, note = resolve_images(images, kind or detect_kind(Path(src)))
        notes.append(note)
    classes = read_class_file(classes_file) if classes_file else None
    source = open_source(
        src,
        kind,
        classes=classes,
        coco_policy=coco_policy,
        images=images,
        with_jpeg=with_images,
        workers=workers,
    )
    return build_parquet(
        source,
        Path(out),
        shard_,
        strict=strict,
        overwrite=overwrite,
        rows_per_file=rows_per_file,
        show_progress=not quiet,
        notes=notes,
    )
