"""COCO-AB: the official coco_ab_v1_0.json list, streamed element by element through ijson.

Each element is checked field by field (types, integer ranges, coordinates, times) and class
icons are replayed (add, move, remove) to the positions they had when the page was left; the
official loader's "last add wins, ignore move/remove" is available as policy="last-add".
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from luab_data.records import COCO_AB, Reject, RejectError, list_array, record_schema
from luab_data.sources import validation as v
from luab_data.sources.coco_categories import COCO_80_NAMES, NAME_TO_INDEX
from luab_data.sources.errors import SourceError
from luab_data.sources.ijson_list import BrokenElement, JsonList, ListProblem
from luab_data.sources.progress import Progress
from luab_data.sources.sharding import in_shard

POLICIES = ("replay", "last-add")
BATCH = 256  # elements per Arrow batch
# Keys of a record object (never of the objects nested in it): where the next element begins.
TOP_KEYS = (
    "image_id",
    "worker_id",
    "hit_id",
    "page_id",
    "imageWidth",
    "imageHeight",
    "originalImageWidth",
    "originalImageHeight",
    "timeSpent",
    "actionHistories",
    "categoryHistories",
    "mouseTracking",
)
# Integer fields: the record column (or type) each one fills, and the least sensible value
# (image ids, pages, durations and sizes are never negative; a size of 0 is zero-size).
INT_RANGES = {
    "image_id": (pa.int64(), 0),  # becomes the key and the image file name
    "page_id": ("ann_page", 0),
    "originalImageWidth": ("width", 0),
    "originalImageHeight": ("height", 0),
    "timeSpent": ("ann_duration_ms", 0),
}
_BOUNDS = {name: v.value_range(*spec) for name, spec in INT_RANGES.items()}
_INT64 = v.value_range(pa.int64())


def image_path(image_id: int) -> str:
    return f"train2014/COCO_train2014_{image_id:012d}.jpg"


_KINDS = ("add", "move", "remove")


def replay_icons(actions: list[tuple], policy: str) -> dict[int, tuple[float, float, float]]:
    """Final icon per class from (kind, name, time, x, y) actions, in the order last placed."""
    icons: dict[int, tuple[float, float, float]] = {}
    previous = 0.0
    for i, (kind, name, t, x, y) in enumerate(actions):
        if t != t:  # NaN: no timeAt
            raise RejectError(v.BAD_FIELD, f"actionHistories[{i}] has no timeAt")
        if not 0 <= t <= v.PAGE_MS_MAX:
            raise RejectError(v.BAD_TIMES, f"actionHistories[{i}].timeAt = {t} ms is absurd")
        if t < previous:
            raise RejectError(v.BAD_TIMES, f"actionHistories[{i}] goes back in time ({t} ms)")
        previous = t
        cls = NAME_TO_INDEX.get(name)
        if cls is None:
            cls = NAME_TO_INDEX.get(name.strip().lower())
        if cls is None:
            raise RejectError(v.UNKNOWN_CLASS, f"icon {name!r} is not one of the 80 COCO classes")
        if kind not in _KINDS:
            raise RejectError(v.BAD_FIELD, f"actionHistories[{i}].actionType is {kind!r}")
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
class _Row:
    """One element that passed every check, as the columns want it."""

    image_id: int
    width: int
    height: int
    spent: int | None
    page: int | None
    worker: str
    task: str
    trace: np.ndarray  # (n, 3) time, x, y
    icons: dict


@dataclass
class CocoABSource:
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

    def metadata(self) -> dict:
        classes = list(COCO_80_NAMES)
        return {"source_kind": self.kind, "classes": classes, "coco_policy": self.policy}

    def batches(self, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[pa.RecordBatch, list]]:
        seen: set[str] = set()
        elements = JsonList(self.path, TOP_KEYS, "image_id")
        stream = iter(elements)
        while chunk := list(itertools.islice(stream, BATCH)):
            parsed, rejects = [], []
            for index, element in chunk:
                self._take(index, element, seen, shard, parsed, rejects)
            rows = self._finish(parsed, rejects)
            self.progress.done = elements.position
            yield _columns(rows, self._jpegs(rows)), [r for _, r in sorted(rejects)]
        self.progress.done = self.progress.total

    def _take(self, index: int, element, seen: set, shard, parsed: list, rejects: list) -> None:
        """First checks of one element (key, duplicate, fields): onto `parsed`, or a reject
        (if the element is this shard's)."""
        where = f"{self.path.name}[{index}]"
        if isinstance(element, ListProblem):
            if shard[0] == 0:  # about the list, not one record: reported once
                reject = Reject(f"?{where}", v.MALFORMED_JSON, element.detail, where)
                rejects.append((index, reject))
            return
        raw_id = (
            element.key_value
            if isinstance(element, BrokenElement)
            else (element.get("image_id") if isinstance(element, dict) else None)
        )
        known = type(raw_id) is int and _INT64[0] <= raw_id <= _INT64[1]
        key = str(raw_id) if known else f"?{where}"
        if not (in_shard(key, shard) if known else shard[0] == 0):
            return  # an element without key is reported by shard 0 alone
        try:
            if key in seen:  # the first occurrence of a key wins, whatever its fate
                raise RejectError(v.DUPLICATE_KEY, "the same image_id occurs twice")
            seen.add(key)
            parsed.append((index, key, where, *_fields(element)))
        except RejectError as err:
            rejects.append((index, Reject(key, err.reason, err.detail, where)))

    def _finish(self, parsed: list, rejects: list) -> list[_Row]:
        """Trace checks (vectorised over the batch), icon replay and the image check."""
        traces = _traces([p[-2] for p in parsed])
        rows = []
        for (index, key, where, ints, texts, _, actions), trace in zip(parsed, traces, strict=True):
            try:
                if isinstance(trace, RejectError):
                    raise trace
                icons = replay_icons(actions, self.policy)
                self._check_image(ints["image_id"])
            except RejectError as err:
                rejects.append((index, Reject(key, err.reason, err.detail, where)))
                continue
            rows.append(
                _Row(
                    ints["image_id"],
                    ints["originalImageWidth"],
                    ints["originalImageHeight"],
                    ints["timeSpent"],
                    ints["page_id"],
                    *texts,
                    trace,
                    icons,
                )
            )
        return rows

    def _check_image(self, image_id: int) -> None:
        if self.images is not None:
            path = v.image_file(self.images, image_path(image_id))
            if not path.is_file():
                raise RejectError(v.MISSING_IMAGE, f"{path} is missing")

    def _jpegs(self, rows: list[_Row]) -> list[bytes] | None:
        if not self.with_jpeg:
            return None
        return [v.image_file(self.images, image_path(r.image_id)).read_bytes() for r in rows]


def _fields(element) -> tuple:
    """(integers, (worker, task), trace samples, actions) of an element, its types checked."""
    if isinstance(element, BrokenElement):
        raise RejectError(v.MALFORMED_JSON, element.detail)
    if not isinstance(element, dict):
        raise RejectError(v.BAD_FIELD, f"element is not a JSON object: {_show(element)}")
    ints = {name: _integer(element, name) for name in INT_RANGES}
    if ints["image_id"] is None:
        raise RejectError(v.BAD_FIELD, "image_id is missing (it is the record's key)")
    width, height = ints["originalImageWidth"], ints["originalImageHeight"]
    if width is None or height is None:
        raise RejectError(v.BAD_FIELD, "originalImageWidth or originalImageHeight is missing")
    if width <= 0 or height <= 0:
        raise RejectError(v.ZERO_SIZE, f"original size {width}x{height}: never loaded")
    samples = element.get("mouseTracking")
    if samples is not None and not isinstance(samples, list):
        raise RejectError(v.BAD_FIELD, f"mouseTracking must be a list, got {_show(samples)}")
    texts = (_text(element.get("worker_id")), _text(element.get("hit_id")))
    return ints, texts, samples or [], _actions(element.get("actionHistories"))


def _show(value) -> str:
    """A value as JSON text (true, "12", 1.5), shortened."""
    return json.dumps(value)[:60]


def _integer(element: dict, name: str) -> int | None:
    """An integer field within its range; None if absent (or null)."""
    value = element.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise RejectError(v.BAD_FIELD, f"{name} must be an integer, got {_show(value)}")
    low, high = _BOUNDS[name]
    if not low <= value <= high:
        column, minimum = INT_RANGES[name]
        raise RejectError(v.BAD_FIELD, v.range_detail(name, value, column, minimum))
    return value


def _text(value) -> str:
    return value if isinstance(value, str) else ("" if value is None else _show(value))


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _traces(samples: list[list]) -> list:
    """Per element: its (n, 3) time, x, y array, or the RejectError of its first bad sample
    (type, then coordinates, times, order). One array and one set of checks per batch."""
    lens = [len(s) for s in samples]
    try:  # a numeric array, or a type error somewhere: strings and nulls make other dtypes
        flat = np.array([(d["timeAt"], d["x"], d["y"]) for s in samples for d in s])
        ok = flat.dtype.kind in "iuf" or not flat.size
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:  # rare: find the elements at fault, check the others alone
        return [
            _traces([s])[0] if _numeric(s) else RejectError(v.BAD_FIELD, _trace_type_error(s))
            for s in samples
        ]
    flat = flat.astype(np.float64).reshape(-1, 3)
    ends = np.cumsum(lens)
    errors = _trace_errors(flat, ends)
    return [
        errors.get(k) or flat[e - n : e] for k, (n, e) in enumerate(zip(lens, ends, strict=True))
    ]


def _numeric(samples: list) -> bool:
    try:
        return np.array([(d["timeAt"], d["x"], d["y"]) for d in samples]).dtype.kind in "iuf" or (
            not samples
        )
    except (KeyError, TypeError, ValueError):
        return False


def _trace_type_error(samples: list) -> str:
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            return f"mouseTracking[{i}] is not a {{timeAt, x, y}} object: {_show(s)}"
        for name in ("timeAt", "x", "y"):
            if not _number(s.get(name)):
                return f"mouseTracking[{i}].{name} = {_show(s.get(name))} is not a number"
    return "mouseTracking must be a list of {timeAt, x, y} objects with numbers"


def _trace_errors(flat: np.ndarray, ends: np.ndarray) -> dict[int, RejectError]:
    """Element -> the first problem of its trace: coordinates, else times, else order."""
    t, x, y = flat.T
    el = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))
    bad_xy = ~((x >= v.COORD_MIN) & (x <= v.COORD_MAX) & (y >= v.COORD_MIN) & (y <= v.COORD_MAX))
    bad_t = ~((t >= 0) & (t <= v.PAGE_MS_MAX))
    back = np.concatenate([[False], (np.diff(t) < 0) & (el[1:] == el[:-1])]) if len(t) else bad_t
    errors: dict[int, RejectError] = {}
    for mask, reason, what in (
        (back, v.BAD_TIMES, "goes back in time"),
        (bad_t, v.BAD_TIMES, "time is absurd"),
        (bad_xy, v.BAD_COORDINATES, "is not finite or far outside"),
    ):
        for r in np.flatnonzero(mask)[::-1]:  # later checks and earlier rows win
            k = int(el[r])
            first = r - (ends[k - 1] if k else 0)
            detail = f"mouseTracking[{first}] {what}: ({_num(t[r])}, {x[r]}, {y[r]})"
            errors[k] = RejectError(reason, detail)
    return errors


def _num(t: float) -> str:
    return str(int(t)) if t == t and abs(t) < 2**53 and t == int(t) else str(t)


def _actions(actions) -> list[tuple]:
    """(kind, icon, time, x, y) per action; NaN where a time or point is missing."""
    if actions is None:
        return []
    if not isinstance(actions, list):
        raise RejectError(v.BAD_FIELD, f"actionHistories must be a list, got {_show(actions)}")
    out = []
    for i, a in enumerate(actions):
        if not isinstance(a, dict):
            raise RejectError(v.BAD_FIELD, f"actionHistories[{i}] is not an object: {_show(a)}")
        t = a.get("timeAt", float("nan"))
        if not _number(t):
            raise RejectError(
                v.BAD_FIELD, f"actionHistories[{i}].timeAt = {_show(t)} must be a number"
            )
        out.append(
            (_text(a.get("actionType")), _text(a.get("iconType")), t, *_point(a.get("pointTo"), i))
        )
    return out


def _point(p, i: int) -> tuple[float, float]:
    if p is None:
        return float("nan"), float("nan")
    if not isinstance(p, dict) or not all(_number(p.get(k)) for k in ("x", "y")):
        raise RejectError(
            v.BAD_FIELD,
            f"actionHistories[{i}].pointTo must be {{x, y}} with numbers, or null: {_show(p)}",
        )
    return p["x"], p["y"]


def _columns(rows: list[_Row], jpegs) -> pa.RecordBatch:
    n = len(rows)
    tr_len = [len(r.trace) for r in rows]
    tr_off = np.concatenate([[0], np.cumsum(tr_len)]).astype(np.int64)
    trace = np.concatenate([r.trace for r in rows]) if n else np.zeros((0, 3))
    clk_len = [len(r.icons) for r in rows]
    clk_off = np.concatenate([[0], np.cumsum(clk_len)]).astype(np.int64)
    placed = np.array([p for r in rows for p in r.icons.values()], np.float64).reshape(-1, 3)
    classes = [c for r in rows for c in r.icons]
    labels = [c for r in rows for c in sorted(r.icons)]
    one = np.arange(n + 1)
    f32, i64 = pa.float32(), pa.int64()
    nulls = np.ones(n, bool)
    spent, pages = [r.spent for r in rows], [r.page for r in rows]
    cols = {
        "key": pa.array([str(r.image_id) for r in rows], pa.string()),
        "source": pa.array([COCO_AB] * n, pa.string()),
        "image": pa.array([image_path(r.image_id) for r in rows], pa.string()),
        "wnid": pa.nulls(n, pa.string()),
        "label": pa.array(np.full(n, -1, np.int32)),
        "labels": list_array(clk_off, labels, pa.int32()),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "point_x": pa.nulls(n, f32),
        "point_y": pa.nulls(n, f32),
        "n_clicks": pa.array(clk_len, pa.int32()),
        "n_trace": pa.array(tr_len, pa.int32()),
        "click_x": list_array(clk_off, placed[:, 0], f32),
        "click_y": list_array(clk_off, placed[:, 1], f32),
        "click_t": list_array(clk_off, np.round(placed[:, 2]), i64),
        "click_class": list_array(clk_off, classes, pa.int32()),
        "click_ann": list_array(clk_off, np.zeros(len(classes)), pa.int16()),
        "trace_x": list_array(tr_off, trace[:, 1], f32),
        "trace_y": list_array(tr_off, trace[:, 2], f32),
        "trace_t": list_array(tr_off, np.round(trace[:, 0]), i64),
        "trace_ann": list_array(tr_off, np.zeros(int(tr_off[-1])), pa.int16()),
        "ann_worker": list_array(one, [r.worker for r in rows], pa.string()),
        "ann_task": list_array(one, [r.task for r in rows], pa.string()),
        "ann_selected": list_array(one, np.ones(n, bool), pa.bool_()),
        "ann_duration_ms": _singletons(spent, pa.int32()),
        "ann_submit_s": list_array(one, np.zeros(n), i64, nulls),
        "ann_page": _singletons(pages, pa.int16()),
        "ann_hover_count": list_array(one, np.zeros(n), pa.int32(), nulls),
        **{
            c: list_array(np.zeros(n + 1), [], f32)
            for c in ("box_x0", "box_y0", "box_x1", "box_y1")
        },
        "box_class": list_array(np.zeros(n + 1), [], pa.int32()),
    }
    if jpegs is not None:
        cols["jpeg"] = pa.array(jpegs, pa.binary())
    schema = record_schema(jpegs is not None)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


def _singletons(values: list, type_: pa.DataType) -> pa.ListArray:
    """One item per row (None: a null item), as the per-annotation columns of a COCO record."""
    offsets = pa.array(np.arange(len(values) + 1), pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(values, type_))
