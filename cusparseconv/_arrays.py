"""Which array module (NumPy or CuPy) arrays belong to, without importing CuPy."""

from __future__ import annotations

import sys

import numpy as np


def is_cupy(array) -> bool:
    """True for CuPy arrays (checked by type, so CuPy is never imported here)."""
    return type(array).__module__.split(".")[0] == "cupy"


def array_module(*arrays):
    """``cupy`` when any of ``arrays`` is a CuPy array, else ``numpy`` (``None`` and
    non-array arguments count as NumPy)."""
    for array in arrays:
        if is_cupy(array):
            return sys.modules["cupy"]
    return np


def to_host(array):
    """A NumPy array of ``array`` (a copy from the device for CuPy arrays)."""
    return array.get() if is_cupy(array) else np.asarray(array)


def read_only(array):
    """A read-only view of a NumPy array; CuPy arrays (which have no such flag) as they are."""
    if isinstance(array, np.ndarray) and array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array
