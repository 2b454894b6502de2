"""The files of one .beton build (`X.beton`, or `X-<i>-of-<n>.beton` with --shard i/n):

X.beton                 renamed into place from X.beton.tmp once complete
X.beton.rejects.jsonl   rejected records (key, reason, detail, where)
X.beton.json            the manifest, written last: its presence marks the shard complete
"""

from __future__ import annotations

import re
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


class ShardsNotMerged(ValueError):
    """A loader was given the shards of a build instead of one dataset."""


_SHARD_NAME = re.compile(r".+-(\d{5})-of-(\d{5})\.beton")


def refuse_shards(path: str | Path) -> None:
    """A loader reads one whole dataset: a folder of shards, or one shard of an `i/n` build,
    is refused with the command that joins them (by name: no manifest is read)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(p for p in path.glob("*.beton") if _SHARD_NAME.fullmatch(p.name))
        if shards:
            merged = path / "merged.beton"
            raise ShardsNotMerged(
                f"{path} is a folder of {len(shards)} shards, not a dataset: "
                f"join them first with `luab-data merge {merged} {path}`"
            )
        return
    match = _SHARD_NAME.fullmatch(path.name)
    if match and int(match.group(2)) > 1:
        joined = path.with_name(path.name[: match.start(1) - 1] + ".beton")
        pattern = path.parent / (joined.stem + "-*-of-*.beton")
        raise ShardsNotMerged(
            f"{path} is shard {int(match.group(1))}/{int(match.group(2))} of "
            f"a sharded build: join the shards first with `luab-data merge "
            f"{joined} {pattern}`"
        )
