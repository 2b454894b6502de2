"""The pack stage of `luab-data bench`: .beton build rate and file size with vs without the
byproduct fields. The measurements live in bench_load.py (one data set, one set of builds)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load import pack_entries  # noqa: E402


def run(quick: bool, data: Path, tiny: bool = False) -> list[dict]:
    return pack_entries(quick, data, tiny)
