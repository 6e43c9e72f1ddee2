"""Which array module (NumPy or CuPy) an array belongs to, without importing CuPy."""

from __future__ import annotations

import sys

import numpy as np


def is_cupy(array) -> bool:
    """True for CuPy arrays (checked by type, so CuPy is never imported here)."""
    return type(array).__module__.split(".")[0] == "cupy"


def array_module(array):
    """``cupy`` for CuPy arrays, ``numpy`` for everything else."""
    if is_cupy(array):
        return sys.modules["cupy"]
    return np
