"""The batch contract every loader keeps, and the one way to make a loader.

Three loaders yield the same :class:`Batch` from the same .beton: ``ffcv`` (CoupledLoader),
``dali`` (DaliLoader) and ``torch`` (ReferenceLoader, plain PyTorch, also called
``reference``). They share, from this module:

* :class:`Batch` and :class:`FieldNames` (which .beton fields feed it), the normalisation
  constants :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`;
* :class:`CropSettings`: the crop and flip rule (train or eval crop, seed, scale, ratio,
  flip probability, centre ratio), one type for all three;
* :class:`LoaderSettings`: the knobs, under the same names for every loader (:data:`KNOBS`);
* :func:`epoch_order`: which samples a rank visits in an epoch, and in which batches.

So with the same file, knobs and epoch the three loaders yield the same sample indices, crop
boxes and flips, batch by batch. This module imports neither FFCV nor DALI.

>>> loader = make_loader("torch", "train.beton", batch_size=64, image_size=224, workers=2)
>>> for batch in loader:
...     batch.images, batch.labels, batch.boxes, batch.flips, batch.maps, batch.points, ...
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from luab_data import geometry as geo

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# kind -> (module, class); "reference" is another name of "torch"
LOADERS = {
    "ffcv": ("luab_data.loaders.ffcv_loader", "CoupledLoader"),
    "dali": ("luab_data.loaders.dali_loader", "DaliLoader"),
    "torch": ("luab_data.loaders.reference", "ReferenceLoader"),
}
KINDS = (*LOADERS, "reference")


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


@dataclass(frozen=True)
class CropSettings:
    """The crop and flip rule of a loader. ``train``: RandomResizedCrop (``scale``,
    ``ratio``) and a mirror with probability ``flip_p``, drawn from (``seed``, epoch, sample
    index); else the centre crop (``center_ratio`` of the short side), no mirror."""

    train: bool = True
    seed: int = 0
    scale: tuple[float, float] = geo.DEFAULT_SCALE
    ratio: tuple[float, float] = geo.DEFAULT_RATIO
    flip_p: float = 0.5
    center_ratio: float = geo.DEFAULT_CENTER_RATIO

    def __post_init__(self) -> None:
        scale, ratio = _floats(self.scale, "scale"), _floats(self.ratio, "ratio")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be 0 < min <= max, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be 0 < min <= max, got {ratio}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must lie in [0, 1], got {self.flip_p}")
        if not 0.0 < self.center_ratio <= 1.0:
            raise ValueError(f"center_ratio must lie in (0, 1], got {self.center_ratio}")
        object.__setattr__(self, "scale", scale)  # lists from a recipe become tuples
        object.__setattr__(self, "ratio", ratio)

    def crop(self, width: int, height: int, epoch: int, index: int) -> tuple:
        """((top, left, h, w) pixels, normalised box, flip) of one sample in ``epoch``."""
        return geo.crop_box(
            width,
            height,
            self.seed,
            epoch,
            index,
            train=self.train,
            scale=self.scale,
            ratio=self.ratio,
            flip_p=self.flip_p,
            center_ratio=self.center_ratio,
        )


@dataclass(frozen=True)
class LoaderSettings:
    """The knobs every loader takes, under these names (:data:`KNOBS`).

    ``image_size``/``map_size``: (H, W), an int for a square. ``seed``, ``scale``, ``ratio``,
    ``flip_p``, ``center_ratio``: the crop (:class:`CropSettings`) and, with ``seed``, the
    shuffle. ``shuffle`` and ``drop_last``: None follows ``train``. ``workers``: decoding
    threads (FFCV, DALI) or worker processes (torch; 0 loads in the calling process); None is
    the loader's default. ``rank``/``world_size``: this process's share of each epoch (None:
    torch.distributed's when it is initialised, else 0 and 1). ``device``: None or "cpu" keeps
    batches on the CPU; "cuda", "cuda:1", 1 or a torch.device moves them there (DALI then
    decodes on that GPU). ``normalize``: float images, (x - mean) / std, as ``image_dtype``.
    ``names``: the fields to read (None: those of the file). ``indices``: a subset to visit.
    """

    batch_size: int
    train: bool = True
    image_size: int | tuple[int, int] = 224
    map_size: int | tuple[int, int] = 14
    seed: int = 0
    scale: tuple[float, float] = geo.DEFAULT_SCALE
    ratio: tuple[float, float] = geo.DEFAULT_RATIO
    flip_p: float = 0.5
    center_ratio: float = geo.DEFAULT_CENTER_RATIO
    shuffle: bool | None = None
    drop_last: bool | None = None
    workers: int | None = None
    rank: int | None = None
    world_size: int | None = None
    device: Any = None
    normalize: bool = False
    image_dtype: Any = None  # torch.dtype; None: float32
    names: FieldNames | None = None
    indices: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.workers is not None and int(self.workers) < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        rank, world = _rank_and_world(self.rank, self.world_size)
        set_ = object.__setattr__  # frozen: fill in the resolved values once
        set_(self, "image_size", _pair(self.image_size, "image_size"))
        set_(self, "map_size", _pair(self.map_size, "map_size"))
        set_(self, "shuffle", self.train if self.shuffle is None else bool(self.shuffle))
        set_(self, "drop_last", self.train if self.drop_last is None else bool(self.drop_last))
        set_(self, "rank", rank)
        set_(self, "world_size", world)
        self.crop  # noqa: B018 (validates the crop knobs now, not at the first batch)

    @classmethod
    def of(cls, owner: str, knobs: dict[str, Any], extras: Sequence[str] = ()) -> LoaderSettings:
        """Settings from keyword arguments; an unknown name is a TypeError that says which
        names ``owner`` takes (and the closest one)."""
        refuse_unknown(owner, knobs, extras)
        return cls(**knobs)

    @property
    def crop(self) -> CropSettings:
        return CropSettings(
            self.train,
            int(self.seed),
            tuple(self.scale),
            tuple(self.ratio),
            float(self.flip_p),
            float(self.center_ratio),
        )

    def torch_device(self) -> torch.device | None:
        """The device batches go to; None: left where the loader makes them (the CPU)."""
        return resolve_device(self.device)

    def dtype(self) -> torch.dtype:
        import torch

        return self.image_dtype or torch.float32

    def field_names(self, path: str | Path) -> FieldNames:
        """``names``, or the fields of a luab-data .beton at ``path``."""
        return self.names if self.names is not None else field_names(path)

    def epoch_order(self, n_samples: int, epoch: int) -> np.ndarray:
        """The samples this rank visits in ``epoch``, cut to whole batches (:func:`epoch_order`)."""
        return epoch_order(
            self.subset(n_samples),
            epoch,
            seed=int(self.seed),
            shuffle=self.shuffle,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=int(self.batch_size),
            drop_last=self.drop_last,
        )

    def subset(self, n_samples: int) -> np.ndarray:
        """The sample indices the loader draws from (``indices`` or all)."""
        if self.indices is None:
            return np.arange(n_samples, dtype=np.int64)
        return np.asarray(self.indices, dtype=np.int64)

    def batches_per_epoch(self, n_samples: int) -> int:
        return num_batches(
            len(self.subset(n_samples)), int(self.batch_size), self.drop_last, self.world_size
        )


KNOBS = tuple(f.name for f in fields(LoaderSettings))


# ---------------------------------------------------------------- the epoch order


def epoch_order(
    indices: np.ndarray,
    epoch: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 1,
    drop_last: bool = False,
) -> np.ndarray:
    """The samples rank ``rank`` of ``world_size`` visits in ``epoch``, in order, cut to whole
    batches when ``drop_last`` (FFCV's traversal rules, which every loader follows).

    One process: NumPy's ``default_rng(seed + epoch)`` permutation of ``indices`` (or
    ``indices`` as they are). Several: torch's DistributedSampler rule: one permutation
    (``torch.randperm`` seeded with ``seed + epoch``) shared by all ranks, padded with its
    own head to a multiple of ``world_size``, and every ``world_size``-th sample from ``rank``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if world_size > 1:
        order = indices[_shard_positions(len(indices), epoch, seed, shuffle, rank, world_size)]
    elif shuffle:
        order = np.random.default_rng(seed + epoch).permutation(indices)
    else:
        order = indices
    n = num_batches(len(indices), batch_size, drop_last, world_size)
    return np.ascontiguousarray(order[: n * batch_size])


def _shard_positions(
    n: int, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int
) -> np.ndarray:
    if shuffle:
        import torch

        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        positions = torch.randperm(n, generator=generator).numpy()
    else:
        positions = np.arange(n, dtype=np.int64)
    total = math.ceil(n / world_size) * world_size
    padded = np.resize(positions, total)  # repeats from the head, as DistributedSampler pads
    return padded[rank:total:world_size]


def num_batches(n_samples: int, batch_size: int, drop_last: bool, world_size: int = 1) -> int:
    """Batches per epoch of one rank: its ceil(n / world_size) samples, the last partial batch
    dropped when ``drop_last``."""
    per_rank = math.ceil(n_samples / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def field_names(path: str | Path) -> FieldNames:
    """The fields of a .beton written by luab-data (COCO-AB's label field is the multi-hot
    `labels`; a build without byproducts has no map or point)."""
    from luab_data.beton.fields import field_roles
    from luab_data.beton.integrity import check_beton

    return FieldNames(**field_roles(check_beton(path).handlers))


def check_batches(n_batches: int, samples: int, batch_size: int, drop_last: bool) -> None:
    """A loader that would yield no batch at all is an error, not a silent empty epoch."""
    if n_batches > 0:
        return
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if samples == 0:
        raise ValueError("no samples to load (an empty file or an empty list of indices)")
    if drop_last:
        raise ValueError(
            f"batch_size {batch_size:,} exceeds the {samples:,} samples: in "
            "training mode (drop_last) no batch would come out; lower batch_size "
            "or pass drop_last=False"
        )
    raise ValueError(f"no batch of {batch_size:,} from {samples:,} samples")


# ---------------------------------------------------------------- making a loader


def make_loader(kind: str, path: str | Path, **knobs: Any) -> Any:
    """A loader of the contract: ``kind`` "ffcv", "dali" or "torch" ("reference"), over
    ``path``, with :class:`LoaderSettings` knobs (``batch_size`` is required) and the loader's
    own extras (FFCV: ``os_cache``, ``batches_ahead``; DALI: ``hw_decoder_load``,
    ``decoder_options``, ``prefetch_queue_depth``; torch: ``images``, ``options`` for records).
    Unknown names are a TypeError before anything is opened."""
    cls = loader_class(kind)
    refuse_unknown(f"make_loader({kind!r})", knobs, cls.EXTRAS)
    return cls(path, **knobs)


def loader_class(kind: str) -> type:
    """The class of a loader kind (imports FFCV or DALI only for theirs)."""
    key = "torch" if kind == "reference" else kind
    if key not in LOADERS:
        raise ValueError(f"unknown loader {kind!r}: choose from {', '.join(KINDS)}")
    module, name = LOADERS[key]
    return getattr(importlib.import_module(module), name)


def refuse_unknown(owner: str, given: dict[str, Any], extras: Sequence[str] = ()) -> None:
    """TypeError naming every unknown keyword, with the closest known name."""
    known = (*KNOBS, *extras)
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) or _synonym(name)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(
        f"{owner}: unknown argument{'s' * (len(unknown) > 1)} {', '.join(hints)}; "
        f"it takes {', '.join(known)}"
    )


_SYNONYMS = {
    "num_workers": "workers",
    "num_threads": "workers",
    "distributed": "world_size",
    "shard_id": "rank",
    "num_shards": "world_size",
    "device_id": "device",
    "order": "shuffle",
    "half": "image_dtype",
}


def _synonym(name: str) -> list[str]:
    """The knob that replaced a loader's old keyword (the dialects before the contract)."""
    return [_SYNONYMS[name]] if name in _SYNONYMS else []


# ---------------------------------------------------------------- small helpers


def resolve_device(device: Any) -> torch.device | None:
    """None -> None (batches stay where the loader makes them: the CPU); an int -> that CUDA
    device; "cuda" -> the current CUDA device; "cpu" -> the CPU (FFCV then runs the transfer
    stages of its GPU pipeline, on the CPU)."""
    if device is None:
        return None
    import torch

    if isinstance(device, int):
        device = torch.device("cuda", device)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        auto_rank, auto_world = _distributed()
        rank = auto_rank if rank is None else rank
        world_size = auto_world if world_size is None else world_size
    rank, world_size = int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    return rank, world_size


def _distributed() -> tuple[int, int]:
    """torch.distributed's rank and world size when it is initialised, else (0, 1)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # not initialised if never imported
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what} must be a positive int or (H, W), got {size!r}")
    return int(pair[0]), int(pair[1])


def _floats(pair: Sequence[float], what: str) -> tuple[float, float]:
    if len(pair) != 2:
        raise ValueError(f"{what} must be (min, max), got {pair!r}")
    return float(pair[0]), float(pair[1])
