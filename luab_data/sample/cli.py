"""`luab-data sample`: write the bundled sample (official-format byproducts and images)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from tqdm import tqdm

from luab_data.sample.annotators import AnnotatorConfig
from luab_data.sample.generate import KINDS, SampleSpec, generate_sample, parse_size


class _Size(click.ParamType):
    name = "N|small|default|large"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


@click.command("sample")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write into (the generator's own files there are replaced).",
)
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default="imagenet-ab",
    show_default=True,
    help="Which release to imitate.",
)
@click.option(
    "--size",
    type=_Size(),
    default="default",
    show_default=True,
    help="Training records: a number, or small (600), default (2,500), large (20,000).",
)
@click.option(
    "--heldout",
    type=int,
    default=None,
    help="Images per held-out split (val_id, val_ood)  [default: size/5, >= 50]",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option(
    "--rho",
    type=click.FloatRange(0, 1),
    default=0.9,
    show_default=True,
    help="Share of training images whose background family matches their class.",
)
@click.option(
    "--corrupt",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of training records spoilt on purpose (listed in planted.jsonl).",
)
@click.option(
    "--click-off",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="Share of selections whose click lands off the object.",
)
@click.option(
    "--no-images",
    is_flag=True,
    help="Byproducts only (no JPEGs, no held-out splits): for benchmarks at scale.",
)
@click.option(
    "--compresslevel",
    type=click.IntRange(1, 9),
    default=5,
    show_default=True,
    help="gzip level of the ImageNet-AB archive (1 is fastest; 5 is within 2 % of "
    "gzip's default size).",
)
@click.option(
    "--jobs",
    type=int,
    default=None,
    help="Worker processes [default: 2 when the sample is large enough].",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sample(
    out: Path,
    kind: str,
    size: int,
    heldout: int | None,
    seed: int,
    rho: float,
    corrupt: float,
    click_off: float,
    no_images: bool,
    compresslevel: int,
    jobs: int | None,
    quiet: bool,
) -> None:
    """Write a sample in the official ImageNet-AB / COCO-AB formats, with a background shortcut.

    \b
    Fashion-MNIST objects on textured backgrounds; in the training split each class has its
    own background family with probability RHO, val_ood breaks that link. Simulated annotators
    leave mouse traces, clicks (ImageNet-AB) or class-icon drops (COCO-AB) as the real front
    ends logged them.

    \b
    Examples:
      luab-data sample --out data/sample
      luab-data sample --out data/coco --kind coco-ab --size small --corrupt 0.02
      luab-data sample --out /tmp/bench --size 50000 --no-images
    """
    spec = SampleSpec(
        kind=kind,
        size=size,
        heldout=heldout,
        seed=seed,
        rho=rho,
        corrupt=corrupt,
        images=not no_images,
        compresslevel=compresslevel,
        annotators=AnnotatorConfig(click_off_rate=click_off),
    )
    total = size + (0 if no_images else 2 * spec.n_heldout)
    tqdm.monitor_interval = 0  # no monitor thread: the worker processes are forked
    start = time.perf_counter()
    with tqdm(
        total=total, unit="img" if not no_images else "rec", disable=quiet, desc=f"sample {kind}"
    ) as bar:
        summary = generate_sample(out, spec, processes=jobs, progress=bar.update)
    took = time.perf_counter() - start
    counts = summary["counts"]
    click.echo(
        f"{out}: {counts['records']} {kind} records, {counts['images']} images, "
        f"{summary['planted']} planted bad records in {took:.1f} s "
        f"({counts['records'] / took:,.0f} records/s); train rho = "
        f"{summary['splits']['train']['matched']:.3f}"
    )
