"""What counts as a bad record: the reasons and the bounds every reader applies alike."""

from __future__ import annotations

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

# Normalised coordinates: the pointer may leave the image a little (FORMATS.md); a value far
# outside the image is a recording or export error, not a trace.
COORD_MIN = -1.0
COORD_MAX = 2.0

# ImageNet-AB times are epoch milliseconds (13 digits): anything outside 2000..2100 is absurd.
EPOCH_MS_MIN = 946_684_800_000
EPOCH_MS_MAX = 4_102_444_800_000
# COCO-AB times are milliseconds since the page started: more than a day on a page is absurd.
PAGE_MS_MAX = 86_400_000


def coord_ok(v: float) -> bool:
    """Finite and not absurdly far outside the image (NaN fails every comparison)."""
    return COORD_MIN <= v <= COORD_MAX
