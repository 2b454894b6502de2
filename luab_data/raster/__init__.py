"""Attention maps: clicks and traces rasterised into Gaussian maps by numba kernels.

The torch twin (``luab_data.raster.torch_raster.rasterise_torch``) is not imported here, so
that build and loader code that only needs the kernels does not pay for importing torch.
"""

from luab_data.raster.arrow import (
    clicks_from_batch,
    fixed_arrays,
    paper_points,
    rasterise_batch,
    trace_from_batch,
)
from luab_data.raster.config import RasterConfig
from luab_data.raster.ragged import Ragged, class_points, rasterise, resample_trace

__all__ = [
    "RasterConfig",
    "Ragged",
    "class_points",
    "clicks_from_batch",
    "fixed_arrays",
    "paper_points",
    "rasterise",
    "rasterise_batch",
    "resample_trace",
    "trace_from_batch",
]
