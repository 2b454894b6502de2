"""Parquet shards of canonical records.

Layout of an output folder (one build may be split over machines with --shard i/n):
  part-<i>-of-<n>-<k>.parquet           records of shard i, rotated every `rows_per_file` rows
  __luab__/rejects-<i>-of-<n>.jsonl     one JSON object per rejected record (key, reason, ...)
  __luab__/manifest-<i>-of-<n>.json     written last: its presence marks shard i complete
Parts are written into a hidden temporary folder (.tmp-<i>-of-<n>) and moved in only once the
shard is done. The sidecar folder's name is one that readers of a folder skip: pyarrow and
pandas skip names starting with `_` or `.`, HF datasets those starting with `__` or `.` (not
`_luab/`); duckdb and polars read the glob `<folder>/*.parquet` (polars 2 refuses a folder
holding anything but Parquet, wherever it lies), so the folder opens as one dataset.

Each part carries, besides the record columns, `label_names` (the class name of each entry of
`labels`), so that tools which never read our schema metadata still see class names.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from luab_data.records import Reject, read_metadata
from luab_data.writers.atomic import write_json_atomic

LABEL_NAMES = pa.field("label_names", pa.list_(pa.string()), nullable=False)
# Row groups sized for scans: whichever limit comes first (a group of ~800 rows, one per
# source batch, makes every reader pay per-group overhead thousands of times).
ROW_GROUP_ROWS = 65_536
ROW_GROUP_BYTES = 128 * 2**20
SIDECARS = "__luab__"


def shard_tag(shard: tuple[int, int]) -> str:
    return f"{shard[0]:05d}-of-{shard[1]:05d}"


def manifest_path(out: Path, shard: tuple[int, int]) -> Path:
    return Path(out) / SIDECARS / f"manifest-{shard_tag(shard)}.json"


def legacy_manifest_path(out: Path, shard: tuple[int, int]) -> Path:
    """Where outputs of luab-data 0.1 kept the manifest (beside the parts, unprefixed)."""
    return Path(out) / f"manifest-{shard_tag(shard)}.json"


def rejects_name(shard: tuple[int, int]) -> str:
    """The rejects file's path relative to the output folder (as the manifest lists it)."""
    return f"{SIDECARS}/rejects-{shard_tag(shard)}.jsonl"


def output_schema(schema: pa.Schema) -> pa.Schema:
    """The parts' schema: the record schema with `label_names` after `labels`."""
    return schema.insert(schema.get_field_index("labels") + 1, LABEL_NAMES)


def label_names(labels: pa.ListArray, classes: pa.Array) -> pa.ListArray:
    """Class names of each row's `labels` (null for an index outside the class list)."""
    labels = labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels
    values = pc.list_flatten(labels)
    inside = pc.and_(pc.greater_equal(values, 0), pc.less(values, len(classes)))
    names = classes.take(pc.if_else(inside, values, pa.scalar(None, values.type)))
    offsets = pc.subtract(labels.offsets, labels.offsets[0])
    return pa.ListArray.from_arrays(offsets, names, type=LABEL_NAMES.type)


class ParquetShardWriter:
    def __init__(
        self,
        out: Path,
        shard: tuple[int, int],
        schema: pa.Schema,
        rows_per_file: int = 250_000,
        compression: str = "zstd",
        row_group_rows: int = ROW_GROUP_ROWS,
        row_group_bytes: int = ROW_GROUP_BYTES,
    ):
        self.out = Path(out)
        self.shard = shard
        self.schema = output_schema(schema)
        self.classes = pa.array(read_metadata(schema).get("classes", []), pa.string())
        self.rows_per_file = rows_per_file
        self.row_group_rows = min(row_group_rows, rows_per_file)
        self.row_group_bytes = row_group_bytes
        self.compression = compression
        self.tmp = self.out / f".tmp-{shard_tag(shard)}"
        if self.tmp.exists():  # left by an interrupted run of this shard
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.rejects_file = open(self.tmp / Path(rejects_name(shard)).name, "w")
        self.files: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0

    def _open_next(self) -> None:
        self._close()
        name = f"part-{shard_tag(self.shard)}-{len(self.files):04d}.parquet"
        self.files.append(name)
        self._rows_in_file = 0
        self._writer = pq.ParquetWriter(self.tmp / name, self.schema, compression=self.compression)

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffer a batch; full row groups go to disk as they fill."""
        if batch.num_rows == 0:
            return
        at = batch.schema.get_field_index("labels") + 1
        batch = batch.add_column(at, LABEL_NAMES, label_names(batch.column("labels"), self.classes))
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self._pending_bytes >= self.row_group_bytes:
            self._drain(everything=True)
        elif self._pending_rows >= self.row_group_rows:
            self._drain(everything=False)

    def _drain(self, everything: bool) -> None:
        """Write the buffer as row groups of `row_group_rows` (cut at file boundaries); a
        partial group stays buffered unless `everything` (end of shard, or the byte limit)."""
        table = pa.Table.from_batches(self._pending, self.schema)
        while table.num_rows:
            if self._writer is None or self._rows_in_file >= self.rows_per_file:
                self._open_next()
            room = self.rows_per_file - self._rows_in_file
            n = min(table.num_rows, self.row_group_rows, room)
            if n < min(self.row_group_rows, room) and not everything:
                break
            self._writer.write_table(table.slice(0, n), row_group_size=n)
            self._rows_in_file += n
            table = table.slice(n)
        self._pending = table.to_batches()
        self._pending_rows = table.num_rows
        self._pending_bytes = table.nbytes

    def reject(self, rejects: list[Reject]) -> None:
        for r in rejects:
            self.rejects_file.write(json.dumps(r.as_dict()) + "\n")

    def commit(self, manifest: dict) -> Path:
        """Move the parts and rejects into place, then write the manifest (the commit mark)."""
        if self._pending:
            self._drain(everything=True)
        self._close()
        for name in self.files:
            os.replace(self.tmp / name, self.out / name)
        self.keep_rejects()
        path = manifest_path(self.out, self.shard)
        write_json_atomic(path, {**manifest, "files": self.files, "rows": self.rows})
        return path

    def keep_rejects(self) -> Path:
        """Move the rejects file into place and drop the rest of the temporary folder (a build
        that keeps nothing still says why)."""
        self.rejects_file.close()
        path = self.out / rejects_name(self.shard)
        path.parent.mkdir(exist_ok=True)
        os.replace(self.tmp / path.name, path)
        self.abort()
        return path

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def abort(self) -> None:
        self._close()
        self.rejects_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
