"""Loaders that yield the batch contract of :mod:`luab_data.loaders.contract`.

``make_loader(kind, path, **knobs)`` makes any of them. Sub-modules import their heavy
dependencies (FFCV, DALI) themselves, so importing this package needs neither.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Batch", "CropSettings", "FieldNames", "LoaderSettings", "make_loader"]


def __getattr__(name: str) -> Any:
    """The contract's names, imported on first use (this package also holds light modules)."""
    if name in __all__:
        from luab_data.loaders import contract

        return getattr(contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
