"""Arrow entry points: record batches of RECORD_SCHEMA straight into the kernels.

Offsets and values come from the list columns with vectorised numpy only (no Python per
record). Sliced arrays are handled: ``ListArray.offsets`` is the slice's window into the full
``values`` child, so offsets are rebased to 0 and the values cut to that window.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from luab_data.raster import ragged
from luab_data.raster.config import RasterConfig
from luab_data.raster.ragged import Ragged

Batch = pa.RecordBatch | pa.Table


def list_parts(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0 as int64 (N + 1,), flat values as numpy) of a list column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:  # a null list may still span values: count it as empty
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
        offsets = np.zeros(len(col) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets, pc.list_flatten(col).to_numpy(zero_copy_only=False)
    offsets = np.asarray(col.offsets, np.int64)
    start, stop = int(offsets[0]), int(offsets[-1])
    values = col.values.slice(start, stop - start).to_numpy(zero_copy_only=False)
    return offsets - start, values


def _group(batch: Batch, names: tuple[str, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Offsets shared by a column group (checked, since Parquet stores them per column)."""
    offsets, values = None, []
    for name in names:
        off, val = list_parts(batch.column(name))
        if offsets is not None and not np.array_equal(off, offsets):
            raise ValueError(f"column {name} is not aligned with {names[0]}")
        offsets = off
        values.append(val)
    return offsets, values


def clicks_from_batch(batch: Batch, selected_only: bool = False) -> Ragged:
    """The click group; with ``selected_only`` clicks of annotations voted 'no' are not kept."""
    off, (x, y, cls, ann) = _group(batch, ("click_x", "click_y", "click_class", "click_ann"))
    keep = _selected(batch, off, ann) if selected_only else None
    return Ragged(off, x, y, cls=cls, ann=ann, keep=keep)


def trace_from_batch(batch: Batch) -> Ragged:
    off, (x, y, t, ann) = _group(batch, ("trace_x", "trace_y", "trace_t", "trace_ann"))
    return Ragged(off, x, y, t=t, ann=ann)


def _selected(batch: Batch, off: np.ndarray, ann: np.ndarray) -> np.ndarray:
    """Per click: its annotation (click_ann, within the record) exists and ended selected."""
    a_off, sel = list_parts(batch.column("ann_selected"))
    rec = np.repeat(np.arange(len(off) - 1), np.diff(off))
    a = ann.astype(np.int64)
    ok = (a >= 0) & (a < np.diff(a_off)[rec])
    sel = np.append(sel.astype(np.bool_), False)  # index -1 -> False for the not-ok clicks
    return ok & sel[np.where(ok, a_off[rec] + a, -1)]


def sizes(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Original (width, height) in pixels."""
    return (
        batch.column("width").to_numpy(zero_copy_only=False),
        batch.column("height").to_numpy(zero_copy_only=False),
    )


def rasterise_batch(
    batch: Batch, config: RasterConfig = RasterConfig(), boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, C, H, W) of ``config.dtype`` and validity (N, C) bool for every row.

    Channels follow ``config.channels`` ("click" widened to ``n_classes`` channels when set).
    ``boxes`` (N, 4) normalised (x0, y0, x1, y1) rasterise only that part of each image.
    """
    clicks = clicks_from_batch(batch, config.selected_only)
    width, height = sizes(batch)
    return ragged.rasterise(clicks, trace_from_batch(batch), width, height, config, boxes)


def paper_points(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """The paper's point target (x, y) normalised: (N, 2) float32 (-1 where absent), valid (N,)."""
    xy = np.stack([_nullable(batch.column(c)) for c in ("point_x", "point_y")], axis=1)
    valid = np.isfinite(xy).all(axis=1)
    xy[~valid] = -1.0
    return xy, valid


def _nullable(col) -> np.ndarray:
    return pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False).astype(np.float32)


def fixed_arrays(
    batch: Batch, config: RasterConfig = RasterConfig(), k: int = 32
) -> dict[str, np.ndarray]:
    """The fixed-length arrays stored beside the maps, all (x, y) order, -1 where absent.

    point/point_valid: the paper's target; trace/trace_valid: the trace resampled to k points;
    with ``config.n_classes``, class_points/class_points_valid: the last click of each class
    (the COCO-AB target; the paper's loader wants (y, x): swap the last axis there).
    """
    out = {}
    out["point"], out["point_valid"] = paper_points(batch)
    out["trace"], out["trace_valid"] = ragged.resample_trace(trace_from_batch(batch), k, config)
    if config.n_classes > 0:
        clicks = clicks_from_batch(batch, config.selected_only)
        pts, ok = ragged.class_points(clicks, config.n_classes)
        out["class_points"], out["class_points_valid"] = pts, ok
    return out
