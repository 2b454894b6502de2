"""Loaders that yield the batch contract of DESIGN.md (contract 3).

Sub-modules import their heavy dependencies (FFCV, DALI) themselves, so importing this package
needs neither.
"""
