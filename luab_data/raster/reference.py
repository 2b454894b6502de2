"""The specification: a plain float64 numpy implementation, one record at a time.

Written for clarity, not speed, and independently of the kernels (dense over every cell, in
original-image pixels rather than cells), so the tests compare two derivations of one formula.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from luab_data.raster.config import RasterConfig


def dwell(t: np.ndarray, ann: np.ndarray, config: RasterConfig) -> np.ndarray:
    """Trace sample weights: capped time to the next sample of the same annotation, decayed."""
    n = len(t)
    w = np.ones(n)
    for i in range(n):
        end = i
        while end + 1 < n and ann[end + 1] == ann[i]:
            end += 1
        if config.dwell:
            dt = float(t[i + 1] - t[i]) if end > i else config.dwell_min_ms
            w[i] = min(max(dt, config.dwell_min_ms), config.dwell_cap_ms)
        if config.decay_ms > 0:
            w[i] *= math.exp(-max(float(t[end] - t[i]), 0.0) / config.decay_ms)
    return w


def _axis(centres: np.ndarray, p: float, sigma: float, config: RasterConfig) -> np.ndarray:
    """Shifted, truncated, unit-mass 1-D Gaussian (per pixel) at the cell centres (pixels)."""
    d = (centres - p) / sigma
    g = np.where(np.abs(d) <= config.truncate, np.exp(-0.5 * d * d) - config.cut, 0.0)
    return np.maximum(g, 0.0) / (config.unit_mass * sigma)


def _inside(x: float, y: float, config: RasterConfig) -> tuple[float, float] | None:
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    if config.outside == "clip":
        return min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    return (x, y) if 0 <= x <= 1 and 0 <= y <= 1 else None


def reference_map(
    width: int,
    height: int,
    points: list[tuple[float, float, float, int]],
    config: RasterConfig,
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Unquantised map (C, H, W) float64 and validity (C,) of (x, y, weight, channel) samples."""
    h, w = config.size
    acc = np.zeros((config.n_channels, h, w))
    x0, y0, x1, y1 = box
    if width > 0 and height > 0 and x1 != x0 and y1 != y0:
        sigma = config.sigma if config.sigma_units == "px" else config.sigma * max(width, height)
        # cell centres and cell sizes in original pixels
        cx = (x0 + (np.arange(w) + 0.5) / w * (x1 - x0)) * width
        cy = (y0 + (np.arange(h) + 0.5) / h * (y1 - y0)) * height
        cell = abs(x1 - x0) * width / w * abs(y1 - y0) * height / h
        for x, y, wt, ch in points:
            xy = _inside(x, y, config)
            if ch >= 0 and wt > 0 and xy is not None:
                gx = _axis(cx, xy[0] * width, sigma, config)
                gy = _axis(cy, xy[1] * height, sigma, config)
                acc[ch] += wt * cell * np.outer(gy, gx)
    peak = acc.max(axis=(1, 2))
    valid = peak > 0
    if config.norm != "none":
        scale = peak if config.norm == "max" else acc.sum(axis=(1, 2))
        acc[valid] /= scale[valid, None, None]
    return acc, valid


def quantise(maps: np.ndarray, config: RasterConfig) -> np.ndarray:
    """What the stored map should hold: round(255 v) for uint8, float32 otherwise."""
    if config.dtype == "uint8":
        return np.floor(maps * 255 + 0.5).astype(np.uint8)
    return maps.astype(np.float32)


def record_points(row: dict, config: RasterConfig) -> list[tuple[float, float, float, int]]:
    """One record (a dict of RECORD_SCHEMA fields as Python lists) as weighted samples."""
    pts = []
    sel = row.get("ann_selected") or []
    for x, y, cls, ann in zip(
        row["click_x"], row["click_y"], row["click_class"], row["click_ann"], strict=True
    ):
        if config.selected_only and not (0 <= ann < len(sel) and sel[ann]):
            continue
        pts.append((x, y, 1.0, _click_channel(cls, config)))
    t, ann = np.asarray(row["trace_t"], np.int64), np.asarray(row["trace_ann"])
    weights = dwell(t, ann, config)
    for x, y, wt in zip(row["trace_x"], row["trace_y"], weights, strict=True):
        pts.append((x, y, wt, config.trace_channel))
    return pts


def _click_channel(cls: int, config: RasterConfig) -> int:
    if config.click_channel < 0:
        return -1
    if config.n_classes == 0:
        return config.click_channel
    return config.click_channel + cls if 0 <= cls < config.n_classes else -1


def reference_batch(
    batch: pa.RecordBatch, config: RasterConfig, boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Float64 maps (N, C, H, W) and validity (N, C) of a record batch, row by row."""
    maps, valid = [], []
    for i, row in enumerate(batch.to_pylist()):
        box = tuple(boxes[i]) if boxes is not None else (0.0, 0.0, 1.0, 1.0)
        m, v = reference_map(row["width"], row["height"], record_points(row, config), config, box)
        maps.append(m)
        valid.append(v)
    h, w = config.size
    if not maps:
        return np.zeros((0, config.n_channels, h, w)), np.zeros((0, config.n_channels), bool)
    return np.stack(maps), np.stack(valid)


def resample(
    x: np.ndarray, y: np.ndarray, t: np.ndarray, ann: np.ndarray, k: int, config: RasterConfig
) -> np.ndarray | None:
    """The trace as k points evenly spaced in capped dwell time (k, 2), None if nothing kept."""
    kept = [(i, _inside(float(x[i]), float(y[i]), config)) for i in range(len(x))]
    kept = [(i, xy) for i, xy in kept if xy is not None]
    if not kept:
        return None
    u = [0.0]
    for (i, _), (j, _) in zip(kept, kept[1:], strict=False):
        gap = min(max(float(t[j] - t[i]), config.dwell_min_ms), config.dwell_cap_ms)
        u.append(u[-1] + (gap if ann[j] == ann[i] else 0.0))
    u = np.array(u) if u[-1] > 0 else np.arange(len(kept), dtype=np.float64)
    xy = np.array([p for _, p in kept])
    targets = u[-1] * np.arange(k) / (k - 1) if k > 1 else np.zeros(1)
    out = np.empty((k, 2))
    for n, target in enumerate(targets):
        i = int(np.searchsorted(u, target, side="right")) - 1
        if i + 1 < len(u) and u[i + 1] > u[i]:
            a = (target - u[i]) / (u[i + 1] - u[i])
            out[n] = xy[i] + a * (xy[i + 1] - xy[i])
        else:
            out[n] = xy[i]
    return out
