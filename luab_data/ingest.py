"""Reading a source for any command that consumes it (build, export, inspect, verify).

`iterate` yields a source's batches with a progress bar, counts its rejects into a `Summary`
and, with --strict, stops at the first (`StrictError`). A build that keeps no record fails
with `NothingKept`: it says what was rejected, the first place looked at and what to try.
`resolve_images` finds which layout an `--images` folder has. Both builds (Parquet and .beton)
use these, so they live below both.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from luab_data.records import Reject
from luab_data.sources import Source


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
    phases: dict[str, float] = field(default_factory=dict)  # seconds per build phase, in order

    @property
    def rate(self) -> float:
        return (self.records + sum(self.rejects.values())) / max(self.seconds, 1e-9)

    def lines(self) -> list[str]:
        out = [
            f"records kept    {self.records:,}",
            f"records rejected {sum(self.rejects.values()):,}"
            + "".join(f"\n  {reason:<16}{n:,}" for reason, n in sorted(self.rejects.items())),
            f"time            {self.seconds:.1f} s ({self.rate:,.0f} records/s)"
            + (f": {self._phase_text()}" if self.phases else ""),
        ]
        out += self.notes
        out += [f"wrote           {p}" for p in self.outputs]
        return out

    def _phase_text(self) -> str:
        phases = self.phases.items()
        return ", ".join(f"{name.replace('_', ' ')} {secs:.1f} s" for name, secs in phases)

    def as_dict(self) -> dict:
        out = {"records": self.records, "rejects": dict(self.rejects), "seconds": self.seconds}
        return out | ({"phases": dict(self.phases)} if self.phases else {})


IMAGE_FOLDERS = {"imagenet-ab": "train", "coco-ab": "train2014"}  # first part of `image` paths


class NothingKept(ValueError):
    """Every record of the shard was rejected (or there were none): nothing is built."""

    def __init__(
        self,
        summary: Summary,
        rejects: Sequence[Reject],
        rejects_file: Path,
        shard: tuple[int, int],
        images: Path | None,
    ) -> None:
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
        return (
            f"--images {images} must be the folder holding train/ (ImageNet) or "
            "train2014/ (COCO), or that folder itself"
        )
    if reason == "bad-image":
        return (
            "the images do not decode, declare more than --max-pixels, or disagree "
            "with the records' sizes (--size-tolerance): each reject's detail says which"
        )
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
    summary.notes += getattr(source, "notes", list)()  # what the read skipped, counted
