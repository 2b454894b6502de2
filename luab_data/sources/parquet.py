"""Our own Parquet output as a source: for inspect, export and re-building in another format.

Reads the `*.parquet` parts at the top of an output folder (its sidecars, in __luab__/ or beside
the parts in older outputs, are not read) or one .parquet file. The derived
`label_names` column is dropped: records come back in the canonical schema."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from luab_data.records import Reject, read_metadata
from luab_data.sources import validation as v
from luab_data.sources.errors import SourceError
from luab_data.sources.progress import Progress
from luab_data.sources.sharding import in_shard

PARQUET = "parquet"


def parquet_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{path}: no .parquet files (did the build finish?)")
    return files


@dataclass
class ParquetSource:
    path: Path
    kind: str = PARQUET

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.files = parquet_files(self.path)
        self.progress = Progress(len(self.files), unit="files")

    def metadata(self) -> dict:
        return read_metadata(pq.read_schema(self.files[0]))

    def batches(self, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[pa.RecordBatch, list]]:
        for file in self.files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=4096):
                if shard[1] > 1:
                    mask = [in_shard(k, shard) for k in batch.column("key").to_pylist()]
                    batch = batch.filter(pa.array(mask))
                yield _safe_images(_records(batch), file.name)
            self.progress.done += 1


def _records(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The canonical columns: `label_names` is derived from `labels` and the class list."""
    at = batch.schema.get_field_index("label_names")
    return batch if at < 0 else batch.drop_columns(["label_names"])


def _safe_images(batch: pa.RecordBatch, name: str) -> tuple[pa.RecordBatch, list[Reject]]:
    """Rows whose image path could leave --images (an edited file) become unsafe-path rejects."""
    bad = pc.match_substring_regex(batch.column("image"), v.UNSAFE_RELATIVE)
    if not pc.any(bad).as_py():
        return batch, []
    rows = batch.filter(bad).select(["key", "image"]).to_pylist()
    rejects = [
        Reject(r["key"], v.UNSAFE_PATH, f"image = {r['image']!r} could leave --images", name)
        for r in rows
    ]
    return batch.filter(pc.invert(bad)), rejects
