"""The FFCV loader of the batch contract (DESIGN.md, contract 3).

>>> loader = CoupledLoader("train.beton", batch_size=256, image_size=224, map_size=(14, 14))
>>> for batch in loader:
...     batch.images, batch.labels, batch.boxes, batch.flips, batch.maps, batch.points, ...

Output tensors are FFCV's reused buffers: clone what you keep beyond the next batch.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from ffcv.fields import IntField, RGBImageField
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline import PipelineSpec
from ffcv.reader import Reader
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

from luab_data import geometry as geo
from luab_data.loaders.beton_file import check_batches, check_beton
from luab_data.loaders.ffcv_ops import (
    CoupledCropDecoder,
    CropBoxDecoder,
    CroppedMapDecoder,
    CroppedPointDecoder,
    CropPlan,
    NormalizeTorchImage,
    SampleIndexDecoder,
)

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CROP_OUTPUT = "luab_crop"  # output names of our own, kept apart from field names
INDEX_OUTPUT = "luab_index"


class Batch(NamedTuple):
    """One batch of the contract. Tensors are on the loader's device.

    images: (N, 3, H, W) channels-last, uint8 or normalised float; labels: (N,) int64 or
    (N, L) multi-hot; boxes: (N, 4) float32 normalised (x0, y0, x1, y1) in the original image;
    flips: (N,) bool, mirror applied after the crop; maps: (N, C, Ho, Wo) float32 or None;
    points: (N, 2) or (N, K, 2) float32 crop coordinates, (-1, -1) where invalid, or None;
    point_weights: (N,) or (N, K) float32 in {0, 1}, or None; indices: (N,) int64.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    maps: torch.Tensor | None
    points: torch.Tensor | None
    point_weights: torch.Tensor | None
    indices: torch.Tensor


@dataclass(frozen=True)
class FieldNames:
    """Names of the .beton fields the loader reads; ``None`` for an absent byproduct."""

    image: str = "image"
    label: str = "label"
    map: str | None = "map"
    point: str | None = "point"


def _to(device: torch.device | None) -> list[Any]:
    return [ToDevice(device, non_blocking=True)] if device is not None else []


def build_pipelines(
    reader: Reader,
    plan: CropPlan,
    *,
    names: FieldNames = FieldNames(),
    image_size: tuple[int, int] = (224, 224),
    map_size: tuple[int, int] = (14, 14),
    device: torch.device | None = None,
    normalize: bool = False,
    image_dtype: torch.dtype = torch.float32,
    map_plan: CropPlan | None = None,
    point_plan: CropPlan | None = None,
) -> dict[str, PipelineSpec | None]:
    """FFCV pipelines for every field of ``reader``: ours for the contract, None (skipped) for
    the rest. ``map_plan``/``point_plan`` default to ``plan``; they exist so that a test can
    decouple them on purpose."""
    handlers = reader.handlers
    if not isinstance(handlers.get(names.image), RGBImageField):
        raise ValueError(f"no RGB image field {names.image!r} in {list(handlers)}")
    specs: dict[str, PipelineSpec | None] = dict.fromkeys(handlers)
    image_ops: list[Any] = [ToTensor(), *_to(device), ToTorchImage(channels_last=True)]
    if normalize:
        image_ops.append(NormalizeTorchImage(IMAGENET_MEAN, IMAGENET_STD, image_dtype))
    specs[names.image] = PipelineSpec(names.image, CoupledCropDecoder(plan, image_size), image_ops)
    label_tail = [Squeeze(1)] if isinstance(handlers[names.label], IntField) else []
    specs[names.label] = PipelineSpec(
        names.label, transforms=[ToTensor(), *label_tail, *_to(device)]
    )
    if names.map in handlers:
        decoder = CroppedMapDecoder(map_plan or plan, map_size)
        specs[names.map] = PipelineSpec(names.map, decoder, [ToTensor(), *_to(device)])
    if names.point in handlers:
        decoder = CroppedPointDecoder(point_plan or plan)
        specs[names.point] = PipelineSpec(names.point, decoder, [ToTensor(), *_to(device)])
    specs[CROP_OUTPUT] = PipelineSpec(names.image, CropBoxDecoder(plan), [ToTensor(), *_to(device)])
    index_tail = [ToTensor(), Squeeze(1), *_to(device)]
    specs[INDEX_OUTPUT] = PipelineSpec(names.label, SampleIndexDecoder(), index_tail)
    return specs


class CoupledLoader:
    """FFCV loader whose image, attention map and points share one crop and flip per sample.

    ``train=True``: RandomResizedCrop (``scale``, ``ratio``) + flip with ``flip_p``, drawn from
    (``seed``, epoch, sample index); ``train=False``: resize + center crop (``center_ratio``),
    no flip. ``image_size`` and ``map_size`` are (H, W) (an int means square). ``device``:
    None keeps CPU tensors; a CUDA device adds non-blocking ToDevice to every output, and
    ``normalize`` then runs on the GPU. ``distributed`` uses FFCV's rank/world size from
    torch.distributed; the sample index (hence the crop) is global, so ranks agree.
    """

    def __init__(
        self,
        path: str | Path,
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
        order: OrderOption | None = None,
        num_workers: int = 2,
        distributed: bool = False,
        indices: Sequence[int] | None = None,
        drop_last: bool | None = None,
        batches_ahead: int = 3,
        os_cache: bool = True,
        device: torch.device | str | None = None,
        normalize: bool = False,
        image_dtype: torch.dtype = torch.float32,
        names: FieldNames = FieldNames(),
    ) -> None:
        check_beton(path)  # one clear error for a missing, foreign, cut or damaged file
        reader = Reader(str(path))
        self.names = names
        self.plan = CropPlan.from_reader(
            reader, names.image, train=train, seed=seed, scale=scale, ratio=ratio,
            flip_p=flip_p, center_ratio=center_ratio,
        )  # fmt: skip
        point_field = reader.handlers.get(names.point)
        self._squeeze_points = point_field is not None and point_field.shape == (2,)
        pipelines = build_pipelines(
            reader, self.plan, names=names, image_size=_pair(image_size),
            map_size=_pair(map_size), device=None if device is None else torch.device(device),
            normalize=normalize, image_dtype=image_dtype,
        )  # fmt: skip
        self.loader = Loader(
            str(path), batch_size=batch_size, num_workers=num_workers, os_cache=os_cache,
            order=order or (OrderOption.RANDOM if train else OrderOption.SEQUENTIAL),
            distributed=distributed, seed=seed, indices=indices, pipelines=pipelines,
            drop_last=train if drop_last is None else drop_last, batches_ahead=batches_ahead,
        )  # fmt: skip
        samples = len(indices) if indices is not None else int(reader.num_samples)
        check_batches(len(self.loader), samples, batch_size, self.loader.drop_last)
        self._outputs = list(self.loader.pipeline_specs)  # FFCV yields outputs in this order
        self._live: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will run."""
        return self.loader.next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Resume at ``epoch``: its order and crops are those of an uninterrupted run."""
        self.loader.next_epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        self._retire_live_epoch()
        self.plan.set_epoch(self.loader.next_epoch)  # before FFCV's worker thread starts
        epoch_iter = iter(self.loader)
        self._live = epoch_iter
        return (self._assemble(out) for out in epoch_iter)

    def _retire_live_epoch(self, patience_s: float = 60.0) -> None:
        """An abandoned epoch's worker may still be decoding; let it stop before the epoch
        counter its stages read changes under it. FFCV's worker checks for ``close()`` only
        when its queue is full, and blocks for good on a full queue at the end of an epoch, so
        take one batch off a full queue until it has gone."""
        live, self._live = self._live, None
        if live is None:
            return
        live.close()
        deadline = time.monotonic() + patience_s
        while live.is_alive() and time.monotonic() < deadline:
            live.join(0.05)
            if live.is_alive() and live.output_queue.full():
                with contextlib.suppress(queue.Empty):
                    live.output_queue.get_nowait()
        if live.is_alive():
            warnings.warn("an abandoned FFCV epoch did not stop; crops may mismatch", stacklevel=3)

    def _assemble(self, outputs: Sequence[torch.Tensor]) -> Batch:
        out = dict(zip(self._outputs, outputs, strict=True))
        crop = out[CROP_OUTPUT]
        points = weights = None
        if self.names.point in out:
            pts = out[self.names.point]
            if self._squeeze_points:
                pts = pts[:, 0]
            points, weights = pts[..., :2], pts[..., 2]
        return Batch(
            images=out[self.names.image],
            labels=out[self.names.label],
            boxes=crop[:, :4],
            flips=crop[:, 4] > 0.5,
            maps=out.get(self.names.map),
            points=points,
            point_weights=weights,
            indices=out[INDEX_OUTPUT],
        )


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
