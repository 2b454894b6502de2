"""FFCV .beton output: the images beside their annotation byproducts.

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

Files of one shard (`X.beton`, or `X-<i>-of-<n>.beton` with --shard i/n):
  X.beton                 renamed into place from X.beton.tmp once complete
  X.beton.rejects.jsonl   rejected records (key, reason, detail, where)
  X.beton.json            the manifest, written last: its presence marks the shard complete

Two passes keep memory bounded whatever the source's size: the records are streamed once into
a memory-mapped Arrow spill file (FFCV must know the sample count before it writes), then
FFCV's writer processes read blocks of it, rasterise the maps of a block at a time and read
and re-encode the JPEGs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import RawArray
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from luab_data import __version__
from luab_data.ingest import NothingKept, StrictError, Summary, iterate
from luab_data.records import COCO_AB, Reject
from luab_data.records.schema import FORMAT_VERSION
from luab_data.sources import Source
from luab_data.writers.atomic import write_json_atomic
from luab_data.writers.ffcv_workers import prestart, write_indexed
from luab_data.writers.image_check import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_SIZE_TOLERANCE,
    ImageProblem,
    check_image,
    read_image,
)
from luab_data.writers.parquet import shard_tag

BETON_FORMAT = 1  # version of the field layout described above
IMAGE, LABEL, LABELS, MAP, POINT, TRACE, SIZE, INDEX = (
    "image", "label", "labels", "map", "point", "trace", "size", "index",
)  # fmt: skip
BAD_IMAGE = "bad-image"  # reject reason: unreadable, undecodable, too large or not the record's
_FAILED_IMAGE, _FAILED_OTHER = 1, 2
_SPILL_COLUMNS = (
    "key", "image", "label", "labels", "width", "height", "point_x", "point_y",
    "click_x", "click_y", "click_t", "click_class", "click_ann",
    "trace_x", "trace_y", "trace_t", "trace_ann", "ann_selected",
)  # fmt: skip
WRITE_MODES = ("raw", "jpg", "smart", "proportion")


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


# ---------------------------------------------------------------- paths


def beton_path(out: Path, shard: tuple[int, int] = (0, 1)) -> Path:
    """The file of one shard: `out` itself, or `<stem>-<i>-of-<n>.beton` beside it."""
    out = Path(out)
    return out if shard[1] == 1 else out.with_name(f"{out.stem}-{shard_tag(shard)}{out.suffix}")


def manifest_path(beton: Path) -> Path:
    return Path(beton).with_name(Path(beton).name + ".json")


def rejects_path(beton: Path) -> Path:
    return Path(beton).with_name(Path(beton).name + ".rejects.jsonl")


def read_manifest(beton: Path) -> dict:
    path = manifest_path(beton)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {beton} is not a complete build")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- fields


def label_width(metadata: dict) -> int:
    """0 for a single int label (ImageNet-AB), else the multi-hot width (COCO-AB's 80)."""
    return len(metadata.get("classes", [])) if metadata.get("source_kind") == COCO_AB else 0


def make_fields(options: BetonOptions, n_labels: int) -> dict[str, Any]:
    """The FFCV fields of a file, in their order (see the module docstring)."""
    from ffcv.fields import IntField, NDArrayField, RGBImageField  # 5 s: not at CLI start

    image = RGBImageField(write_mode=options.write_mode, max_resolution=options.max_resolution,
                          jpeg_quality=options.jpeg_quality,
                          compress_probability=options.compress_probability)  # fmt: skip
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


# ---------------------------------------------------------------- per block of records


@dataclass
class Block:
    """Everything but the pixels for records [start, start + len)."""

    start: int
    labels: np.ndarray
    images: list  # relative paths, or JPEG bytes when the records carry them
    maps: np.ndarray | None = None
    points: np.ndarray | None = None
    traces: np.ndarray | None = None
    sizes: np.ndarray | None = None  # (N, 2) int32 record (width, height)


def block_arrays(table: pa.Table, start: int, options: BetonOptions, n_labels: int) -> Block:
    """Labels and byproduct arrays of a slice of records (what `verify` recomputes too)."""
    from luab_data.raster import fixed_arrays, rasterise_batch

    images = table.column("jpeg" if "jpeg" in table.column_names else "image").to_pylist()
    sizes = [table.column(c).to_numpy(zero_copy_only=False) for c in ("width", "height")]
    block = Block(start, _labels(table, n_labels), images,
                  sizes=np.ascontiguousarray(np.stack(sizes, axis=1), np.int32))  # fmt: skip
    if not options.byproducts:
        return block
    cfg = options.raster
    block.maps = np.ascontiguousarray(rasterise_batch(table, cfg)[0])
    point_cfg = replace(cfg, n_classes=n_labels) if n_labels else cfg
    fixed = fixed_arrays(table, point_cfg, options.trace_points)
    block.points = np.ascontiguousarray(fixed["class_points" if n_labels else "point"], np.float32)
    block.traces = np.ascontiguousarray(fixed["trace"], np.float32)
    return block


def _labels(table: pa.Table, n_labels: int) -> np.ndarray:
    if not n_labels:
        return table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    hot = np.zeros((table.num_rows, n_labels), np.uint8)
    for r, labels in enumerate(table.column("labels").to_pylist()):
        hot[r, [c for c in labels if 0 <= c < n_labels]] = 1
    return hot


def decode_rgb(data: bytes | np.ndarray) -> np.ndarray:
    """JPEG (or any format OpenCV reads: ImageNet has a few PNG and CMYK files) -> RGB.
    EXIF orientation is ignored, as PIL (torchvision's ImageFolder, ffcv-imagenet) does."""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None:
        raise ImageProblem("the image does not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=bgr)  # in place: one image-sized buffer


def proportion_jpeg(index: int, p: float) -> bool:
    """Which samples `write_mode='proportion'` compresses: a golden-ratio sequence, so exactly
    a share p of any run of samples, the same in every build (FFCV draws it from NumPy's
    global generator, which forked writer processes all share)."""
    return ((index + 1) * 0.6180339887498949) % 1.0 < p


# ---------------------------------------------------------------- the writer's dataset


class PackSamples:
    """The indexable dataset FFCV's writer processes read: sample tuples in field order.

    It never raises: a failure is flagged in shared memory and a placeholder written, since an
    exception in a writer process makes FFCV's writer wait for ever. The caller then drops the
    flagged samples (bad images) or raises (anything else).
    """

    def __init__(self, spill: Path, n: int, fields_: dict[str, Any], options: BetonOptions,
                 images: Path | None, n_labels: int, keep: np.ndarray) -> None:  # fmt: skip
        self.spill, self.n, self.fields = spill, n, fields_
        self.options, self.images, self.n_labels = options, images, n_labels
        self.position = np.full(n, -1, np.int64)  # source record -> position in the file
        self.position[keep] = np.arange(len(keep))
        self.failures = RawArray("b", n)  # shared with the forked writer processes
        self._pid, self._table, self._blocks = -1, None, {}

    def __len__(self) -> int:
        return self.n

    def table(self) -> pa.Table:
        """The spill, memory-mapped once per process (a worker must not reuse the parent's)."""
        if self._pid != os.getpid():
            self._pid, self._blocks = os.getpid(), {}
            self._table = pa.ipc.open_file(pa.memory_map(str(self.spill))).read_all()
            _single_threaded_numba()  # one writer process per core already
        return self._table

    def block(self, index: int) -> Block:
        start = index - index % self.options.chunk_size
        if start not in self._blocks:
            if len(self._blocks) >= 2:  # a chunk of FFCV's queue spans at most two blocks
                self._blocks.pop(next(iter(self._blocks)))
            rows = self.table().slice(start, self.options.chunk_size)
            self._blocks[start] = block_arrays(rows, start, self.options, self.n_labels)
        return self._blocks[start]

    def __getitem__(self, index: int) -> tuple:
        try:
            return self.sample(index)
        except Exception:
            self.failures[index] = _FAILED_OTHER
            return self.placeholder(index)

    def sample(self, index: int) -> tuple:
        block = self.block(index)
        r = index - block.start
        self._set_mode(index)
        try:
            image = self.image(block.images[r], block.sizes[r])
        except (OSError, ValueError, cv2.error):
            self.failures[index] = _FAILED_IMAGE
            image = np.zeros((8, 8, 3), np.uint8)
        values = {IMAGE: image, LABEL: block.labels[r], LABELS: block.labels[r],
                  INDEX: self.position[index]}  # fmt: skip
        if self.options.byproducts:
            values.update({MAP: block.maps[r], POINT: block.points[r],
                           TRACE: block.traces[r], SIZE: block.sizes[r]})  # fmt: skip
        return tuple(values[name] for name in self.fields)

    def placeholder(self, index: int) -> tuple:
        values = {IMAGE: np.zeros((8, 8, 3), np.uint8), INDEX: self.position[index]}
        for name, f in self.fields.items():
            if hasattr(f, "shape"):  # NDArrayField
                values[name] = np.zeros(f.shape, f.dtype)
        values.setdefault(LABEL, 0)
        return tuple(values[name] for name in self.fields)

    def image(self, ref: str | bytes, record_size: np.ndarray) -> np.ndarray:
        """The RGB pixels of an image whose header passed the checks (pixel limit, record's
        size) before it was decoded: memory stays bounded whatever a file declares."""
        opts = self.options
        data = self._image_bytes(ref)
        check_image(data, (int(record_size[0]), int(record_size[1])), opts.max_pixels,
                    opts.size_tolerance)  # fmt: skip
        return decode_rgb(data)

    def image_problem(self, index: int) -> Reject:
        """The reject of a sample flagged bad-image by a writer process, found again here
        from the spill's row alone (no maps are rasterised in this process)."""
        table = pa.ipc.open_file(pa.memory_map(str(self.spill))).read_all()
        row = table.slice(index, 1).to_pylist()[0]
        carried = "jpeg" in row  # the records carry the JPEG bytes (Parquet --with-images)
        ref = row["jpeg"] if carried else row["image"]
        if carried:
            where = f"{row['image']} (JPEG bytes carried by the record)"
        else:
            where = str(self.images / ref) if self.images is not None else ref
        try:
            self.image(ref, np.array([row["width"], row["height"]]))
            detail = "the image failed in a writer process (it reads here)"
        except FileNotFoundError:
            detail = "the image file is missing"
        except (OSError, ValueError, cv2.error) as err:
            detail = str(err) or type(err).__name__
        return Reject(row["key"], BAD_IMAGE, detail, where)

    def _image_bytes(self, ref: str | bytes | None) -> bytes:
        if isinstance(ref, bytes):
            return ref
        if ref is None:
            raise OSError("the record carries no JPEG bytes")
        if self.images is None:
            raise OSError("no image folder")
        return read_image(self.images / ref, self.options.max_pixels)

    def _set_mode(self, index: int) -> None:
        """Per-sample JPEG/raw choice of 'proportion' mode, made here deterministically; the
        field object is this process's (forked) copy, read by FFCV right after this call."""
        if self.options.write_mode == "proportion":
            jpg = proportion_jpeg(index, self.options.compress_probability)
            self.fields[IMAGE].write_mode = "jpg" if jpg else "raw"


def _single_threaded_numba() -> None:
    with suppress(Exception):
        import numba

        numba.set_num_threads(1)


# ---------------------------------------------------------------- pass 1: records -> spill


@dataclass
class Spill:
    path: Path
    rows: int = 0
    keys: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def spill_records(source: Source, path: Path, shard: tuple[int, int], *, images: Path | None,
                  strict: bool, show_progress: bool, summary: Summary) -> Spill:  # fmt: skip
    """Stream the shard's records into an Arrow file; records whose image is missing (sources
    that do not check images themselves) are rejected here."""
    spill = Spill(path)
    check = images is not None and getattr(source, "images", None) is None
    writer = None
    try:
        for batch in iterate(source, shard, strict, show_progress, spill.rejects.extend, summary):
            if check:
                batch = _drop_missing(batch, images, spill, strict, summary)
            columns = [c for c in (*_SPILL_COLUMNS, "jpeg") if c in batch.schema.names]
            batch = batch.select(columns)
            if writer is None:
                writer = pa.ipc.new_file(str(path), batch.schema.remove_metadata())
            writer.write_batch(batch.replace_schema_metadata(None))
            spill.rows += batch.num_rows
            spill.keys += batch.column("key").to_pylist()
    finally:
        if writer is not None:
            writer.close()
    return spill


def _drop_missing(batch: pa.RecordBatch, images: Path, spill: Spill, strict: bool,
                  summary: Summary) -> pa.RecordBatch:  # fmt: skip
    paths = batch.column("image").to_pylist()
    ok = [(images / p).is_file() for p in paths]
    if all(ok):
        return batch
    keys = batch.column("key").to_pylist()
    bad = [Reject(k, "missing-image", f"{images / p} is missing", str(images / p))
           for k, p, good in zip(keys, paths, ok, strict=True) if not good]  # fmt: skip
    if strict:
        raise StrictError(bad[0])
    spill.rejects += bad
    summary.records -= len(bad)
    summary.rejects.update(r.reason for r in bad)
    return batch.filter(pa.array(ok))


# ---------------------------------------------------------------- pass 2: spill -> .beton


def write_samples(dataset: PackSamples, path: Path, keep: np.ndarray, workers: int,
                  show_progress: bool) -> None:  # fmt: skip
    from tqdm import tqdm

    bar = tqdm(total=len(keep), desc="pack", unit="img", disable=not show_progress,
               dynamic_ncols=True)  # fmt: skip
    with bar:
        write_indexed(str(path), dataset.fields, dataset, keep, workers=workers,
                      chunk_size=dataset.options.chunk_size,
                      page_size=dataset.options.page_size, progress=bar)  # fmt: skip


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def pack(spill: Spill, tmp: Path, options: BetonOptions, n_labels: int, images: Path | None,
         workers: int, strict: bool, show_progress: bool) -> np.ndarray:  # fmt: skip
    """Write the .beton from the spill; returns the kept record indices (possibly none).
    Records whose image is refused are rejected (or stop the build when strict) and the file
    rewritten without them."""
    keep = np.arange(spill.rows)
    fields_ = make_fields(options, n_labels)
    while True:
        dataset = PackSamples(spill.path, spill.rows, fields_, options, images, n_labels, keep)
        write_samples(dataset, tmp, keep, workers, show_progress)
        flags = np.frombuffer(dataset.failures, np.int8)
        if (flags == _FAILED_OTHER).any():
            dataset.sample(int(np.argmax(flags == _FAILED_OTHER)))  # raises it here, with context
            raise RuntimeError("a writer process failed on a sample that packs in this process")
        bad = np.flatnonzero(flags == _FAILED_IMAGE)
        if not len(bad):
            return keep
        rejects = [dataset.image_problem(int(i)) for i in bad]
        if strict:
            raise StrictError(rejects[0])
        spill.rejects += rejects
        keep = np.setdiff1d(keep, bad)
        if not len(keep):
            return keep


# ---------------------------------------------------------------- the whole build


def build_beton(
    source: Source,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    *,
    options: BetonOptions = BetonOptions(),
    images: Path | None = None,
    strict: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    show_progress: bool = True,
    notes: Sequence[str] = (),
) -> Summary:
    """Pack shard `shard` of a source into `out` (a .beton; shards get `-<i>-of-<n>`).

    JPEGs come from the records' `jpeg` column if they have one, else from `images` (default:
    the source's own `--images` folder) joined with each record's `image` path. `notes` go
    into the summary (e.g. the image layout found). A shard where no record is kept raises
    NothingKept, after writing its rejects file.
    """
    final = beton_path(out, shard)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_previous(final, overwrite)
    images = Path(images) if images is not None else getattr(source, "images", None)
    tmp, spill_file = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".spill")
    metadata = {**source.metadata(), "format_version": FORMAT_VERSION, "luab_data": __version__,
                "shard": list(shard)}  # fmt: skip
    n_labels = label_width(metadata)
    summary, start = Summary(notes=list(notes)), time.perf_counter()
    try:
        prestart()  # the writer processes' imports overlap the records pass
        spill = spill_records(source, spill_file, shard, images=images, strict=strict,
                              show_progress=show_progress, summary=summary)  # fmt: skip
        if spill.rows and images is None and "jpeg" not in pa.ipc.open_file(
                str(spill_file)).schema.names:  # fmt: skip
            raise ValueError("the records carry no JPEG bytes: give the image folder (--images)")
        keep = np.arange(0)
        if spill.rows:
            keep = pack(spill, tmp, options, n_labels, images, workers or default_workers(),
                        strict, show_progress)  # fmt: skip
        summary.records = len(keep)
        if n_bad := spill.rows - len(keep):
            summary.rejects[BAD_IMAGE] += n_bad
        summary.seconds = time.perf_counter() - start
        if not len(keep):
            _write_rejects(final, spill)
            raise NothingKept(summary, spill.rejects, rejects_path(final), shard, images)
        manifest = _manifest(final, tmp, spill, keep, source, metadata, options, images, summary)
        _commit(final, tmp, spill, manifest)
    finally:
        for path in (tmp, spill_file):
            path.unlink(missing_ok=True)
    summary.outputs = [str(final), str(rejects_path(final)), str(manifest_path(final))]
    return summary


def _clear_previous(final: Path, overwrite: bool) -> None:
    """Drop the manifest of a build being redone: the old file then no longer looks complete
    (it is replaced by a rename only once the new one is)."""
    done = manifest_path(final)
    if done.exists() and not overwrite:
        raise FileExistsError(f"{done} exists: shard already built (use --overwrite to redo)")
    done.unlink(missing_ok=True)


def _write_rejects(final: Path, spill: Spill) -> None:
    rejects = rejects_path(final)
    with open(rejects.with_name(rejects.name + ".tmp"), "w") as f:
        f.writelines(json.dumps(r.as_dict()) + "\n" for r in spill.rejects)
    os.replace(rejects.with_name(rejects.name + ".tmp"), rejects)


def _commit(final: Path, tmp: Path, spill: Spill, manifest: dict) -> None:
    _write_rejects(final, spill)
    os.replace(tmp, final)
    write_json_atomic(manifest_path(final), manifest)


def _manifest(final: Path, tmp: Path, spill: Spill, keep: np.ndarray, source: Source,
              metadata: dict, options: BetonOptions, images: Path | None,
              summary: Summary) -> dict:  # fmt: skip
    from luab_data.loaders.beton_file import JPEG_MODE, BetonFile
    from luab_data.loaders.beton_integrity import file_checksums

    n_labels = label_width(metadata)
    fields_ = make_fields(options, n_labels)
    beton = BetonFile(tmp)
    modes = beton.metadata(IMAGE)["mode"]
    counts = {"samples": len(beton), "jpeg": int((modes == JPEG_MODE).sum()),
              "raw": int((modes != JPEG_MODE).sum()),
              **_byproduct_counts(beton, options)}  # fmt: skip
    return {
        "format": "luab-beton",
        "beton_format": BETON_FORMAT,
        "file": final.name,
        "bytes": tmp.stat().st_size,
        "checksums": file_checksums(tmp),
        "fields": describe_fields(fields_, options, metadata.get("classes", [])),
        "build": {**options.as_dict(), "shard": metadata["shard"]},
        "metadata": metadata,
        "source": describe_source(source),
        "images": str(Path(images).resolve()) if images is not None else None,
        "counts": counts,
        "summary": summary.as_dict(),
        "rejects_file": rejects_path(final).name,
        "keys": [spill.keys[i] for i in keep],
    }


def _byproduct_counts(beton: Any, options: BetonOptions) -> dict:
    if not options.byproducts:
        return {}
    points = beton.arrays(POINT).reshape(len(beton), -1, 2)
    traces = beton.arrays(TRACE)
    return {"with_point": int((points[..., 0] >= 0).any(axis=1).sum()),
            "with_trace": int((traces[:, 0, 0] >= 0).sum())}  # fmt: skip


def describe_source(source: Source) -> dict:
    """Enough to tell whether a source changed since the build: size, mtime, the SHA-256 of
    its first MiB (files), or the count, total size and latest mtime of its files (folders)."""
    path = Path(source.path)
    out: dict[str, Any] = {"path": str(path.resolve()), "kind": source.kind}
    if path.is_file():
        stat = path.stat()
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(1 << 20)).hexdigest()
        return {**out, "size": stat.st_size, "mtime": int(stat.st_mtime), "sha256_first_mib": head}
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return {**out, "files": len(stats), "size": sum(s.st_size for s in stats),
            "mtime": int(max((s.st_mtime for s in stats), default=0))}  # fmt: skip
