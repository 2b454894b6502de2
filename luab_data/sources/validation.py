"""What counts as a bad record: the reasons and the bounds every reader applies alike."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from luab_data.records.record import RejectError
from luab_data.records.schema import RECORD_SCHEMA

# Reject reasons (stable strings: the rejects file, the sample's planted.jsonl and tests use them).
MALFORMED_XML = "malformed-xml"
MALFORMED_JSON = "malformed-json"
BAD_FIELD = "bad-field"
UNKNOWN_CLASS = "unknown-class"
BAD_COORDINATES = "bad-coordinates"
BAD_TIMES = "bad-times"
ZERO_SIZE = "zero-size"
MISSING_IMAGE = "missing-image"
DUPLICATE_KEY = "duplicate-key"
UNSAFE_PATH = "unsafe-path"

# Normalised coordinates: the pointer may leave the image a little (docs/RELEASE_FORMATS.md);
# a value far outside the image is a recording or export error, not a trace.
COORD_MIN = -1.0
COORD_MAX = 2.0

# ImageNet-AB times are epoch milliseconds (13 digits): anything outside 2000..2100 is absurd.
EPOCH_MS_MIN = 946_684_800_000
EPOCH_MS_MAX = 4_102_444_800_000
# COCO-AB times are milliseconds since the page started: more than a day on a page is absurd.
PAGE_MS_MAX = 86_400_000

# An annotation file of the releases is a few KB; a member beyond this is not one (and would
# be buffered whole).
MAX_MEMBER_BYTES = 64 << 20


def coord_ok(v: float) -> bool:
    """Finite and not absurdly far outside the image (NaN fails every comparison)."""
    return COORD_MIN <= v <= COORD_MAX


def value_range(column: str | pa.DataType, minimum: int | None = None) -> tuple[int, int]:
    """The integers a field may hold: what its record column's Arrow type holds (list columns:
    their items), from `minimum` up. Every reader checks its integer fields against this."""
    type_ = RECORD_SCHEMA.field(column).type if isinstance(column, str) else column
    if pa.types.is_list(type_):
        type_ = type_.value_type
    info = np.iinfo(type_.to_pandas_dtype())
    low = int(info.min) if minimum is None else max(int(minimum), int(info.min))
    return low, int(info.max)


def range_table(fields: dict[str, tuple[str | pa.DataType, int | None]]) -> np.ndarray:
    """(low, high) rows, in the order of `fields` (release field -> (column, minimum))."""
    return np.array([value_range(c, m) for c, m in fields.values()], np.int64).reshape(-1, 2)


def range_detail(field: str, value: object, column: str | pa.DataType, minimum=None) -> str:
    """What a bad-field reject says about a value outside value_range."""
    low, high = value_range(column, minimum)
    target = column if isinstance(column, str) else str(column)
    return f"{field} = {value} is out of range {low}..{high} (stored as {target})"


# An image path that could leave the images folder: absolute, a '.' or '..' component, an empty
# component, a backslash or a NUL (Python re and Arrow's RE2 read it alike).
UNSAFE_RELATIVE = r"^/|^[A-Za-z]:|(^|/)\.\.?(/|$)|//|\\|\x00|^$"


def image_file(images: Path, relative: str) -> Path:
    """images / relative, for a relative path built from validated names (an ImageNet wnid and
    stem, or an integer COCO id); refuses, as a second line of defence, anything that could
    leave the folder."""
    if re.search(UNSAFE_RELATIVE, relative):
        raise RejectError(UNSAFE_PATH, f"image path {relative!r} would leave {images}")
    return images / relative
