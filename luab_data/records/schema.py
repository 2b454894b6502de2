"""The canonical record: one row per image, whatever the release it came from.

Columns are Arrow types; ragged byproducts are list columns that share offsets within a group
(``click_*``, ``trace_*``, ``ann_*``, ``box_*``), so the raster kernels read offsets and values
straight from the arrays. Coordinates are normalised to the image (0..1, origin top-left, as in
the releases); times are milliseconds as the release gives them (ImageNet-AB: epoch ms; COCO-AB:
ms since the page started). The column list is documented in docs/RECORDS.md.
"""

from __future__ import annotations

import json

import pyarrow as pa

FORMAT_VERSION = 1
METADATA_KEY = b"luab"

IMAGENET_AB = "imagenet-ab"
COCO_AB = "coco-ab"

_f32 = pa.float32()
_i16 = pa.int16()
_i32 = pa.int32()
_i64 = pa.int64()

CLICK_COLUMNS = ("click_x", "click_y", "click_t", "click_class", "click_ann")
TRACE_COLUMNS = ("trace_x", "trace_y", "trace_t", "trace_ann")
ANN_COLUMNS = (
    "ann_worker",
    "ann_task",
    "ann_selected",
    "ann_duration_ms",
    "ann_submit_s",
    "ann_page",
    "ann_hover_count",
)
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1", "box_class")

RECORD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("wnid", pa.string()),
        pa.field("label", _i32, nullable=False),
        pa.field("labels", pa.list_(_i32), nullable=False),
        pa.field("width", _i32, nullable=False),
        pa.field("height", _i32, nullable=False),
        pa.field("point_x", _f32),
        pa.field("point_y", _f32),
        pa.field("n_clicks", _i32, nullable=False),
        pa.field("n_trace", _i32, nullable=False),
        # click events: ImageNet-AB select clicks; COCO-AB final class-icon positions
        pa.field("click_x", pa.list_(_f32), nullable=False),
        pa.field("click_y", pa.list_(_f32), nullable=False),
        pa.field("click_t", pa.list_(_i64), nullable=False),
        pa.field("click_class", pa.list_(_i32), nullable=False),
        pa.field("click_ann", pa.list_(_i16), nullable=False),
        # mouse trace samples, in recorded order, annotation by annotation
        pa.field("trace_x", pa.list_(_f32), nullable=False),
        pa.field("trace_y", pa.list_(_f32), nullable=False),
        pa.field("trace_t", pa.list_(_i64), nullable=False),
        pa.field("trace_ann", pa.list_(_i16), nullable=False),
        # one entry per annotation (ImageNet-AB <metadata> block; COCO-AB record)
        pa.field("ann_worker", pa.list_(pa.string()), nullable=False),
        pa.field("ann_task", pa.list_(pa.string()), nullable=False),
        pa.field("ann_selected", pa.list_(pa.bool_()), nullable=False),
        pa.field("ann_duration_ms", pa.list_(_i32), nullable=False),
        pa.field("ann_submit_s", pa.list_(_i64), nullable=False),
        pa.field("ann_page", pa.list_(_i16), nullable=False),
        pa.field("ann_hover_count", pa.list_(_i32), nullable=False),
        # object boxes where the release has them (ILSVRC boxes), normalised like the points
        pa.field("box_x0", pa.list_(_f32), nullable=False),
        pa.field("box_y0", pa.list_(_f32), nullable=False),
        pa.field("box_x1", pa.list_(_f32), nullable=False),
        pa.field("box_y1", pa.list_(_f32), nullable=False),
        pa.field("box_class", pa.list_(_i32), nullable=False),
    ]
)

JPEG_FIELD = pa.field("jpeg", pa.binary())


def record_schema(with_jpeg: bool = False, metadata: dict | None = None) -> pa.Schema:
    """The record schema, optionally with the JPEG bytes column and our metadata attached."""
    schema = RECORD_SCHEMA.append(JPEG_FIELD) if with_jpeg else RECORD_SCHEMA
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    return schema


def read_metadata(schema: pa.Schema) -> dict:
    """Our metadata (class list, source kind, options) from a schema, or {} if absent."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
