"""Whole-batch reads of a .beton for the DALI source, on top of :mod:`luab_data.beton.file`.

``BetonFile`` reads one sample at a time (a structured-record lookup and a binary
search per call, ~9 µs a sample). The DALI source asks for whole batches on the consumer's
thread, so this subclass looks every image's offset and byte length up once, then serves a
batch with plain slices (JPEG streams) and one compiled copy per field (NDArrayField values),
~1 µs a sample.

Layout facts this relies on (FFCV 1.0.2, ``ffcv/fields``): ``RGBImageField`` metadata is
(mode, width, height, data_ptr), ``mode`` 0 a JPEG stream, 1 raw (H, W, 3) RGB; the byte length
of a region is the size of the allocation-table entry that starts at its pointer;
``NDArrayField`` metadata is the pointer and its size is fixed by the field; ``IntField`` and
``FloatField`` values live in the metadata itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ffcv.fields import FloatField, IntField, NDArrayField, RGBImageField
from numba import njit

from luab_data.beton.file import BetonFile

__all__ = ["BatchBetonFile", "ImageTable", "gather_regions"]


@dataclass(frozen=True)
class ImageTable:
    """Where every sample's stored image lies: per-sample arrays over the whole file."""

    mode: np.ndarray  # uint8, JPEG_MODE or RAW_MODE
    width: np.ndarray  # int64, stored width (after the writer's max_resolution)
    height: np.ndarray  # int64
    ptr: np.ndarray  # int64, byte offset in the file
    nbytes: np.ndarray  # int64, length of the JPEG stream or of the raw pixels

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) int64 (width, height): the raster every crop is drawn on."""
        return np.stack([self.width, self.height], axis=1)


class BatchBetonFile(BetonFile):
    """A memory-mapped .beton with vectorised per-batch access (``data``: the uint8 map)."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def num_samples(self) -> int:
        return len(self)

    def allocation_sizes(self, ptrs: np.ndarray) -> np.ndarray:
        """Byte lengths of the data regions that start at ``ptrs``."""
        at = np.minimum(np.searchsorted(self._ptrs, ptrs), len(self._ptrs) - 1)
        if np.any(self._ptrs[at] != ptrs):
            raise ValueError(f"{self.path}: a data pointer is not in the allocation table")
        return self._sizes[at]

    def image_table(self, name: str = "image") -> ImageTable:
        if not isinstance(self.handlers.get(name), RGBImageField):
            raise ValueError(f"no RGB image field {name!r} in {self.names}")
        meta = self.metadata(name)
        ptr = meta["data_ptr"].astype(np.int64)
        return ImageTable(
            mode=meta["mode"].astype(np.uint8),
            width=meta["width"].astype(np.int64),
            height=meta["height"].astype(np.int64),
            ptr=ptr,
            nbytes=self.allocation_sizes(ptr),
        )

    def field(self, name: str) -> object:
        if name not in self.handlers:
            raise KeyError(f"no field {name!r} in {self.path}; fields: {self.names}")
        return self.handlers[name]

    def value_dtype(self, name: str) -> np.dtype:
        """The dtype of :meth:`gather`'s output for a field."""
        field = self.field(name)
        if isinstance(field, IntField | FloatField):
            return self.metadata(name).dtype.newbyteorder("=")
        return np.dtype(field.dtype)

    def gather(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Values of ``indices``: (N,) for an IntField/FloatField, (N, *shape) for an
        NDArrayField, in the stored dtype (a copy)."""
        field = self.field(name)
        if isinstance(field, IntField | FloatField):
            return self.metadata(name)[indices].astype(self.value_dtype(name))
        if not isinstance(field, NDArrayField):
            raise ValueError(f"field {name!r} is a {type(field).__name__}: no array values")
        nbytes = int(field.dtype.itemsize * np.prod(field.shape))
        ptrs = self.metadata(name)[indices].astype(np.int64)
        flat = np.empty((len(ptrs), nbytes), np.uint8)
        gather_regions(self._data, ptrs, flat)
        return flat.view(field.dtype).reshape(len(ptrs), *field.shape)


# FFCV marks numba's interned *writable* uint8[::1] type read-only at every Loader construction,
# which breaks dispatchers compiled with it; this kernel only takes a read-only 1-D and a 2-D.
@njit(cache=True, nogil=True)
def gather_regions(data: np.ndarray, ptrs: np.ndarray, out: np.ndarray) -> None:
    """Copy ``out.shape[1]`` bytes from each ``ptrs[i]`` of ``data`` into row ``i`` of ``out``."""
    width = out.shape[1]
    for i in range(ptrs.shape[0]):
        out[i, :] = data[ptrs[i] : ptrs[i] + width]
