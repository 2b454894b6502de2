"""The Parquet part of `luab-data build`: open the source and write one shard of the folder
(the local command and each task of `--engine ray` call this same function)."""

from __future__ import annotations

from pathlib import Path

from luab_data.build import build_parquet
from luab_data.ingest import Summary, resolve_images
from luab_data.sources import detect_kind, open_source, read_class_file
from luab_data.sources.sharding import parse_shard

__all__ = ["run_parquet_build"]


def run_parquet_build(src, kind, classes_file, coco_policy, images, with_images, out, shard,
                      strict, overwrite, rows_per_file, workers, quiet) -> Summary:  # fmt: skip
    """Build Parquet shard `shard` ('i/n') of `src` into the folder `out`."""
    shard_ = parse_shard(shard)
    notes = []
    if images:
        images, note = resolve_images(images, kind or detect_kind(Path(src)))
        notes.append(note)
    classes = read_class_file(classes_file) if classes_file else None
    source = open_source(src, kind, classes=classes, coco_policy=coco_policy, images=images,
                         with_jpeg=with_images, workers=workers)  # fmt: skip
    return build_parquet(source, Path(out), shard_, strict=strict, overwrite=overwrite,
                         rows_per_file=rows_per_file, show_progress=not quiet,
                         notes=notes)  # fmt: skip
