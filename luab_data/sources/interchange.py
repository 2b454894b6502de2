"""The interchange form of canonical records: JSON lines or a JSON list, one object per record.

The first line (JSONL) or element (JSON list) is a header carrying the format version and the
metadata (class list, source kind); every other one is a record with the columns of
RECORD_SCHEMA (the JPEG bytes are not carried). Records read back are validated like a release.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa

from luab_data.records import RECORD_SCHEMA, Reject, RejectError
from luab_data.records.schema import FORMAT_VERSION
from luab_data.sources import validation as v
from luab_data.sources.errors import SourceError
from luab_data.sources.json_stream import BrokenElement, JsonListReader
from luab_data.sources.progress import Progress
from luab_data.sources.sharding import in_shard

HEADER_KEY = "luab_header"
RECORDS = "records"
BATCH = 2048
_GROUPS = {
    "click_x": ("click_y", "click_t", "click_class", "click_ann"),
    "trace_x": ("trace_y", "trace_t", "trace_ann"),
    "ann_worker": (
        "ann_task",
        "ann_selected",
        "ann_duration_ms",
        "ann_submit_s",
        "ann_page",
        "ann_hover_count",
    ),
    "box_x0": ("box_y0", "box_x1", "box_y1", "box_class"),
}


def header(metadata: dict) -> dict:
    return {HEADER_KEY: {"format_version": FORMAT_VERSION, "metadata": metadata}}


# Least sensible value of the integer columns (else their Arrow type's range applies).
_MINIMUM = {
    "width": 0,
    "height": 0,
    "label": -1,
    "labels": 0,
    "click_class": 0,
    "click_ann": 0,
    "trace_ann": 0,
    "ann_duration_ms": 0,
    "ann_submit_s": 0,
    "ann_page": 0,
    "ann_hover_count": 0,
    "box_class": -1,
}
_INTEGER_COLUMNS = [
    f.name
    for f in RECORD_SCHEMA
    if pa.types.is_integer(f.type.value_type if pa.types.is_list(f.type) else f.type)
    and f.name not in ("n_clicks", "n_trace")  # recomputed from the lists
]


def _check_integers(row: dict) -> None:
    """Every integer column within value_range, or the row is a bad-field reject."""
    for name in _INTEGER_COLUMNS:
        low, high = v.value_range(name, _MINIMUM.get(name))
        values = row[name] if isinstance(row[name], list) else [row[name]]
        for x in values:
            if x is None:
                continue
            if not isinstance(x, int) or isinstance(x, bool):
                raise RejectError(v.BAD_FIELD, f"{name} = {x!r} is not an integer")
            if not low <= x <= high:
                raise RejectError(v.BAD_FIELD, v.range_detail(name, x, name, _MINIMUM.get(name)))


def check_row(row: dict) -> None:
    """Validate one interchange record like the release readers validate theirs."""
    missing = [f.name for f in RECORD_SCHEMA if not f.nullable and f.name not in row]
    if missing:
        raise RejectError(v.BAD_FIELD, f"missing columns {missing}")
    if not isinstance(row["key"], str) or not row["key"]:
        raise RejectError(v.BAD_FIELD, f"key = {row['key']!r} is not a non-empty string")
    _check_integers(row)
    if not isinstance(row["image"], str) or re.search(v.UNSAFE_RELATIVE, row["image"]):
        raise RejectError(v.UNSAFE_PATH, f"image = {row['image']!r} could leave --images")
    if not row["width"] or not row["height"]:
        raise RejectError(v.ZERO_SIZE, f"size {row['width']}x{row['height']}")
    for head, rest in _GROUPS.items():
        n = len(row[head])
        if any(len(row[c]) != n for c in rest):
            raise RejectError(v.BAD_FIELD, f"columns {head}, {', '.join(rest)} differ in length")
    for name in (
        "click_x",
        "click_y",
        "trace_x",
        "trace_y",
        "point_x",
        "point_y",
        "box_x0",
        "box_y0",
        "box_x1",
        "box_y1",
    ):
        values = row[name] if isinstance(row[name], list) else [row[name]]
        if any(
            x is not None and not (isinstance(x, int | float) and v.coord_ok(x)) for x in values
        ):
            raise RejectError(v.BAD_COORDINATES, f"{name} has a non-finite or absurd value")
    for times, anns in (("trace_t", "trace_ann"), ("click_t", "click_ann")):
        t, a = row[times], row[anns]
        if any(t[i] < t[i - 1] and a[i] == a[i - 1] for i in range(1, len(t))):
            raise RejectError(v.BAD_TIMES, f"{times} goes back in time within one annotation")
    row["n_clicks"], row["n_trace"] = len(row["click_x"]), len(row["trace_x"])


@dataclass
class InterchangeSource:
    """Reader of records written by `luab-data export` (.jsonl or .json)."""

    path: Path
    kind: str = RECORDS

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.progress = Progress(self.path.stat().st_size)
        self._meta: dict | None = None

    def _elements(self, f: IO[bytes]) -> Iterator[tuple[int, object]]:
        if self.path.suffix == ".jsonl" or _first_char(self.path) == "{":
            for index, line in enumerate(f):
                self.progress.done = f.tell()
                line = line.removeprefix(_BOM) if index == 0 else line
                if line.strip():
                    try:
                        yield index, json.loads(line)
                    except json.JSONDecodeError as err:
                        yield index, BrokenElement(index, f"line {index + 1}: {err.msg}")
        else:
            yield from JsonListReader(f, str(self.path), (HEADER_KEY, "key"))

    def metadata(self) -> dict:
        if self._meta is None:
            with open(self.path, "rb") as f:
                first = next(iter(self._elements(f)), (0, None))[1]
            if not isinstance(first, dict) or HEADER_KEY not in first:
                raise SourceError(f"{self.path}: no {HEADER_KEY!r} header: not written by export")
            self._meta = first[HEADER_KEY]["metadata"]
        return self._meta

    def batches(self, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[pa.RecordBatch, list]]:
        self.metadata()
        seen: set[str] = set()
        rows: list[tuple[dict, str]] = []
        rejects: list[Reject] = []
        with open(self.path, "rb") as f:
            for index, element in self._elements(f):
                if isinstance(element, dict) and HEADER_KEY in element:
                    continue
                where = f"{self.path.name}[{index}]"
                item = _one(element, where, seen, shard)
                if isinstance(item, Reject):
                    rejects.append(item)
                elif item is not None:
                    rows.append((item, where))
                if len(rows) >= BATCH:
                    yield _to_batch(rows, rejects)
                    rows, rejects = [], []
        self.progress.done = self.progress.total
        if rows or rejects:
            yield _to_batch(rows, rejects)


def _to_batch(rows: list[tuple[dict, str]], rejects: list[Reject]) -> tuple:
    """The batch of the rows; a row Arrow cannot hold (a wrong type the checks did not foresee)
    is found row by row and rejected, never the whole batch lost."""
    try:
        return pa.RecordBatch.from_pylist([r for r, _ in rows], RECORD_SCHEMA), rejects
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        good = []
        for row, where in rows:
            try:
                pa.RecordBatch.from_pylist([row], RECORD_SCHEMA)
                good.append(row)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
                rejects.append(Reject(row["key"], v.BAD_FIELD, f"not storable: {err}", where))
        return pa.RecordBatch.from_pylist(good, RECORD_SCHEMA), rejects


def _one(element: object, where: str, seen: set, shard) -> dict | Reject | None:
    if isinstance(element, BrokenElement):
        # its key is unknown: shard 0 reports it, so that it is reported exactly once
        bad = Reject(f"?{where}", v.MALFORMED_JSON, element.message, where)
        return bad if shard[0] == 0 else None
    key = str(element.get("key")) if isinstance(element, dict) else f"?{where}"
    if not in_shard(key, shard):
        return None
    if key in seen:  # the first occurrence of a key wins, whatever its fate
        return Reject(key, v.DUPLICATE_KEY, "the same key occurs twice", where)
    seen.add(key)
    if not isinstance(element, dict):
        return Reject(key, v.BAD_FIELD, "record is not a JSON object", where)
    try:
        check_row(element)
    except (RejectError, TypeError) as err:
        reason = err.reason if isinstance(err, RejectError) else v.BAD_FIELD
        return Reject(key, reason, str(err), where)
    return element


_BOM = b"\xef\xbb\xbf"


def _first_char(path: Path) -> str:
    with open(path, "rb") as f:
        return f.read(4096).removeprefix(_BOM).lstrip()[:1].decode("ascii", "replace")


def _json_value(x: object) -> object:
    return None if isinstance(x, float) and math.isnan(x) else x


def write_interchange(
    batches: Iterable[pa.RecordBatch], metadata: dict, out: IO[str], as_list: bool = False
) -> int:
    """Write records as JSON lines (or one JSON list); returns the number written."""
    names = [f.name for f in RECORD_SCHEMA]
    out.write(("[\n" if as_list else "") + json.dumps(header(metadata)))
    count = 0
    for batch in batches:
        for row in batch.select(names).to_pylist():
            row = {k: _json_value(x) for k, x in row.items()}
            out.write((",\n" if as_list else "\n") + json.dumps(row, separators=(",", ":")))
            count += 1
    out.write("\n]\n" if as_list else "\n")
    return count
