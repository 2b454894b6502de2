"""The FFCV loader of the batch contract (:mod:`luab_data.loaders.contract`).

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ffcv.fields import IntField, RGBImageField
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline import PipelineSpec
from ffcv.reader import Reader
from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage
from ffcv.traversal_order.base import TraversalOrder

from luab_data.beton.integrity import check_beton
from luab_data.beton.paths import refuse_shards
from luab_data.loaders.contract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Batch,
    FieldNames,
    LoaderSettings,
    check_batches,
)
from luab_data.loaders.ffcv_ops import (
    CoupledCropDecoder,
    CropBoxDecoder,
    CroppedMapDecoder,
    CroppedPointDecoder,
    CropPlan,
    NormalizeTorchImage,
    SampleIndexDecoder,
)

CROP_OUTPUT = "luab_crop"  # output names of our own, kept apart from field names
INDEX_OUTPUT = "luab_index"


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

    Knobs: :class:`~luab_data.loaders.contract.LoaderSettings` (``batch_size``, ``train``,
    ``image_size``, ``map_size``, ``seed``, ``workers`` (threads, default 2), ``rank``,
    ``world_size``, ``device``, ...). The epoch order is the contract's ``epoch_order``, so
    ranks need no torch.distributed and every loader visits the same samples. A CUDA
    ``device`` adds a non-blocking ToDevice to every output, and ``normalize`` then runs on
    the GPU. Extras: ``os_cache`` (FFCV's page-cache reader), ``batches_ahead``.
    """

    EXTRAS = ("os_cache", "batches_ahead")

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        *,
        os_cache: bool = True,
        batches_ahead: int = 3,
        **knobs: Any,
    ) -> None:
        s = LoaderSettings.of(type(self).__name__, {"batch_size": batch_size, **knobs}, self.EXTRAS)
        refuse_shards(path)  # a shard or a folder of shards: say to merge them first
        check_beton(path)  # one clear error for a missing, foreign, cut or damaged file
        reader = Reader(str(path))
        self.settings, self.names = s, s.field_names(path)
        self.plan = CropPlan.from_reader(reader, s.crop, self.names.image)
        point_field = reader.handlers.get(self.names.point)
        self._squeeze_points = point_field is not None and point_field.shape == (2,)
        pipelines = build_pipelines(
            reader,
            self.plan,
            names=self.names,
            image_size=s.image_size,
            map_size=s.map_size,
            device=s.torch_device(),
            normalize=s.normalize,
            image_dtype=s.dtype(),
        )
        self.loader = Loader(
            str(path),
            batch_size=s.batch_size,
            num_workers=_threads(s.workers),
            os_cache=os_cache,
            order=OrderOption.SEQUENTIAL,
            pipelines=pipelines,
            drop_last=s.drop_last,
            batches_ahead=batches_ahead,
        )
        _share_epoch_order(self.loader, s, int(reader.num_samples))
        samples = len(s.subset(int(reader.num_samples)))
        check_batches(len(self.loader), samples, s.batch_size, s.drop_last)
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


class _SharedOrder(TraversalOrder):
    """FFCV traversal order that is the contract's epoch order (FFCV's own needs an
    initialised torch.distributed for ranks and takes no subset of a rank's share)."""

    def __init__(self, loader: Loader, settings: LoaderSettings, n_samples: int) -> None:
        super().__init__(loader)
        self.settings, self.n_samples = settings, n_samples

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.settings.epoch_order(self.n_samples, epoch)


def _share_epoch_order(loader: Loader, settings: LoaderSettings, n_samples: int) -> None:
    """Install :class:`_SharedOrder` (FFCV's Loader accepts no custom order instance: it
    calls it) and recompute the first epoch's order, which its ``len()`` reads."""
    loader.traversal_order = _SharedOrder(loader, settings, n_samples)
    loader.first_traversal_order = loader.next_traversal_order()


def _threads(workers: int | None) -> int:
    """FFCV's decoding threads: 2 by default, at least 1 (FFCV reads 0 as every core)."""
    return 2 if workers is None else max(1, int(workers))
