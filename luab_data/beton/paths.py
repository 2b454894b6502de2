"""The files of one .beton build (`X.beton`, or `X-<i>-of-<n>.beton` with --shard i/n):

  X.beton                 renamed into place from X.beton.tmp once complete
  X.beton.rejects.jsonl   rejected records (key, reason, detail, where)
  X.beton.json            the manifest, written last: its presence marks the shard complete
"""

from __future__ import annotations

from pathlib import Path


def beton_path(out: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """The file of one shard: `out` itself, or `<stem>-<i>-of-<n>.beton` beside it (the shard
    tag of the Parquet parts: zero-padded to five digits)."""
    out = Path(out)
    if shard[1] == 1:
        return out
    return out.with_name(f"{out.stem}-{shard[0]:05d}-of-{shard[1]:05d}{out.suffix}")


def manifest_path(beton: Path) -> Path:
    return Path(beton).with_name(Path(beton).name + ".json")


def rejects_path(beton: Path) -> Path:
    return Path(beton).with_name(Path(beton).name + ".rejects.jsonl")
