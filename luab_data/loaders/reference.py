"""The plain PyTorch reference loader: OpenCV decode + the shared geometry, the same Batch.

It is the correctness reference for the FFCV and DALI loaders (every step is a readable call
into :mod:`luab_data.geometry`) and a baseline for their speed. It reads either a .beton (with
:class:`BetonFile`, no FFCV pipeline) or Parquet records plus the image folder, rasterising
the maps on the fly with the build's raster kernels.

>>> loader = ReferenceLoader("train.beton", 64, image_size=224, map_size=14, num_workers=2)
>>> for batch in loader:
...     batch.images, batch.boxes, batch.maps, batch.points, ...
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from luab_data import geometry as geo
from luab_data.loaders.beton_file import BetonFile, check_batches, is_beton
from luab_data.loaders.beton_integrity import check_path
from luab_data.loaders.ffcv_loader import IMAGENET_MEAN, IMAGENET_STD, Batch, FieldNames


@dataclass(frozen=True)
class Augment:
    """The augmentation of a loader: what CoupledLoader takes, under the same names."""

    train: bool = True
    image_size: tuple[int, int] = (224, 224)
    map_size: tuple[int, int] = (14, 14)
    seed: int = 0
    scale: tuple[float, float] = geo.DEFAULT_SCALE
    ratio: tuple[float, float] = geo.DEFAULT_RATIO
    flip_p: float = 0.5
    center_ratio: float = geo.DEFAULT_CENTER_RATIO

    def crop(self, width: int, height: int, epoch: int, index: int) -> tuple:
        return geo.crop_box(width, height, self.seed, epoch, index, train=self.train,
                            scale=self.scale, ratio=self.ratio, flip_p=self.flip_p,
                            center_ratio=self.center_ratio)  # fmt: skip


# ---------------------------------------------------------------- sample sources


class BetonSamples:
    """Per-sample fields of a .beton (images as stored: after max_resolution)."""

    def __init__(self, path: str | Path, names: FieldNames = FieldNames()) -> None:
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
        from luab_data.sources import open_source, read_records
        from luab_data.writers.beton import BetonOptions, label_width

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
        from luab_data.writers.beton import block_arrays

        if self._cached[0] != index:
            rows = self.table.slice(index, 1)
            self._cached = (index, block_arrays(rows, index, self.options, self.n_labels))
        return self._cached[1]

    def image(self, index: int) -> np.ndarray:
        from luab_data.writers.beton import decode_rgb

        return decode_rgb((self.images / self.table.column("image")[index].as_py()).read_bytes())

    def label(self, index: int) -> np.ndarray:
        return self._block(index).labels[0]

    def amap(self, index: int) -> np.ndarray | None:
        return self._block(index).maps[0] if self.has_map else None

    def points(self, index: int) -> np.ndarray | None:
        return self._block(index).points[0] if self.has_point else None


# ---------------------------------------------------------------- one augmented sample


def crop_image(image: np.ndarray, pixels: tuple[int, int, int, int], flip: bool,
               size: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """Crop (top, left, h, w), resize to (H, W) with INTER_AREA as FFCV does, mirror."""
    top, left, h, w = pixels
    out = cv2.resize(image[top : top + h, left : left + w], (size[1], size[0]),
                     interpolation=cv2.INTER_AREA)  # fmt: skip
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


class ReferenceDataset(Dataset):
    """Samples with the crop and flip of (seed, epoch, index), as dicts of arrays."""

    def __init__(self, samples: BetonSamples | RecordSamples, augment: Augment) -> None:
        self.samples = samples
        self.augment = augment
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.samples.image(index)
        height, width = image.shape[:2]
        pixels, box, flip = self.augment.crop(width, height, self.epoch, index)
        out = {"image": crop_image(image, pixels, flip, self.augment.image_size),
               "label": self.samples.label(index), "box": np.asarray(box, np.float32),
               "flip": flip, "index": index}  # fmt: skip
        amap = self.samples.amap(index)
        if amap is not None:
            scale = 1.0 / 255.0 if amap.dtype == np.uint8 else 1.0
            out["map"] = geo.crop_map(amap, box, flip, self.augment.map_size, scale)
        points = self.samples.points(index)
        if points is not None:
            target, weight = geo.transform_points(points, box, flip)
            out["point"] = np.concatenate([target, weight[:, None]], 1).astype(np.float32)
        return out


def collate(samples: list[dict[str, Any]], squeeze_points: bool = False) -> dict:
    """Stack a list of samples into tensors (points (N, K, 3) or (N, 3) when squeezed)."""
    out = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]
           if k not in ("flip", "index")}  # fmt: skip
    out["flip"] = torch.tensor([s["flip"] for s in samples], dtype=torch.bool)
    out["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.int64)
    if squeeze_points and "point" in out:
        out["point"] = out["point"][:, 0]
    return out


# ---------------------------------------------------------------- the loader


def _open_samples(src: str | Path, names: FieldNames, images: str | Path | None,
                  options: Any) -> BetonSamples | RecordSamples:  # fmt: skip
    """A .beton (by name or content), else records/Parquet; one clear ValueError or
    FileNotFoundError for anything else."""
    from luab_data.sources import SourceError

    if not Path(src).is_dir():
        check_path(src)
    if is_beton(src):
        return BetonSamples(src, names)
    try:
        return RecordSamples(src, images, options)
    except SourceError as err:
        raise ValueError(f"{src}: neither a .beton nor records or Parquet ({err})") from None


class ReferenceLoader:
    """torch DataLoader over a ReferenceDataset that yields the batch contract.

    Options mirror CoupledLoader: ``train``, ``image_size``, ``map_size``, ``seed``, ``scale``,
    ``ratio``, ``flip_p``, ``center_ratio``; ``order`` 'random' or 'sequential' (the shuffle is
    a function of (seed, epoch)); ``indices`` a subset; ``distributed`` gives rank r of world
    size w every w-th sample of the epoch's order; ``device`` moves batches there (pinned,
    non-blocking) and ``normalize`` then gives float images computed on it.
    ``src`` is a .beton, or records/Parquet with ``images`` (the folder of the JPEGs).
    """

    def __init__(
        self,
        src: str | Path,
        batch_size: int,
        *,
        train: bool = True,
        image_size: int | tuple[int, int] = 224,
        map_size: int | tuple[int, int] = (14, 14),
        seed: int = 0,
        scale: tuple[float, float] = geo.DEFAULT_SCALE,
        ratio: tuple[float, float] = geo.DEFAULT_RATIO,
        flip_p: float = 0.5,
        center_ratio: float = geo.DEFAULT_CENTER_RATIO,
        order: str | None = None,
        num_workers: int = 2,
        indices: Sequence[int] | None = None,
        drop_last: bool | None = None,
        normalize: bool = False,
        distributed: bool = False,
        device: torch.device | str | None = None,
        names: FieldNames = FieldNames(),
        images: str | Path | None = None,
        options: Any = None,
        **ignored: Any,  # FFCV-only settings of a recipe (os_cache, batches_ahead, ...)
    ) -> None:
        samples = _open_samples(src, names, images, options)
        augment = Augment(train, _pair(image_size), _pair(map_size), seed, tuple(scale),
                          tuple(ratio), flip_p, center_ratio)  # fmt: skip
        self.dataset = ReferenceDataset(samples, augment)
        self.batch_size, self.num_workers, self.normalize = batch_size, num_workers, normalize
        self.order = order or ("random" if train else "sequential")
        self.indices = np.arange(len(samples)) if indices is None else np.asarray(indices)
        self.drop_last = train if drop_last is None else drop_last
        check_batches(len(self), len(self.indices), batch_size, self.drop_last)
        self.distributed = distributed
        self.device = None if device is None else torch.device(device)
        point_shape = samples.points(0).shape if samples.has_point else None
        self._squeeze = point_shape == (2,)
        self.next_epoch = 0

    @property
    def epoch(self) -> int:
        return self.next_epoch

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        order = self.indices
        if self.order != "sequential":
            order = np.random.default_rng([self.dataset.augment.seed, epoch]).permutation(order)
        if self.distributed:  # every rank draws the same permutation and takes its share
            import torch.distributed as dist

            order = order[dist.get_rank() :: dist.get_world_size()]
        return order

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        self.dataset.epoch = epoch  # forked workers copy the dataset when the epoch starts
        pin = self.device is not None and self.device.type == "cuda"
        if self.num_workers:
            # The workers are forked: garbage left now (a DALI pipeline, say) would be
            # finalised inside them, where its threads do not exist, and hang.
            gc.collect()
        loader = DataLoader(self.dataset, self.batch_size, sampler=self._order(epoch).tolist(),
                            num_workers=self.num_workers, drop_last=self.drop_last,
                            collate_fn=self._collate, pin_memory=pin)  # fmt: skip
        return (self._batch(b) for b in loader)

    def _collate(self, samples: list[dict]) -> dict:
        return collate(samples, self._squeeze)

    def _batch(self, b: dict) -> Batch:
        if self.device is not None:
            b = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
        images = b["image"].permute(0, 3, 1, 2)  # NHWC memory: channels-last, as FFCV's
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN, device=images.device).reshape(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=images.device).reshape(1, 3, 1, 1)
            images = ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
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


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
