"""Join the shards of one build (`--shard i/n`) into one .beton without re-encoding anything
(the format's side: `luab_data.writers.merge` commits the result atomically).

Each shard's data pages are copied as they are (`os.copy_file_range`: the kernel moves the
bytes) to a page-aligned place in the output; what points into them is shifted by the distance
they moved: the `data_ptr` of every metadata row and the `ptr` of every allocation. Sample ids
and the `index` field shift by the samples of the shards before. Samples keep their shard's
order, shard after shard; the manifest lists their keys in that order.

A merge refuses, naming the shard and the difference: shards of different builds (format,
fields, build options, class list, map size), overlapping keys, a missing shard of an `i/n`
set, and a shard without its manifest (an unfinished build).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ffcv.fields import FloatField, IntField
from ffcv.types import ALLOC_TABLE_TYPE, HeaderType

from luab_data.beton.fields import INDEX
from luab_data.beton.integrity import Layout, file_checksums
from luab_data.beton.manifest import read_manifest
from luab_data.beton.paths import manifest_path, rejects_path

COPY_CHUNK = 64 << 20
# Manifest entries that differ between the shards of one build (everything else must agree).
PER_SHARD = {
    "file",
    "bytes",
    "checksums",
    "counts",
    "summary",
    "rejects_file",
    "keys",
    "source",
    "images",
    "merged_from",
}


class MergeError(ValueError):
    """The shards cannot be joined into one dataset."""


def find_shards(inputs: Iterable[str | Path]) -> list[Path]:
    """`.beton` files named, found in a named folder, or matched by a glob, sorted, unique."""
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found |= set(path.glob("*.beton"))
        elif path.exists():
            found.add(path)
        elif matches := glob.glob(str(item)):
            found |= {Path(m) for m in matches if m.endswith(".beton")}
        else:
            raise MergeError(f"{item}: no such file, folder or match")
    if not found:
        raise MergeError("no .beton shards found in " + ", ".join(map(str, inputs)))
    return sorted(found)


def read_manifests(shards: Sequence[Path]) -> list[dict]:
    out = []
    for shard in shards:
        if not manifest_path(shard).is_file():
            raise MergeError(
                f"{shard}: no manifest ({manifest_path(shard).name}): an unfinished "
                "build; finish or rebuild that shard first"
            )
        out.append(read_manifest(shard))
    return out


def _same_build(manifest: dict) -> dict:
    """What every shard of one build shares: the manifest without per-shard entries."""
    out = {k: v for k, v in manifest.items() if k not in PER_SHARD}
    out["build"] = {k: v for k, v in manifest.get("build", {}).items() if k != "shard"}
    out["metadata"] = {k: v for k, v in manifest.get("metadata", {}).items() if k != "shard"}
    return out


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _differences(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        ]
    return [] if a == b else [f"{where}: {_short(a)} vs {_short(b)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_shards(shards: Sequence[Path], manifests: Sequence[dict]) -> None:
    """Refuse shards that are not the complete set of one build (see the module docstring)."""
    reference = _same_build(manifests[0])
    for shard, manifest in zip(shards[1:], manifests[1:], strict=True):
        if diff := _differences(reference, _same_build(manifest)):
            raise MergeError(
                f"{shard} is not from the same build as {shards[0]}: " + "; ".join(diff[:5])
            )
    _check_set(shards, [tuple(m["build"]["shard"]) for m in manifests])
    _check_keys(shards, manifests)


def _check_set(shards: Sequence[Path], tags: Sequence[tuple[int, int]]) -> None:
    counts = {n for _, n in tags}
    if len(counts) > 1:
        split = ", ".join(f"{s.name} is {i}/{n}" for s, (i, n) in zip(shards, tags, strict=True))
        raise MergeError(f"shards of different splits ({sorted(counts)} shards): {split}")
    n = counts.pop()
    seen: dict[int, Path] = {}
    for shard, (i, _) in zip(shards, tags, strict=True):
        if i in seen:
            raise MergeError(f"shard {i}/{n} given twice: {seen[i]} and {shard}")
        seen[i] = shard
    if missing := sorted(set(range(n)) - set(seen)):
        stem = shards[0].name.split("-")[0]
        names = ", ".join(f"{i}/{n} ({stem}-{i:05d}-of-{n:05d}.beton)" for i in missing[:10])
        raise MergeError(
            f"missing shard{'s' * (len(missing) > 1)} of the {n}-shard build: "
            f"{names}{' ...' if len(missing) > 10 else ''}"
        )


def _check_keys(shards: Sequence[Path], manifests: Sequence[dict]) -> None:
    owner: dict[str, Path] = {}
    for shard, manifest in zip(shards, manifests, strict=True):
        for key in manifest["keys"]:
            if key in owner:
                raise MergeError(f"key {key!r} is in both {owner[key]} and {shard}")
            owner[key] = shard


def in_shard_order(shards: Sequence[Path], manifests: Sequence[dict]) -> tuple[list, list]:
    order = sorted(range(len(shards)), key=lambda k: manifests[k]["build"]["shard"][0])
    return [shards[k] for k in order], [manifests[k] for k in order]


# ---------------------------------------------------------------- writing


def _align(offset: int, page: int) -> int:
    return -(-offset // page) * page


def _shifted_rows(layout: Layout, shift: int, first: int) -> np.ndarray:
    """The shard's metadata rows with pointers moved by `shift` and `index` renumbered."""
    rows = layout.metadata.copy()
    for k, (name, handler) in enumerate(layout.handlers.items()):
        column = f"f{k}"
        if "data_ptr" in (rows[column].dtype.names or ()):  # images: mode, size, pointer
            rows[column]["data_ptr"] += np.uint64(shift)
        elif not isinstance(handler, IntField | FloatField):  # arrays: the row is the pointer
            rows[column] += np.uint64(shift)
        elif name == INDEX:
            rows[column] = np.arange(first, first + len(rows))
    return rows


def _copy(src: Path, dst_fd: int, start: int, end: int, at: int) -> None:
    with open(src, "rb") as f:
        while start < end:
            n = os.copy_file_range(f.fileno(), dst_fd, min(COPY_CHUNK, end - start), start, at)
            if n <= 0:
                raise OSError(f"{src}: could not copy bytes {start:,}..{end:,}")
            start, at = start + n, at + n


def write_merged(tmp: Path, layouts: Sequence[Layout]) -> None:
    """Write the joined file: header, field table, shifted metadata rows, pages, allocations."""
    first = layouts[0]
    page, total = first.page_size, sum(lay.num_samples for lay in layouts)
    with open(first.path, "rb") as f:
        head = bytearray(f.read(first.metadata_start))
    row = first.metadata.dtype.itemsize
    at = _align(first.metadata_start + total * row, page)
    rows, allocs, done = [], [], 0
    with open(tmp, "wb") as out:
        for lay in layouts:
            start = _align(lay.data_start, page)
            shift = at - start
            rows.append(_shifted_rows(lay, shift, done))
            alloc = lay.alloc_table.copy()
            alloc["sample_id"] += np.uint64(done)
            alloc["ptr"] += np.uint64(shift)
            allocs.append(alloc)
            _copy(lay.path, out.fileno(), start, lay.alloc_ptr, at)
            at = _align(at + lay.alloc_ptr - start, page)
            done += lay.num_samples
        header = np.frombuffer(head[: HeaderType.itemsize], HeaderType).copy()
        header["num_samples"], header["alloc_table_ptr"] = total, at
        head[: HeaderType.itemsize] = header.tobytes()
        out.seek(0)
        out.write(head)
        out.write(np.concatenate(rows).tobytes())
        out.seek(at)
        out.write(np.concatenate(allocs).astype(ALLOC_TABLE_TYPE).tobytes())
        out.flush()
        os.fsync(out.fileno())


def merged_manifest(
    out: Path, tmp: Path, shards: Sequence[Path], manifests: Sequence[dict], seconds: float
) -> dict:
    first = manifests[0]
    counts: dict[str, int] = {}
    for m in manifests:
        for k, v in m.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + v
    rejects: dict[str, int] = {}
    for m in manifests:
        for k, v in m.get("summary", {}).get("rejects", {}).items():
            rejects[k] = rejects.get(k, 0) + v
    n = first["build"]["shard"][1]
    return {
        **first,
        "file": out.name,
        "bytes": tmp.stat().st_size,
        "checksums": file_checksums(tmp),
        "build": {**first["build"], "shard": [0, 1]},
        "metadata": {**first["metadata"], "shard": [0, 1]},
        "counts": counts,
        "summary": {"records": counts.get("samples", 0), "rejects": rejects, "seconds": seconds},
        "rejects_file": rejects_path(out).name,
        "merged_from": [
            {
                "file": s.name,
                "shard": [m["build"]["shard"][0], n],
                "sha256": m.get("checksums", {}).get("sha256"),
                "samples": len(m["keys"]),
            }
            for s, m in zip(shards, manifests, strict=True)
        ],
        "keys": [k for m in manifests for k in m["keys"]],
    }
