"""Numpy entry points over ragged groups; they prepare flat arrays and call the numba kernels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from luab_data.raster import kernels
from luab_data.raster.config import RasterConfig


@dataclass(frozen=True, slots=True)
class Ragged:
    """One list group of a batch (clicks or trace): offsets (N + 1, from 0) and flat values.

    ``t``/``ann`` are needed for the trace (dwell, annotation boundaries); ``cls``/``keep`` for
    clicks (per-class channels, dropping clicks of unselected annotations).
    """

    offsets: np.ndarray
    x: np.ndarray
    y: np.ndarray
    t: np.ndarray | None = None
    ann: np.ndarray | None = None
    cls: np.ndarray | None = None
    keep: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_lists(
        cls,
        x: Sequence[Sequence[float]],
        y: Sequence[Sequence[float]],
        t: Sequence[Sequence[int]] | None = None,
        ann: Sequence[Sequence[int]] | None = None,
        classes: Sequence[Sequence[int]] | None = None,
    ) -> Ragged:
        """Build from per-record lists (tests, benchmarks; not for the hot path)."""
        lengths = [len(v) for v in x]
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])

        def flat(parts, dtype):
            if parts is None:
                return None
            return np.concatenate([np.asarray(p, dtype) for p in parts] or [np.zeros(0, dtype)])

        return cls(
            offsets,
            flat(x, np.float32),
            flat(y, np.float32),
            flat(t, np.int64),
            flat(ann, np.int16),
            flat(classes, np.int32),
        )


def geometry(
    width: np.ndarray, height: np.ndarray, config: RasterConfig, boxes: np.ndarray | None = None
) -> np.ndarray:
    """Per record (ax, bx, ay, by, σx, σy): cell coordinate u = x·ax + bx, σ in cells.

    ``boxes`` (N, 4) normalised (x0, y0, x1, y1) is the part of the image the map covers
    (default: all of it); x0 > x1 (or y0 > y1) gives the mirrored map. Records with a
    non-positive size or an empty box get NaN σ, hence a zero map marked invalid.
    """
    width = np.asarray(width, np.float64)
    height = np.asarray(height, np.float64)
    n = len(width)
    if boxes is None:
        boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (n, 1))
    boxes = np.asarray(boxes, np.float64).reshape(n, 4)
    h, w = config.size
    with np.errstate(divide="ignore", invalid="ignore"):
        ax = w / (boxes[:, 2] - boxes[:, 0])
        ay = h / (boxes[:, 3] - boxes[:, 1])
        sigma = config.sigma_px(width, height)
        sx = sigma / width * np.abs(ax)
        sy = sigma / height * np.abs(ay)
    bad = ~((width > 0) & (height > 0) & np.isfinite(sx) & np.isfinite(sy))
    geo = np.stack([ax, -boxes[:, 0] * ax - 0.5, ay, -boxes[:, 1] * ay - 0.5, sx, sy], axis=1)
    geo[bad] = np.nan
    return np.ascontiguousarray(geo)


def click_channels(clicks: Ragged, config: RasterConfig) -> np.ndarray:
    """Channel of every click, -1 to drop it (no click channel, class out of range, not kept)."""
    base = config.click_channel
    n = len(clicks.x)
    if base < 0:
        return np.full(n, -1, np.int32)
    ch = np.full(n, base, np.int32)
    if config.n_classes > 0:
        cls = clicks.cls if clicks.cls is not None else np.full(n, -1, np.int32)
        ok = (cls >= 0) & (cls < config.n_classes)
        ch = np.where(ok, base + cls, -1).astype(np.int32)
    if clicks.keep is not None:
        ch[~clicks.keep] = -1
    return ch


def trace_weights(trace: Ragged, config: RasterConfig) -> np.ndarray:
    """Per-sample trace weight (dwell time in ms, capped; optional decay)."""
    out = np.empty(len(trace.x), np.float64)
    t = trace.t if trace.t is not None else np.zeros(len(trace.x), np.int64)
    ann = _i16(trace.ann if trace.ann is not None else np.zeros(len(trace.x), np.int16))
    kernels.dwell_weights(
        _i64(trace.offsets),
        _i64(t),
        ann,
        config.dwell,
        float(config.dwell_min_ms),
        float(config.dwell_cap_ms),
        float(config.decay_ms),
        out,
    )
    return out


def rasterise(
    clicks: Ragged,
    trace: Ragged,
    width: np.ndarray,
    height: np.ndarray,
    config: RasterConfig = RasterConfig(),
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, C, H, W) as ``config.dtype`` and validity (N, C) bool (False: empty channel)."""
    n = len(width)
    if len(clicks) != n or len(trace) != n:
        raise ValueError(f"{len(clicks)} click and {len(trace)} trace rows for {n} sizes")
    h, w = config.size
    out = np.empty((n, config.n_channels, h, w), np.dtype(config.dtype))
    valid = np.empty((n, config.n_channels), np.bool_)
    t_ch = np.full(len(trace.x), config.trace_channel, np.int32)
    quant = config.dtype == "uint8"
    kernels.rasterise_kernel(
        _frozen(geometry(width, height, config, boxes), np.float64),
        _i64(clicks.offsets),
        _f32(clicks.x),
        _f32(clicks.y),
        _frozen(np.ones(len(clicks.x)), np.float64),
        _frozen(click_channels(clicks, config), np.int32),
        _i64(trace.offsets),
        _f32(trace.x),
        _f32(trace.y),
        _frozen(trace_weights(trace, config), np.float64),
        _frozen(t_ch, np.int32),
        float(config.truncate),
        config.cut,
        config.unit_mass,
        config.outside == "clip",
        kernels.NORM_CODES[config.norm],
        255.0 if quant else 1.0,
        0.5 if quant else 0.0,
        out,
        valid,
    )
    return out, valid


def resample_trace(
    trace: Ragged, k: int, config: RasterConfig = RasterConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Trace as K (x, y) points evenly spaced in capped dwell time: (N, K, 2) float32, valid (N,).

    Samples are filtered by ``config.outside`` first; time does not advance across annotations.
    Records without a kept sample get -1 and valid False.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = len(trace)
    out = np.empty((n, k, 2), np.float32)
    valid = np.empty(n, np.bool_)
    t = trace.t if trace.t is not None else np.zeros(len(trace.x), np.int64)
    ann = _i16(trace.ann if trace.ann is not None else np.zeros(len(trace.x), np.int16))
    kernels.resample_kernel(
        _i64(trace.offsets),
        _f32(trace.x),
        _f32(trace.y),
        _i64(t),
        ann,
        config.outside == "clip",
        float(config.dwell_min_ms),
        float(config.dwell_cap_ms),
        out,
        valid,
    )
    return out, valid


def class_points(clicks: Ragged, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class the last kept click, (x, y): (N, n_classes, 2) float32 (-1 absent), valid."""
    n = len(clicks)
    out = np.empty((n, n_classes, 2), np.float32)
    valid = np.empty((n, n_classes), np.bool_)
    cls = clicks.cls if clicks.cls is not None else np.zeros(len(clicks.x), np.int32)
    keep = clicks.keep if clicks.keep is not None else np.ones(len(clicks.x), np.bool_)
    kernels.class_points_kernel(
        _i64(clicks.offsets),
        _f32(clicks.x),
        _f32(clicks.y),
        _frozen(cls, np.int32),
        _frozen(keep, np.bool_),
        out,
        valid,
    )
    return out, valid


def _frozen(a: np.ndarray, dtype) -> np.ndarray:
    """Contiguous read-only view: Arrow buffers are read-only and numba types read-only arrays
    apart, so freezing every input keeps one compiled specialisation per kernel (no copy)."""
    a = np.ascontiguousarray(a, dtype).view()
    a.flags.writeable = False
    return a


def _i64(a: np.ndarray) -> np.ndarray:
    return _frozen(a, np.int64)


def _f32(a: np.ndarray) -> np.ndarray:
    return _frozen(a, np.float32)


def _i16(a: np.ndarray) -> np.ndarray:
    return _frozen(a, np.int16)
