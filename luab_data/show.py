"""`luab-data show X.beton`: a PNG grid of augmented training samples, the first thing to look at.

Each tile is a training crop as the loaders produce it (the shared geometry, seed and epoch),
with the cropped attention map laid over it as a heat map, the point target marked by a
white cross in a black ring (COCO-AB: one per class present), the trace resampled into the crop as
small cyan dots, and a caption: sample index, label, crop scale and whether it was flipped.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

TILE_CAPTION = 18  # px of caption strip under each tile


def _heat(amap: np.ndarray, size: tuple[int, int], channel: str, names: list[str]) -> np.ndarray:
    """(C, Ho, Wo) float map in [0, 1] -> (H, W) float heat in [0, 1]."""
    import cv2

    heat = amap.max(axis=0) if channel == "max" else amap[names.index(channel)]
    return np.clip(cv2.resize(heat, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), 0, 1)


def _overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a colour-mapped heat over the image, more where the heat is high (RGB)."""
    import cv2

    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    alpha = (0.15 + 0.6 * heat)[..., None]
    return (image * (1 - alpha) + colour * alpha).astype(np.uint8)


def _mark(tile: np.ndarray, points: np.ndarray, weights: np.ndarray, colour=(255, 255, 255)):
    import cv2

    h, w = tile.shape[:2]
    for (x, y), wt in zip(points.reshape(-1, 2), weights.reshape(-1), strict=True):
        if wt > 0:
            c = (int(round(x * w - 0.5)), int(round(y * h - 0.5)))
            cv2.circle(tile, c, 7, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.drawMarker(tile, c, colour, cv2.MARKER_CROSS, 12, 2, cv2.LINE_AA)


def _dots(tile: np.ndarray, points: np.ndarray, weights: np.ndarray) -> None:
    import cv2

    h, w = tile.shape[:2]
    for (x, y), wt in zip(points, weights, strict=True):
        if wt > 0:
            cv2.circle(tile, (int(x * w), int(y * h)), 2, (0, 255, 255), -1, cv2.LINE_AA)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2

    strip = np.full((TILE_CAPTION, tile.shape[1], 3), 24, np.uint8)
    cv2.putText(
        strip, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA
    )
    return np.concatenate([tile, strip], axis=0)


def render_tile(
    dataset, index: int, channel: str, map_names: list[str], classes: list
) -> np.ndarray:
    """One augmented sample drawn as a tile (RGB)."""
    from luab_data import geometry as geo

    s = dataset[index]
    tile = s["image"].copy()
    if "map" in s:
        tile = _overlay(tile, _heat(s["map"], tile.shape[:2], channel, map_names))
    trace = (
        dataset.samples.file.array("trace", index)
        if "trace" in dataset.samples.file.names
        else None
    )
    if trace is not None:
        target, weight = geo.transform_points(trace, s["box"], s["flip"])
        _dots(tile, target, weight)
    if "point" in s:
        _mark(tile, s["point"][:, :2], s["point"][:, 2])
    label = s["label"]
    if label.ndim:  # multi-hot: first names of the classes present
        names = [str(classes[c]) if c < len(classes) else str(c) for c in np.flatnonzero(label)]
        text = ",".join(names)[:28]
    else:
        text = str(classes[int(label)]) if int(label) < len(classes) else str(int(label))
    x0, y0, x1, y1 = s["box"]
    area = (x1 - x0) * (y1 - y0)
    flip = " flip" if s["flip"] else ""
    return _caption(tile, f"#{index} {text} {area:.0%}{flip}")


def show_grid(
    path: str | Path,
    out: str | Path,
    *,
    n: int = 16,
    cols: int = 4,
    size: int = 224,
    map_size: int = 28,
    seed: int = 0,
    epoch: int = 0,
    channel: str = "max",
    train: bool = True,
    start: int = 0,
) -> Path:
    """Write a PNG grid of `n` augmented samples of a .beton; returns its path."""
    import cv2

    from luab_data.beton.manifest import read_manifest
    from luab_data.loaders.contract import CropSettings, field_names
    from luab_data.loaders.reference import BetonSamples, ReferenceDataset

    manifest = _manifest_or_empty(path, read_manifest)
    classes = manifest.get("metadata", {}).get("classes", [])
    map_names = manifest.get("fields", {}).get("map", {}).get("channels", ["click", "trace"])
    if channel != "max" and channel not in map_names:
        names = ", ".join(map_names[:6]) + (", ..." if len(map_names) > 6 else "")
        raise ValueError(f"no map channel {channel!r}: use max or one of {names}")
    samples = BetonSamples(path, field_names(path))
    crop = CropSettings(train=train, seed=seed)
    dataset = ReferenceDataset(samples, crop, (size, size), (map_size, map_size))
    dataset.epoch = epoch
    picks = _spread(len(samples), n, start)
    tiles = [render_tile(dataset, i, channel, map_names, classes) for i in picks]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    rows = [np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.concatenate(rows, axis=0)[..., ::-1]):
        raise OSError(f"could not write {out}")
    return out


def _spread(total: int, n: int, start: int) -> list[int]:
    """n indices evenly over [start, total): files are often in class order."""
    if n >= total - start:
        return list(range(start, total))
    return [int(i) for i in np.linspace(start, total - 1, n).round()]


def _manifest_or_empty(path, read) -> dict:
    try:
        return read(Path(path))
    except FileNotFoundError:
        return {}


@click.command("show")
@click.argument("beton", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("-n", "--n", "n", default=16, show_default=True, help="Samples to draw.")
@click.option("--cols", default=4, show_default=True, help="Tiles per row.")
@click.option("--size", default=224, show_default=True, help="Crop size in pixels.")
@click.option("--map-size", default=28, show_default=True, help="Cells of the cropped map.")
@click.option(
    "--channel",
    default="max",
    show_default=True,
    help="Map channel to draw (click, trace, click:<class>) or the max over all.",
)
@click.option("--seed", default=0, show_default=True, help="Augmentation seed.")
@click.option("--epoch", default=0, show_default=True, help="Epoch of the augmentation.")
@click.option("--start", default=0, show_default=True, help="First sample index.")
@click.option("--val", is_flag=True, help="Validation crop (centre, no flip) instead.")
def show(beton, out, n, cols, size, map_size, channel, seed, epoch, start, val) -> None:
    """Draw augmented training samples of BETON: crop, cropped map as a heat map, the point
    target (white cross) and the trace (cyan dots)."""
    try:
        path = show_grid(
            beton,
            out,
            n=n,
            cols=cols,
            size=size,
            map_size=map_size,
            seed=seed,
            epoch=epoch,
            channel=channel,
            train=not val,
            start=start,
        )
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {path}")
