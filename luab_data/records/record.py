"""One parsed record, as the readers hand it to the batch builder (never on a hot loader path)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _empty(dtype):
    return field(default_factory=lambda: np.zeros(0, dtype))


@dataclass(slots=True)
class Annotation:
    """Per-annotation metadata (an ImageNet-AB <metadata> block, or a COCO-AB record)."""

    worker: str
    task: str
    selected: bool
    duration_ms: int
    submit_s: int | None = None
    page: int | None = None
    hover_count: int | None = None


@dataclass(slots=True)
class Record:
    key: str
    source: str
    image: str
    width: int
    height: int
    label: int = -1
    labels: list[int] = field(default_factory=list)
    wnid: str | None = None
    point_x: float | None = None
    point_y: float | None = None
    click_x: np.ndarray = _empty(np.float32)
    click_y: np.ndarray = _empty(np.float32)
    click_t: np.ndarray = _empty(np.int64)
    click_class: np.ndarray = _empty(np.int32)
    click_ann: np.ndarray = _empty(np.int16)
    trace_x: np.ndarray = _empty(np.float32)
    trace_y: np.ndarray = _empty(np.float32)
    trace_t: np.ndarray = _empty(np.int64)
    trace_ann: np.ndarray = _empty(np.int16)
    annotations: list[Annotation] = field(default_factory=list)
    # (x0, y0, x1, y1, class) normalised to the image
    boxes: list[tuple[float, float, float, float, int]] = field(default_factory=list)
    jpeg: bytes | None = None


@dataclass(slots=True)
class Reject:
    """A record that failed validation: reported, never dropped silently."""

    key: str
    reason: str
    detail: str
    where: str  # archive member, JSON record index, or file path

    def as_dict(self) -> dict:
        return {"key": self.key, "reason": self.reason, "detail": self.detail, "where": self.where}


class RejectError(ValueError):
    """Raised by a parser for one bad record; the reader turns it into a Reject."""

    def __init__(self, reason: str, detail: str, key: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.key = key
