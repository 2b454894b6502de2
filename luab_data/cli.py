"""The `luab-data` command line: one click group, one sub-command per job."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import click

from luab_data import __version__, bench
from luab_data.build import run_parquet_build
from luab_data.ingest import StrictError, Summary, iterate
from luab_data.ray_build import BuildJob, check_engine, ray_options
from luab_data.recipes import load_recipe
from luab_data.sources import KINDS, SourceError, open_source, read_class_file
from luab_data.sources.coco_ab import POLICIES
from luab_data.sources.interchange import write_interchange
from luab_data.stats import collect, format_summary
from luab_data.writers.atomic import atomic_path
from luab_data.writers.beton_cli import (
    beton_build_options,
    check_inputs,
    output_format,
    refuse_inapplicable,
    run_beton_build,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="luab-data")
def main() -> None:
    """Learning using annotation byproducts: turn the ImageNet-AB / COCO-AB releases into
    packed, GPU-ready datasets (Parquet, FFCV .beton) and feed a multitask trainer.

    Inputs: --src names a source (a release, records, or built Parquet) in every command
    (build, export, inspect, verify); a .beton that a command checks or shows is its
    argument (verify, show), as are merge's output and shards.

    \b
    Typical use:
      luab-data build --src imagenet_ab_v1_0.tar.gz --out data/ --format parquet
      luab-data inspect data/
      luab-data export --src coco_ab_v1_0.json --out coco.jsonl
    """
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (kill, a scheduler's stop) unwinds like Ctrl-C: worker processes are stopped
    and temporary files removed on the way out, instead of dying with them orphaned."""
    raise SystemExit(128 + signum)


# --- shared options -------------------------------------------------------------------------
def _source_options(f):
    f = click.option(
        "--kind",
        type=click.Choice(KINDS),
        default=None,
        help="Force the kind of source instead of detecting it from content.",
    )(f)
    f = click.option(
        "--classes",
        "classes_file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="ImageNet class list (one wnid per line or a JSON list); labels index it. "
        "Default: the 1,000 ImageNet-1k wnids when the source holds only those, else the "
        "sorted wnids of the whole source (with a warning).",
    )(f)
    f = click.option(
        "--coco-policy",
        type=click.Choice(POLICIES),
        default="replay",
        show_default=True,
        help="COCO icons: replay add/move/remove to final "
        "positions, or the official loader's 'last add wins'.",
    )(f)
    f = click.option(
        "--src",
        "src",
        required=True,
        type=click.Path(exists=True),
        help="imagenet_ab_v1_0.tar.gz (or its train_xml/ folder), "
        "coco_ab_v1_0.json, records .json/.jsonl, or built Parquet.",
    )(f)
    return f


def _open(src, kind, classes_file, coco_policy, **options):
    classes = read_class_file(classes_file) if classes_file else None
    return open_source(src, kind, classes=classes, coco_policy=coco_policy, **options)


def _fail(err: Exception) -> None:
    raise click.ClickException(str(err)) from err


# --- build ----------------------------------------------------------------------------------
@main.command()
@_source_options
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder holding the JPEGs in the release layout (train/<wnid>/<stem>.JPEG "
    "or train2014/...), or the train/ (train2014/) folder itself: records whose image is "
    "missing are rejected.",
)
@click.option(
    "--with-images", is_flag=True, help="Store the JPEG bytes in the output (needs --images)."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Output folder (Parquet, created) or X.beton file (FFCV).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "beton"]),
    default=None,
    help="Output format  [default: beton if --out ends in .beton, else the recipe's, else parquet]",
)
@click.option(
    "--shard",
    default="0/1",
    show_default=True,
    help="Build only shard i of n (records are split by a hash of their key).",
)
@click.option(
    "--strict", is_flag=True, help="Stop at the first bad record instead of rejecting it."
)
@click.option("--overwrite", is_flag=True, help="Rebuild a shard that is already complete.")
@click.option("--rows-per-file", default=250_000, show_default=True, help="Rotate Parquet parts.")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Parser threads; .beton: writer processes (default: all cores).",
)
@beton_build_options
@ray_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def build(
    ctx,
    src,
    kind,
    classes_file,
    coco_policy,
    images,
    with_images,
    out,
    fmt,
    shard,
    strict,
    overwrite,
    rows_per_file,
    workers,
    engine,
    address,
    shards,
    no_merge,
    quiet,
    **beton,
):
    """Read a release (or records) and write canonical records as Parquet shards, or pack
    images and byproducts into an FFCV .beton (--out X.beton, with --images).

    Bad records are written to __luab__/rejects-<shard>.jsonl (X.beton.rejects.jsonl) with
    their key and reason and counted in the summary; every good record is kept. Output appears
    atomically: a shard is complete when its __luab__/manifest-<shard>.json (X.beton.json)
    exists.
    """
    try:
        recipe = load_recipe(beton["recipe"]) if beton["recipe"] else {}
    except ValueError as err:
        _fail(err)
    fmt = fmt or output_format(out, recipe)
    refuse_inapplicable(ctx, fmt)
    check_engine(ctx, engine)
    check_inputs(src, kind, images, out, fmt)
    if fmt == "beton" and ctx.get_parameter_source("coco_policy").name == "DEFAULT":
        coco_policy = recipe.get("build", {}).get("coco_policy", coco_policy)
    if engine == "ray":
        job = BuildJob(
            src,
            out,
            fmt,
            kind,
            classes_file,
            coco_policy,
            images,
            with_images,
            strict,
            rows_per_file,
            recipe,
            beton,
        )
        _build_on_ray(job, address, shards, not no_merge, overwrite, quiet)
        return
    if fmt == "beton":
        beton["with_images"] = with_images
        try:
            summary = run_beton_build(
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
                recipe,
                beton,
            )
        except (SourceError, StrictError, FileExistsError, ValueError) as err:
            _fail(err)
        click.echo("\n".join(summary.lines()))
        return
    try:
        summary = run_parquet_build(
            src,
            kind,
            classes_file,
            coco_policy,
            images,
            with_images,
            out,
            shard,
            strict,
            overwrite,
            rows_per_file,
            workers,
            quiet,
        )
    except (SourceError, StrictError, FileExistsError, ValueError) as err:
        _fail(err)
    click.echo("\n".join(summary.lines()))


def _build_on_ray(
    job: BuildJob,
    address: str | None,
    shards: int | None,
    merge: bool,
    overwrite: bool,
    quiet: bool,
) -> None:
    try:
        from luab_data.ray_build import ShardsFailed, build_on_ray

        summary = build_on_ray(
            job, address=address, shards=shards, merge=merge, overwrite=overwrite, quiet=quiet
        )
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        _fail(RuntimeError("--engine ray needs Ray: pip install 'luab-data[ray]'"))
    except (ShardsFailed, SourceError, StrictError, FileExistsError, ValueError) as err:
        _fail(err)
    click.echo("\n".join(summary.lines()))


# --- export ---------------------------------------------------------------------------------
@main.command()
@_source_options
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Output file (.jsonl or .json)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "json"]),
    default=None,
    help="JSON lines or one JSON list (default: from the --out suffix, else jsonl).",
)
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the rejected records here (JSON lines).",
)
@click.option("--strict", is_flag=True, help="Stop at the first bad record.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(src, kind, classes_file, coco_policy, out, fmt, rejects, strict, quiet):
    """Write records in the interchange form (what `build --src records.jsonl` reads)."""
    fmt = fmt or ("json" if out.endswith(".json") else "jsonl")
    summary = Summary()
    bad: list = []
    try:
        source = _open(src, kind, classes_file, coco_policy)
        with atomic_path(Path(out)) as tmp, open(tmp, "w") as f:
            batches = iterate(
                source,
                strict=strict,
                show_progress=not quiet,
                on_rejects=bad.extend,
                summary=summary,
            )
            write_interchange(batches, source.metadata(), f, as_list=fmt == "json")
        if rejects:
            with atomic_path(Path(rejects)) as tmp:
                tmp.write_text("".join(json.dumps(r.as_dict()) + "\n" for r in bad))
    except (SourceError, StrictError) as err:
        _fail(err)
    summary.outputs = [out] + ([rejects] if rejects else [])
    click.echo("\n".join(summary.lines()))
    for r in bad[:10]:
        click.echo(f"  rejected {r.key} ({r.where}): {r.reason}: {r.detail}", err=True)


# --- inspect --------------------------------------------------------------------------------
@main.command("inspect")
@click.argument("path", type=click.Path(exists=True), required=False)
@click.option(
    "--src",
    type=click.Path(exists=True),
    default=None,
    help="The source or output to inspect (the same as PATH, as in build and export).",
)
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Force the kind of PATH.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def inspect_cmd(path, src, kind, as_json, quiet):
    """Counts and distributions of a source or a built output: trace lengths, durations,
    click positions, votes, annotators, classes, and the rejects a build would make.
    PATH or --src: a release, records, or a built Parquet folder."""
    if (path is None) == (src is None):
        raise click.UsageError("give the source once: PATH or --src")
    path = path or src
    summary = Summary()
    try:
        source = open_source(path, kind)
        stats = collect(iterate(source, show_progress=not quiet, summary=summary))
    except SourceError as err:
        _fail(err)
    stats = {"path": str(path), "kind": source.kind, **stats, "rejects": dict(summary.rejects)}
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    click.echo(f"{path}  ({source.kind})")
    click.echo(format_summary(stats))
    rejected = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.rejects.items())) or "none"
    click.echo(f"rejects               {rejected}")
    for note in summary.notes:
        click.echo(note)


# --- merge ----------------------------------------------------------------------------------
@main.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("shards", nargs=-1, required=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is already complete.")
def merge_cmd(out, shards, overwrite):
    """Join the shards of one .beton build (--shard i/n) into OUT, one dataset the loaders
    open, without decoding or re-encoding anything: the data pages are copied and the
    pointers, sample ids and index rewritten. SHARDS are files, folders or globs.

    \b
    Refused, naming the shard and the difference: shards of different builds (options,
    fields, class list, map size), overlapping keys, a missing shard of the i/n set, a
    shard without its manifest (an unfinished build). OUT appears atomically; its manifest
    names the shards and their checksums.
    """
    from luab_data.beton.merge import MergeError
    from luab_data.writers.merge import merge_betons

    start = time.perf_counter()
    try:
        manifest = merge_betons(Path(out), shards, overwrite=overwrite)
    except (MergeError, FileExistsError, FileNotFoundError, ValueError) as err:
        _fail(err)
    seconds = time.perf_counter() - start
    size = manifest["bytes"]
    click.echo(
        f"merged {len(manifest['merged_from'])} shards, {len(manifest['keys']):,} samples, "
        f"{size / 2**20:,.0f} MiB in {seconds:.1f} s ({size / 2**20 / seconds:,.0f} MiB/s)"
    )
    click.echo(f"wrote {out} and {out}.json")


# --- bench ----------------------------------------------------------------------------------
@main.command("bench")
@click.option(
    "--stages",
    default=",".join(bench.STAGES),
    show_default=True,
    help="Comma-separated stages to measure.",
)
@click.option(
    "--quick", is_flag=True, help="Small inputs, one or few repetitions (~2 min on 2 cores)."
)
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default="/tmp/luab-bench",
    show_default=True,
    help="Where generated inputs are cached between runs.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="JSON report (a PNG chart is written beside it). Default: out/bench[-quick].json "
    "(the recorded results in benchmarks/results/ are only replaced when named here).",
)
def bench_cmd(stages, quick, data, out):
    """Measure every stage beside its baselines, in one process, and print the ratios.

    Inputs are generated by the bundled sample (cached under --data). Repetitions are
    interleaved; each ratio comes with its min-max. The report records the machine."""
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(bench.STAGES))
    if unknown:
        raise click.UsageError(f"unknown stages {unknown}; choose from {', '.join(bench.STAGES)}")
    report = bench.run_bench(chosen, quick, Path(data), echo=click.echo)
    default = Path("out") / ("bench-quick.json" if quick else "bench.json")
    json_path, png = bench.save(report, Path(out) if out else default)
    click.echo(bench.table(report))
    click.echo(f"wrote {json_path} and {png}")


# Sub-commands live beside the stage they drive; each module registers one command here.
from luab_data.sample.cli import sample  # noqa: E402
from luab_data.show import show  # noqa: E402
from luab_data.verify import verify  # noqa: E402

main.add_command(sample)
main.add_command(show)
main.add_command(verify)
