"""Random access to the samples of a .beton with NumPy and OpenCV only (no FFCV pipeline).

FFCV's Loader compiles a pipeline per construction (seconds) and hangs on errors; reading a
field of one sample needs only the file's metadata table and allocation table. The reference
loader, `verify`, `show`, the tests and the DALI bridge read samples this way. Opening checks
the file's structure and size first (`integrity.check_beton`): a missing, foreign,
truncated or damaged file is one `FileNotFoundError` or `BetonError` (a ValueError).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from ffcv.fields import IntField, NDArrayField, RGBImageField

from luab_data.beton.fields import RAW_MODE
from luab_data.beton.integrity import check_beton

__all__ = ["BetonFile", "is_beton"]


class BetonFile:
    """One .beton, memory-mapped. Fields by name; per sample arrays, scalars and images."""

    def __init__(self, path: str | Path) -> None:
        layout = check_beton(path)
        self.path = layout.path
        self.handlers = dict(layout.handlers)
        self.names = list(self.handlers)
        self._meta = layout.metadata
        table = np.sort(layout.alloc_table, order="ptr")
        self._ptrs = table["ptr"].astype(np.int64)
        self._sizes = table["size"].astype(np.int64)
        self._data = np.memmap(self.path, np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self._meta)

    def metadata(self, name: str) -> np.ndarray:
        """The metadata column of a field (IntField: the values; images: mode/width/height)."""
        return self._meta[f"f{self.names.index(name)}"]

    def kind(self, name: str) -> type:
        return type(self.handlers[name])

    def raw(self, name: str, index: int) -> np.ndarray:
        """The stored bytes of one sample's field (a read-only view into the file)."""
        meta = self.metadata(name)[index]
        ptr = int(meta["data_ptr"] if self.kind(name) is RGBImageField else meta)
        slot = int(np.searchsorted(self._ptrs, ptr))
        if slot >= len(self._ptrs) or self._ptrs[slot] != ptr:
            raise ValueError(f"{self.path}: sample {index} of {name!r} points at no allocation")
        return self._data[ptr : ptr + self._sizes[slot]]

    def array(self, name: str, index: int) -> np.ndarray:
        """An NDArrayField value of one sample (a view; copy it to keep it writable)."""
        field = self.handlers[name]
        if not isinstance(field, NDArrayField):
            raise TypeError(f"{name!r} is a {type(field).__name__}, not an NDArrayField")
        n = int(np.prod(field.shape)) * field.dtype.itemsize
        return self.raw(name, index)[:n].view(field.dtype).reshape(field.shape)

    def arrays(self, name: str, indices: np.ndarray | None = None) -> np.ndarray:
        """Values of an IntField (the metadata column) or NDArrayField stacked over samples."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        field = self.handlers[name]
        if isinstance(field, IntField):
            return np.asarray(self.metadata(name)[indices], np.int64)
        n = int(np.prod(field.shape)) * field.dtype.itemsize
        out = np.empty((len(indices), n), np.uint8)
        for row, ptr in enumerate(self.metadata(name)[indices].tolist()):
            out[row] = self._data[ptr : ptr + n]
        return out.view(field.dtype).reshape(len(indices), *field.shape)

    def image_size(self, name: str = "image") -> np.ndarray:
        """(N, 2) stored (width, height) of every image."""
        meta = self.metadata(name)
        return np.stack([meta["width"], meta["height"]], axis=1).astype(np.int64)

    def image(self, index: int, name: str = "image") -> np.ndarray:
        """The stored image of one sample, (H, W, 3) uint8 RGB."""
        meta = self.metadata(name)[index]
        height, width = int(meta["height"]), int(meta["width"])
        data = self.raw(name, index)
        if meta["mode"] == RAW_MODE:
            return data[: height * width * 3].reshape(height, width, 3)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (height, width):
            raise ValueError(f"{self.path}: sample {index}: undecodable image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def is_beton(path: str | Path) -> bool:
    """A .beton by name, or an existing file that starts like one (FFCV format version 2)."""
    path = Path(path)
    if path.suffix == ".beton":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(2) == b"\x02\x00"
