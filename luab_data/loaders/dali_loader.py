"""The DALI loader of the batch contract (:mod:`luab_data.loaders.contract`), over the same
.beton as FFCV.

>>> loader = DaliLoader("train.beton", 256, train=True, image_size=224, map_size=14,
...                     device="cuda:0")            # device None: CPU-only pipeline
>>> for batch in loader:                            # a luab_data.loaders.contract.Batch
...     batch.images, batch.labels, batch.boxes, batch.flips, batch.maps, batch.points, ...

How one crop reaches every output. A batch source (``fn.external_source``, batch mode) reads the
sample indices of the next batch, looks up each stored image size in the .beton metadata and
draws the crop and flip with :mod:`luab_data.geometry` from (seed, epoch, index) — the very
function the FFCV loader's stages call, so both loaders crop a sample identically. The same
per-sample window then drives

* the image: ``fn.decoders.image_slice`` with the integer pixel window (absolute anchor/shape,
  so no rounding of normalised coordinates can move it), ``fn.resize`` to the output size,
  ``fn.crop_mirror_normalize`` with the flip (and the optional normalisation);
* the map: ``fn.resize`` with the normalised box as a *relative ROI* (fractional, so a box edge
  inside a map cell is honoured, as in ``geometry.warp_map``), and the flip folded into the ROI
  (an ROI whose start exceeds its end is mirrored). A separate ``fn.slice`` would have to round
  the box to whole cells first, which ``geometry.crop_map`` does not do;
* the points: ``geometry.transform_points_into`` on the source side (a few flops per sample);
* the reported boxes and flips: the window itself, passed through the pipeline with its batch.

Everything a batch needs travels through the pipeline together, so prefetching cannot pair a
batch with another batch's crops. Output tensors are DLPack views that own their DALI buffers:
a later batch never overwrites them (unlike FFCV's reused buffers), nothing needs cloning.

Devices: ``device=None`` runs every operator on the CPU (DALI's CPU-only mode, used in CI);
a CUDA device decodes with DALI's ``device="mixed"`` (nvJPEG; the A100/H100 hardware JPEG
decoder takes ``hw_decoder_load`` of the work) and resizes, mirrors, normalises and resamples
maps on that GPU.

Images may be stored as JPEG or raw (FFCV's ``write_mode`` raw/proportion/smart): a raw image is
handed to the decoder as a binary PPM (a short text header before the stored RGB bytes), which
DALI decodes on the CPU even in mixed mode, so one graph serves both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ffcv.fields import NDArrayField
from numba import njit
from nvidia.dali import fn, pipeline_def, types

from luab_data import geometry as geo
from luab_data.beton.batch_file import BatchBetonFile, ImageTable
from luab_data.beton.fields import RAW_MODE
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

# source outputs that leave the pipeline as they came in (copied to the GPU in mixed mode)
PASSED_THROUGH = ("boxes", "mirror", "labels", "points", "weights", "indices")
_DALI_TYPES = {
    np.dtype(np.uint8): types.UINT8,
    np.dtype(np.int16): types.INT16,
    np.dtype(np.int32): types.INT32,
    np.dtype(np.int64): types.INT64,
    np.dtype(np.float32): types.FLOAT,
    np.dtype(np.float64): types.FLOAT64,
}


# ---------------------------------------------------------------- the crops


@dataclass
class Crops:
    """One batch's windows: ``pixels`` (N, 4) int32 (left, top, w, h) of the stored image,
    ``boxes`` (N, 4) float64 normalised (x0, y0, x1, y1), ``flips`` (N,) bool."""

    pixels: np.ndarray
    boxes: np.ndarray
    flips: np.ndarray

    def map_roi(self) -> tuple[np.ndarray, np.ndarray]:
        """Relative (y, x) ROI start/end for ``fn.resize``; x swapped where flipped (mirror)."""
        x0, y0, x1, y1 = self.boxes.T
        xs, xe = np.where(self.flips, x1, x0), np.where(self.flips, x0, x1)
        start = np.stack([y0, xs], axis=1).astype(np.float32)
        return start, np.stack([y1, xe], axis=1).astype(np.float32)


def draw_crops(sizes: np.ndarray, indices: np.ndarray, rule: CropSettings, epoch: int) -> Crops:
    """The windows of ``indices`` in ``epoch``: geometry's crop of each stored (width, height)."""
    n = len(indices)
    crops = Crops(np.empty((n, 4), np.int32), np.empty((n, 4)), np.empty(n, np.bool_))
    _draw_crops(
        sizes,
        np.asarray(indices, np.int64),
        rule.seed,
        epoch,
        rule.train,
        *rule.scale,
        *rule.ratio,
        rule.flip_p,
        rule.center_ratio,
        crops.pixels,
        crops.boxes,
        crops.flips,
    )
    return crops


@njit(cache=True, nogil=True)
def _draw_crops(
    sizes,
    indices,
    seed,
    epoch,
    train,
    s_lo,
    s_hi,
    r_lo,
    r_hi,
    flip_p,
    center_ratio,
    pixels,
    boxes,
    flips,
):
    for i in range(indices.shape[0]):
        index = indices[i]
        width, height = sizes[index, 0], sizes[index, 1]
        if train:
            top, left, h, w, flip = geo.train_crop(
                width, height, seed, epoch, index, s_lo, s_hi, r_lo, r_hi, flip_p
            )
        else:
            top, left, h, w = geo.center_crop(width, height, center_ratio)
            flip = False
        pixels[i, 0], pixels[i, 1], pixels[i, 2], pixels[i, 3] = left, top, w, h
        x0, y0, x1, y1 = geo.normalised_box(top, left, h, w, width, height)
        boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3] = x0, y0, x1, y1
        flips[i] = flip


@njit(cache=True, nogil=True)
def _transform_batch_points(points, boxes, flips, out):
    """(N, K, 2) normalised points -> (N, K, 3) (tx, ty, weight), one box and flip per row."""
    for i in range(points.shape[0]):
        b = boxes[i]
        geo.transform_points_into(points[i], b[0], b[1], b[2], b[3], flips[i], out[i])


# ---------------------------------------------------------------- the batch source


def _ppm(raw: np.ndarray, width: int, height: int) -> np.ndarray:
    """Stored raw RGB pixels as a binary PPM stream, which DALI's decoders read."""
    header = f"P6\n{width} {height}\n255\n".encode()
    n = width * height * 3
    out = np.empty(len(header) + n, np.uint8)
    out[: len(header)] = np.frombuffer(header, np.uint8)
    out[len(header) :] = raw[:n]
    return out


class BetonBatchSource:
    """``fn.external_source`` callback: the next batch of the current epoch, from the .beton.

    ``outputs`` names what each call returns, in order. The loader sets the epoch's batches
    with :meth:`start_epoch` before it runs the pipeline; after the last one, a call raises
    StopIteration, which ends DALI's epoch.
    """

    def __init__(self, beton: BatchBetonFile, rule: CropSettings, names: FieldNames) -> None:
        self.beton, self.rule, self.names = beton, rule, names
        self.images: ImageTable = beton.image_table(names.image)
        self.sizes = np.ascontiguousarray(self.images.sizes)
        self.has_map = names.map is not None and names.map in beton.handlers
        self.has_points = names.point is not None and names.point in beton.handlers
        if self.has_map and len(_array_field(beton, names.map).shape) != 3:
            raise ValueError(f"map field must be (C, Hm, Wm): {beton.handlers[names.map].shape}")
        if self.has_points:
            pts = _array_field(beton, names.point)
            if pts.shape[-1] != 2 or pts.dtype not in (np.float32, np.float64):
                raise ValueError(f"point field must be float (..., 2), got {pts.shape}")
        self.outputs, self.dtypes, self.layouts = self._describe()
        self.epoch, self._batches, self._cursor = 0, [], 0

    def _describe(self) -> tuple[list[str], list[Any], list[str]]:
        spec = [
            ("encoded", types.UINT8, ""),
            ("anchor", types.INT32, ""),
            ("shape", types.INT32, ""),
            ("mirror", types.INT32, ""),
            ("boxes", types.FLOAT, ""),
        ]
        if self.has_map:
            map_type = _DALI_TYPES[self.beton.value_dtype(self.names.map)]
            spec += [
                ("roi_start", types.FLOAT, ""),
                ("roi_end", types.FLOAT, ""),
                ("map", map_type, "CHW"),
            ]
        spec.append(("labels", _DALI_TYPES[self.beton.value_dtype(self.names.label)], ""))
        if self.has_points:
            spec += [("points", types.FLOAT, ""), ("weights", types.FLOAT, "")]
        spec.append(("indices", types.INT64, ""))
        names, dtypes, layouts = zip(*spec, strict=True)
        return list(names), list(dtypes), list(layouts)

    def start_epoch(self, epoch: int, batches: Sequence[np.ndarray]) -> None:
        self.epoch, self._batches, self._cursor = epoch, list(batches), 0

    def stop(self) -> None:
        """End the epoch at the next call (prefetched batches still come out)."""
        self._batches = self._batches[: self._cursor]

    def __call__(self) -> tuple[Any, ...]:
        if self._cursor >= len(self._batches):
            raise StopIteration
        indices = self._batches[self._cursor]
        self._cursor += 1
        out = self.batch(indices, self.epoch)
        return tuple(out[name] for name in self.outputs)

    def batch(self, indices: np.ndarray, epoch: int) -> dict[str, Any]:
        """Everything the pipeline needs for ``indices`` in ``epoch`` (a pure function)."""
        indices = np.asarray(indices, np.int64)
        crops = draw_crops(self.sizes, indices, self.rule, epoch)
        out: dict[str, Any] = {
            "encoded": self.encoded(indices),
            "anchor": np.ascontiguousarray(crops.pixels[:, :2]),
            "shape": np.ascontiguousarray(crops.pixels[:, 2:]),
            "mirror": crops.flips.astype(np.int32),
            "boxes": crops.boxes.astype(np.float32),
            "indices": indices,
        }
        if self.has_map:
            out["roi_start"], out["roi_end"] = crops.map_roi()
            out["map"] = self.beton.gather(self.names.map, indices)
        out["labels"] = self.beton.gather(self.names.label, indices)
        if self.has_points:
            out["points"], out["weights"] = self.points(indices, crops)
        return out

    def encoded(self, indices: np.ndarray) -> list[np.ndarray]:
        """Per sample, its JPEG stream (a view of the file) or its raw pixels as a PPM."""
        data, im = self.beton.data, self.images
        out = []
        for i, ptr, n in zip(
            indices.tolist(), im.ptr[indices].tolist(), im.nbytes[indices].tolist(), strict=True
        ):
            region = data[ptr : ptr + n]
            if im.mode[i] == RAW_MODE:
                region = _ppm(region, int(im.width[i]), int(im.height[i]))
            out.append(region)
        return out

    def points(self, indices: np.ndarray, crops: Crops) -> tuple[np.ndarray, np.ndarray]:
        """(N, K, 2) crop-coordinate targets and (N, K) weights, float32 (FFCV's rule)."""
        stored = self.beton.gather(self.names.point, indices)
        stored = stored.reshape(len(indices), -1, 2)
        rows = np.empty((*stored.shape[:2], 3), np.float32)
        _transform_batch_points(stored, crops.boxes, crops.flips, rows)
        return np.ascontiguousarray(rows[..., :2]), np.ascontiguousarray(rows[..., 2])


# ---------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class GraphOptions:
    """What the DALI graph produces. Sizes are (H, W)."""

    image_size: tuple[int, int] = (224, 224)
    map_size: tuple[int, int] = (14, 14)
    normalize: bool = False
    half: bool = False  # normalised images as float16
    cast: torch.dtype | None = None  # normalised images made float32, then cast to this
    map_scale: float | None = None  # None: 1/255 for uint8 maps, else 1 (as the FFCV loader)
    hw_decoder_load: float = 0.65
    decoder_options: dict[str, Any] = field(default_factory=dict)


@pipeline_def
def _graph(source: BetonBatchSource, options: GraphOptions, gpu: bool):
    nodes = dict(
        zip(
            source.outputs,
            fn.external_source(
                source=source,
                num_outputs=len(source.outputs),
                batch=True,
                dtype=source.dtypes,
                layout=source.layouts,
            ),
            strict=True,
        )
    )
    outputs = {"images": _images(nodes, options, gpu)}
    if source.has_map:
        outputs["maps"] = _maps(nodes, options, source, gpu)
    for name in PASSED_THROUGH:
        if name in nodes:
            outputs[name] = nodes[name].gpu() if gpu else nodes[name]
    assert list(outputs) == pipeline_outputs(source)  # the order _assemble reads them in
    return tuple(outputs.values())


def pipeline_outputs(source: BetonBatchSource) -> list[str]:
    """Names of the pipeline's outputs, in order."""
    names = ["images", *(["maps"] if source.has_map else [])]
    return names + [name for name in PASSED_THROUGH if name in source.outputs]


def _images(nodes: dict[str, Any], options: GraphOptions, gpu: bool) -> Any:
    """Decode the window only, resize it, mirror it (and normalise): (N, H, W, 3) HWC."""
    decoder_args = dict(options.decoder_options)
    if gpu:
        decoder_args.setdefault("hw_decoder_load", options.hw_decoder_load)
    # no EXIF rotation: crops are drawn on the stored raster, which is how FFCV decodes it
    images = fn.decoders.image_slice(
        nodes["encoded"],
        nodes["anchor"],
        nodes["shape"],
        device="mixed" if gpu else "cpu",
        normalized_anchor=False,
        normalized_shape=False,
        axis_names="WH",
        output_type=types.RGB,
        adjust_orientation=False,
        **decoder_args,
    )
    # linear + antialias: a triangle filter as wide as the scale when shrinking (FFCV uses
    # OpenCV's INTER_AREA box filter; the two differ by a few grey levels on edges)
    images = fn.resize(images, size=list(options.image_size), antialias=True)
    if not options.normalize:
        mean, std, dtype = [0.0] * 3, [1.0] * 3, types.UINT8
    else:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        dtype = types.FLOAT16 if options.half else types.FLOAT
    return fn.crop_mirror_normalize(
        images, mirror=nodes["mirror"], mean=mean, std=std, dtype=dtype, output_layout="HWC"
    )


def _maps(nodes: dict[str, Any], options: GraphOptions, source: BetonBatchSource, gpu: bool):
    """Crop + flip + resample the whole-image map in one resize: (N, C, Ho, Wo) float32."""
    amap = nodes["map"].gpu() if gpu else nodes["map"]
    resized = fn.resize(
        amap,
        size=list(options.map_size),
        roi_start=nodes["roi_start"],
        roi_end=nodes["roi_end"],
        roi_relative=True,
        antialias=True,
        dtype=types.FLOAT,
    )
    scale = options.map_scale
    if scale is None:
        stored = source.beton.value_dtype(source.names.map)
        scale = 1.0 / 255.0 if stored == np.uint8 else 1.0
    return resized * scale if scale != 1.0 else resized


# ---------------------------------------------------------------- the loader


class DaliLoader:
    """Iterable of :class:`Batch` over a .beton, one DALI pipeline per loader.

    Knobs: :class:`~luab_data.loaders.contract.LoaderSettings`, as the FFCV and reference
    loaders take them; ``workers`` are DALI's CPU threads (default: the cores, divided among
    the GPUs when decoding on one). The epoch order is the contract's ``epoch_order``;
    ``len()`` is the number of batches per epoch; ``set_epoch`` chooses the epoch the next
    ``iter()`` runs. Extras: ``hw_decoder_load`` (share of the GPU's hardware JPEG decoder),
    ``decoder_options`` (more ``fn.decoders.image_slice`` arguments, e.g.
    ``preallocate_width_hint``), ``prefetch_queue_depth``.
    """

    EXTRAS = ("hw_decoder_load", "decoder_options", "prefetch_queue_depth")

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        *,
        hw_decoder_load: float = 0.65,
        decoder_options: dict[str, Any] | None = None,
        prefetch_queue_depth: int = 2,
        **knobs: Any,
    ) -> None:
        s = LoaderSettings.of(type(self).__name__, {"batch_size": batch_size, **knobs}, self.EXTRAS)
        self.settings, self.rule = s, s.crop
        self.options = _graph_options(s, hw_decoder_load, decoder_options)
        refuse_shards(path)  # a shard or a folder of shards: say to merge them first
        self.beton = BatchBetonFile(path)
        self.batch_size = int(s.batch_size)
        self.n_samples = self.beton.num_samples
        check_batches(len(self), len(s.subset(self.n_samples)), self.batch_size, s.drop_last)
        self.device = s.torch_device()
        if self.device is not None and self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"DALI runs on the CPU or a CUDA device, not {self.device}")
        if self.device is not None and self.device.type == "cpu":
            self.device = None  # DALI's CPU-only pipeline
        device_id = None if self.device is None else self.device.index
        names = s.field_names(path)
        self.source = BetonBatchSource(self.beton, self.rule, names)
        self._squeeze_points = self.source.has_points and (
            _array_field(self.beton, names.point).shape == (2,)
        )
        threads = _default_threads(device_id) if s.workers is None else max(1, s.workers)
        self.pipe = _graph(
            self.source,
            self.options,
            device_id is not None,
            batch_size=self.batch_size,
            num_threads=threads,
            device_id=device_id,
            prefetch_queue_depth=prefetch_queue_depth,
            seed=self.rule.seed,
            exec_dynamic=True,
        )
        self.pipe.build()
        self._next_epoch = 0
        self._live: object | None = None  # token of the epoch the pipeline is running

    # ------------------------------------------------ epochs

    def __len__(self) -> int:
        return self.settings.batches_per_epoch(self.n_samples)

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will run."""
        return self._next_epoch

    def set_epoch(self, epoch: int) -> None:
        """Resume at ``epoch``: its order and crops are those of an uninterrupted run."""
        self._next_epoch = int(epoch)

    def close(self) -> None:
        """Stop the pipeline's threads now. Left to the garbage collector, a pipeline may be
        finalised in a forked child (a DataLoader worker), where its threads do not exist and
        the shutdown waits for ever."""
        if self.pipe is not None:
            self._live = None
            self.pipe._shutdown()  # DALI's only way to stop a pipeline (what its __del__ does)
            self.pipe = None

    def __enter__(self) -> DaliLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample indices this rank visits in ``epoch``, cut to ``len(self)`` batches."""
        return self.settings.epoch_order(self.n_samples, epoch)

    def __iter__(self) -> Iterator[Batch]:
        self._retire_live_epoch()
        epoch = self._next_epoch
        self._next_epoch += 1
        order = self.epoch_order(epoch)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        self.source.start_epoch(epoch, batches)
        token = self._live = object()
        return self._run(token)

    def _run(self, token: object) -> Iterator[Batch]:
        while self._live is token:  # a later iter() retires this epoch
            try:
                outputs = self.pipe.run()
            except StopIteration:
                self.pipe.reset()
                self._live = None
                return
            yield self._assemble(outputs)

    def _retire_live_epoch(self) -> None:
        """An abandoned epoch still has batches queued in the pipeline: stop the source, run
        out what was prefetched, and reset, so the next epoch starts clean."""
        if self._live is None:
            return
        self._live = None
        self.source.stop()
        while True:
            try:
                self.pipe.run()
            except StopIteration:
                break
        self.pipe.reset()

    # ------------------------------------------------ outputs

    def _assemble(self, outputs: Sequence[Any]) -> Batch:
        names = pipeline_outputs(self.source)
        out = {name: self._to_torch(tl) for name, tl in zip(names, outputs, strict=True)}
        points, weights = out.get("points"), out.get("weights")
        if self._squeeze_points:
            points, weights = points[:, 0], weights[:, 0]
        images = out["images"].permute(0, 3, 1, 2)  # NHWC memory: channels-last NCHW
        if self.options.normalize and self.options.cast is not None:
            images = images.to(self.options.cast)  # keeps the channels-last strides
        return Batch(
            images=images,
            labels=out["labels"],
            boxes=out["boxes"],
            flips=out["mirror"] != 0,
            maps=out.get("maps"),
            points=points,
            point_weights=weights,
            indices=out["indices"],
        )

    def _to_torch(self, tensor_list: Any) -> torch.Tensor:
        """Zero-copy torch view of a dense DALI batch (DLPack). Under DALI's dynamic executor
        the view owns its buffer, so a later batch never overwrites it (unlike FFCV)."""
        dense = tensor_list.as_tensor()
        if self.device is None:
            return torch.from_dlpack(dense)
        with torch.cuda.device(self.device):
            return torch.from_dlpack(dense)


def _array_field(beton: BatchBetonFile, name: str) -> NDArrayField:
    field = beton.field(name)
    if not isinstance(field, NDArrayField):
        raise ValueError(f"field {name!r} must be an NDArrayField, not {type(field).__name__}")
    return field


def _default_threads(device_id: int | None) -> int:
    """All cores for a CPU pipeline; a GPU's share of them when several GPUs (DDP ranks, one
    loader each) share the host."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if device_id is not None else 1
    return max(1, cores // max(gpus, 1))


def _graph_options(
    s: LoaderSettings, hw_decoder_load: float, decoder_options: dict[str, Any] | None
) -> GraphOptions:
    """What the graph makes of the knobs: float16 is DALI's own output type; any other float
    dtype is made from float32 after the pipeline (``GraphOptions.cast``)."""
    dtype = s.dtype()
    cast = None if dtype in (torch.float16, torch.float32) else dtype
    return GraphOptions(
        image_size=s.image_size,
        map_size=s.map_size,
        normalize=s.normalize,
        half=dtype == torch.float16,
        cast=cast,
        hw_decoder_load=hw_decoder_load,
        decoder_options=dict(decoder_options or {}),
    )
