"""Background families: the shortcut a classifier can learn instead of the object.

A family is a texture (stripes, checks, rings, noise, ...) in a hue band of its own; each drawn
background varies frequency, phase, angle, contrast and hue within its family, so a family is
easy to recognise but no two backgrounds are alike.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

N_FAMILIES = 10
FAMILY_NAMES = (
    "red-stripes",
    "orange-checks",
    "yellow-rings",
    "lime-dots",
    "green-noise",
    "teal-waves",
    "blue-plaid",
    "indigo-gradient",
    "purple-speckle",
    "pink-diagonals",
)

Pattern = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


def _wave(u: np.ndarray, rng: np.random.Generator, lo: float = 0.05, hi: float = 0.12):
    return 0.5 + 0.5 * np.sin(u * rng.uniform(lo, hi) * 2 * np.pi + rng.uniform(0, 2 * np.pi))


def _stripes(x, y, rng):
    angle = rng.normal(0.0, 0.15)
    return _wave(x * np.sin(angle) + y * np.cos(angle), rng)


def _checks(x, y, rng):
    f = rng.uniform(0.04, 0.09) * 2 * np.pi
    a, b = rng.uniform(0, 2 * np.pi, 2)
    return (np.sign(np.sin(x * f + a) * np.sin(y * f + b)) + 1) / 2


def _rings(x, y, rng):
    h, w = x.shape
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    return _wave(np.hypot(x - cx, y - cy), rng, 0.06, 0.14)


def _dots(x, y, rng):
    f = rng.uniform(0.08, 0.16) * 2 * np.pi
    a, b = rng.uniform(0, 2 * np.pi, 2)
    return (np.sin(x * f + a) * np.sin(y * f + b) > 0.5).astype(np.float32)


def _smooth_noise(x, y, rng, cells: float = 12.0):
    h, w = x.shape
    grid = rng.random((max(2, int(h / cells)), max(2, int(w / cells)))).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _waves(x, y, rng):
    bend = rng.uniform(4, 10) * np.sin(y * rng.uniform(0.05, 0.1) + rng.uniform(0, 6.3))
    return _wave(x + bend, rng)


def _plaid(x, y, rng):
    return (_wave(x, rng) + _wave(y, rng)) / 2


def _gradient(x, y, rng):
    h, w = x.shape
    angle = rng.uniform(0, 2 * np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    return (u - u.min()) / max(float(np.ptp(u)), 1.0)


def _speckle(x, y, rng):
    return _smooth_noise(x, y, rng, cells=2.5)


def _diagonals(x, y, rng):
    angle = np.pi / 4 + rng.normal(0.0, 0.12)
    return _wave(x * np.cos(angle) + y * np.sin(angle), rng, 0.07, 0.14)


_PATTERNS: tuple[Pattern, ...] = (
    _stripes,
    _checks,
    _rings,
    _dots,
    _smooth_noise,
    _waves,
    _plaid,
    _gradient,
    _speckle,
    _diagonals,
)


def _hsv_colour(hue_deg: float, sat: float, val: float) -> np.ndarray:
    hsv = np.array([[[hue_deg / 2, sat * 255, val * 255]]], np.float32).clip(0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def render_background(family: int, width: int, height: int, rng: np.random.Generator):
    """An (height, width, 3) uint8 RGB background of `family`."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pattern = _PATTERNS[family](x, y, rng).astype(np.float32)[..., None]
    hue = 36.0 * family + rng.normal(0.0, 6.0)
    dark = _hsv_colour(hue, rng.uniform(0.5, 0.9), rng.uniform(0.25, 0.5))
    light = _hsv_colour(hue, rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.0))
    img = dark + (light - dark) * pattern + rng.normal(0.0, 4.0, (height, width, 1))
    return img.clip(0, 255).astype(np.uint8)
