"""The writers' compact allocation table stands in for FFCV's list of allocation tuples: the
allocator makes the same allocations with it (page overflows and their retries included), it
reaches the build process as the rows FFCV's own finalize would have written, and our
supervised writer writes the very file FFCV's own `DatasetWriter` writes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ffcv.fields import IntField, NDArrayField, RGBImageField
from ffcv.memory_allocator import MemoryAllocator
from ffcv.types import ALLOC_TABLE_TYPE

from luab_data.beton.ffcv_workers import AllocationTable, plain_ffcv_write, write_indexed

PAGE = 1 << 12


def _allocate(path, allocations, samples: list[list[int]]) -> tuple[bytes, int]:
    """FFCV's per-sample protocol: set the sample, malloc its regions; a MemoryError (the sample
    did not fit the rest of a page) retries it once on a fresh page. The file and the retries."""
    retries, allocator = 0, MemoryAllocator(str(path), 0, PAGE)
    allocator.allocations = allocations
    with allocator:
        for sid, sizes in enumerate(samples):
            for attempt in range(2):
                try:
                    allocator.set_current_sample(sid)
                    for size in sizes:
                        _, buffer = allocator.malloc(size)
                        buffer[:] = sid % 251
                    break
                except MemoryError:
                    retries += 1
                    if attempt:
                        raise
    return path.read_bytes(), retries


def test_same_allocations_and_file_as_ffcv_list(tmp_path):
    rng = np.random.default_rng(0)
    # several regions a sample, sometimes most of a page: samples spill over pages and retry
    samples = [rng.integers(1, PAGE // 3, rng.integers(1, 4)).tolist() for _ in range(300)]
    as_list = _allocate(tmp_path / "list.bin", listed := [], samples)
    as_table = _allocate(tmp_path / "table.bin", table := AllocationTable(capacity=8), samples)
    assert as_table == as_list and as_table[1] > 10  # samples were retried on fresh pages
    assert len(table) == len(listed) == sum(map(len, samples))  # grew from 8; retries undone
    got = pickle.loads(pickle.dumps(table))
    assert isinstance(got, np.ndarray) and got.dtype == ALLOC_TABLE_TYPE
    assert got.tobytes() == np.array(listed, ALLOC_TABLE_TYPE).tobytes()


def test_list_operations_the_allocator_uses():
    table = AllocationTable(capacity=2)
    assert not table and len(table) == 0
    with pytest.raises(IndexError):
        table[-1]
    for row in [(0, 100, 5), (0, 105, 7), (1, 112, 3)]:
        table.append(row)
    assert table and len(table) == 3 and table[-1] == (1, 112, 3) and table[0] == (0, 100, 5)
    assert table.pop() == (1, 112, 3) and table[-1][0] == 0 and len(table) == 2
    table.pop(), table.pop()
    with pytest.raises(IndexError):
        table.pop()


class _Varied:
    """Images of many sizes (samples end at every place of a page), a label and an array."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(1)
        sides = rng.integers(8, 600, (n, 2))
        self.items = [
            (
                rng.integers(0, 256, (h, w, 3), np.uint8),
                int(i % 7),
                rng.random(5, dtype=np.float32),
            )
            for i, (h, w) in enumerate(sides.tolist())
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return self.items[i]


def _fields() -> dict:
    return {
        "image": RGBImageField(write_mode="raw"),
        "label": IntField(),
        "vector": NDArrayField(np.dtype("float32"), (5,)),
    }


@pytest.mark.timeout(300)
def test_supervised_writer_writes_ffcvs_file(tmp_path):
    """One writer of each (several make the page order a race): byte for byte the same file."""
    data = _Varied(150)
    ours, theirs = tmp_path / "ours.beton", tmp_path / "theirs.beton"
    write_indexed(str(ours), _fields(), data, range(len(data)), workers=1)
    plain_ffcv_write(str(theirs), _fields(), data, workers=1)
    assert ours.stat().st_size > 3 * (8 << 20)  # several of FFCV's 8 MiB pages
    assert ours.read_bytes() == theirs.read_bytes()
