"""Backends: the array type picks the implementation (SPEC section 1).

``backend_for(*arrays)`` returns the module that implements the kernel-map
search and the products for those arrays: :mod:`cusparseconv.backends.cpu` for
NumPy arrays. Arrays of different devices are refused rather than copied.
"""

from __future__ import annotations

import numpy as np


def _is_cupy(array) -> bool:
    return type(array).__module__.split(".")[0] == "cupy"


def backend_for(*arrays):
    """The backend module for these arrays (``None`` entries are ignored)."""
    present = [a for a in arrays if a is not None]
    if any(_is_cupy(a) for a in present):
        if not all(_is_cupy(a) for a in present):
            kinds = sorted({type(a).__module__.split(".")[0] for a in present})
            raise TypeError(
                f"arrays must all live on one device, got a mix of {kinds}; move them "
                f"explicitly (cupy.asarray / .get()) — cusparseconv never copies between "
                f"devices behind your back"
            )
        raise TypeError(
            "CuPy arrays were given, but this build of cusparseconv has no GPU backend "
            "yet; pass NumPy arrays (array.get()) to use the CPU backend"
        )
    for array in present:
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"expected NumPy arrays for the CPU backend, got {type(array).__name__}"
            )
    from . import cpu

    return cpu
