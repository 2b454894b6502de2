"""Drive a source into a packed output: progress, rejects, summary, atomic commit."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from luab_data import __version__
from luab_data.records import Reject, record_schema
from luab_data.records.schema import FORMAT_VERSION
from luab_data.sources import Source
from luab_data.writers.parquet import ParquetShardWriter, manifest_path


class StrictError(RuntimeError):
    """--strict: the first rejected record stops the build."""

    def __init__(self, reject: Reject):
        super().__init__(f"record {reject.key} ({reject.where}): {reject.reason}: {reject.detail}")
        self.reject = reject


@dataclass
class Summary:
    records: int = 0
    rejects: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.records + sum(self.rejects.values())) / max(self.seconds, 1e-9)

    def lines(self) -> list[str]:
        out = [
            f"records kept    {self.records:,}",
            f"records rejected {sum(self.rejects.values()):,}"
            + "".join(f"\n  {reason:<16}{n:,}" for reason, n in sorted(self.rejects.items())),
            f"time            {self.seconds:.1f} s ({self.rate:,.0f} records/s)",
        ]
        out += [f"wrote           {p}" for p in self.outputs]
        return out

    def as_dict(self) -> dict:
        return {"records": self.records, "rejects": dict(self.rejects), "seconds": self.seconds}


def iterate(
    source: Source,
    shard: tuple[int, int] = (0, 1),
    strict: bool = False,
    show_progress: bool = True,
    on_rejects: Callable[[list[Reject]], None] | None = None,
    summary: Summary | None = None,
) -> Iterator[pa.RecordBatch]:
    """Batches of a source with a progress bar, rejects counted (and stopped at if strict)."""
    summary = summary if summary is not None else Summary()
    start = time.perf_counter()
    bar = tqdm(
        total=source.progress.total or None,
        unit=source.progress.unit,
        unit_scale=source.progress.unit == "B",
        disable=not show_progress,
        desc=f"read {source.kind}",
        dynamic_ncols=True,
    )
    with bar:
        for batch, rejects in source.batches(shard):
            if rejects and strict:
                raise StrictError(rejects[0])
            if rejects and on_rejects is not None:
                on_rejects(rejects)
            summary.rejects.update(r.reason for r in rejects)
            summary.records += batch.num_rows
            bar.update(source.progress.done - bar.n)
            bar.set_postfix(records=summary.records, rejects=sum(summary.rejects.values()))
            yield batch
    summary.seconds = time.perf_counter() - start


def build_parquet(
    source: Source,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    *,
    strict: bool = False,
    overwrite: bool = False,
    rows_per_file: int = 250_000,
    show_progress: bool = True,
) -> Summary:
    """Write a source's records as Parquet shard `shard` of folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = manifest_path(out, shard)
    if done.exists():
        if not overwrite:
            raise FileExistsError(f"{done} exists: shard already built (use --overwrite to redo)")
        _remove_shard(out, done)
    metadata = {
        **source.metadata(),
        "format_version": FORMAT_VERSION,
        "luab_data": __version__,
        "shard": list(shard),
    }
    with_jpeg = bool(getattr(source, "with_jpeg", False))
    writer = ParquetShardWriter(out, shard, record_schema(with_jpeg, metadata), rows_per_file)
    summary = Summary()
    try:
        for batch in iterate(source, shard, strict, show_progress, writer.reject, summary):
            writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    manifest = {
        "metadata": metadata,
        "source": _describe(source),
        "summary": summary.as_dict(),
        "rejects_file": writer.rejects_file.name.rsplit("/", 1)[-1],
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
    return {"path": str(path.resolve()), "kind": source.kind, "size": stat.st_size,
            "mtime": int(stat.st_mtime)}  # fmt: skip
