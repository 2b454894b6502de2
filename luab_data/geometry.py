"""The one home of the crop/flip arithmetic (docs/ARCHITECTURE.md, contract 4).

Every loader stage that must agree on a sample's augmentation calls these functions; the
numba-compiled FFCV stages call the very same ``njit`` functions, so there is nothing to keep
in sync.

Conventions
-----------
* Normalised coordinates: ``x, y`` in ``[0, 1]`` over the whole original image, origin top-left
  (as in the releases). A box is ``(x0, y0, x1, y1)`` in these coordinates.
* Pixels are unit squares: pixel column ``c`` of a ``W``-pixel-wide raster covers
  ``[c/W, (c+1)/W)`` and its centre is ``(c + 0.5)/W``. The same holds for map cells and for
  output pixels of a crop (OpenCV's half-pixel convention, which FFCV's ``cv::resize`` uses).
  So a point ``(x, y)`` lies at continuous pixel position ``(x*W, y*H)``, i.e. array index
  ``(x*W - 0.5, y*H - 0.5)``.
* A crop is chosen in integer pixels of the stored image, ``(top, left, h, w)``: rows
  ``[top, top+h)`` and columns ``[left, left+w)``; its normalised box is
  ``(left/W, top/H, (left+w)/W, (top+h)/H)``. The crop is resized to the output size and then,
  if ``flip``, mirrored left-right: crop coordinate ``t`` becomes ``1 - t``.
* Crop coordinates of a point: ``((x - x0)/(x1 - x0), (y - y0)/(y1 - y0))`` (mirrored in x when
  flipped). Valid (weight 1) when both lie in ``[0, 1]`` inclusive, else target ``(-1, -1)``,
  weight 0 (docs/RELEASE_FORMATS.md, "What the official example loaders regress").

Randomness is counter-based: the crop and flip of a sample are a pure function of
``(seed, epoch, sample index)`` (splitmix64 hashing), so independent stages draw the same crop
with no shared state, in any order, on any thread or rank.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
DEFAULT_CENTER_RATIO = 224.0 / 256.0  # resize 256 + center crop 224, as FFCV's ImageNet recipe

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53
_ATTEMPTS = 10  # torchvision's RandomResizedCrop rule
_FLIP_DRAW = 63  # counter of the flip draw; crop draws use 0 .. 4*_ATTEMPTS-1


# ---------------------------------------------------------------- counter-based randomness


@njit(cache=True)
def mix64(z: np.uint64) -> np.uint64:
    """splitmix64 finaliser: a bijective, well-mixing hash of 64 bits."""
    z = np.uint64(z)
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True)
def sample_key(seed: int, epoch: int, index: int) -> np.uint64:
    """The random stream of one sample in one epoch; chained so no two triples collide simply."""
    k = mix64(np.uint64(seed) + _GOLDEN)
    k = mix64(k ^ (np.uint64(epoch) * _MIX1 + _GOLDEN))
    return mix64(k ^ (np.uint64(index) * _MIX2 + _GOLDEN))


@njit(cache=True)
def uniform(key: np.uint64, counter: int) -> float:
    """The ``counter``-th uniform draw in ``[0, 1)`` of a sample's stream."""
    bits = mix64(key + (np.uint64(counter) + np.uint64(1)) * _GOLDEN)
    return float(bits >> _S11) * _TO_UNIT


# ---------------------------------------------------------------- crop boxes (integer pixels)


@njit(cache=True)
def random_resized_crop(
    width: int,
    height: int,
    key: np.uint64,
    scale_min: float,
    scale_max: float,
    ratio_min: float,
    ratio_max: float,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop rule: 10 attempts, then the central fallback.

    Returns ``(top, left, h, w)`` in pixels of a ``width`` x ``height`` image.
    """
    width = np.int64(width)
    height = np.int64(height)
    area = float(width * height)
    log_lo = math.log(ratio_min)
    log_hi = math.log(ratio_max)
    for attempt in range(_ATTEMPTS):
        c = 4 * attempt
        target_area = area * (scale_min + (scale_max - scale_min) * uniform(key, c))
        aspect = math.exp(log_lo + (log_hi - log_lo) * uniform(key, c + 1))
        w = np.int64(np.rint(math.sqrt(target_area * aspect)))
        h = np.int64(np.rint(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = np.int64(uniform(key, c + 2) * (height - h + 1))
            left = np.int64(uniform(key, c + 3) * (width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio_min:
        w = width
        h = np.int64(np.rint(w / ratio_min))
    elif in_ratio > ratio_max:
        h = height
        w = np.int64(np.rint(h * ratio_max))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


@njit(cache=True)
def center_crop(width: int, height: int, ratio: float) -> tuple[int, int, int, int]:
    """Validation crop: a centred square of side ``int(ratio * min side)`` (FFCV's rule), which
    after resizing equals "resize the short side to S/ratio, center-crop S"."""
    width = np.int64(width)
    height = np.int64(height)
    side = np.int64(ratio * min(width, height))
    return (height - side) // 2, (width - side) // 2, side, side


@njit(cache=True)
def draw_flip(key: np.uint64, p: float) -> bool:
    """Horizontal flip with probability ``p``, from the sample's own stream."""
    return uniform(key, _FLIP_DRAW) < p


@njit(cache=True)
def train_crop(
    width: int,
    height: int,
    seed: int,
    epoch: int,
    index: int,
    scale_min: float,
    scale_max: float,
    ratio_min: float,
    ratio_max: float,
    flip_p: float,
) -> tuple[int, int, int, int, bool]:
    """The training augmentation of one sample: ``(top, left, h, w, flip)``."""
    key = sample_key(seed, epoch, index)
    top, left, h, w = random_resized_crop(
        width, height, key, scale_min, scale_max, ratio_min, ratio_max
    )
    return top, left, h, w, draw_flip(key, flip_p)


@njit(cache=True)
def normalised_box(
    top: int, left: int, h: int, w: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """Pixel crop -> normalised ``(x0, y0, x1, y1)`` (pixel edges, see module docstring)."""
    return left / width, top / height, (left + w) / width, (top + h) / height


# ---------------------------------------------------------------- points


@njit(cache=True)
def transform_point(
    x: float, y: float, x0: float, y0: float, x1: float, y1: float, flip: bool
) -> tuple[float, float, float]:
    """Normalised image point -> ``(tx, ty, weight)`` in crop coordinates (the official
    loaders' rule, docs/RELEASE_FORMATS.md).

    NaN or negative "absent" markers never fall inside a crop, so they get weight 0 too.
    """
    tx = (x - x0) / (x1 - x0)
    ty = (y - y0) / (y1 - y0)
    if not (0.0 <= tx <= 1.0 and 0.0 <= ty <= 1.0):
        return -1.0, -1.0, 0.0
    if flip:
        tx = 1.0 - tx
    return tx, ty, 1.0


@njit(cache=True)
def transform_points_into(
    points: np.ndarray, x0: float, y0: float, x1: float, y1: float, flip: bool, out: np.ndarray
) -> None:
    """``points`` (K, 2) normalised (x, y) -> ``out`` (K, 3) rows of (tx, ty, weight)."""
    for k in range(points.shape[0]):
        tx, ty, wt = transform_point(points[k, 0], points[k, 1], x0, y0, x1, y1, flip)
        out[k, 0] = tx
        out[k, 1] = ty
        out[k, 2] = wt


# ---------------------------------------------------------------- maps


@njit(cache=True)
def _axis_taps(
    n_src: int, lo: float, hi: float, n_out: int, flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: first source index and normalised triangle-filter weights.

    The triangle's half-width is max(1, source cells per output cell): plain bilinear when
    upsampling, area-aware (antialiased, like PIL's bilinear) when downsampling, so a narrow
    peak is never skipped between samples.
    """
    step = (hi - lo) * n_src / n_out
    support = max(step, 1.0)
    taps = 2 * np.int64(math.ceil(support)) + 1
    first = np.empty(n_out, np.int64)
    weights = np.zeros((n_out, taps))
    for u in range(n_out):
        t = (u + 0.5) / n_out
        if flip:
            t = 1.0 - t
        s = (lo + t * (hi - lo)) * n_src - 0.5  # array-index coordinate of the output centre
        k0 = np.int64(math.floor(s - support)) + 1
        total = 0.0
        for k in range(taps):
            wt = max(0.0, 1.0 - abs(k0 + k - s) / support)
            weights[u, k] = wt
            total += wt
        for k in range(taps):
            weights[u, k] /= total
        first[u] = k0
    return first, weights


@njit(cache=True)
def warp_map(
    src: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    flip: bool,
    dst: np.ndarray,
    scale: float,
) -> None:
    """Crop ``src`` (C, Hm, Wm), a map over the whole image, to the normalised box, mirror it
    if ``flip``, resample it into ``dst`` (C, Ho, Wo) and multiply by ``scale``.

    Edges replicate (a box never leaves the image, but filter taps may).
    """
    n_ch, hm, wm = src.shape
    ho, wo = dst.shape[1], dst.shape[2]
    fx, wx = _axis_taps(wm, x0, x1, wo, flip)
    fy, wy = _axis_taps(hm, y0, y1, ho, False)
    for c in range(n_ch):
        for v in range(ho):
            for u in range(wo):
                acc = 0.0
                for ky in range(wy.shape[1]):
                    wgt_y = wy[v, ky]
                    if wgt_y == 0.0:
                        continue
                    r = min(max(fy[v] + ky, 0), hm - 1)
                    row = 0.0
                    for kx in range(wx.shape[1]):
                        wgt_x = wx[u, kx]
                        if wgt_x != 0.0:
                            row += wgt_x * src[c, r, min(max(fx[u] + kx, 0), wm - 1)]
                    acc += wgt_y * row
                dst[c, v, u] = acc * scale


# ---------------------------------------------------------------- NumPy-friendly wrappers

Box = tuple[float, float, float, float]


def crop_box(
    width: int,
    height: int,
    seed: int,
    epoch: int,
    index: int,
    *,
    train: bool = True,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    flip_p: float = 0.5,
    center_ratio: float = DEFAULT_CENTER_RATIO,
) -> tuple[tuple[int, int, int, int], Box, bool]:
    """The crop of one sample as every loader draws it: pixel crop, normalised box, flip."""
    if train:
        top, left, h, w, flip = train_crop(
            width, height, seed, epoch, index, scale[0], scale[1], ratio[0], ratio[1], flip_p
        )
    else:
        (top, left, h, w), flip = center_crop(width, height, center_ratio), False
    box = normalised_box(top, left, h, w, width, height)
    return (int(top), int(left), int(h), int(w)), box, bool(flip)


def transform_points(points: np.ndarray, box: Box, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) normalised points -> ((K, 2) crop targets, (K,) weights)."""
    pts = np.ascontiguousarray(np.asarray(points, np.float64).reshape(-1, 2))
    out = np.empty((pts.shape[0], 3), np.float64)
    transform_points_into(pts, *box, bool(flip), out)
    return out[:, :2], out[:, 2]


def crop_map(
    amap: np.ndarray, box: Box, flip: bool, size: tuple[int, int], scale: float = 1.0
) -> np.ndarray:
    """Whole-image map (C, Hm, Wm) -> float32 (C, *size) cropped, flipped, resized."""
    src = np.ascontiguousarray(amap)
    dst = np.empty((src.shape[0], size[0], size[1]), np.float32)
    warp_map(src, *box, bool(flip), dst, scale)
    return dst


def target_to_pixel(target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop coordinates (x, y) -> continuous output position in pixels of an (H, W) output;
    pixel ``i`` covers ``[i, i+1)``, so its array index is this value minus 0.5."""
    return np.asarray(target, np.float64) * np.array([size[1], size[0]], np.float64)
