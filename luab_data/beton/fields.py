"""The fields of a luab-data .beton: names, order, the build options that shape them.

Fields of a sample (in this order; FFCV names are at most 16 bytes):
  image    RGBImageField   JPEG or raw pixels, long side <= max_resolution
  label    IntField        ImageNet class index  | labels: NDArrayField uint8 (L,) multi-hot (COCO)
  map      NDArrayField    uint8 (C, Hm, Wm) attention maps over the whole image (raster kernels)
  point    NDArrayField    float32 (2,) the paper's point (ImageNet) | (L, 2) per class (COCO);
                           normalised (x, y), (-1, -1) where absent
  trace    NDArrayField    float32 (K, 2) the trace resampled to K points, (-1, -1) if none
  size     NDArrayField    int32 (2,) original (width, height) of the record
  index    IntField        position of the sample in this file; keys[index] in the manifest
Without byproducts only image, label/labels and index are written (the plain FFCV recipe).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from luab_data.beton.images import DEFAULT_MAX_PIXELS, DEFAULT_SIZE_TOLERANCE
from luab_data.records import COCO_AB

BETON_FORMAT = 1  # version of the field layout described above
IMAGE, LABEL, LABELS, MAP, POINT, TRACE, SIZE, INDEX = (
    "image",
    "label",
    "labels",
    "map",
    "point",
    "trace",
    "size",
    "index",
)
WRITE_MODES = ("raw", "jpg", "smart", "proportion")
JPEG_MODE, RAW_MODE = 0, 1  # FFCV's IMAGE_MODES: the `mode` of an image's metadata


@dataclass(frozen=True)
class BetonOptions:
    """What goes into the file. Image defaults are FFCV's ImageNet recipe (ffcv-imagenet
    `write_imagenet.sh 500 0.50 90`: long side 500 px, half the images JPEG at quality 90)."""

    raster: Any = None  # RasterConfig; None: the default config
    trace_points: int = 32
    max_resolution: int | None = 500
    write_mode: str = "proportion"
    compress_probability: float = 0.5
    jpeg_quality: int = 90
    byproducts: bool = True
    chunk_size: int = 100  # samples per writer task; maps are rasterised a chunk at a time
    page_size: int = 8 << 20  # FFCV's default; a page must hold the largest sample
    max_pixels: int = DEFAULT_MAX_PIXELS  # images declaring more are rejected undecoded
    size_tolerance: float = DEFAULT_SIZE_TOLERANCE  # declared vs record size, per side

    def __post_init__(self) -> None:
        from luab_data.raster import RasterConfig

        if self.raster is None:
            object.__setattr__(self, "raster", RasterConfig())
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {self.write_mode!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.raster.dtype != "uint8":
            raise ValueError("maps are stored as uint8 (FFCV hangs on float16; float32 is 4x)")
        if self.max_pixels < 1 or self.size_tolerance < 0:
            raise ValueError("max_pixels must be positive and size_tolerance not negative")

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["raster"] = asdict(self.raster)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BetonOptions:
        from luab_data.raster import RasterConfig

        raster = dict(data.get("raster") or {})
        for key in ("size", "channels"):
            if key in raster:
                raster[key] = tuple(raster[key])
        return cls(**{**data, "raster": RasterConfig(**raster)})


def label_width(metadata: dict) -> int:
    """0 for a single int label (ImageNet-AB), else the multi-hot width (COCO-AB's 80)."""
    return len(metadata.get("classes", [])) if metadata.get("source_kind") == COCO_AB else 0


def make_fields(options: BetonOptions, n_labels: int) -> dict[str, Any]:
    """The FFCV fields of a file, in their order (see the module docstring)."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField  # 5 s: not at CLI start

    image = RGBImageField(
        write_mode=options.write_mode,
        max_resolution=options.max_resolution,
        jpeg_quality=options.jpeg_quality,
        compress_probability=options.compress_probability,
    )
    out: dict[str, Any] = {IMAGE: image}
    if n_labels:
        out[LABELS] = NDArrayField(np.dtype("uint8"), (n_labels,))
    else:
        out[LABEL] = IntField()
    if options.byproducts:
        cfg = options.raster
        out[MAP] = NDArrayField(np.dtype("uint8"), (cfg.n_channels, *cfg.size))
        out[POINT] = NDArrayField(np.dtype("float32"), (n_labels, 2) if n_labels else (2,))
        out[TRACE] = NDArrayField(np.dtype("float32"), (options.trace_points, 2))
        out[SIZE] = NDArrayField(np.dtype("int32"), (2,))
    out[INDEX] = IntField()
    return out


def describe_fields(fields_: dict[str, Any], options: BetonOptions, classes: list) -> dict:
    """The manifest's schema: type, dtype and shape of every field, map channel names."""
    out = {}
    for name, f in fields_.items():
        entry: dict[str, Any] = {"type": type(f).__name__}
        if hasattr(f, "shape"):  # NDArrayField
            entry.update(dtype=str(f.dtype), shape=[int(s) for s in f.shape])
        out[name] = entry
    if MAP in out:
        out[MAP]["channels"] = map_channels(options.raster, classes)
    return out


def map_channels(cfg: Any, classes: list) -> list[str]:
    names = []
    for ch in cfg.channels:
        if ch == "click" and cfg.n_classes > 0:
            padded = list(classes) + ["?"] * cfg.n_classes
            names += [f"click:{c}" for c in padded[: cfg.n_classes]]
        else:
            names.append(ch)
    return names


def field_roles(names: Collection[str]) -> dict[str, str | None]:
    """Which stored field holds the label, the map and the point (the loaders' FieldNames):
    COCO-AB's label is the multi-hot `labels`; a build without byproducts has no map or point."""
    return {
        "label": LABELS if LABELS in names else LABEL,
        "map": MAP if MAP in names else None,
        "point": POINT if POINT in names else None,
    }
