"""Options of the attention-map rasteriser: one frozen value shared by every implementation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

CHANNEL_NAMES = ("click", "trace")


@dataclass(frozen=True, slots=True)
class RasterConfig:
    """How records become maps.

    The map covers the whole original image (or a given box) with ``size = (H, W)`` cells; cell
    (i, j) is centred at ((j + 0.5) / W, (i + 0.5) / H) in normalised image coordinates. Each
    sample adds ``weight * g(dx) * g(dy)`` with dx, dy in original-image pixels and
    ``g(d) = max(exp(-d² / 2σ²) - exp(-R² / 2), 0) / m(σ)``, ``R = truncate`` and ``m`` the
    integral of the numerator. The shift makes the truncation at ±Rσ continuous, so float32 and
    float64 implementations agree at the cut; dividing by ``m`` gives each sample unit mass, so a
    map with ``norm="none"`` sums to the total weight that falls inside it.
    """

    size: tuple[int, int] = (64, 64)
    # σ: fraction of the image's long side ("long_side"; 0.03 ≈ 1° of visual angle for an image
    # seen at ~30° as in the saliency literature) or original-image pixels ("px").
    sigma: float = 0.03
    sigma_units: Literal["long_side", "px"] = "long_side"
    truncate: float = 4.0
    channels: tuple[str, ...] = CHANNEL_NAMES
    # > 0: "click" becomes one channel per click_class in [0, n_classes) (COCO-AB: 80).
    n_classes: int = 0
    # clicks of annotations whose final vote was "not selected" are dropped when True.
    selected_only: bool = False
    # trace weight = time to the next sample of the same annotation, clipped to
    # [dwell_min_ms, dwell_cap_ms]; the last sample of an annotation gets dwell_min_ms.
    dwell: bool = True
    dwell_min_ms: float = 1.0
    dwell_cap_ms: float = 1000.0
    # > 0: trace weights also decay as exp(-(t_end - t) / decay_ms), t_end the annotation's last
    # sample (ImageNet-AB stops tracking at the select click, so this leans towards the click).
    decay_ms: float = 0.0
    # samples outside the image (0..1): dropped, or moved to the nearest edge.
    outside: Literal["ignore", "clip"] = "ignore"
    norm: Literal["max", "sum", "none"] = "max"
    # uint8 stores round(255 · value) of a max-normalised map; never float16 (FFCV hangs on it).
    dtype: Literal["uint8", "float32"] = "uint8"

    def __post_init__(self) -> None:
        h, w = self.size
        if h < 1 or w < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be positive, got {self.sigma}")
        if not self.truncate > 0:
            raise ValueError(f"truncate must be positive, got {self.truncate}")
        bad = [c for c in self.channels if c not in CHANNEL_NAMES]
        if bad or len(set(self.channels)) != len(self.channels) or not self.channels:
            raise ValueError(f"channels must be distinct names from {CHANNEL_NAMES}")
        if self.dtype == "uint8" and self.norm != "max":
            raise ValueError("uint8 maps must use norm='max' (sum/none do not fit 0..255)")
        if self.dtype not in ("uint8", "float32"):
            raise ValueError(f"dtype must be uint8 or float32, got {self.dtype}")
        if not 0 <= self.dwell_min_ms <= self.dwell_cap_ms:
            raise ValueError("need 0 <= dwell_min_ms <= dwell_cap_ms")

    @property
    def click_channel(self) -> int:
        """First click channel, or -1 if clicks are not drawn."""
        return self._offset("click")

    @property
    def trace_channel(self) -> int:
        return self._offset("trace")

    @property
    def n_channels(self) -> int:
        return sum(self._width(c) for c in self.channels)

    def _width(self, name: str) -> int:
        return max(self.n_classes, 1) if name == "click" else 1

    def _offset(self, name: str) -> int:
        if name not in self.channels:
            return -1
        return sum(self._width(c) for c in self.channels[: self.channels.index(name)])

    @property
    def cut(self) -> float:
        """exp(-R²/2): the value the kernel's numerator is shifted by."""
        return math.exp(-0.5 * self.truncate**2)

    @property
    def unit_mass(self) -> float:
        """Integral over d of the shifted, truncated 1-D kernel for σ = 1."""
        r = self.truncate
        return math.sqrt(2 * math.pi) * math.erf(r / math.sqrt(2)) - 2 * r * self.cut

    def sigma_px(self, width: float, height: float) -> float:
        """σ in original-image pixels for one image (numpy arrays work too)."""
        if self.sigma_units == "px":
            return self.sigma
        return self.sigma * np.maximum(width, height)
