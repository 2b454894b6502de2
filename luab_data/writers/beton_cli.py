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

__all__ = [
    "beton_build_options",
    "check_inputs",
    "output_format",
    "refuse_inapplicable",
    "run_beton_build",
]


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


def _defaults() -> dict[str, Any]:
    """The build options' defaults as the code defines them (for --help)."""
    from dataclasses import fields

    from luab_data.beton.fields import BetonOptions
    from luab_data.raster.config import RasterConfig

    out = {f.name: f.default for f in fields(BetonOptions)}
    raster = {f.name: f.default for f in fields(RasterConfig)}
    rows, cols = raster["size"]
    out["map_size"] = rows if rows == cols else f"{rows}x{cols}"
    px = raster["sigma_units"] == "px"
    out["sigma"] = f"{raster['sigma']}px" if px else raster["sigma"]
    return out


_D = _defaults()
BETON_ONLY = (
    "map_size",
    "sigma",
    "max_resolution",
    "jpeg_quality",
    "write_mode",
    "compress_probability",
    "trace_points",
    "per_class_maps",
    "no_byproducts",
    "max_pixels",
    "size_tolerance",
)
_OPTIONS = [
    click.option(
        "--recipe",
        default=None,
        help="Build settings from luab_data/pipelines/<NAME>.json (imagenet-ab, coco-ab, "
        "sample) or a .json path; options given here win.",
    ),
    click.option(
        "--map-size",
        callback=_map_size,
        default=None,
        help=f".beton: attention map cells, N or HxW  [default: {_D['map_size']}]",
    ),
    click.option(
        "--sigma",
        callback=_sigma,
        default=None,
        help=".beton: Gaussian sigma, a fraction of the long side (0.03) or pixels "
        f"(12px)  [default: {_D['sigma']}]",
    ),
    click.option(
        "--max-resolution",
        type=int,
        default=None,
        help=".beton: longest stored image side, 0 keeps the original  "
        f"[default: {_D['max_resolution']}]",
    ),
    click.option(
        "--jpeg-quality",
        type=click.IntRange(1, 100),
        default=None,
        help=f".beton: JPEG quality of stored images  [default: {_D['jpeg_quality']}]",
    ),
    click.option(
        "--write-mode",
        type=click.Choice(WRITE_MODES),
        default=None,
        help=f".beton: FFCV image storage  [default: {_D['write_mode']}]",
    ),
    click.option(
        "--compress-probability",
        type=click.FloatRange(0, 1),
        default=None,
        help=".beton: share of JPEG images in 'proportion' mode  "
        f"[default: {_D['compress_probability']}]",
    ),
    click.option(
        "--trace-points",
        type=click.IntRange(1),
        default=None,
        help=f".beton: trace resampled to K points  [default: {_D['trace_points']}]",
    ),
    click.option(
        "--per-class-maps/--no-per-class-maps",
        default=None,
        help=".beton, COCO-AB: one click map per class instead of one for all.",
    ),
    click.option(
        "--no-byproducts",
        is_flag=True,
        help=".beton: images and labels only (FFCV's plain recipe, for comparison).",
    ),
    click.option(
        "--max-pixels",
        type=click.IntRange(1),
        default=None,
        help=".beton: images whose header declares more pixels are rejected "
        f"(bad-image) without being decoded  [default: {_D['max_pixels']}]",
    ),
    click.option(
        "--size-tolerance",
        type=click.FloatRange(0),
        default=None,
        help=".beton: images whose declared width or height differs from the "
        f"record's by more than this share (+2 px) are rejected  "
        f"[default: {_D['size_tolerance']}]",
    ),
]


def refuse_inapplicable(ctx: click.Context, fmt: str) -> None:
    """Options given on the command line that the chosen output ignores are an error."""
    typed = click.core.ParameterSource.COMMANDLINE
    given = {name for name in ctx.params if ctx.get_parameter_source(name) == typed}
    wrong = BETON_ONLY if fmt == "parquet" else ("rows_per_file", "with_images")
    if bad := sorted(given & set(wrong)):
        names = ", ".join("--" + n.replace("_", "-") for n in bad)
        other = "a .beton output (--out X.beton)" if fmt == "parquet" else "Parquet output"
        raise click.UsageError(
            f"{names} only appl{'ies' if len(bad) == 1 else 'y'} to {other}; "
            f"this build writes {fmt}"
        )


def check_inputs(src: str, kind: str | None, images: str | None, out: str, fmt: str) -> None:
    """What can be known wrong before any record is read."""
    out_path = Path(out)
    if fmt == "parquet" and out_path.is_file():
        raise click.UsageError(f"--out {out} is a file: a Parquet build writes a folder")
    if fmt == "beton" and out_path.is_dir():
        raise click.UsageError(f"--out {out} is a folder: a .beton build writes one file")
    if (
        fmt == "beton"
        and images is None
        and (kind or detect_kind(Path(src))) not in (RECORDS, PARQUET)
    ):
        raise click.UsageError(
            "a .beton build of a release needs its images: --images DIR "
            "(the folder holding train/ or train2014/, or that folder)"
        )


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
    for key in (
        "map_size",
        "jpeg_quality",
        "write_mode",
        "compress_probability",
        "trace_points",
        "per_class_maps",
        "max_pixels",
        "size_tolerance",
    ):
        if given.get(key) is not None:
            build[key] = given[key]
    return build


def run_beton_build(
    src,
    kind,
    classes_file,
    coco_policy,
    images,
    out,
    shard,
    strict,
    overwrite,
    workers,
    quiet,
    recipe: dict,
    given: dict,
) -> Summary:
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
    source = open_source(
        src,
        kind,
        classes=classes,
        coco_policy=coco_policy,
        workers=workers,
        images=images if own_images else None,
    )
    options = beton_options(merged_build(recipe, given), label_width(source.metadata()))
    return build_beton(
        source,
        Path(out),
        parse_shard(shard),
        options=options,
        images=Path(images) if images else None,
        strict=strict,
        overwrite=overwrite,
        workers=workers,
        show_progress=not quiet,
        notes=notes,
    )
