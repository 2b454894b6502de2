"""The manifest of a .beton (`X.beton.json`): what the file holds and how it was built.

Written last by the build (its presence marks the shard complete); read by `verify`, `show`,
the loaders' open-time size check and the trainer. Keys: format and version, file name and
size, checksums, fields, build options, records' metadata, source, images, counts, summary,
rejects file, and the record key of every sample in file order (docs/BETON.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from luab_data.beton.fields import (
    BETON_FORMAT,
    IMAGE,
    JPEG_MODE,
    POINT,
    TRACE,
    BetonOptions,
    describe_fields,
    label_width,
    make_fields,
)
from luab_data.beton.paths import manifest_path, rejects_path

COUNT_ROWS = 1 << 16  # samples whose points and traces are read at a time for the counts

if TYPE_CHECKING:
    from luab_data.sources import Source


def read_manifest(beton: Path) -> dict:
    path = manifest_path(beton)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {beton} is not a complete build")
    return json.loads(path.read_text())


def make_manifest(
    final: Path,
    written: Path,
    keys: Sequence[str],
    source: Source,
    metadata: dict,
    options: BetonOptions,
    images: Path | None,
    summary: dict,
) -> dict:
    """The manifest of `written` (the file as packed, before it is renamed to `final`):
    its checksums and counts are read back from the file itself."""
    # FFCV (through BetonFile) takes seconds to import: not at CLI start
    from luab_data.beton.file import BetonFile
    from luab_data.beton.integrity import file_checksums

    fields_ = make_fields(options, label_width(metadata))
    counts = _counts(BetonFile(written), options)  # its tables freed before the checksums
    return {
        "format": "luab-beton",
        "beton_format": BETON_FORMAT,
        "file": final.name,
        "bytes": written.stat().st_size,
        "checksums": file_checksums(written),
        "fields": describe_fields(fields_, options, metadata.get("classes", [])),
        "build": {**options.as_dict(), "shard": metadata["shard"]},
        "metadata": metadata,
        "source": describe_source(source),
        "images": str(Path(images).resolve()) if images is not None else None,
        "counts": counts,
        "summary": summary,
        "rejects_file": rejects_path(final).name,
        "keys": list(keys),
    }


def _counts(beton: Any, options: BetonOptions) -> dict:
    modes = beton.metadata(IMAGE)["mode"]
    return {
        "samples": len(beton),
        "jpeg": int((modes == JPEG_MODE).sum()),
        "raw": int((modes != JPEG_MODE).sum()),
        **_byproduct_counts(beton, options),
    }


def _byproduct_counts(beton: Any, options: BetonOptions) -> dict:
    if not options.byproducts:
        return {}
    with_point = with_trace = 0
    for start in range(0, len(beton), COUNT_ROWS):  # a piece at a time: traces are 256 B each
        rows = np.arange(start, min(start + COUNT_ROWS, len(beton)))
        points = beton.arrays(POINT, rows).reshape(len(rows), -1, 2)
        with_point += int((points[..., 0] >= 0).any(axis=1).sum())
        with_trace += int((beton.arrays(TRACE, rows)[:, 0, 0] >= 0).sum())
    return {"with_point": with_point, "with_trace": with_trace}


def describe_source(source: Source) -> dict:
    """Enough to tell whether a source changed since the build: size, mtime, the SHA-256 of
    its first MiB (files), or the count, total size and latest mtime of its files (folders)."""
    path = Path(source.path)
    out: dict[str, Any] = {"path": str(path.resolve()), "kind": source.kind}
    if path.is_file():
        stat = path.stat()
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(1 << 20)).hexdigest()
        return {**out, "size": stat.st_size, "mtime": int(stat.st_mtime), "sha256_first_mib": head}
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return {
        **out,
        "files": len(stats),
        "size": sum(s.st_size for s in stats),
        "mtime": int(max((s.st_mtime for s in stats), default=0)),
    }
