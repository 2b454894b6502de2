"""Named, versioned recipes (luab_data/pipelines/*.json): build and loader settings per dataset.

A recipe is a JSON object with `build` (what `luab-data build --recipe` uses as defaults;
options given on the command line win) and `loader` (keyword arguments of the loaders).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from luab_data.beton.fields import BetonOptions
from luab_data.raster import RasterConfig

# package data, so that an installed wheel finds them too; pipelines/train/ holds the trainer's
RECIPES_DIR = Path(__file__).resolve().parent / "pipelines"
# build keys that are not BetonOptions fields
_RASTER_KEYS = {
    "map_size": "size",
    "sigma": "sigma",
    "sigma_units": "sigma_units",
    "channels": "channels",
    "selected_only": "selected_only",
}
_SOURCE_KEYS = ("format", "coco_policy", "per_class_maps")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> dict:
    """A recipe by file path, or by name from luab_data/pipelines/ (`imagenet-ab`, `coco-ab`,
    `sample`)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(
            f"no recipe {name_or_path!r}: use a .json path or one of {', '.join(recipe_names())}"
        )
    recipe = json.loads(path.read_text())
    unknown = set(recipe.get("build", {})) - set(_RASTER_KEYS) - set(_SOURCE_KEYS) - _option_names()
    if unknown:
        raise ValueError(f"{path}: unknown build settings {sorted(unknown)}")
    return recipe


def _option_names() -> set[str]:
    return set(BetonOptions.__dataclass_fields__) - {"raster"}


def beton_options(build: dict[str, Any], n_classes: int = 0) -> BetonOptions:
    """BetonOptions from a recipe's `build` section (merged with command-line overrides).
    `per_class_maps` widens the click channel to one per class (`n_classes`, COCO's 80)."""
    raster = {dst: build[src] for src, dst in _RASTER_KEYS.items() if build.get(src) is not None}
    for key in ("size", "channels"):
        if key in raster:
            raster[key] = tuple(raster[key])
    cfg = RasterConfig(**raster)
    if build.get("per_class_maps"):
        cfg = replace(cfg, n_classes=n_classes)
    options = {
        k: v
        for k, v in build.items()  # max_resolution None: keep the original size
        if k in _option_names() and (v is not None or k == "max_resolution")
    }
    return BetonOptions(raster=cfg, **options)


def loader_kwargs(recipe: dict, train: bool = True) -> dict[str, Any]:
    """Keyword arguments of any loader (the contract's knobs) from a recipe's `loader`
    section; validation reads in order.

    >>> make_loader("ffcv", path, **loader_kwargs(load_recipe("coco-ab")))
    """
    kwargs = dict(recipe.get("loader", {}))
    for key in ("scale", "ratio", "map_size"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    shuffle = bool(kwargs.get("shuffle", True)) and train
    return {**kwargs, "train": train, "shuffle": shuffle}
