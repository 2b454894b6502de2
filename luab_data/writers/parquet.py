"""Parquet shards of canonical records.

Layout of an output folder (one build may be split over machines with --shard i/n):
  part-<i>-of-<n>-<k>.parquet   records of shard i, rotated every `rows_per_file` rows
  rejects-<i>-of-<n>.jsonl      one JSON object per rejected record (key, reason, detail, where)
  manifest-<i>-of-<n>.json      written last: its presence marks shard i complete
Parts are written into a hidden temporary folder and moved in only once the shard is done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from luab_data.records import Reject
from luab_data.writers.atomic import write_json_atomic


def shard_tag(shard: tuple[int, int]) -> str:
    return f"{shard[0]:05d}-of-{shard[1]:05d}"


def manifest_path(out: Path, shard: tuple[int, int]) -> Path:
    return Path(out) / f"manifest-{shard_tag(shard)}.json"


class ParquetShardWriter:
    def __init__(
        self,
        out: Path,
        shard: tuple[int, int],
        schema: pa.Schema,
        rows_per_file: int = 250_000,
        compression: str = "zstd",
    ):
        self.out = Path(out)
        self.shard = shard
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.compression = compression
        self.tmp = self.out / f".tmp-{shard_tag(shard)}"
        if self.tmp.exists():  # left by an interrupted run of this shard
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.rejects_file = open(self.tmp / f"rejects-{shard_tag(shard)}.jsonl", "w")
        self.files: list[str] = []
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def _open_next(self) -> pq.ParquetWriter:
        name = f"part-{shard_tag(self.shard)}-{len(self.files):04d}.parquet"
        self.files.append(name)
        self._rows_in_file = 0
        return pq.ParquetWriter(self.tmp / name, self.schema, compression=self.compression)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None or self._rows_in_file >= self.rows_per_file:
            if self._writer is not None:
                self._writer.close()
            self._writer = self._open_next()
        self._writer.write_batch(batch.replace_schema_metadata(self.schema.metadata))
        self._rows_in_file += batch.num_rows
        self.rows += batch.num_rows

    def reject(self, rejects: list[Reject]) -> None:
        for r in rejects:
            self.rejects_file.write(json.dumps(r.as_dict()) + "\n")

    def commit(self, manifest: dict) -> Path:
        """Move the parts and rejects into place, then write the manifest (the commit mark)."""
        if self._writer is not None:
            self._writer.close()
        self.rejects_file.close()
        for name in [*self.files, self.rejects_file.name.rsplit("/", 1)[-1]]:
            os.replace(self.tmp / name, self.out / name)
        shutil.rmtree(self.tmp)
        path = manifest_path(self.out, self.shard)
        write_json_atomic(path, {**manifest, "files": self.files, "rows": self.rows})
        return path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.rejects_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
