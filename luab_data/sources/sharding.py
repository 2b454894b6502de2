"""Which shard a record belongs to: a stable hash of its key, so duplicates share a shard."""

from __future__ import annotations

import zlib


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard expects i/n such as 0/4, got {text!r}") from err
    if not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    index, count = shard
    return count == 1 or zlib.crc32(key.encode()) % count == index
