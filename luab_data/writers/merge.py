"""`luab-data merge`: the shards of one build joined into one .beton, committed atomically
(`OUT.tmp` renamed in, rejects joined, the manifest written last)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from luab_data.beton.integrity import check_beton
from luab_data.beton.merge import (
    check_shards,
    find_shards,
    in_shard_order,
    merged_manifest,
    read_manifests,
    write_merged,
)
from luab_data.beton.paths import manifest_path, rejects_path
from luab_data.writers.atomic import write_json_atomic


def merge_betons(out: Path, inputs: Iterable[str | Path], *, overwrite: bool = False) -> dict:
    """Join shards into `out` (atomic: `out.tmp` renamed in, the manifest written last);
    returns the new manifest."""
    out = Path(out)
    shards = [s for s in find_shards(inputs) if s.resolve() != out.resolve()]
    manifests = read_manifests(shards)
    check_shards(shards, manifests)
    shards, manifests = in_shard_order(shards, manifests)
    if manifest_path(out).exists() and not overwrite:
        raise FileExistsError(f"{manifest_path(out)} exists (use --overwrite to replace it)")
    layouts = [check_beton(s, m) for s, m in zip(shards, manifests, strict=True)]
    start, tmp = time.perf_counter(), out.with_name(out.name + ".tmp")
    manifest_path(out).unlink(missing_ok=True)
    try:
        write_merged(tmp, layouts)
        manifest = merged_manifest(out, tmp, shards, manifests, time.perf_counter() - start)
        _join_rejects(out, shards)
        os.replace(tmp, out)
        write_json_atomic(manifest_path(out), manifest)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def _join_rejects(out: Path, shards: list[Path]) -> None:
    target = rejects_path(out)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as dst:
        for shard in shards:
            if rejects_path(shard).is_file():
                dst.write(rejects_path(shard).read_bytes())
    os.replace(tmp, target)
