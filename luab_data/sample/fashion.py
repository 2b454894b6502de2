"""Fashion-MNIST items: the real objects of the sample, read from the IDX gz files with numpy."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DIR = "LUAB_FASHION_MNIST"  # override where the IDX files live
ITEM_SIZE = 28
_INK = 24  # pixel value above which an item pixel counts as object (tight box, alpha)


def fashion_dir() -> Path:
    return Path(os.environ.get(ENV_DIR, DEFAULT_DIR))


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (big-endian header: magic, dims) from a .gz file."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@dataclass(frozen=True)
class Items:
    """One Fashion-MNIST file pair with each item's tight box in the 28x28 grid."""

    images: np.ndarray  # (n, 28, 28) uint8
    labels: np.ndarray  # (n,) uint8
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 in grid units (x1, y1 exclusive)
    by_class: tuple[np.ndarray, ...]  # item indices of each class
    by_class_table: np.ndarray  # (10, max class size) the same, padded, for vectorised picks
    class_sizes: np.ndarray  # (10,)


def _tight_boxes(images: np.ndarray) -> np.ndarray:
    ink = images > _INK
    cols, rows = ink.any(axis=1), ink.any(axis=2)
    idx = np.arange(ITEM_SIZE)
    big = ITEM_SIZE + 1
    x0 = np.where(cols, idx, big).min(axis=1)
    x1 = np.where(cols, idx, -1).max(axis=1) + 1
    y0 = np.where(rows, idx, big).min(axis=1)
    y1 = np.where(rows, idx, -1).max(axis=1) + 1
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


@lru_cache(maxsize=2)
def load_items(part: str = "train") -> Items:
    """`part` is "train" (60,000 items, for the training split) or "t10k" (10,000, held out)."""
    root = fashion_dir()
    images = read_idx(root / f"{part}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{part}-labels-idx1-ubyte.gz")
    keep = (images > _INK).sum(axis=(1, 2)) >= 20  # drop (rare) near-empty items
    images, labels = images[keep], labels[keep]
    by_class = tuple(np.flatnonzero(labels == c) for c in range(10))
    sizes = np.array([len(b) for b in by_class])
    table = np.zeros((10, sizes.max()), np.int64)
    for c, b in enumerate(by_class):
        table[c, : len(b)] = b
    return Items(images, labels, _tight_boxes(images), by_class, table, sizes)
