"""Drive a source into a packed output: progress, rejects, summary, atomic commit.

A build that keeps no record fails (`NothingKept`): it writes its rejects file and no
manifest, and says what was rejected, the first place looked at and what to try.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from luab_data import __version__
from luab_data.records import Reject, record_schema
from luab_data.records.schema import FORMAT_VERSION
from luab_data.sources import Source
from luab_data.writers.parquet import (
    ParquetShardWriter,
    legacy_manifest_path,
    manifest_path,
    rejects_name,
)


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
    notes: list[str] = field(default_factory=list)  # e.g. the image layout found

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
        out += self.notes
        out += [f"wrote           {p}" for p in self.outputs]
        return out

    def as_dict(self) -> dict:
        return {"records": self.records, "rejects": dict(self.rejects), "seconds": self.seconds}


IMAGE_FOLDERS = {"imagenet-ab": "train", "coco-ab": "train2014"}  # first part of `image` paths


class NothingKept(ValueError):
    """Every record of the shard was rejected (or there were none): nothing is built."""

    def __init__(self, summary: Summary, rejects: Sequence[Reject], rejects_file: Path,
                 shard: tuple[int, int], images: Path | None) -> None:  # fmt: skip
        total = sum(summary.rejects.values())
        lines = [f"no record kept in shard {shard[0]}/{shard[1]}: {total:,} rejected"]
        lines += [f"  {reason:<16}{n:,}" for reason, n in summary.rejects.most_common()]
        top = summary.rejects.most_common(1)[0][0] if total else None
        first = next((r for r in rejects if r.reason == top), None)
        if first is not None:
            lines.append(f"first {top}: {first.key} ({first.where}): {first.detail}")
        lines.append(f"hint: {_hint(top, images)}")
        if total:
            lines.append(f"rejects written to {rejects_file}")
        super().__init__("\n".join(lines))
        self.summary = summary


def _hint(reason: str | None, images: Path | None) -> str:
    if reason is None:
        return "the source holds no records for this shard"
    if reason == "missing-image":
        return (f"--images {images} must be the folder holding train/ (ImageNet) or "
                "train2014/ (COCO), or that folder itself")  # fmt: skip
    if reason == "bad-image":
        return ("the images do not decode, declare more than --max-pixels, or disagree "
                "with the records' sizes (--size-tolerance): each reject's detail says which")
    return "docs/RECORDS.md says what each reject reason means"


def resolve_images(images: str | Path, kind: str | None) -> tuple[Path, str]:
    """The folder the records' image paths (`train/<wnid>/<stem>.JPEG`, `train2014/...`) are
    joined to, and a summary line saying which layout `images` has: the folder holding train/
    or train/ itself (the convention of ffcv-imagenet and torchvision's ImageFolder)."""
    images = Path(os.path.abspath(images))  # normalised, symbolic links kept
    names = [IMAGE_FOLDERS[kind]] if kind in IMAGE_FOLDERS else list(IMAGE_FOLDERS.values())
    for name in names:
        if (images / name).is_dir():
            return images, f"images          {images} (the folder holding {name}/)"
    if images.name in names:
        return images.parent, f"images          {images} (the {images.name}/ folder itself)"
    wanted = " or ".join(f"{n}/" for n in names)
    return images, f"images          {images} (neither {wanted} nor the folder holding it)"


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
        rejects_file = _keep_rejects(writer)
        raise NothingKept(summary, list(first.values()), rejects_file, shard,
                          getattr(source, "images", None))  # fmt: skip
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


def _keep_rejects(writer: ParquetShardWriter) -> Path:
    """Abort the shard but move its rejects file into place: it says why nothing was kept."""
    writer.rejects_file.close()
    name = Path(writer.rejects_file.name).name
    os.replace(writer.tmp / name, writer.out / name)
    writer.abort()
    return writer.out / name


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
