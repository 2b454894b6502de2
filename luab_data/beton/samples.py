"""Record -> sample: what a block of records becomes in a .beton, for the writer and `verify`.

`block_arrays` computes the labels and byproduct arrays of a slice of records (maps rasterised
a block at a time by the numba kernels); `PackSamples` is the indexable dataset FFCV's writer
processes read, which adds each sample's image (header checked, then decoded) and flags
failures in shared memory instead of raising (an exception in a writer process makes FFCV's
writer wait for ever).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import suppress
from dataclasses import dataclass, field, replace
from multiprocessing import RawArray
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from luab_data.beton.fields import (
    IMAGE,
    INDEX,
    LABEL,
    LABELS,
    MAP,
    POINT,
    SIZE,
    TRACE,
    BetonOptions,
)
from luab_data.beton.images import check_image, decode_rgb, read_image
from luab_data.records import Reject

BAD_IMAGE = "bad-image"  # reject reason: unreadable, undecodable, too large or not the record's
FAILED_IMAGE, FAILED_OTHER = 1, 2  # PackSamples.failures: the image, or anything else


# ---------------------------------------------------------------- per block of records


@dataclass
class Block:
    """Everything but the pixels for records [start, start + len)."""

    start: int
    labels: np.ndarray
    images: list  # relative paths, or JPEG bytes when the records carry them
    keys: list = field(default_factory=list)
    maps: np.ndarray | None = None
    points: np.ndarray | None = None
    traces: np.ndarray | None = None
    sizes: np.ndarray | None = None  # (N, 2) int32 record (width, height)


def block_arrays(table: pa.Table, start: int, options: BetonOptions, n_labels: int) -> Block:
    """Labels and byproduct arrays of a slice of records (what `verify` recomputes too)."""
    from luab_data.raster import fixed_arrays, rasterise_batch

    images = table.column("jpeg" if "jpeg" in table.column_names else "image").to_pylist()
    sizes = [table.column(c).to_numpy(zero_copy_only=False) for c in ("width", "height")]
    block = Block(
        start,
        _labels(table, n_labels),
        images,
        table.column("key").to_pylist(),
        sizes=np.ascontiguousarray(np.stack(sizes, axis=1), np.int32),
    )
    if not options.byproducts:
        return block
    cfg = options.raster
    block.maps = np.ascontiguousarray(rasterise_batch(table, cfg)[0])
    point_cfg = replace(cfg, n_classes=n_labels) if n_labels else cfg
    fixed = fixed_arrays(table, point_cfg, options.trace_points)
    block.points = np.ascontiguousarray(fixed["class_points" if n_labels else "point"], np.float32)
    block.traces = np.ascontiguousarray(fixed["trace"], np.float32)
    return block


def _labels(table: pa.Table, n_labels: int) -> np.ndarray:
    if not n_labels:
        return table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    hot = np.zeros((table.num_rows, n_labels), np.uint8)
    for r, labels in enumerate(table.column("labels").to_pylist()):
        hot[r, [c for c in labels if 0 <= c < n_labels]] = 1
    return hot


def proportion_jpeg(key: str, p: float) -> bool:
    """Which samples `write_mode='proportion'` compresses: decided by a hash of the record's
    key, so a sample is stored alike in every build, sharded or not (the shards of a build
    merge into the file a single build writes). FFCV would draw it from NumPy's generator."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"luab-jpeg").digest()
    return int.from_bytes(digest, "little") / 2.0**64 < p


# ---------------------------------------------------------------- the writer's dataset


class PackSamples:
    """The indexable dataset FFCV's writer processes read: sample tuples in field order.

    It never raises: a failure is flagged in shared memory and a placeholder written, since an
    exception in a writer process makes FFCV's writer wait for ever. The caller then drops the
    flagged samples (bad images) or raises (anything else).
    """

    def __init__(
        self,
        spill: Path,
        n: int,
        fields_: dict[str, Any],
        options: BetonOptions,
        images: Path | None,
        n_labels: int,
        keep: np.ndarray,
    ) -> None:
        self.spill, self.n, self.fields = spill, n, fields_
        self.options, self.images, self.n_labels = options, images, n_labels
        self.position = np.full(n, -1, np.int64)  # source record -> position in the file
        self.position[keep] = np.arange(len(keep))
        self.failures = RawArray("b", n)  # shared with the forked writer processes
        self._pid, self._table, self._blocks = -1, None, {}

    def __len__(self) -> int:
        return self.n

    def table(self) -> pa.Table:
        """The spill, memory-mapped once per process (a worker must not reuse the parent's)."""
        if self._pid != os.getpid():
            self._pid, self._blocks = os.getpid(), {}
            self._table = pa.ipc.open_file(pa.memory_map(str(self.spill))).read_all()
            _single_threaded_numba()  # one writer process per core already
        return self._table

    def block(self, index: int) -> Block:
        start = index - index % self.options.chunk_size
        if start not in self._blocks:
            if len(self._blocks) >= 2:  # a chunk of FFCV's queue spans at most two blocks
                self._blocks.pop(next(iter(self._blocks)))
            rows = self.table().slice(start, self.options.chunk_size)
            self._blocks[start] = block_arrays(rows, start, self.options, self.n_labels)
        return self._blocks[start]

    def __getitem__(self, index: int) -> tuple:
        index = int(index)  # the writers' work comes as numpy arrays of indices
        try:
            return self.sample(index)
        except Exception:
            self.failures[index] = FAILED_OTHER
            return self.placeholder(index)

    def sample(self, index: int) -> tuple:
        block = self.block(index)
        r = index - block.start
        self._set_mode(block.keys[r])
        try:
            image = self.image(block.images[r], block.sizes[r])
        except (OSError, ValueError, cv2.error):
            self.failures[index] = FAILED_IMAGE
            image = np.zeros((8, 8, 3), np.uint8)
        values = {
            IMAGE: image,
            LABEL: block.labels[r],
            LABELS: block.labels[r],
            INDEX: self.position[index],
        }
        if self.options.byproducts:
            values.update(
                {
                    MAP: block.maps[r],
                    POINT: block.points[r],
                    TRACE: block.traces[r],
                    SIZE: block.sizes[r],
                }
            )
        return tuple(values[name] for name in self.fields)

    def placeholder(self, index: int) -> tuple:
        values = {IMAGE: np.zeros((8, 8, 3), np.uint8), INDEX: self.position[index]}
        for name, f in self.fields.items():
            if hasattr(f, "shape"):  # NDArrayField
                values[name] = np.zeros(f.shape, f.dtype)
        values.setdefault(LABEL, 0)
        return tuple(values[name] for name in self.fields)

    def image(self, ref: str | bytes, record_size: np.ndarray) -> np.ndarray:
        """The RGB pixels of an image whose header passed the checks (pixel limit, record's
        size) before it was decoded: memory stays bounded whatever a file declares."""
        opts = self.options
        data = self._image_bytes(ref)
        check_image(
            data, (int(record_size[0]), int(record_size[1])), opts.max_pixels, opts.size_tolerance
        )
        return decode_rgb(data)

    def image_problem(self, index: int) -> Reject:
        """The reject of a sample flagged bad-image by a writer process, found again here
        from the spill's row alone (no maps are rasterised in this process)."""
        table = pa.ipc.open_file(pa.memory_map(str(self.spill))).read_all()
        row = table.slice(index, 1).to_pylist()[0]
        carried = "jpeg" in row  # the records carry the JPEG bytes (Parquet --with-images)
        ref = row["jpeg"] if carried else row["image"]
        if carried:
            where = f"{row['image']} (JPEG bytes carried by the record)"
        else:
            where = str(self.images / ref) if self.images is not None else ref
        try:
            self.image(ref, np.array([row["width"], row["height"]]))
            detail = "the image failed in a writer process (it reads here)"
        except FileNotFoundError:
            detail = "the image file is missing"
        except (OSError, ValueError, cv2.error) as err:
            detail = str(err) or type(err).__name__
        return Reject(row["key"], BAD_IMAGE, detail, where)

    def _image_bytes(self, ref: str | bytes | None) -> bytes:
        if isinstance(ref, bytes):
            return ref
        if ref is None:
            raise OSError("the record carries no JPEG bytes")
        if self.images is None:
            raise OSError("no image folder")
        return read_image(self.images / ref, self.options.max_pixels)

    def _set_mode(self, key: str) -> None:
        """Per-sample JPEG/raw choice of 'proportion' mode, made here deterministically; the
        field object is this process's (forked) copy, read by FFCV right after this call."""
        if self.options.write_mode == "proportion":
            jpg = proportion_jpeg(key, self.options.compress_probability)
            self.fields[IMAGE].write_mode = "jpg" if jpg else "raw"


def _single_threaded_numba() -> None:
    with suppress(Exception):
        import numba

        numba.set_num_threads(1)
