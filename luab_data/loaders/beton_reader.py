"""Read a .beton without FFCV's loader: field metadata from ``ffcv.reader.Reader``, sample bytes
as slices of a read-only memory map of the file.

Layout facts this relies on (FFCV 1.0.2, ``ffcv/reader.py``, ``ffcv/types.py``, ``ffcv/fields``):

* one metadata record per sample, one sub-record ``f<i>`` per field, in field order;
* ``IntField``/``FloatField`` keep their value *in* the metadata (no data region);
* ``RGBImageField`` keeps (mode, width, height, data_ptr): ``mode`` 0 is a JPEG stream, 1 raw
  (H, W, 3) uint8 RGB; ``NDArrayField`` keeps the pointer only, its size is fixed by the field;
* the allocation table lists (sample_id, ptr, size) of every data region, so the byte length of
  a JPEG is the size of the allocation that starts at its ``data_ptr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ffcv.fields import FloatField, IntField, NDArrayField, RGBImageField
from ffcv.reader import Reader
from numba import njit

JPEG_MODE, RAW_MODE = 0, 1  # RGBImageField's ``mode`` values


@dataclass(frozen=True)
class ImageTable:
    """Where every sample's stored image lies: per-sample arrays over the whole file."""

    mode: np.ndarray  # uint8, JPEG_MODE or RAW_MODE
    width: np.ndarray  # int64, stored (after the writer's max_resolution) width
    height: np.ndarray  # int64
    ptr: np.ndarray  # int64, byte offset in the file
    nbytes: np.ndarray  # int64, byte length of the JPEG stream or raw pixels

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) int64 (width, height): the raster every crop is drawn on."""
        return np.stack([self.width, self.height], axis=1)


class BetonFile:
    """A .beton opened for random access: ``reader`` (FFCV's), ``data`` (uint8 memory map)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.reader = Reader(self.path)
        self.num_samples = int(self.reader.num_samples)
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        table = self.reader.alloc_table
        order = np.argsort(table["ptr"])
        self._alloc_ptr = table["ptr"][order].astype(np.int64)
        self._alloc_size = table["size"][order].astype(np.int64)

    @property
    def handlers(self) -> dict[str, Any]:
        return self.reader.handlers

    def column(self, name: str) -> np.ndarray:
        """The metadata column of field ``name`` (one entry per sample)."""
        if name not in self.handlers:
            raise KeyError(f"no field {name!r} in {self.path}; fields: {list(self.handlers)}")
        return self.reader.metadata[f"f{list(self.handlers).index(name)}"]

    def allocation_sizes(self, ptrs: np.ndarray) -> np.ndarray:
        """Byte length of the data regions that start at ``ptrs``."""
        at = np.searchsorted(self._alloc_ptr, ptrs)
        if np.any(at >= len(self._alloc_ptr)) or np.any(self._alloc_ptr[at] != ptrs):
            raise ValueError(f"{self.path}: a data pointer is not in the allocation table")
        return self._alloc_size[at]

    def images(self, name: str = "image") -> ImageTable:
        if not isinstance(self.handlers.get(name), RGBImageField):
            raise ValueError(f"no RGB image field {name!r} in {list(self.handlers)}")
        meta = self.column(name)
        ptr = meta["data_ptr"].astype(np.int64)
        return ImageTable(
            mode=meta["mode"].astype(np.uint8),
            width=meta["width"].astype(np.int64),
            height=meta["height"].astype(np.int64),
            ptr=ptr,
            nbytes=self.allocation_sizes(ptr),
        )

    def is_scalar(self, name: str) -> bool:
        return isinstance(self.handlers[name], IntField | FloatField)

    def scalars(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Values of an ``IntField`` (int64) or ``FloatField`` (float64) for ``indices``."""
        return np.ascontiguousarray(self.column(name)[indices])

    def ndarray_field(self, name: str) -> NDArrayField:
        field = self.handlers.get(name)
        if not isinstance(field, NDArrayField):
            raise ValueError(f"field {name!r} is not an NDArrayField: {type(field).__name__}")
        return field

    def ndarrays(self, name: str, indices: np.ndarray) -> np.ndarray:
        """(len(indices), *shape) copy of an ``NDArrayField``'s arrays, in its stored dtype."""
        field = self.ndarray_field(name)
        nbytes = int(field.dtype.itemsize * np.prod(field.shape))
        ptrs = self.column(name)[indices].astype(np.int64)
        flat = np.empty((len(ptrs), nbytes), np.uint8)
        gather_regions(self.data, ptrs, flat)
        return flat.view(field.dtype).reshape(len(ptrs), *field.shape)


@njit(cache=True, nogil=True)
def gather_regions(data: np.ndarray, ptrs: np.ndarray, out: np.ndarray) -> None:
    """Copy ``out.shape[1]`` bytes from each ``ptrs[i]`` of ``data`` into row ``i`` of ``out``."""
    width = out.shape[1]
    for i in range(ptrs.shape[0]):
        out[i, :] = data[ptrs[i] : ptrs[i] + width]
