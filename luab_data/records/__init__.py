"""Canonical records: the Arrow schema every later stage consumes."""

from luab_data.records.batch import list_array, records_to_batch
from luab_data.records.record import Annotation, Record, Reject, RejectError
from luab_data.records.schema import (
    COCO_AB,
    IMAGENET_AB,
    RECORD_SCHEMA,
    read_metadata,
    record_schema,
)

__all__ = [
    "COCO_AB",
    "IMAGENET_AB",
    "RECORD_SCHEMA",
    "Annotation",
    "Record",
    "Reject",
    "RejectError",
    "list_array",
    "read_metadata",
    "record_schema",
    "records_to_batch",
]
