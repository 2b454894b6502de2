"""The torch twin of the numba rasteriser: same inputs, same maps, on any device (CUDA too).

Meant for rasterising after a crop (pass ``boxes``) on the GPU, inside a loader or trainer.
Fully vectorised, no host sync: per sample a dense 1-D column and row weight vector, then
outer products summed per (record, channel) with ``index_add_``, in chunks that bound memory.
"""

from __future__ import annotations

import numpy as np
import torch

from luab_data.raster.config import RasterConfig
from luab_data.raster.ragged import Ragged

_CHUNK_ELEMS = 1 << 24  # outer-product elements per chunk (64 MB of float32)
Array = np.ndarray | torch.Tensor


def _as(a: Array, device, dtype=None) -> torch.Tensor:
    if not torch.is_tensor(a):
        a = np.ascontiguousarray(a)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())  # Arrow buffers are read-only
    else:
        t = a
    return t.to(device=device, dtype=dtype or t.dtype)


def record_index(offsets: torch.Tensor) -> torch.Tensor:
    """The record of every flat value."""
    rows = torch.arange(offsets.numel() - 1, device=offsets.device)
    return torch.repeat_interleave(rows, offsets.diff())


def dwell_weights(
    offsets: torch.Tensor, t: torch.Tensor, ann: torch.Tensor, config: RasterConfig
) -> torch.Tensor:
    """Twin of kernels.dwell_weights (float64)."""
    n = t.numel()
    rec = record_index(offsets)
    last = torch.ones(n, dtype=torch.bool, device=t.device)
    last[:-1] = (rec[1:] != rec[:-1]) | (ann[1:] != ann[:-1])
    w = torch.ones(n, dtype=torch.float64, device=t.device)
    if config.dwell:
        dt = torch.zeros_like(w)
        dt[:-1] = (t[1:] - t[:-1]).double()
        dt = torch.where(last, config.dwell_min_ms, dt)
        w = dt.clamp(config.dwell_min_ms, config.dwell_cap_ms)
    if config.decay_ms > 0 and n:
        run = torch.cumsum(last.long(), 0) - last.long()  # annotation run of each sample
        pos = torch.arange(n, device=t.device)
        end = torch.zeros(n, dtype=torch.long, device=t.device)
        end = end.scatter_reduce(0, run, pos, "amax", include_self=False)[run]
        w = w * torch.exp(-(t[end] - t).clamp(min=0).double() / config.decay_ms)
    return w


def geometry(
    width: torch.Tensor, height: torch.Tensor, config: RasterConfig, boxes: torch.Tensor | None
) -> torch.Tensor:
    """Twin of ragged.geometry: (N, 6) float64 (ax, bx, ay, by, σx, σy), NaN when invalid."""
    width, height = width.double(), height.double()
    if boxes is None:
        boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=width.device).expand(len(width), 4)
    boxes = boxes.double()
    h, w = config.size
    ax = w / (boxes[:, 2] - boxes[:, 0])
    ay = h / (boxes[:, 3] - boxes[:, 1])
    sigma = config.sigma if config.sigma_units == "px" else config.sigma * width.maximum(height)
    sx, sy = sigma / width * ax.abs(), sigma / height * ay.abs()
    geo = torch.stack([ax, -boxes[:, 0] * ax - 0.5, ay, -boxes[:, 1] * ay - 0.5, sx, sy], 1)
    ok = (width > 0) & (height > 0) & sx.isfinite() & sy.isfinite()
    return torch.where(ok[:, None], geo, torch.nan)


def _click_channels(clicks: Ragged, config: RasterConfig, device) -> torch.Tensor:
    n = len(clicks.x)
    ch = torch.full((n,), config.click_channel, dtype=torch.long, device=device)
    if config.click_channel >= 0 and config.n_classes > 0:
        cls = _as(clicks.cls, device, torch.long) if clicks.cls is not None else ch * 0 - 1
        ok = (cls >= 0) & (cls < config.n_classes)
        ch = torch.where(ok, ch + cls, -1)
    if clicks.keep is not None:
        ch = torch.where(_as(clicks.keep, device, torch.bool), ch, -1)
    return ch


def _samples(clicks: Ragged, trace: Ragged, config: RasterConfig, device):
    """All samples of both groups: record, channel, weight (float64), x, y."""
    c_off, t_off = _as(clicks.offsets, device, torch.long), _as(trace.offsets, device, torch.long)
    t = _as(trace.t, device, torch.long) if trace.t is not None else None
    ann = _as(trace.ann, device, torch.long) if trace.ann is not None else None
    zeros = torch.zeros(len(trace.x), dtype=torch.long, device=device)
    t_w = dwell_weights(t_off, zeros if t is None else t, zeros if ann is None else ann, config)
    rec = torch.cat([record_index(c_off), record_index(t_off)])
    t_ch = torch.full((len(trace.x),), config.trace_channel, dtype=torch.long, device=device)
    ch = torch.cat([_click_channels(clicks, config, device), t_ch])
    w = torch.cat([torch.ones(len(clicks.x), dtype=torch.float64, device=device), t_w])
    x = torch.cat([_as(clicks.x, device, torch.float64), _as(trace.x, device, torch.float64)])
    y = torch.cat([_as(clicks.y, device, torch.float64), _as(trace.y, device, torch.float64)])
    return rec, ch, w, x, y


def _keep(ch, w, x, y, config: RasterConfig):
    """Mask of samples drawn, and (x, y) after the outside policy."""
    keep = (ch >= 0) & (w > 0) & x.isfinite() & y.isfinite()
    if config.outside == "clip":
        return keep, x.clamp(0, 1), y.clamp(0, 1)
    return keep & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1), x, y


def _axis(u: torch.Tensor, sigma: torch.Tensor, n: int, config: RasterConfig, dtype):
    """(S, n) shifted-truncated Gaussian at cells 0..n-1; (j - u) formed exactly from floor(u)."""
    ui = u.floor()
    cells = torch.arange(n, device=u.device, dtype=dtype)
    d = (cells - ui.to(dtype)[:, None] - (u - ui).to(dtype)[:, None]) / sigma.to(dtype)[:, None]
    return (torch.exp(-0.5 * d * d) - config.cut).clamp(min=0)


def rasterise_torch(
    clicks: Ragged,
    trace: Ragged,
    width: Array,
    height: Array,
    config: RasterConfig = RasterConfig(),
    boxes: Array | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (N, C, H, W) as ``config.dtype`` and validity (N, C) on ``device``.

    Same contract as ``ragged.rasterise``; the Ragged fields may be numpy arrays or tensors.
    ``dtype`` is the compute precision of the weight vectors and sums.
    """
    width = _as(width, device)
    device = width.device
    h, w = config.size
    n, n_ch = len(width), config.n_channels
    boxes = None if boxes is None else _as(boxes, device)
    geo = geometry(width, _as(height, device), config, boxes)
    rec, ch, wt, x, y = _samples(clicks, trace, config, device)
    keep, x, y = _keep(ch, wt, x, y, config)
    g = geo[rec]
    keep &= g[:, 4] > 0
    rec, ch, wt, x, y, g = (a[keep] for a in (rec, ch, wt, x, y, g))
    scale = wt / (config.unit_mass**2 * g[:, 4] * g[:, 5])  # unit mass per sample, in cells
    gx = _axis(x * g[:, 0] + g[:, 1], g[:, 4], w, config, dtype) * scale.to(dtype)[:, None]
    gy = _axis(y * g[:, 2] + g[:, 3], g[:, 5], h, config, dtype)
    acc = torch.zeros(n * n_ch, h, w, dtype=dtype, device=device)
    key = rec * n_ch + ch
    step = max(1, _CHUNK_ELEMS // (h * w))
    for s in range(0, len(key), step):
        sl = slice(s, s + step)
        acc.index_add_(0, key[sl], gy[sl, :, None] * gx[sl, None, :])
    return _finish(acc.view(n, n_ch, h, w), config)


def _finish(acc: torch.Tensor, config: RasterConfig) -> tuple[torch.Tensor, torch.Tensor]:
    peak = acc.amax(dim=(2, 3))
    valid = peak > 0
    if config.norm != "none":
        scale = peak if config.norm == "max" else acc.sum(dim=(2, 3))
        acc = acc / torch.where(valid, scale, 1)[..., None, None]
    if config.dtype == "uint8":
        return torch.floor(acc * 255 + 0.5).to(torch.uint8), valid
    return acc.float(), valid
