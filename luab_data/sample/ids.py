"""Random identifiers shaped like the releases' (crowd-platform ids, task hashes, worker ids)."""

from __future__ import annotations

import numpy as np

HEX_UPPER = np.frombuffer(b"0123456789ABCDEF", np.uint8)
HEX_LOWER = np.frombuffer(b"0123456789abcdef", np.uint8)
ALNUM_UPPER = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)


def random_ids(rng: np.random.Generator, n: int, length: int, alphabet: np.ndarray) -> list[str]:
    """n random strings of `length` characters from `alphabet` (one vectorised draw)."""
    codes = alphabet[rng.integers(0, len(alphabet), (n, length))]
    raw = codes.tobytes().decode("ascii")
    return [raw[i * length : (i + 1) * length] for i in range(n)]


def worker_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Anonymised annotator ids: 10 upper-case hex characters, all distinct."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        for s in random_ids(rng, n - len(ids), 10, HEX_UPPER):
            if s not in seen:
                seen.add(s)
                ids.append(s)
    return ids


def mturk_ids(rng: np.random.Generator, n: int) -> list[str]:
    """30-character assignment / HIT ids of the crowd platform."""
    return random_ids(rng, n, 30, ALNUM_UPPER)


def task_hashes(rng: np.random.Generator, n: int) -> list[str]:
    """32 lower-case hex characters (internal task ids)."""
    return random_ids(rng, n, 32, HEX_LOWER)
