"""Planted bad records (`--corrupt FRACTION`): each exercises one reject reason of the readers.

The plan picks round(fraction * n) training records and gives each one reason, cycling through
the reasons of the kind. A record that cannot carry its reason (no trace to disorder, no icon
to rename) gets "bad-field" instead; planted.jsonl records what was actually planted, with the
key the readers report (ImageNet-AB: the stem; COCO-AB: the image id, which a malformed
element still starts with) and where (archive member, or "<file>[<element index>]").
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from luab_data.sample.imagenet_ab import XmlRecord
from luab_data.sample.official_format import Repeated
from luab_data.sources.validation import (  # the readers' reject reasons, planted on purpose
    BAD_COORDINATES,
    BAD_FIELD,
    BAD_TIMES,
    DUPLICATE_KEY,
    MALFORMED_JSON,
    MALFORMED_XML,
    MISSING_IMAGE,
    UNKNOWN_CLASS,
    ZERO_SIZE,
)

IMAGENET_REASONS = (
    MALFORMED_XML,
    BAD_FIELD,
    UNKNOWN_CLASS,
    BAD_COORDINATES,
    BAD_TIMES,
    ZERO_SIZE,
    MISSING_IMAGE,
    DUPLICATE_KEY,
)
COCO_REASONS = (
    MALFORMED_JSON,
    BAD_FIELD,
    UNKNOWN_CLASS,
    BAD_COORDINATES,
    BAD_TIMES,
    ZERO_SIZE,
    MISSING_IMAGE,
    DUPLICATE_KEY,
)
UNKNOWN_WNID = "n00000001"  # well-formed but not one of the sample's (or ImageNet's) classes
UNKNOWN_ICON = "unicorn"
ABSURD = 1.0e6  # a coordinate no pointer can produce (readers accept -1..2)
# Bad fields, cycled per record: unparsable text, and numbers outside what the record column
# holds (int32 sizes and durations, int16 pages) or below zero (a negative duration or size).
XML_BAD_FIELDS = (
    ("originalImageHeight", "tall"),
    ("originalImageHeight", 3_000_000_000),
    ("page_idx", 70_000),
    ("estimateTime", -5000),
    ("hoveredCount", 3_000_000_000),
)
COCO_BAD_FIELDS = (
    ("originalImageWidth", "text"),  # a number as a JSON string: unusable
    ("originalImageWidth", 3_000_000_000),
    ("page_id", 70_000),
    ("timeSpent", -5000),
    ("originalImageHeight", -480),
)


def plan(n: int, fraction: float, reasons: tuple[str, ...], rng) -> dict[int, str]:
    """Which training records to spoil, and how (record index -> reason)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--corrupt must be a fraction in [0, 1], got {fraction}")
    k = int(round(fraction * n))
    chosen = np.sort(rng.choice(n, k, replace=False)) if k else np.zeros(0, int)
    order = rng.permutation(k)
    return {int(chosen[j]): reasons[order[j] % len(reasons)] for j in range(k)}


# ---------------------------------------------------------------- ImageNet-AB


def _first_with(blocks: list, field: str, minimum: int) -> Repeated | None:
    for b in blocks:
        if len(b[field]) >= minimum:
            return b[field]
    return None


def spoil_xml_record(rec: XmlRecord, reason: str, serial: int) -> tuple[XmlRecord, str]:
    """A spoilt copy of a record (XML-level reasons), and the reason it really carries;
    `serial` (unique per record) names a record moved to the unknown class."""
    rec = copy.deepcopy(rec)
    blocks = rec.metadata
    if reason == BAD_COORDINATES:
        rep = _first_with(blocks, "selectedRecord", 1) or _first_with(blocks, "mouseTracking", 1)
        if rep is not None:
            rep.columns["x"] = ["nan"] + list(rep.columns["x"])[1:]
            return rec, reason
    elif reason == BAD_TIMES:
        rep = _first_with(blocks, "mouseTracking", 2)
        if rep is not None:
            t = list(rep.columns["time"])
            t[0], t[1] = t[1], t[0]
            rep.columns["time"] = t
            return rec, reason
    elif reason == ZERO_SIZE:
        for b in blocks:
            b["originalImageWidth"] = 0
        if rec.box_part is not None:
            rec.box_part["size"]["width"] = 0
        return rec, reason
    elif reason == UNKNOWN_CLASS:
        rec.wnid, rec.stem = UNKNOWN_WNID, f"{UNKNOWN_WNID}_{serial}"
        for b in blocks:
            b["imageID"] = f"{rec.wnid}/{rec.stem}"
        if rec.box_part is not None:
            rec.box_part["folder"], rec.box_part["filename"] = rec.wnid, rec.stem
            for obj in rec.box_part["object"]:
                obj["name"] = rec.wnid
        return rec, reason
    name, value = XML_BAD_FIELDS[serial % len(XML_BAD_FIELDS)]
    for b in blocks:  # BAD_FIELD, and the fallback of the reasons above
        b[name] = value
    return rec, BAD_FIELD


def break_xml(data: bytes) -> bytes:
    """Cut a document short inside its first <metadata> block: not well-formed any more."""
    at = data.find(b"<metadata>")
    return data[: at + len(b"<metadata>") + 40]


# ---------------------------------------------------------------- COCO-AB


def spoil_coco_record(rec: dict, reason: str) -> tuple[dict, str]:
    """A spoilt copy of a COCO-AB element (object-level reasons) and the reason it carries."""
    rec = copy.deepcopy(rec)
    adds = [a for a in rec["actionHistories"] if a["actionType"] == "add"]
    if reason == UNKNOWN_CLASS and adds:
        adds[0]["iconType"] = UNKNOWN_ICON
        return rec, reason
    if reason == BAD_COORDINATES and adds:
        adds[0]["pointTo"]["x"] = ABSURD
        return rec, reason
    if reason == BAD_TIMES:
        trace, actions = rec["mouseTracking"], rec["actionHistories"]
        series = trace if len(trace) >= 2 else actions if len(actions) >= 2 else None
        if series is not None:  # (COCO-AB traces are often empty: then the icon actions)
            series[0]["timeAt"], series[1]["timeAt"] = series[1]["timeAt"], series[0]["timeAt"]
            return rec, reason
    if reason == ZERO_SIZE:
        rec["originalImageWidth"] = rec["originalImageHeight"] = 0
        return rec, reason
    name, value = COCO_BAD_FIELDS[int(rec["image_id"]) % len(COCO_BAD_FIELDS)]
    rec[name] = str(rec[name]) if value == "text" else value
    return rec, BAD_FIELD


def break_json(text: str) -> str:
    """Drop the comma after the first field (image_id): the element no longer parses as JSON,
    but its key can still be read from its start."""
    return text.replace(", ", " ", 1)


# ---------------------------------------------------------------- manifest


def write_manifest(path: Path, planted: list[dict]) -> None:
    """planted.jsonl: one {"key", "reason", "where"} per planted record, in file order."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in planted:
            fh.write(json.dumps(row) + "\n")
