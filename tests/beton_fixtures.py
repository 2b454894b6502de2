"""Small generated samples of both kinds and .beton files built from them (shared by the .beton
and reference-loader tests; module-level caches so each is built once per test session)."""

from __future__ import annotations

import functools
from pathlib import Path

from luab_data.beton.fields import BetonOptions
from luab_data.raster import RasterConfig
from luab_data.sample import SampleSpec, generate_sample
from luab_data.sources import open_source
from luab_data.writers.beton import build_beton

N_RECORDS = 60
# long side 128 px: part of the sample's 64-200 px images are resized on the way in
OPTIONS = BetonOptions(raster=RasterConfig(size=(16, 24)), trace_points=8, max_resolution=128)
SOURCES = {"imagenet-ab": "imagenet_ab_v1_0.tar.gz", "coco-ab": "coco_ab_v1_0.json"}


@functools.cache
def sample_dir(root: Path, kind: str) -> Path:
    out = root / kind
    generate_sample(out, SampleSpec(kind=kind, size=N_RECORDS, heldout=1, seed=3))
    return out


def source_path(root: Path, kind: str) -> Path:
    return sample_dir(root, kind) / SOURCES[kind]


@functools.cache
def built(root: Path, kind: str) -> Path:
    """The .beton of a kind's sample, built with OPTIONS through the Python API."""
    folder = sample_dir(root, kind)
    source = open_source(source_path(root, kind), images=folder)
    out = root / f"{kind}.beton"
    build_beton(source, out, options=OPTIONS, workers=2, show_progress=False)
    return out


def stored_samples(path: Path) -> dict[str, dict]:
    """Every stored field of every sample, by key: stored bytes, not decoded values (the
    equality of a merged or distributed build with a single one)."""
    import json

    from luab_data.beton.file import BetonFile
    from luab_data.beton.paths import manifest_path

    beton, keys = BetonFile(path), json.loads(manifest_path(path).read_text())["keys"]
    out = {}
    for i, key in enumerate(keys):
        fields = {n: bytes(beton.raw(n, i)) for n in beton.names if n not in ("label", "index")}
        meta = beton.metadata("image")[i]
        fields["image-meta"] = (int(meta["mode"]), int(meta["width"]), int(meta["height"]))
        fields["label"] = int(beton.arrays("label", [i])[0])
        out[key] = fields
    return out
