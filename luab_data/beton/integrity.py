"""Is a file a whole, undamaged .beton? Open-time structure checks and the manifest's checksums.

FFCV's Reader trusts every number in a file: a damaged header ends in OverflowError or
IndexError, a truncated file in "negative dimensions", a damaged pointer in a read outside the
file (a crash inside a compiled loader stage). `check_beton` reads the header, field table,
metadata table and allocation table itself and checks that they agree with each other, with the
file's size and with the manifest beside it, so that every reader opens a bad file with one
clear error. It reads the tables, never the samples: cheap enough for every open.

`file_checksums` is what the build records in the manifest (SHA-256 of the whole file and of
its header and tables, CRC-32 of each sample's stored bytes), and `check_integrity` what
`luab-data verify` compares with it, naming the damaged samples.

File layout (FFCV 1.0.2, `ffcv/writer.py`, `ffcv/types.py`): header (version 2, field count,
page size, sample count, allocation table offset), one 1041-byte descriptor per field, one
metadata row per sample, page-aligned data pages, then the allocation table (sample id,
offset, size) to the end of the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ffcv.fields import FloatField, IntField, NDArrayField, RGBImageField
from ffcv.types import (
    ALLOC_TABLE_TYPE,
    CURRENT_VERSION,
    TYPE_ID_HANDLER,
    FieldDescType,
    HeaderType,
    get_handlers,
    get_metadata_type,
)

from luab_data.beton.paths import manifest_path

MAX_FIELDS = 256
MIN_PAGE, MAX_PAGE = 1 << 12, 1 << 32
CHUNK = 8 << 20  # bytes hashed per read
CRC_ROWS = 1 << 16  # allocation rows turned into Python tuples at a time


class BetonError(ValueError):
    """The file is not a readable .beton: missing parts, damaged header or tables."""


@dataclass
class Layout:
    """Where everything lies in a checked file, and its tables (read once, used by BetonFile)."""

    path: Path
    size: int
    num_samples: int
    page_size: int
    metadata_start: int
    data_start: int
    alloc_ptr: int
    handlers: dict[str, Any]
    metadata: np.ndarray
    alloc_table: np.ndarray = field(repr=False)


def check_path(path: str | Path) -> Path:
    """A path that exists and is a regular file, else FileNotFoundError / BetonError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise BetonError(f"{path} is a folder, not a .beton file")
    if not path.is_file():
        raise BetonError(f"{path} is not a regular file")
    return path


def check_beton(path: str | Path, manifest: dict | None = None) -> Layout:
    """The layout of a .beton whose header and tables are consistent; BetonError saying what
    is wrong if not. The size is checked against the manifest (`manifest`, else the one
    beside the file when there is one)."""
    path = check_path(path)
    size = path.stat().st_size
    _check_manifest_size(path, size, manifest)
    with open(path, "rb") as f:
        head = f.read(HeaderType.itemsize + MAX_FIELDS * FieldDescType.itemsize)
    header = _header(path, head, size)
    handlers = _handlers(path, head, int(header["num_fields"]))
    meta_type = get_metadata_type(list(handlers.values()))
    n = int(header["num_samples"])
    metadata_start = HeaderType.itemsize + len(handlers) * FieldDescType.itemsize
    data_start = metadata_start + n * meta_type.itemsize
    alloc_ptr = int(header["alloc_table_ptr"])
    if not data_start <= alloc_ptr <= size:
        raise BetonError(
            f"{path}: damaged header or cut short: {n:,} samples need "
            f"{data_start:,} bytes of tables, the allocation table is said to "
            f"start at {alloc_ptr:,}, the file has {size:,}"
        )
    if (size - alloc_ptr) % ALLOC_TABLE_TYPE.itemsize:
        raise BetonError(
            f"{path}: cut short or extended: the allocation table at "
            f"{alloc_ptr:,} does not end on an entry at the file's end "
            f"({size:,} bytes)"
        )
    metadata = np.fromfile(path, meta_type, count=n, offset=metadata_start)
    metadata.setflags(write=False)
    alloc = np.fromfile(path, ALLOC_TABLE_TYPE, offset=alloc_ptr)
    layout = Layout(
        path,
        size,
        n,
        int(header["page_size"]),
        metadata_start,
        data_start,
        alloc_ptr,
        handlers,
        metadata,
        alloc,
    )
    _check_allocations(layout)
    _check_pointers(layout)
    return layout


def _check_manifest_size(path: Path, size: int, manifest: dict | None) -> None:
    if manifest is None:
        beside = manifest_path(path)
        if not beside.is_file():
            return
        try:
            manifest = json.loads(beside.read_text())
        except (OSError, ValueError) as err:
            raise BetonError(f"{beside}: unreadable manifest ({err})") from None
    want = manifest.get("bytes") if isinstance(manifest, dict) else None
    if isinstance(want, int) and want != size:
        how = "cut short" if size < want else "extended"
        raise BetonError(f"{path} is {size:,} bytes, its manifest says {want:,}: {how}")


def _header(path: Path, head: bytes, size: int) -> np.void:
    if len(head) < HeaderType.itemsize + FieldDescType.itemsize:
        raise BetonError(f"{path}: {size:,} bytes, too short for a .beton header")
    header = np.frombuffer(head, HeaderType, count=1)[0]
    if header["version"] != CURRENT_VERSION:
        raise BetonError(
            f"{path}: not an FFCV .beton, or its header is damaged (format "
            f"version {header['version']}, expected {CURRENT_VERSION})"
        )
    fields_ = int(header["num_fields"])
    if not 1 <= fields_ <= MAX_FIELDS:
        raise BetonError(f"{path}: damaged header: {fields_} fields")
    if fields_ * FieldDescType.itemsize + HeaderType.itemsize > min(len(head), size):
        raise BetonError(f"{path}: cut short inside the field table ({fields_} fields)")
    page = int(header["page_size"])
    if page < MIN_PAGE or page >= MAX_PAGE or page & (page - 1):
        raise BetonError(f"{path}: damaged header: page size {page:,}")
    return header


def _handlers(path: Path, head: bytes, count: int) -> dict[str, Any]:
    descs = np.frombuffer(head, FieldDescType, count=count, offset=HeaderType.itemsize)
    bad = [int(t) for t in descs["type_id"] if TYPE_ID_HANDLER.get(int(t)) is None]
    if bad:
        raise BetonError(f"{path}: damaged field table: unknown field type {bad[0]}")
    try:
        names = [bytes(n).split(b"\0", 1)[0].decode("ascii") for n in descs["name"]]
        handlers = get_handlers(descs)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise BetonError(f"{path}: damaged field table ({err})") from None
    if len(set(names)) != len(names) or not all(names):
        raise BetonError(f"{path}: damaged field table: field names {names}")
    return dict(zip(names, handlers, strict=True))


def _allocating(handlers: dict[str, Any]) -> int | None:
    """Allocations per sample when every field is an image, array or inline scalar."""
    kinds = [type(h) for h in handlers.values()]
    if not all(k in (RGBImageField, NDArrayField, IntField, FloatField) for k in kinds):
        return None
    return sum(k in (RGBImageField, NDArrayField) for k in kinds)


def _check_allocations(layout: Layout) -> None:
    alloc, path = layout.alloc_table, layout.path
    ids, ptr, size = (alloc[k].astype(np.uint64) for k in ("sample_id", "ptr", "size"))
    if len(ids) and ids.max() >= layout.num_samples:
        raise BetonError(
            f"{path}: damaged allocation table: sample id {int(ids.max()):,} "
            f"of {layout.num_samples:,} samples"
        )
    inside = (ptr >= layout.data_start) & (ptr <= layout.alloc_ptr)
    inside &= size <= np.uint64(layout.alloc_ptr) - np.minimum(ptr, np.uint64(layout.alloc_ptr))
    if not inside.all():
        at = int(np.argmin(inside))
        raise BetonError(
            f"{path}: damaged allocation table: entry {at:,} ({int(ptr[at]):,}, "
            f"{int(size[at]):,} bytes) lies outside the data pages"
        )
    per_sample = _allocating(layout.handlers)
    if per_sample is not None:
        counts = np.bincount(ids.astype(np.int64), minlength=layout.num_samples)
        if len(counts) and (counts != per_sample).any():
            at = int(np.argmax(counts != per_sample))
            raise BetonError(
                f"{path}: damaged allocation table: sample {at:,} has "
                f"{int(counts[at])} regions, expected {per_sample}"
            )


def _check_pointers(layout: Layout) -> None:
    """Every field's pointer lies inside the data pages, with room for its value."""
    for i, (name, handler) in enumerate(layout.handlers.items()):
        column = layout.metadata[f"f{i}"]
        if isinstance(handler, RGBImageField):
            ptr, need = column["data_ptr"], 1
            if len(column) and ((column["width"] == 0) | (column["height"] == 0)).any():
                raise BetonError(f"{layout.path}: damaged metadata: an image of size 0 in {name!r}")
        elif isinstance(handler, NDArrayField):
            ptr = column
            need = int(np.prod(handler.shape)) * handler.dtype.itemsize
        else:
            continue
        ptr, last = ptr.astype(np.uint64), layout.alloc_ptr - need  # the last start that fits
        ok = (ptr >= layout.data_start) & (ptr <= max(last, 0)) & (last >= 0)
        if not ok.all():
            at = int(np.argmin(ok))
            raise BetonError(
                f"{layout.path}: damaged metadata: sample {at:,} of {name!r} "
                f"points at {int(ptr[at]):,}, outside the data pages"
            )


# ---------------------------------------------------------------- checksums


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _region_sums(layout: Layout, view: memoryview) -> dict[str, str]:
    regions = {
        "header": (0, layout.metadata_start),
        "allocation_table": (layout.alloc_ptr, layout.size),
    }
    return {k: hashlib.sha256(view[a:b]).hexdigest() for k, (a, b) in regions.items()}


def sample_crc32(layout: Layout, view: memoryview) -> np.ndarray:
    """CRC-32 of each sample's metadata row followed by its regions in file order."""
    row = layout.metadata.dtype.itemsize
    start = layout.metadata_start
    crcs = np.array(
        [
            zlib.crc32(view[start + i * row : start + (i + 1) * row])
            for i in range(layout.num_samples)
        ],
        np.uint32,
    )
    alloc = layout.alloc_table
    order = np.lexsort((alloc["ptr"], alloc["sample_id"]))
    for start in range(0, len(order), CRC_ROWS):  # a piece at a time: tuples cost ~150 B each
        for sid, ptr, size in alloc[order[start : start + CRC_ROWS]].tolist():
            crcs[sid] = zlib.crc32(view[ptr : ptr + size], int(crcs[sid]))
    return crcs


def file_checksums(path: str | Path) -> dict:
    """The manifest's `checksums`: SHA-256 of the whole file, of its header (with the field
    table) and of its allocation table; CRC-32 of every sample's stored bytes (base64 of
    little-endian uint32, in file order)."""
    layout = check_beton(path, manifest={})
    with open(layout.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            regions = _region_sums(layout, view)
            samples = sample_crc32(layout, view)
        finally:
            view.release()
    crc = base64.b64encode(samples.astype("<u4").tobytes()).decode()
    return {"sha256": _sha256_file(layout.path), "regions": regions, "samples_crc32": crc}


@dataclass
class Integrity:
    """What `check_integrity` found: `fatal` (the file cannot be read at all), file-level
    `problems`, `damaged` sample positions, and `notes`."""

    fatal: str | None = None
    problems: list[str] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_integrity(path: str | Path, manifest: dict) -> Integrity:
    """Size, then the whole file's SHA-256 against the manifest; on a difference, which part
    differs: header, allocation table, the samples (by CRC-32) or the bytes between them."""
    out = Integrity()
    try:
        path = check_path(path)
        layout = check_beton(path, manifest)
    except (BetonError, OSError) as err:
        out.fatal = str(err)
        return out
    sums = manifest.get("checksums")
    if not isinstance(sums, dict):
        out.notes.append("the manifest has no checksums (an older build): bytes not checked")
        return out
    if _sha256_file(path) == sums.get("sha256"):
        return out
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            _locate(out, layout, view, sums)
        finally:
            view.release()
    return out


def _locate(out: Integrity, layout: Layout, view: memoryview, sums: dict) -> None:
    regions = _region_sums(layout, view)
    for name, digest in regions.items():
        if digest != sums.get("regions", {}).get(name):
            out.fatal = (
                f"{layout.path}: the {name.replace('_', ' ')} is damaged "
                f"(its SHA-256 differs from the manifest's)"
            )
            return
    try:
        want = np.frombuffer(base64.b64decode(sums.get("samples_crc32", "")), "<u4")
    except ValueError:
        want = np.zeros(0, "<u4")
    if len(want) != layout.num_samples:
        out.fatal = f"{layout.path}: the manifest's sample checksums are damaged"
        return
    out.damaged = np.flatnonzero(sample_crc32(layout, view) != want).tolist()
    if not out.damaged:
        out.problems.append(
            "the file's SHA-256 differs from the manifest's, in bytes between "
            "samples (page padding)"
        )
