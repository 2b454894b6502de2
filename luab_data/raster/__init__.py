"""Attention maps: clicks and traces rasterised into Gaussian maps (numba; torch twin)."""
