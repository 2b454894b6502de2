"""Counts and distributions of a record stream (what `luab-data inspect` prints)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

GRID = 5  # click-position histogram cells per side


class RecordStats:
    """Accumulates over batches; memory grows by a few bytes per record and annotation."""

    def __init__(self) -> None:
        self.records = 0
        self.with_point = 0
        self.n_trace: list[np.ndarray] = []
        self.n_clicks: list[np.ndarray] = []
        self.durations: list[np.ndarray] = []
        self.votes: Counter = Counter()
        self.workers: Counter = Counter()
        self.labels: Counter = Counter()
        self.click_grid = np.zeros((GRID, GRID), np.int64)
        self.clicks_outside = 0
        self.with_box = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self.records += batch.num_rows
        self.with_point += batch.num_rows - batch.column("point_x").null_count
        self.n_trace.append(batch.column("n_trace").to_numpy())
        self.n_clicks.append(batch.column("n_clicks").to_numpy())
        durations = pc.list_flatten(batch.column("ann_duration_ms")).drop_null().to_numpy()
        self.durations.append(durations)
        self.votes.update(pc.list_flatten(batch.column("ann_selected")).to_pylist())
        self.workers.update(pc.list_flatten(batch.column("ann_worker")).to_pylist())
        self.labels.update(pc.list_flatten(batch.column("labels")).to_pylist())
        self.with_box += int(np.count_nonzero(pc.list_value_length(batch.column("box_x0"))))
        x = pc.list_flatten(batch.column("click_x")).to_numpy()
        y = pc.list_flatten(batch.column("click_y")).to_numpy()
        inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
        self.clicks_outside += int(np.count_nonzero(~inside))
        cells = np.minimum((np.stack([y[inside], x[inside]]) * GRID).astype(int), GRID - 1)
        np.add.at(self.click_grid, (cells[0], cells[1]), 1)

    def summary(self) -> dict:
        n_trace = np.concatenate(self.n_trace) if self.n_trace else np.zeros(0)
        n_clicks = np.concatenate(self.n_clicks) if self.n_clicks else np.zeros(0)
        durations = np.concatenate(self.durations) if self.durations else np.zeros(0)
        per_worker = np.array(list(self.workers.values())) if self.workers else np.zeros(1)
        return {
            "records": self.records,
            "records_with_point": self.with_point,
            "records_with_box": self.with_box,
            "annotations": int(sum(self.votes.values())),
            "votes": {"positive": self.votes.get(True, 0), "negative": self.votes.get(False, 0)},
            "trace_samples_per_record": _quantiles(n_trace),
            "records_with_trace": int(np.count_nonzero(n_trace)),
            "clicks_per_record": _quantiles(n_clicks),
            "annotation_duration_ms": _quantiles(durations),
            "annotators": {"distinct": len(self.workers), **_quantiles(per_worker)},
            "classes": {
                "distinct": len(self.labels),
                **_quantiles(np.array(list(self.labels.values()) or [0])),
            },
            "click_grid_rows_top_to_bottom": self.click_grid.tolist(),
            "clicks_outside_image": self.clicks_outside,
        }


def _quantiles(a: np.ndarray) -> dict:
    if a.size == 0:
        return {"n": 0}
    q = np.percentile(a, [0, 5, 50, 95, 100])
    return {
        "n": int(a.size),
        "mean": round(float(a.mean()), 2),
        **{
            k: round(float(v), 2)
            for k, v in zip(("min", "p5", "median", "p95", "max"), q, strict=True)
        },
    }


def collect(batches: Iterable[pa.RecordBatch]) -> dict:
    stats = RecordStats()
    for batch in batches:
        stats.add(batch)
    return stats.summary()


def format_summary(s: dict) -> str:
    """A plain-text report of `collect`'s result."""

    def dist(d: dict) -> str:
        if d.get("n", 0) == 0:
            return "none"
        return (
            f"mean {d['mean']:g}  min {d['min']:g}  p5 {d['p5']:g}  median {d['median']:g}  "
            f"p95 {d['p95']:g}  max {d['max']:g}  (n={d['n']:,})"
        )

    grid = "\n".join(
        "    " + " ".join(f"{c:7,d}" for c in row) for row in s["click_grid_rows_top_to_bottom"]
    )
    votes = s["votes"]
    return "\n".join(
        [
            f"records               {s['records']:,}  "
            f"(with paper point {s['records_with_point']:,}, "
            f"with trace {s['records_with_trace']:,}, with box {s['records_with_box']:,})",
            f"annotations           {s['annotations']:,}  (positive {votes['positive']:,}, "
            f"negative {votes['negative']:,})",
            f"trace samples/record  {dist(s['trace_samples_per_record'])}",
            f"clicks/record         {dist(s['clicks_per_record'])}",
            f"annotation time (ms)  {dist(s['annotation_duration_ms'])}",
            f"annotators            {s['annotators']['distinct']:,} distinct; annotations each: "
            f"{dist(s['annotators'])}",
            f"classes               {s['classes']['distinct']:,} distinct; records each: "
            f"{dist(s['classes'])}",
            f"click positions ({GRID}x{GRID} grid over the image, top row first; "
            f"{s['clicks_outside_image']:,} outside):",
            grid,
        ]
    )
