"""Readers of the official releases and of our own outputs, all yielding canonical records.

A source has `kind`, `metadata()` (class list, source kind, options), `progress` and
`batches(shard)`, an iterator of (pyarrow.RecordBatch of RECORD_SCHEMA, list of Reject).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from luab_data.records import COCO_AB, IMAGENET_AB, Reject, record_schema
from luab_data.sources.coco_ab import CocoABSource
from luab_data.sources.detect import KINDS, detect_kind
from luab_data.sources.errors import SourceError
from luab_data.sources.imagenet_ab import ImageNetABSource
from luab_data.sources.interchange import RECORDS, InterchangeSource
from luab_data.sources.parquet import PARQUET, ParquetSource

Source = ImageNetABSource | CocoABSource | InterchangeSource | ParquetSource


def read_class_file(path: Path) -> list[str]:
    """A class list: one name per line, or a JSON list."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        import json

        return [str(x) for x in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def open_source(
    path: str | Path,
    kind: str | None = None,
    *,
    images: str | Path | None = None,
    with_jpeg: bool = False,
    classes: list[str] | None = None,
    coco_policy: str = "replay",
    workers: int | None = None,
) -> Source:
    """Open a source of any kind; `kind` forces what detection would find."""
    path = Path(path)
    kind = kind or detect_kind(path)
    images = Path(images) if images is not None else None
    if kind == IMAGENET_AB:
        extra = {"workers": workers} if workers else {}
        return ImageNetABSource(path, classes, images, with_jpeg, **extra)
    if kind == COCO_AB:
        return CocoABSource(path, images, with_jpeg, coco_policy)
    if kind in (RECORDS, PARQUET):
        if with_jpeg or images is not None:
            raise SourceError(f"--images applies to the official releases, not to {kind} input")
        return InterchangeSource(path) if kind == RECORDS else ParquetSource(path)
    raise SourceError(f"unknown source kind {kind!r}: use one of {', '.join(KINDS)}")


def read_records(path: str | Path, kind: str | None = None, **options) -> tuple[pa.Table, list]:
    """Read a whole (small) source into one table: for tests, notebooks and the sample."""
    source = open_source(path, kind, **options)
    batches, rejects = [], []
    for batch, bad in source.batches():
        batches.append(batch)
        rejects.extend(bad)
    schema = batches[0].schema if batches else record_schema()
    return pa.Table.from_batches(batches, schema), rejects


__all__ = [
    "KINDS",
    "Reject",
    "Source",
    "SourceError",
    "detect_kind",
    "open_source",
    "read_class_file",
    "read_records",
]
