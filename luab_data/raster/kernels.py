"""Numba kernels over ragged samples (offsets + flat values, one record per offsets interval).

Every kernel runs ``prange`` over records, holds no Python objects and releases the GIL, so a
reader thread can feed the next batch while one is rasterised. The maths is specified by
``reference.py``; the tests hold these kernels to it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# geometry columns, one row per record (see ragged.geometry)
AX, BX, AY, BY, SX, SY = range(6)
NORM_CODES = {"max": 0, "sum": 1, "none": 2}
_CHUNK = 16  # records per parallel task: amortises the scratch allocation


@njit(parallel=True, nogil=True, cache=True)
def dwell_weights(off, t, ann, use_dwell, dmin, dcap, decay, out):
    """Trace weights: dwell (time to the next sample of the same annotation), optional decay."""
    for r in prange(off.shape[0] - 1):
        t_end = 0
        for i in range(off[r + 1] - 1, off[r] - 1, -1):  # backwards: t_end is the run's last t
            last = i + 1 == off[r + 1] or ann[i + 1] != ann[i]
            if last:
                t_end = t[i]
            w = 1.0
            if use_dwell:
                dt = dmin if last else float(t[i + 1] - t[i])
                w = min(max(dt, dmin), dcap)
            if decay > 0:
                w *= math.exp(-max(t_end - t[i], 0) / decay)
            out[i] = w


@njit(nogil=True, cache=True, inline="always")
def _support(u, radius, n):
    """Cells within ``radius`` of centre ``u`` (cell units), clamped to 0..n-1; lo > hi if none."""
    if u + radius < 0 or u - radius > n - 1:
        return 1, 0
    return max(0, math.ceil(u - radius)), min(n - 1, math.floor(u + radius))


@njit(nogil=True, cache=True)
def _weights(g, lo, hi, u, sigma, cut, scale):
    """1-D shifted-truncated Gaussian over cells lo..hi, times ``scale``.

    exp(-d²/2) along consecutive cells is a geometric recurrence (ratio of ratios exp(-1/σ²)),
    so three exps per axis replace one per cell (exp dominated the cost); over a support of a
    few dozen cells the float64 products drift ~1e-14, far below the float32 output. d >= -R
    at ``lo``, so the first ratio is at most exp(R²/2): no overflow.
    """
    a = 1.0 / (sigma * sigma)
    d = lo - u
    e = math.exp(-0.5 * a * d * d)
    r = math.exp(-a * (d + 0.5))
    q = math.exp(-a)
    for j in range(hi - lo + 1):
        g[j] = max(e - cut, 0.0) * scale
        e *= r
        r *= q


@njit(nogil=True, cache=True)
def _splat(acc, touched, gx, gy, geo, lo, hi, xs, ys, ws, chs, truncate, cut, mass, clip):
    """Add the samples lo..hi of one record into ``acc`` (C, H, W), separably."""
    _, h, w = acc.shape
    sx, sy = geo[SX], geo[SY]
    rx, ry = truncate * sx, truncate * sy
    norm = 1.0 / (mass * mass * sx * sy)  # unit mass per sample, in cells
    for s in range(lo, hi):
        c, wt, x, y = chs[s], ws[s], xs[s], ys[s]
        if c < 0 or not wt > 0 or not (math.isfinite(x) and math.isfinite(y)):
            continue
        if clip:
            x, y = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
        elif x < 0 or x > 1 or y < 0 or y > 1:
            continue
        u, v = x * geo[AX] + geo[BX], y * geo[AY] + geo[BY]
        j0, j1 = _support(u, rx, w)
        i0, i1 = _support(v, ry, h)
        if j0 > j1 or i0 > i1:
            continue
        touched[c] = True
        _weights(gx, j0, j1, u, sx, cut, wt * norm)
        _weights(gy, i0, i1, v, sy, cut, 1.0)
        for i in range(i0, i1 + 1):
            a = gy[i - i0]
            row = acc[c, i, j0 : j1 + 1]  # a 1-D view lets LLVM vectorise the row
            for j in range(j1 - j0 + 1):
                row[j] += a * gx[j]


@njit(nogil=True, cache=True)
def _peak(values):
    """Max of non-negative floats as the max of their bit patterns (order-preserving for x >= 0):
    an integer max reduction vectorises, a float one does not (NaN rules)."""
    bits = values.view(np.int64)
    top = 0
    for k in range(bits.size):
        top = max(top, bits[k])
    return np.array([top]).view(np.float64)[0]


@njit(nogil=True, cache=True, fastmath=True)  # lets the sum reduction vectorise
def _finish(acc, touched, out, valid, norm, scale, bias):
    """Normalise each channel into out's dtype (uint8: scale 255, bias 0.5) and re-zero acc.

    Untouched channels are only zero-filled: with one channel per COCO class most are empty.
    """
    n_ch, h, w = acc.shape
    src_all = acc.reshape(n_ch, h * w)
    dst_all = out.reshape(n_ch, h * w)
    for c in range(n_ch):
        src, dst = src_all[c], dst_all[c]
        if not touched[c]:
            dst[:] = 0
            valid[c] = False
            continue
        peak = _peak(src)
        valid[c] = peak > 0
        f = scale
        if norm != 2 and peak > 0:
            f /= peak if norm == 0 else src.sum()
        for k in range(h * w):
            dst[k] = src[k] * f + bias
        src[:] = 0.0
        touched[c] = False


@njit(parallel=True, nogil=True, cache=True)
def rasterise_kernel(
    geo,
    c_off,
    c_x,
    c_y,
    c_w,
    c_ch,
    t_off,
    t_x,
    t_y,
    t_w,
    t_ch,
    truncate,
    cut,
    mass,
    clip,
    norm,
    scale,
    bias,
    out,
    valid,
):
    """Maps (N, C, H, W) of clicks and trace; invalid geometry (NaN σ) gives zeros."""
    n, n_ch, h, w = out.shape
    for k in prange((n + _CHUNK - 1) // _CHUNK):
        acc = np.zeros((n_ch, h, w), np.float64)  # kept zero between records by _finish
        touched = np.zeros(n_ch, np.bool_)
        gx = np.empty(w, np.float64)
        gy = np.empty(h, np.float64)
        for r in range(k * _CHUNK, min(n, (k + 1) * _CHUNK)):
            g = geo[r]
            if g[SX] > 0 and g[SY] > 0:
                args = (truncate, cut, mass, clip)
                lo, hi = c_off[r], c_off[r + 1]
                _splat(acc, touched, gx, gy, g, lo, hi, c_x, c_y, c_w, c_ch, *args)
                lo, hi = t_off[r], t_off[r + 1]
                _splat(acc, touched, gx, gy, g, lo, hi, t_x, t_y, t_w, t_ch, *args)
            _finish(acc, touched, out[r], valid[r], norm, scale, bias)


@njit(parallel=True, nogil=True, cache=True)
def resample_kernel(off, x, y, t, ann, clip, dmin, dcap, out, valid):
    """Each trace resampled to K points, evenly in cumulative capped dwell time (out: N, K, 2)."""
    k_pts = out.shape[1]
    for r in prange(off.shape[0] - 1):
        lo, hi = off[r], off[r + 1]
        px = np.empty(hi - lo, np.float64)
        py = np.empty(hi - lo, np.float64)
        pu = np.empty(hi - lo, np.float64)
        m = _kept_path(lo, hi, x, y, t, ann, clip, dmin, dcap, px, py, pu)
        valid[r] = m > 0
        if m == 0:
            out[r] = -1.0
            continue
        if pu[m - 1] <= 0:  # no elapsed time: fall back to even spacing by sample index
            for i in range(m):
                pu[i] = i
        _interpolate(px, py, pu, m, out[r], k_pts)


@njit(nogil=True, cache=True)
def _kept_path(lo, hi, x, y, t, ann, clip, dmin, dcap, px, py, pu):
    """Kept samples and their path parameter; a new annotation starts with no time gap."""
    m = 0
    prev = -1
    for s in range(lo, hi):
        xs, ys = x[s], y[s]
        if not (math.isfinite(xs) and math.isfinite(ys)):
            continue
        if clip:
            xs, ys = min(max(xs, 0.0), 1.0), min(max(ys, 0.0), 1.0)
        elif xs < 0 or xs > 1 or ys < 0 or ys > 1:
            continue
        u = 0.0
        if m > 0:
            u = pu[m - 1]
            if ann[s] == ann[prev]:
                u += min(max(float(t[s] - t[prev]), dmin), dcap)
        px[m], py[m], pu[m] = xs, ys, u
        prev = s
        m += 1
    return m


@njit(nogil=True, cache=True)
def _interpolate(px, py, pu, m, out, k_pts):
    total = pu[m - 1]
    i = 0
    for k in range(k_pts):
        target = total * k / (k_pts - 1) if k_pts > 1 else 0.0
        while i + 1 < m and pu[i + 1] <= target:
            i += 1
        if i + 1 < m and pu[i + 1] > pu[i]:
            a = (target - pu[i]) / (pu[i + 1] - pu[i])
            out[k, 0] = px[i] + a * (px[i + 1] - px[i])
            out[k, 1] = py[i] + a * (py[i + 1] - py[i])
        else:
            out[k, 0], out[k, 1] = px[i], py[i]


@njit(parallel=True, nogil=True, cache=True)
def class_points_kernel(off, x, y, cls, keep, out, valid):
    """Per class, the last kept click of that class (out: N, n_classes, 2; -1 where none)."""
    n_cls = out.shape[1]
    for r in prange(off.shape[0] - 1):
        out[r] = -1.0
        valid[r] = False
        for s in range(off[r], off[r + 1]):
            c = cls[s]
            if 0 <= c < n_cls and keep[s] and math.isfinite(x[s]) and math.isfinite(y[s]):
                out[r, c, 0], out[r, c, 1] = x[s], y[s]
                valid[r, c] = True
