"""COCO-AB: the official coco_ab_v1_0.json list, read element by element.

Class icons are replayed (add, move, remove) to the positions they had when the page was left;
the official loader's "last add wins, ignore move/remove" is available as policy="last-add".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from luab_data.records import COCO_AB, Annotation, Record, Reject, RejectError, records_to_batch
from luab_data.sources import validation as v
from luab_data.sources.coco_categories import COCO_80_NAMES, NAME_TO_INDEX
from luab_data.sources.errors import SourceError
from luab_data.sources.json_stream import BrokenElement, JsonListReader
from luab_data.sources.progress import Progress
from luab_data.sources.sharding import in_shard

TOP_KEYS = (
    "image_id", "worker_id", "hit_id", "page_id", "imageWidth", "imageHeight",
    "originalImageWidth", "originalImageHeight", "timeSpent", "actionHistories",
    "categoryHistories", "mouseTracking",
)  # fmt: skip
POLICIES = ("replay", "last-add")
BATCH = 2048


def image_path(image_id: int) -> str:
    return f"train2014/COCO_train2014_{image_id:012d}.jpg"


def _int(rec: dict, name: str) -> int:
    value = rec.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RejectError(v.BAD_FIELD, f"{name} must be an integer, got {value!r}")
    return value


def _point(p: object, what: str) -> tuple[float, float]:
    try:
        x, y = float(p["x"]), float(p["y"])
    except (TypeError, KeyError, ValueError) as err:
        raise RejectError(v.BAD_FIELD, f"{what} must be {{x, y}}, got {p!r}") from err
    if not (v.coord_ok(x) and v.coord_ok(y)):
        raise RejectError(v.BAD_COORDINATES, f"{what} = ({x}, {y}) is not finite or far outside")
    return x, y


def _time(value: object, what: str, previous: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise RejectError(v.BAD_FIELD, f"{what} must be a number of ms, got {value!r}")
    if not 0 <= value <= v.PAGE_MS_MAX:
        raise RejectError(v.BAD_TIMES, f"{what} = {value} ms is outside one day on the page")
    if value < previous:
        raise RejectError(v.BAD_TIMES, f"{what} = {value} ms goes back in time (after {previous})")
    return value


def replay_icons(actions: list, policy: str) -> dict[int, tuple[float, float, float]]:
    """Final icon per class: {contiguous class: (x, y, time placed)}, in placing order."""
    icons: dict[int, tuple[float, float, float]] = {}
    previous = 0.0
    for i, act in enumerate(actions):
        if not isinstance(act, dict):
            raise RejectError(v.BAD_FIELD, f"actionHistories[{i}] is not an object")
        kind, name = act.get("actionType"), act.get("iconType")
        t = previous = _time(act.get("timeAt"), f"actionHistories[{i}].timeAt", previous)
        cls = NAME_TO_INDEX.get(str(name).strip().lower())
        if cls is None:
            raise RejectError(v.UNKNOWN_CLASS, f"icon {name!r} is not one of the 80 COCO classes")
        if kind not in ("add", "move", "remove"):
            raise RejectError(v.BAD_FIELD, f"actionHistories[{i}].actionType is {kind!r}")
        if kind == "remove":
            if policy == "replay":
                icons.pop(cls, None)
            continue
        if kind == "move" and policy == "last-add":
            continue
        x, y = _point(act.get("pointTo"), f"actionHistories[{i}].pointTo")
        icons.pop(cls, None)  # re-inserting keeps the dict in the order icons were last placed
        icons[cls] = (x, y, t)
    return icons


def _trace(samples: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if samples is None:
        samples = []
    if not isinstance(samples, list):
        raise RejectError(v.BAD_FIELD, "mouseTracking is not a list")
    t = np.empty(len(samples), np.int64)
    xy = np.empty((len(samples), 2), np.float32)
    previous = 0.0
    for i, s in enumerate(samples):
        xy[i] = _point(s, f"mouseTracking[{i}]")
        t[i] = previous = _time(s.get("timeAt"), f"mouseTracking[{i}].timeAt", previous)
    return xy[:, 0].copy(), xy[:, 1].copy(), t


def parse_record(rec: object, policy: str = "replay") -> Record:
    """One COCO-AB element -> Record; raises RejectError naming the reason."""
    if not isinstance(rec, dict):
        raise RejectError(v.BAD_FIELD, "element is not a JSON object")
    image_id = _int(rec, "image_id")
    key = str(image_id)
    try:
        width, height = _int(rec, "originalImageWidth"), _int(rec, "originalImageHeight")
        if width <= 0 or height <= 0:
            raise RejectError(v.ZERO_SIZE, f"original size {width}x{height}: image never loaded")
        actions = rec.get("actionHistories") or []
        if not isinstance(actions, list):
            raise RejectError(v.BAD_FIELD, "actionHistories is not a list")
        icons = replay_icons(actions, policy)
        tx, ty, tt = _trace(rec.get("mouseTracking"))
        worker, task = rec.get("worker_id"), rec.get("hit_id")
        time_spent = _int(rec, "timeSpent") if "timeSpent" in rec else None
        page = _int(rec, "page_id") if "page_id" in rec else None
    except RejectError as err:
        err.key = key
        raise
    classes = np.array(list(icons), np.int32)
    placed = np.array(list(icons.values()), np.float64).reshape(-1, 3)
    return Record(
        key=key,
        source=COCO_AB,
        image=image_path(image_id),
        width=width,
        height=height,
        label=-1,
        labels=sorted(icons),
        click_x=placed[:, 0].astype(np.float32),
        click_y=placed[:, 1].astype(np.float32),
        click_t=placed[:, 2].astype(np.int64),
        click_class=classes,
        click_ann=np.zeros(len(classes), np.int16),
        trace_x=tx,
        trace_y=ty,
        trace_t=tt,
        trace_ann=np.zeros(len(tt), np.int16),
        annotations=[Annotation(str(worker), str(task), True, time_spent, None, page, None)],
    )


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
        records: list[Record] = []
        rejects: list[Reject] = []
        with open(self.path, "rb") as f:
            for index, element in JsonListReader(f, str(self.path), TOP_KEYS):
                self.progress.done = f.tell()
                where = f"{self.path.name}[{index}]"
                item = self._one(element, where, seen, shard)
                if isinstance(item, Reject):
                    rejects.append(item)
                elif item is not None:
                    records.append(item)
                if len(records) >= BATCH:
                    yield records_to_batch(records, self.with_jpeg), rejects
                    records, rejects = [], []
        self.progress.done = self.progress.total
        if records or rejects:
            yield records_to_batch(records, self.with_jpeg), rejects

    def _one(self, element, where: str, seen: set, shard) -> Record | Reject | None:
        if isinstance(element, BrokenElement):
            key = f"?{where}"
            return Reject(key, v.MALFORMED_JSON, element.message, where) if shard[0] == 0 else None
        try:
            rec = parse_record(element, self.policy)
        except RejectError as err:
            key = err.key or f"?{where}"
            if not in_shard(key, shard):
                return None
            if key in seen:  # the first occurrence of a key wins, whatever its fate
                return Reject(key, v.DUPLICATE_KEY, "the same image_id occurs twice", where)
            seen.add(key)
            return Reject(key, err.reason, err.detail, where)
        if not in_shard(rec.key, shard):
            return None
        if rec.key in seen:
            return Reject(rec.key, v.DUPLICATE_KEY, "the same image_id occurs twice", where)
        seen.add(rec.key)
        if self.images is not None:
            image = self.images / rec.image
            if not image.is_file():
                return Reject(rec.key, v.MISSING_IMAGE, f"{image} does not exist", where)
            if self.with_jpeg:
                rec.jpeg = image.read_bytes()
        return rec
