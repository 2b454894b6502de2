"""COCO-AB through the numba JSON scanner: kept only to measure it beside the ijson reader.

Class icons are replayed (add, move, remove) to the positions they had when the page was left;
the official loader's "last add wins, ignore move/remove" is available as policy="last-add".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from luab_data.records import COCO_AB, Reject, RejectError, list_array, record_schema
from luab_data.sources import json_scan
from luab_data.sources import validation as v
from luab_data.sources.coco_categories import COCO_80_NAMES, NAME_TO_INDEX
from luab_data.sources.errors import SourceError
from luab_data.sources.pipeline import threaded
from luab_data.sources.progress import Progress
from luab_data.sources.sharding import in_shard

POLICIES = ("replay", "last-add")
READ_SIZE = 8 << 20
MISSING = json_scan.MISSING
_ID, _PAGE, _W, _H, _SPENT = range(5)  # columns of Scan.el_int (json_scan.INT_FIELDS)


def image_path(image_id: int) -> str:
    return f"train2014/COCO_train2014_{image_id:012d}.jpg"


_ICON = {name.encode(): k for name, k in NAME_TO_INDEX.items()}
_KINDS = {b"add": "add", b"move": "move", b"remove": "remove"}


def replay_icons(actions: list[tuple], policy: str) -> dict[int, tuple[float, float, float]]:
    """Final icon per class from (kind, name, time, x, y) actions, in the order last placed.

    kind and name are the raw bytes of the JSON strings."""
    icons: dict[int, tuple[float, float, float]] = {}
    previous = 0.0
    for i, (raw_kind, raw_name, t, x, y) in enumerate(actions):
        if t != t:  # NaN: no timeAt
            raise RejectError(v.BAD_FIELD, f"actionHistories[{i}] has no timeAt")
        if not 0 <= t <= v.PAGE_MS_MAX:
            raise RejectError(v.BAD_TIMES, f"actionHistories[{i}].timeAt = {t} ms is absurd")
        if t < previous:
            raise RejectError(v.BAD_TIMES, f"actionHistories[{i}] goes back in time ({t} ms)")
        previous = t
        cls = _ICON.get(raw_name)
        if cls is None:
            name = raw_name.decode("utf-8", "replace")
            cls = NAME_TO_INDEX.get(name.strip().lower())
            if cls is None:
                detail = f"icon {name!r} is not one of the 80 COCO classes"
                raise RejectError(v.UNKNOWN_CLASS, detail)
        kind = _KINDS.get(raw_kind)
        if kind is None:
            detail = f"actionHistories[{i}].actionType is {raw_kind.decode('utf-8', 'replace')!r}"
            raise RejectError(v.BAD_FIELD, detail)
        if kind == "remove" or (kind == "move" and policy == "last-add"):
            if policy == "replay":
                icons.pop(cls, None)
            continue
        if not (v.coord_ok(x) and v.coord_ok(y)):
            raise RejectError(v.BAD_COORDINATES, f"actionHistories[{i}].pointTo = ({x}, {y})")
        icons.pop(cls, None)  # re-inserting keeps the dict in the order icons were last placed
        icons[cls] = (x, y, t)
    return icons


@dataclass
class CocoABNumbaSource:
    """Reader of the official COCO-AB JSON list."""

    path: Path
    images: Path | None = None  # root holding train2014/, checked if given
    with_jpeg: bool = False
    policy: str = "replay"
    kind: str = COCO_AB

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.policy not in POLICIES:
            raise SourceError(f"unknown COCO icon policy {self.policy!r}: use one of {POLICIES}")
        if self.with_jpeg and self.images is None:
            raise SourceError("JPEG bytes were asked for but no --images folder was given")
        self.progress = Progress(self.path.stat().st_size)
        self._list_rejects: list[Reject] = []

    def metadata(self) -> dict:
        classes = list(COCO_80_NAMES)
        return {"source_kind": self.kind, "classes": classes, "coco_policy": self.policy}

    def batches(self, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[pa.RecordBatch, list]]:
        seen: set[str] = set()
        count = 0
        self._list_rejects = []  # about the list itself, not one element
        for buf, scan in self._scans():
            batch, rejects = self._assemble(buf, scan, count, seen, shard)
            count += len(scan.el_start)
            yield batch, rejects
        if self._list_rejects and shard[0] == 0:  # reported once, by shard 0
            yield pa.RecordBatch.from_pylist([], record_schema(self.with_jpeg)), self._list_rejects
        self.progress.done = self.progress.total

    def _scans(self) -> Iterator[tuple[bytes, json_scan.Scan]]:
        return threaded(self._scan_file())  # scanning (no GIL) overlaps assembling

    def _scan_file(self) -> Iterator[tuple[bytes, json_scan.Scan]]:
        """(buffer, scan of the complete elements in it), reading on until the list ends."""
        with open(self.path, "rb") as f:
            buf, base = _open_list(f, self.path)
            comma, elements = json_scan.NO_ELEMENT_YET, 0
            while True:
                data = f.read(READ_SIZE)
                buf += data
                self.progress.done = f.tell()
                scan = json_scan.scan_list(np.frombuffer(buf, np.uint8), 0, True, comma, not data)
                where = f"{self.path}: at byte {base + scan.next_pos}, after element {elements}"
                if scan.status == json_scan.LIST_BAD:
                    raise SourceError(f"{where}: not a JSON list of objects, or cut short")
                if len(scan.el_start):
                    yield buf, scan
                    elements += len(scan.el_start)
                if scan.status in (json_scan.LIST_END, json_scan.LIST_TRAILING_COMMA):
                    ref = f"{self.path.name}[{elements}]"
                    if scan.status == json_scan.LIST_TRAILING_COMMA:
                        detail = f"a ',' before the closing ']' at byte {base + scan.next_pos - 1}"
                        self._list_rejects.append(Reject(f"?{ref}", v.MALFORMED_JSON, detail,
                                                         ref))  # fmt: skip
                    self._after_list(f, buf[scan.next_pos :], base + scan.next_pos, ref)
                    return
                if not data:
                    raise SourceError(f"{where}: the JSON list is truncated (no closing ']')")
                base += scan.next_pos
                buf, comma = buf[scan.next_pos :], scan.expect_comma

    def _assemble(self, buf: bytes, scan, first: int, seen: set, shard) -> tuple:
        """Validate the scanned elements, replay icons, build the Arrow batch of good ones."""
        n = len(scan.el_start)
        tr_lo = np.concatenate([[0], scan.el_tr_end[:-1]]).astype(np.int64)
        act_lo = np.concatenate([[0], scan.el_act_end[:-1]]).astype(np.int64)
        trace_err = _trace_errors(scan, tr_lo)
        actions = _actions(buf, scan)
        keep = np.zeros(n, bool)
        rejects, icons = [], []
        for k in range(n):
            ids = scan.el_int[k, _ID]
            key = str(ids) if ids != MISSING else f"?{self.path.name}[{first + k}]"
            if not in_shard(key, shard) and not (ids == MISSING and shard[0] == 0):
                continue  # an element without key is reported by shard 0 alone
            where = f"{self.path.name}[{first + k}]"
            try:
                if key in seen:  # the first occurrence of a key wins, whatever its fate
                    raise RejectError(v.DUPLICATE_KEY, "the same image_id occurs twice")
                seen.add(key)
                self._check(buf, scan, k, trace_err[k])
                lo, hi = act_lo[k], scan.el_act_end[k]
                placed = replay_icons(actions[lo:hi], self.policy) if hi > lo else {}
                self._check_image(int(ids))
            except RejectError as err:
                rejects.append(Reject(key, err.reason, err.detail, where))
                continue
            keep[k] = True
            icons.append(placed)
        return _columns(buf, scan, keep, icons, tr_lo, self._jpegs(scan, keep)), rejects

    def _after_list(self, f, rest: bytes, at: int, ref: str) -> None:
        """Only whitespace may follow the list: anything else (a second list appended, say)
        would be dropped unseen, so it is reported."""
        while True:
            text = rest.lstrip(_JSON_SPACE)
            if text:
                at += len(rest) - len(text)
                detail = f"content after the list's closing ']' at byte {at}: {text[:40]!r}"
                self._list_rejects.append(Reject(f"?{ref}", v.MALFORMED_JSON, detail, ref))
                return
            at += len(rest)
            if not (rest := f.read(READ_SIZE)):
                return

    def _check(self, buf: bytes, scan, k: int, trace_err: RejectError | None) -> None:
        ints = scan.el_int[k]
        if (scan.el_err[k] == json_scan.OK and trace_err is None and ints[_ID] != MISSING
                and min(ints[_W], ints[_H]) > 0):  # fmt: skip
            return  # the common case, checked at once (MISSING is negative)
        if scan.el_err[k] != json_scan.OK:
            raise RejectError(*_element_error(buf, scan, k))
        if ints[_ID] == MISSING:
            raise RejectError(v.BAD_FIELD, "image_id is missing (it is the record's key)")
        if ints[_W] == MISSING or ints[_H] == MISSING:
            raise RejectError(v.BAD_FIELD, "originalImageWidth or originalImageHeight is missing")
        if ints[_W] <= 0 or ints[_H] <= 0:
            raise RejectError(v.ZERO_SIZE, f"original size {ints[_W]}x{ints[_H]}: never loaded")
        if trace_err is not None:
            raise trace_err

    def _check_image(self, image_id: int) -> None:
        if self.images is not None:
            path = v.image_file(self.images, image_path(image_id))
            if not path.is_file():
                raise RejectError(v.MISSING_IMAGE, f"{path} is missing")

    def _jpegs(self, scan, keep: np.ndarray) -> list[bytes] | None:
        if not self.with_jpeg:
            return None
        ids = scan.el_int[keep, _ID].tolist()
        return [v.image_file(self.images, image_path(i)).read_bytes() for i in ids]


_JSON_SPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"
_KEY_BEFORE = re.compile(rb'"([^"\\]{1,64})"\s*:\s*$')
_NUMBER = re.compile(rb"[-+0-9.eE]+")


def _element_error(buf: bytes, scan, k: int) -> tuple[str, str]:
    """(reason, detail) of an element the scanner flagged, naming the key and its value."""
    at = int(scan.el_errpos[k])
    what = scan.el_what[k]
    key = _KEY_BEFORE.search(buf[max(0, at - 80) : at])
    field = key[1].decode("utf-8", "replace") if key else ""
    if what == json_scan.W_RANGE:
        number = _NUMBER.match(buf, at)
        value = number[0].decode() if number else "?"
        column, minimum = json_scan.INT_RANGES[field]
        return v.BAD_FIELD, v.range_detail(field, value, column, minimum)
    reason = v.MALFORMED_JSON if scan.el_err[k] == json_scan.SYNTAX else v.BAD_FIELD
    text = buf[at : at + 60].decode("utf-8", "replace")
    return reason, f"{field + ': ' if field else ''}{json_scan.WHAT[what]} near {text!r}"


def _open_list(f, path: Path) -> tuple[bytes, int]:
    """Consume a UTF-8 BOM, any amount of whitespace and the opening '['; return what was read
    past it and its offset in the file."""
    head = f.read(READ_SIZE)
    skipped = len(_BOM) if head.startswith(_BOM) else 0
    head = head[skipped:]
    while not (text := head.lstrip(_JSON_SPACE)):
        skipped += len(head)
        if not (head := f.read(READ_SIZE)):
            raise SourceError(f"{path}: empty (or only whitespace): expected a JSON list ('[')")
    skipped += len(head) - len(text)
    if not text.startswith(b"["):
        raise SourceError(f"{path}: expected a JSON list ('[') at byte {skipped}")
    return text[1:], skipped + 1


def _trace_errors(scan, tr_lo: np.ndarray) -> list[RejectError | None]:
    """Per element: the first problem of its trace (coordinates, then times), or None."""
    n = len(tr_lo)
    t, x, y = scan.tr_t, scan.tr_x, scan.tr_y
    row_el = np.repeat(np.arange(n), scan.el_tr_end - tr_lo)
    bad_xy = ~((x >= v.COORD_MIN) & (x <= v.COORD_MAX) & (y >= v.COORD_MIN) & (y <= v.COORD_MAX))
    bad_t = ~((t >= 0) & (t <= v.PAGE_MS_MAX))
    back = np.zeros(len(t), bool)
    back[1:] = (np.diff(t) < 0) & (row_el[1:] == row_el[:-1])
    out: list[RejectError | None] = [None] * n
    checks = (
        (back, v.BAD_TIMES, "goes back in time"),
        (bad_t, v.BAD_TIMES, "time is absurd"),
        (bad_xy, v.BAD_COORDINATES, "is not finite or far outside"),
    )  # later checks win: coordinates first, then times
    for mask, reason, what in checks:
        for r in np.flatnonzero(mask)[::-1]:  # reversed: the first bad row of an element wins
            k = row_el[r]
            detail = f"mouseTracking[{r - tr_lo[k]}] {what}: ({t[r]}, {x[r]}, {y[r]})"
            out[k] = RejectError(reason, detail)
    return out


def _actions(buf: bytes, scan) -> list[tuple]:
    """(kind bytes, icon bytes, time, x, y) of every action row of a scan."""
    kinds = [buf[s:e] for s, e in scan.act_kind.tolist()]
    icons = [buf[s:e] for s, e in scan.act_icon.tolist()]
    xy = scan.act_xy.tolist()
    return [(k, i, t, p[0], p[1]) for k, i, t, p in zip(kinds, icons, scan.act_t.tolist(), xy,
                                                         strict=True)]  # fmt: skip


def _columns(buf: bytes, scan, keep, icons: list[dict], tr_lo, jpegs) -> pa.RecordBatch:
    n = int(keep.sum())
    ints = scan.el_int[keep]
    tr_len = (scan.el_tr_end - tr_lo)[keep]
    rows = np.repeat(keep, scan.el_tr_end - tr_lo)
    tr_off = np.concatenate([[0], np.cumsum(tr_len)])
    clk_len = [len(d) for d in icons]
    clk_off = np.concatenate([[0], np.cumsum(clk_len)]).astype(np.int64)
    placed = np.array([p for d in icons for p in d.values()], np.float64).reshape(-1, 3)
    classes = [c for d in icons for c in d]
    labels = [c for d in icons for c in sorted(d)]
    spans = scan.el_str[keep]
    workers = [buf[s:e].decode("utf-8", "replace") for s, e in spans[:, 0]]
    tasks = [buf[s:e].decode("utf-8", "replace") for s, e in spans[:, 1]]
    one = np.arange(n + 1)
    f32, i64 = pa.float32(), pa.int64()
    nulls = np.ones(n, bool)
    cols = {
        "key": pa.array([str(i) for i in ints[:, _ID]], pa.string()),
        "source": pa.array([COCO_AB] * n, pa.string()),
        "image": pa.array([image_path(int(i)) for i in ints[:, _ID]], pa.string()),
        "wnid": pa.nulls(n, pa.string()),
        "label": pa.array(np.full(n, -1, np.int32)),
        "labels": list_array(clk_off, labels, pa.int32()),
        "width": pa.array(ints[:, _W], pa.int32()),
        "height": pa.array(ints[:, _H], pa.int32()),
        "point_x": pa.nulls(n, f32),
        "point_y": pa.nulls(n, f32),
        "n_clicks": pa.array(clk_len, pa.int32()),
        "n_trace": pa.array(tr_len, pa.int32()),
        "click_x": list_array(clk_off, placed[:, 0], f32),
        "click_y": list_array(clk_off, placed[:, 1], f32),
        "click_t": list_array(clk_off, np.round(placed[:, 2]), i64),
        "click_class": list_array(clk_off, classes, pa.int32()),
        "click_ann": list_array(clk_off, np.zeros(len(classes)), pa.int16()),
        "trace_x": list_array(tr_off, scan.tr_x[rows], f32),
        "trace_y": list_array(tr_off, scan.tr_y[rows], f32),
        "trace_t": list_array(tr_off, np.round(scan.tr_t[rows]), i64),
        "trace_ann": list_array(tr_off, np.zeros(int(tr_off[-1])), pa.int16()),
        "ann_worker": list_array(one, workers, pa.string()),
        "ann_task": list_array(one, tasks, pa.string()),
        "ann_selected": list_array(one, np.ones(n, bool), pa.bool_()),
        "ann_duration_ms": _nullable(one, ints[:, _SPENT], pa.int32()),
        "ann_submit_s": list_array(one, np.zeros(n), i64, nulls),
        "ann_page": _nullable(one, ints[:, _PAGE], pa.int16()),
        "ann_hover_count": list_array(one, np.zeros(n), pa.int32(), nulls),
        **{
            c: list_array(np.zeros(n + 1), [], pa.float32())
            for c in ("box_x0", "box_y0", "box_x1", "box_y1")
        },  # fmt: skip
        "box_class": list_array(np.zeros(n + 1), [], pa.int32()),
    }
    if jpegs is not None:
        cols["jpeg"] = pa.array(jpegs, pa.binary())
    schema = record_schema(jpegs is not None)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def _nullable(offsets, values: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    missing = values == MISSING
    return list_array(offsets, np.where(missing, 0, values), type_, missing)
