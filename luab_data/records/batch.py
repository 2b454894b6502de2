"""Columnar assembly: a list of Records becomes one Arrow record batch of RECORD_SCHEMA."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from luab_data.records.record import Record
from luab_data.records.schema import record_schema


def _offsets(lengths: Sequence[int]) -> pa.Array:
    out = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=out[1:])
    return pa.array(out, pa.int32())


def _list_column(arrays: Sequence[np.ndarray], offsets: pa.Array, dtype) -> pa.ListArray:
    values = np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(offsets, pa.array(values))


def _list_of(values: list, offsets: pa.Array, type_: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(offsets, pa.array(values, type_))


def list_array(offsets, values, type_: pa.DataType, mask=None) -> pa.ListArray:
    """A list column from row offsets and flat values (masked values become nulls)."""
    return pa.ListArray.from_arrays(
        pa.array(np.asarray(offsets, np.int32), pa.int32()), pa.array(values, type_, mask=mask)
    )


def records_to_batch(records: Sequence[Record], with_jpeg: bool = False) -> pa.RecordBatch:
    """Build one record batch; list groups share one offsets array."""
    schema = record_schema(with_jpeg)
    click_off = _offsets([len(r.click_x) for r in records])
    trace_off = _offsets([len(r.trace_x) for r in records])
    anns = [a for r in records for a in r.annotations]
    ann_off = _offsets([len(r.annotations) for r in records])
    boxes = [b for r in records for b in r.boxes]
    box_off = _offsets([len(r.boxes) for r in records])
    label_off = _offsets([len(r.labels) for r in records])
    box_cols = list(zip(*boxes, strict=True)) if boxes else [[]] * 5
    cols = {
        "key": pa.array([r.key for r in records], pa.string()),
        "source": pa.array([r.source for r in records], pa.string()),
        "image": pa.array([r.image for r in records], pa.string()),
        "wnid": pa.array([r.wnid for r in records], pa.string()),
        "label": pa.array([r.label for r in records], pa.int32()),
        "labels": _list_of([v for r in records for v in r.labels], label_off, pa.int32()),
        "width": pa.array([r.width for r in records], pa.int32()),
        "height": pa.array([r.height for r in records], pa.int32()),
        "point_x": pa.array([r.point_x for r in records], pa.float32()),
        "point_y": pa.array([r.point_y for r in records], pa.float32()),
        "n_clicks": pa.array(np.diff(click_off.to_numpy()), pa.int32()),
        "n_trace": pa.array(np.diff(trace_off.to_numpy()), pa.int32()),
        "click_x": _list_column([r.click_x for r in records], click_off, np.float32),
        "click_y": _list_column([r.click_y for r in records], click_off, np.float32),
        "click_t": _list_column([r.click_t for r in records], click_off, np.int64),
        "click_class": _list_column([r.click_class for r in records], click_off, np.int32),
        "click_ann": _list_column([r.click_ann for r in records], click_off, np.int16),
        "trace_x": _list_column([r.trace_x for r in records], trace_off, np.float32),
        "trace_y": _list_column([r.trace_y for r in records], trace_off, np.float32),
        "trace_t": _list_column([r.trace_t for r in records], trace_off, np.int64),
        "trace_ann": _list_column([r.trace_ann for r in records], trace_off, np.int16),
        "ann_worker": _list_of([a.worker for a in anns], ann_off, pa.string()),
        "ann_task": _list_of([a.task for a in anns], ann_off, pa.string()),
        "ann_selected": _list_of([a.selected for a in anns], ann_off, pa.bool_()),
        "ann_duration_ms": _list_of([a.duration_ms for a in anns], ann_off, pa.int32()),
        "ann_submit_s": _list_of([a.submit_s for a in anns], ann_off, pa.int64()),
        "ann_page": _list_of([a.page for a in anns], ann_off, pa.int16()),
        "ann_hover_count": _list_of([a.hover_count for a in anns], ann_off, pa.int32()),
        "box_x0": _list_of(list(box_cols[0]), box_off, pa.float32()),
        "box_y0": _list_of(list(box_cols[1]), box_off, pa.float32()),
        "box_x1": _list_of(list(box_cols[2]), box_off, pa.float32()),
        "box_y1": _list_of(list(box_cols[3]), box_off, pa.float32()),
        "box_class": _list_of(list(box_cols[4]), box_off, pa.int32()),
    }
    if with_jpeg:
        cols["jpeg"] = pa.array([r.jpeg for r in records], pa.binary())
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)
