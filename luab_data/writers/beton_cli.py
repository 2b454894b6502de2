"""The .beton part of `luab-data build`: its options, recipe merging and the call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from luab_data.beton.fields import WRITE_MODES, label_width
from luab_data.ingest import Summary, resolve_images
from luab_data.recipes import beton_options
from luab_data.sources import detect_kind, open_source, read_class_file
from luab_data.sources.interchange import RECORDS
from luab_data.sources.parquet import PARQUET
from luab_data.sources.sharding import parse_shard
from luab_data.writers.beton import build_beton

__all__ = ["beton_build_options", "output_format", "run_beton_build"]


def _map_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    """'64' or '48x64' (rows x columns)."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter("expected N or HxW, e.g. 64 or 48x64") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise click.BadParameter("expected N or HxW with positive sizes")
    return (parts[0], parts[-1])


def _sigma(ctx, param, value: str | None) -> tuple[float, str] | None:
    """'0.03' (fraction of the image's long side) or '12px' (original pixels)."""
    if value is None:
        return None
    units = "px" if value.endswith("px") else "long_side"
    try:
        return float(value.removesuffix("px")), units
    except ValueError:
        raise click.BadParameter("expected a number, e.g. 0.03 or 12px") from None


_OPTIONS = [
    click.option("--recipe", default=None,
                 help="Build settings from luab_data/pipelines/<NAME>.json (imagenet-ab, coco-ab, "
                 "sample) or a .json path; options given here win."),
    click.option("--map-size", callback=_map_size, default=None,
                 help=".beton: attention map cells, N or HxW  [default: 64]"),
    click.option("--sigma", callback=_sigma, default=None,
                 help=".beton: Gaussian sigma, a fraction of the long side (0.03) or pixels "
                 "(12px)  [default: 0.03]"),
    click.option("--max-resolution", type=int, default=None,
                 help=".beton: longest stored image side, 0 keeps the original  [default: 500]"),
    click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None,
                 help=".beton: JPEG quality of stored images  [default: 90]"),
    click.option("--write-mode", type=click.Choice(WRITE_MODES), default=None,
                 help=".beton: FFCV image storage  [default: proportion]"),
    click.option("--compress-probability", type=click.FloatRange(0, 1), default=None,
                 help=".beton: share of JPEG images in 'proportion' mode  [default: 0.5]"),
    click.option("--trace-points", type=click.IntRange(1), default=None,
                 help=".beton: trace resampled to K points  [default: 32]"),
    click.option("--per-class-maps/--no-per-class-maps", default=None,
                 help=".beton, COCO-AB: one click map per class instead of one for all."),
    click.option("--no-byproducts", is_flag=True,
                 help=".beton: images and labels only (FFCV's plain recipe, for comparison)."),
    click.option("--max-pixels", type=click.IntRange(1), default=None,
                 help=".beton: images whose header declares more pixels are rejected "
                 "(bad-image) without being decoded  [default: 100000000]"),
    click.option("--size-tolerance", type=click.FloatRange(0), default=None,
                 help=".beton: images whose declared width or height differs from the "
                 "record's by more than this share (+2 px) are rejected  [default: 0.05]"),
]  # fmt: skip


def beton_build_options(f):
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def output_format(out: str, recipe: dict) -> str:
    if str(out).endswith(".beton"):
        return "beton"
    return recipe.get("build", {}).get("format", "parquet")


def merged_build(recipe: dict, given: dict[str, Any]) -> dict[str, Any]:
    """The recipe's build settings with the command-line options laid over them."""
    build = dict(recipe.get("build", {}))
    if given.get("sigma") is not None:
        build["sigma"], build["sigma_units"] = given["sigma"]
    if given.get("max_resolution") is not None:
        build["max_resolution"] = given["max_resolution"] or None
    if given.get("no_byproducts"):
        build["byproducts"] = False
    for key in ("map_size", "jpeg_quality", "write_mode", "compress_probability",
                "trace_points", "per_class_maps", "max_pixels", "size_tolerance"):  # fmt: skip
        if given.get(key) is not None:
            build[key] = given[key]
    return build


def run_beton_build(src, kind, classes_file, coco_policy, images, out, shard, strict, overwrite,
                    workers, quiet, recipe: dict, given: dict) -> Summary:  # fmt: skip
    """Open the source and pack it. Official releases check the images themselves (missing
    ones are rejected while reading); records and Parquet get the folder at packing time.
    `images` may be the folder holding train/ (train2014/) or that folder itself."""
    if not str(out).endswith(".beton"):
        raise ValueError(f"--out {out}: a .beton output needs a file name ending in .beton")
    if given.get("with_images"):
        raise ValueError("--with-images is for Parquet: a .beton always holds the images")
    kind = kind or detect_kind(Path(src))
    own_images = kind not in (RECORDS, PARQUET)
    notes: list[str] = []
    if images:
        images, note = resolve_images(images, kind)
        notes.append(note)
    classes = read_class_file(classes_file) if classes_file else None
    source = open_source(src, kind, classes=classes, coco_policy=coco_policy, workers=workers,
                         images=images if own_images else None)  # fmt: skip
    options = beton_options(merged_build(recipe, given), label_width(source.metadata()))
    return build_beton(source, Path(out), parse_shard(shard), options=options,
                       images=Path(images) if images else None, strict=strict,
                       overwrite=overwrite, workers=workers, show_progress=not quiet,
                       notes=notes)  # fmt: skip
