"""Inputs of train/fast_train.py that are not a packed-file loader.

* :class:`FolderSplit` — an evaluation split of the bundled sample (``labels.csv`` + JPEGs, e.g.
  ``val_id/``, ``val_ood/``), which the .beton writer does not pack because the byproduct archive
  has no records of them. It yields the batch contract (no maps or points) and knows each
  image's object box, which the localisation score needs.
* :class:`SyntheticLoader` — device-resident random batches in the contract's shapes: the
  throughput ceiling of the trainer (no decoding, no transfer) and a deterministic input for
  the tests.
* :func:`json_member` — one top-level value of a JSON file read from its head only: the class
  names of a .beton manifest without its list of every key (1.28 M at ImageNet scale).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from luab_data import geometry as geo
from luab_data.loaders.contract import Batch


class FolderSplit:
    """Validation loader over ``<split>/labels.csv``: decode with OpenCV, centre-crop with
    luab_data.geometry's validation crop, resize with INTER_AREA (as FFCV's decoder does).

    The split is small, so it is decoded once per resolution and kept as one uint8 tensor.
    ``rank``/``world`` take every ``world``-th image so that DDP ranks share the work.
    ``multilabel`` (a COCO-AB sample): multi-hot labels over ``classes`` (COCO names) from the
    ``object_classes`` column; the object box is that of the image's main object.
    """

    def __init__(
        self,
        folder: str | Path,
        batch_size: int,
        image_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        center_ratio: float = geo.DEFAULT_CENTER_RATIO,
        classes: list[str] | None = None,
        multilabel: bool = False,
    ) -> None:
        self.folder = Path(folder)
        rows = _read_labels(self.folder / "labels.csv")
        self.paths = [_image_path(self.folder, r["image"]) for r in rows]
        if multilabel:
            self.labels = _multi_hot(rows, classes or [], self.folder.parent / "sample.json")
        else:
            self.labels = torch.tensor(_label_indices(rows, classes), dtype=torch.int64)
        size = np.array([[float(r["width"]), float(r["height"])] for r in rows])
        box = np.array(
            [[float(r[k]) for k in ("box_x0", "box_y0", "box_x1", "box_y1")] for r in rows]
        )
        self.object_boxes = torch.from_numpy(box / np.tile(size, 2)).float()  # normalised
        self.batch_size, self.image_size, self.center_ratio = batch_size, image_size, center_ratio
        self.mine = np.arange(rank, len(rows), world)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def __len__(self) -> int:
        return -(-len(self.mine) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:  # the contract's loaders have it; nothing random
        pass

    def __iter__(self) -> Iterator[Batch]:
        images, crops = self._decoded()
        for start in range(0, len(self.mine), self.batch_size):
            idx = torch.from_numpy(self.mine[start : start + self.batch_size])
            yield Batch(
                images=images[idx].contiguous(memory_format=torch.channels_last),
                labels=self.labels[idx],
                boxes=crops[idx],
                flips=torch.zeros(len(idx), dtype=torch.bool),
                maps=None,
                points=None,
                point_weights=None,
                indices=idx,
            )

    def _decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) uint8 images and (N, 4) crop boxes of every image of the split."""
        if self._cache is None or self._cache[0].shape[-1] != self.image_size:
            n, s = len(self.paths), self.image_size
            images = torch.zeros((n, 3, s, s), dtype=torch.uint8)
            crops = torch.zeros((n, 4), dtype=torch.float32)
            for i in self.mine:
                images[i], crops[i] = self._load(int(i))
            self._cache = images, crops
        return self._cache

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        bgr = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot decode {self.paths[i]}")
        height, width = bgr.shape[:2]
        (top, left, h, w), box, _ = geo.crop_box(
            width, height, 0, 0, i, train=False, center_ratio=self.center_ratio
        )
        crop = bgr[top : top + h, left : left + w]
        rgb = cv2.cvtColor(
            cv2.resize(crop, (self.image_size,) * 2, interpolation=cv2.INTER_AREA),
            cv2.COLOR_BGR2RGB,
        )
        return torch.from_numpy(rgb).permute(2, 0, 1), torch.tensor(box, dtype=torch.float32)


def _label_indices(rows: list[dict[str, str]], classes: list[str] | None) -> list[int]:
    """Labels as the training file numbers them: the position of the row's wnid in
    ``classes`` (the .beton manifest's list), by default the sorted wnids (the ImageFolder
    convention of the official loader); never the sample's own ``class`` column, whose
    order (Fashion-MNIST's) differs."""
    classes = classes or sorted({r["wnid"] for r in rows})
    index = {wnid: i for i, wnid in enumerate(classes)}
    return [index[r["wnid"]] for r in rows]


def _multi_hot(rows: list[dict[str, str]], classes: list[str], sample_json: Path) -> torch.Tensor:
    """(N, len(classes)) uint8: the sample's class indices in ``object_classes`` ('0;1;8')
    through sample.json's COCO names to positions in ``classes`` (the .beton's order)."""
    names = {c["index"]: c["coco_name"] for c in json.loads(sample_json.read_text())["classes"]}
    column = {name: i for i, name in enumerate(classes)}
    out = torch.zeros((len(rows), len(classes)), dtype=torch.uint8)
    for i, row in enumerate(rows):
        for k in filter(None, row["object_classes"].split(";")):
            out[i, column[names[int(k)]]] = 1
    return out


def _read_labels(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _image_path(folder: Path, name: str) -> Path:
    """labels.csv names images relative to the sample root (``val_id/n0.../x.JPEG``)."""
    for base in (folder.parent, folder):
        if (base / name).exists():
            return base / name
    raise FileNotFoundError(f"{name} (listed in {folder / 'labels.csv'})")


class SyntheticLoader:
    """``n_distinct`` random batches made once on ``device``, replayed ``steps`` times an
    epoch in an order drawn from (seed, epoch): the data path costs nothing.

    Images are already normalised float (channels-last) like the GPU FFCV pipeline's output;
    maps are non-negative with a peak, points uniform in the crop with ~1/4 of weights 0.
    """

    def __init__(
        self,
        batch_size: int,
        image_size: int,
        *,
        num_classes: int,
        map_size: tuple[int, int],
        map_channels: int = 2,
        n_points: int = 1,
        steps: int = 50,
        n_distinct: int = 4,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.batches = [
            _random_batch(
                gen,
                batch_size,
                image_size,
                num_classes,
                map_size,
                map_channels,
                n_points,
                device,
                dtype,
            )
            for _ in range(n_distinct)
        ]
        self.steps, self.seed, self.epoch = steps, seed, 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randint(len(self.batches), (self.steps,), generator=gen)
        self.epoch += 1
        return (self.batches[int(i)] for i in order)


def _random_batch(
    gen: torch.Generator,
    n: int,
    size: int,
    num_classes: int,
    map_size: tuple[int, int],
    map_channels: int,
    n_points: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> Batch:
    images = torch.randn((n, 3, size, size), generator=gen).to(dtype)
    maps = torch.rand((n, map_channels, *map_size), generator=gen) ** 8  # peaky, >= 0
    points = torch.rand((n, n_points, 2), generator=gen)
    weights = (torch.rand((n, n_points), generator=gen) > 0.25).float()
    points = torch.where(weights[..., None] > 0, points, torch.full_like(points, -1.0))
    batch = Batch(
        images=images.contiguous(memory_format=torch.channels_last),
        labels=torch.randint(num_classes, (n,), generator=gen),
        boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1),
        flips=torch.zeros(n, dtype=torch.bool),
        maps=maps,
        points=points[:, 0] if n_points == 1 else points,
        point_weights=weights[:, 0] if n_points == 1 else weights,
        indices=torch.arange(n),
    )
    return Batch(*(None if t is None else t.to(device) for t in batch))


# ---------------------------------------------------------------- one member of a JSON file


def json_member(path: str | Path, key: str, chunk: int = 1 << 16) -> Any:
    """The value of top-level ``key`` of the JSON object in ``path`` (None if absent), parsed
    member by member from the head of the file: what follows that member is never read, and
    the members before it are dropped as soon as they are parsed (a .beton manifest's
    ``metadata`` comes before its ``keys``)."""
    with open(path, encoding="utf-8") as f:
        reader = _JsonHead(f, chunk)
        reader.expect("{")
        while reader.peek() != "}":
            name = reader.value()
            reader.expect(":")
            value = reader.value()
            if name == key:
                return value
            reader.drop()
            if reader.peek() == ",":
                reader.expect(",")
    return None


class _JsonHead:
    """Just enough of a streaming JSON reader: values by ``json``'s own decoder over a buffer
    that grows (doubling its reads, so a long value costs linear time) until the value ends
    before the buffer does."""

    def __init__(self, file: Any, chunk: int) -> None:
        self.file, self.chunk = file, chunk
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> None:
        if self.eof:
            raise ValueError(f"{self.file.name}: the JSON ends early")
        data = self.file.read(self.chunk)
        self.chunk *= 2
        self.eof = not data
        self.buf += data

    def peek(self) -> str:
        while True:
            rest = self.buf[self.pos :].lstrip()
            self.pos = len(self.buf) - len(rest)
            if rest:
                return rest[0]
            self._more()

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"{self.file.name}: expected {char!r} in the JSON")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number may go on in the next read
                    self.pos = end
                    return value
            except json.JSONDecodeError:
                if self.eof:
                    raise
            self._more()

    def drop(self) -> None:
        """Forget what has been parsed."""
        self.buf, self.pos = self.buf[self.pos :], 0
