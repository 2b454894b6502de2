"""The plain PyTorch reference loader: OpenCV decode + the shared geometry, the same Batch.

It is the correctness reference for the FFCV and DALI loaders (every step is a readable call
into :mod:`luab_data.geometry`) and a baseline for their speed. It reads either a .beton (with
:class:`BetonFile`, no FFCV pipeline) or Parquet records plus the image folder, rasterising
the maps on the fly with the build's raster kernels.

It imports neither FFCV nor DALI: over records (a Parquet folder) it runs without FFCV.

>>> loader = ReferenceLoader("train.beton", 64, image_size=224, map_size=14, workers=2)
>>> for batch in loader:
...     batch.images, batch.boxes, batch.maps, batch.points, ...
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from luab_data import geometry as geo
from luab_data.beton.paths import refuse_shards
from luab_data.loaders.contract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    CropSettings,
    FieldNames,
    LoaderSettings,
    check_batches,
)

# ---------------------------------------------------------------- sample sources


class BetonSamples:
    """Per-sample fields of a .beton (images as stored: after max_resolution)."""

    def __init__(self, path: str | Path, names: FieldNames = FieldNames()) -> None:
        from luab_data.beton.file import BetonFile  # imports FFCV's field types, for now

        self.file = BetonFile(path)
        self.names = names
        self.has_map = names.map in self.file.handlers
        self.has_point = names.point in self.file.handlers

    def __len__(self) -> int:
        return len(self.file)

    def image(self, index: int) -> np.ndarray:
        return self.file.image(index, self.names.image)

    def label(self, index: int) -> np.ndarray:
        if self.file.kind(self.names.label).__name__ == "IntField":
            return np.asarray(int(self.file.metadata(self.names.label)[index]), np.int64)
        return np.array(self.file.array(self.names.label, index))

    def amap(self, index: int) -> np.ndarray | None:
        return self.file.array(self.names.map, index) if self.has_map else None

    def points(self, index: int) -> np.ndarray | None:
        return self.file.array(self.names.point, index) if self.has_point else None


class RecordSamples:
    """Canonical records (Parquet, records JSON, a release) plus the image folder; maps and
    points computed per sample with the build's kernels and options (BetonOptions)."""

    def __init__(self, src: str | Path, images: str | Path, options: Any = None) -> None:
        from luab_data.beton.fields import BetonOptions, label_width
        from luab_data.sources import open_source, read_records

        self.table, _ = read_records(src)
        self.images = Path(images)
        self.options = options or BetonOptions()
        self.n_labels = label_width(open_source(src).metadata())
        self.has_map = self.has_point = self.options.byproducts
        self._cached: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return self.table.num_rows

    def _block(self, index: int) -> Any:
        """Label and byproducts of one record (the last one kept: a sample asks thrice)."""
        from luab_data.beton.samples import block_arrays

        if self._cached[0] != index:
            rows = self.table.slice(index, 1)
            self._cached = (index, block_arrays(rows, index, self.options, self.n_labels))
        return self._cached[1]

    def image(self, index: int) -> np.ndarray:
        from luab_data.beton.images import decode_rgb

        return decode_rgb((self.images / self.table.column("image")[index].as_py()).read_bytes())

    def label(self, index: int) -> np.ndarray:
        return self._block(index).labels[0]

    def amap(self, index: int) -> np.ndarray | None:
        return self._block(index).maps[0] if self.has_map else None

    def points(self, index: int) -> np.ndarray | None:
        return self._block(index).points[0] if self.has_point else None


# ---------------------------------------------------------------- one augmented sample


def crop_image(
    image: np.ndarray, pixels: tuple[int, int, int, int], flip: bool, size: tuple[int, int]
) -> np.ndarray:
    """Crop (top, left, h, w), resize to (H, W) with INTER_AREA as FFCV does, mirror."""
    top, left, h, w = pixels
    out = cv2.resize(
        image[top : top + h, left : left + w], (size[1], size[0]), interpolation=cv2.INTER_AREA
    )
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


class ReferenceDataset(Dataset):
    """Samples with the crop and flip of (seed, epoch, index), as dicts of arrays; images
    resized to ``image_size`` and maps to ``map_size``, both (H, W)."""

    def __init__(
        self,
        samples: BetonSamples | RecordSamples,
        crop: CropSettings,
        image_size: tuple[int, int],
        map_size: tuple[int, int],
    ) -> None:
        self.samples, self.crop = samples, crop
        self.image_size, self.map_size = image_size, map_size
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.samples.image(index)
        height, width = image.shape[:2]
        pixels, box, flip = self.crop.crop(width, height, self.epoch, index)
        out = {
            "image": crop_image(image, pixels, flip, self.image_size),
            "label": self.samples.label(index),
            "box": np.asarray(box, np.float32),
            "flip": flip,
            "index": index,
        }
        amap = self.samples.amap(index)
        if amap is not None:
            scale = 1.0 / 255.0 if amap.dtype == np.uint8 else 1.0
            out["map"] = geo.crop_map(amap, box, flip, self.map_size, scale)
        points = self.samples.points(index)
        if points is not None:
            target, weight = geo.transform_points(points, box, flip)
            out["point"] = np.concatenate([target, weight[:, None]], 1).astype(np.float32)
        return out


def collate(samples: list[dict[str, Any]], squeeze_points: bool = False) -> dict:
    """Stack a list of samples into tensors (points (N, K, 3) or (N, 3) when squeezed)."""
    out = {
        k: torch.from_numpy(np.stack([s[k] for s in samples]))
        for k in samples[0]
        if k not in ("flip", "index")
    }
    out["flip"] = torch.tensor([s["flip"] for s in samples], dtype=torch.bool)
    out["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.int64)
    if squeeze_points and "point" in out:
        out["point"] = out["point"][:, 0]
    return out


# ---------------------------------------------------------------- the loader


def _open_samples(
    src: str | Path, settings: LoaderSettings, images: str | Path | None, options: Any
) -> BetonSamples | RecordSamples:
    """A .beton (by name or content), else records/Parquet; one clear ValueError or
    FileNotFoundError for anything else. A folder not named .beton is records: no .beton
    reader (nor FFCV) is imported for it."""
    from luab_data.sources import SourceError

    refuse_shards(src)  # a shard or a folder of shards: say to merge them first
    folder = Path(src).is_dir()
    if not folder or Path(src).suffix == ".beton":
        from luab_data.beton.file import is_beton
        from luab_data.beton.integrity import check_path

        if not folder:
            check_path(src)
        if is_beton(src):
            return BetonSamples(src, settings.field_names(src))
    try:
        return RecordSamples(src, images, options)
    except SourceError as err:
        raise ValueError(f"{src}: neither a .beton nor records or Parquet ({err})") from None


class ReferenceLoader:
    """torch DataLoader over a ReferenceDataset that yields the batch contract.

    Knobs: :class:`~luab_data.loaders.contract.LoaderSettings`, as the FFCV and DALI loaders
    take them; ``workers`` are DataLoader worker processes (default 2; 0: in this process).
    The epoch order is the contract's ``epoch_order``. ``device`` moves batches there
    (pinned, non-blocking) and ``normalize`` then gives float images computed on it.
    ``src`` is a .beton, or records/Parquet with the extras ``images`` (the folder of the
    JPEGs) and ``options`` (the BetonOptions that rasterise maps and points on the fly).
    """

    EXTRAS = ("images", "options")

    def __init__(
        self,
        src: str | Path,
        batch_size: int,
        *,
        images: str | Path | None = None,
        options: Any = None,
        **knobs: Any,
    ) -> None:
        s = LoaderSettings.of(type(self).__name__, {"batch_size": batch_size, **knobs}, self.EXTRAS)
        samples = _open_samples(src, s, images, options)
        self.settings = s
        self.dataset = ReferenceDataset(samples, s.crop, s.image_size, s.map_size)
        self.workers = 2 if s.workers is None else int(s.workers)
        self.n_samples = len(samples)
        check_batches(len(self), len(s.subset(self.n_samples)), s.batch_size, s.drop_last)
        self.device = s.torch_device()
        point_shape = samples.points(0).shape if samples.has_point else None
        self._squeeze = point_shape == (2,)
        self.next_epoch = 0

    @property
    def epoch(self) -> int:
        return self.next_epoch

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def __len__(self) -> int:
        return self.settings.batches_per_epoch(self.n_samples)

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        self.dataset.epoch = epoch  # forked workers copy the dataset when the epoch starts
        pin = self.device is not None and self.device.type == "cuda"
        if self.workers:
            # The workers are forked: garbage left now (a DALI pipeline, say) would be
            # finalised inside them, where its threads do not exist, and hang.
            gc.collect()
        order = self.settings.epoch_order(self.n_samples, epoch).tolist()
        loader = DataLoader(
            self.dataset,
            self.settings.batch_size,
            sampler=order,
            num_workers=self.workers,
            collate_fn=self._collate,
            pin_memory=pin,
        )
        return (self._batch(b) for b in loader)

    def _collate(self, samples: list[dict]) -> dict:
        return collate(samples, self._squeeze)

    def _batch(self, b: dict) -> Batch:
        if self.device is not None:
            b = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
        images = b["image"].permute(0, 3, 1, 2)  # NHWC memory: channels-last, as FFCV's
        if self.settings.normalize:
            images = normalize(images, self.settings.dtype())
        point = b.get("point")
        return Batch(
            images=images,
            labels=b["label"],
            boxes=b["box"],
            flips=b["flip"],
            maps=b.get("map"),
            points=None if point is None else point[..., :2],
            point_weights=None if point is None else point[..., 2],
            indices=b["index"],
        )


def normalize(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (x - mean) / std as ``dtype``, channels-last, on their device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).reshape(1, 3, 1, 1)
    out = ((images.float() - mean) / std).to(dtype)
    return out.contiguous(memory_format=torch.channels_last)
