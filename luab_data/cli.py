"""The `luab-data` command line: one click group, one sub-command per job."""

from __future__ import annotations

import click

from luab_data import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="luab-data")
def main() -> None:
    """Learning using annotation byproducts: turn the ImageNet-AB / COCO-AB releases into
    packed, GPU-ready datasets (Parquet, FFCV .beton) and feed a multitask trainer.

    \b
    Typical use:
      luab-data build --src imagenet_ab_v1_0.tar.gz --out data/ --format parquet
      luab-data inspect data/
      luab-data export --src coco_ab_v1_0.json --out coco.jsonl
    """


# Sub-commands live beside the stage they drive; each module registers one command here.
