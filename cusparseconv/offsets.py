"""Kernel offsets: the set K of integer displacements a kernel covers (docs/SPEC.md section 2)."""

from __future__ import annotations

import math

import numpy as np

from ._checks import per_axis
from ._limits import check_memory, offsets_bytes

#: Largest |offset| on any axis (offsets are int32; keys keep a margin of range).
MAX_OFFSET = 2**15 - 1


def kernel_offsets(kernel_size=3, dilation=1, ndim: int = 3) -> np.ndarray:
    """Offsets of a box kernel, in the order the weight's first axis uses.

    The index grid ``j_d in [0, k_d)`` is enumerated in C order (first spatial
    axis slowest) and ``offset_d = (j_d - c_d) * r_d`` with ``c_d = (k_d - 1) // 2``
    for odd ``k_d`` and ``c_d = 0`` for even ``k_d``.

    Parameters
    ----------
    kernel_size : int or sequence of int
        Per-axis kernel size k_d >= 1.
    dilation : int or sequence of int
        Per-axis dilation r_d >= 1.
    ndim : int
        Number of spatial axes D (1 to 4).

    Returns
    -------
    offsets : ndarray of int32, shape (prod(k_d), D)
        A 3x3x3 kernel gives 27 rows from (-1, -1, -1) to (1, 1, 1), centre at
        row 13; a 2x2x2 kernel gives {0, 1}^3.
    """
    if not isinstance(ndim, (int, np.integer)) or not 1 <= ndim <= 4:
        raise ValueError(f"ndim must be an int in 1..4, got {ndim!r}")
    sizes = per_axis(kernel_size, ndim, "kernel_size")
    dilations = per_axis(dilation, ndim, "dilation")
    centres = [(size - 1) // 2 if size % 2 else 0 for size in sizes]
    reach = max(max(centre, size - 1 - centre) * step
                for size, step, centre in zip(sizes, dilations, centres))
    if reach > MAX_OFFSET:
        raise ValueError(
            f"kernel_size {sizes} with dilation {dilations} reaches offset {reach}, beyond "
            f"the supported |offset| <= {MAX_OFFSET}; use a smaller kernel or dilation")
    volume = math.prod(sizes)
    check_memory(offsets_bytes(volume, int(ndim)),
                 f"kernel_size {sizes} has {volume:,} offsets", "use a smaller kernel_size")
    axes = [(np.arange(size, dtype=np.int64) - centre) * step
            for size, step, centre in zip(sizes, dilations, centres)]
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.reshape(-1) for g in grid], axis=1).astype(np.int32)


def kernel_volume(kernel_size=3, ndim: int = 3) -> int:
    """Number of offsets of a box kernel (validates ``kernel_size``; allocates nothing)."""
    return math.prod(per_axis(kernel_size, ndim, "kernel_size"))


def check_offsets(offsets, ndim: int, name: str = "offsets") -> np.ndarray:
    """Validate a user-supplied (K, D) offset array: integer, unique rows, K >= 1."""
    offsets = np.asarray(offsets)
    if offsets.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of shape (K, {ndim}), "
                        f"got dtype {offsets.dtype}")
    if offsets.ndim != 2 or offsets.shape[1] != ndim or offsets.shape[0] == 0:
        raise ValueError(f"{name} must have shape (K, {ndim}) with K >= 1 (one row per "
                         f"kernel offset, D = {ndim} spatial axes), got {offsets.shape}")
    largest = max(abs(int(offsets.min())), abs(int(offsets.max())))
    if largest > MAX_OFFSET:
        raise ValueError(f"{name} values must lie in [-{MAX_OFFSET}, {MAX_OFFSET}], "
                         f"got max |offset| {largest}")
    offsets = offsets.astype(np.int32)
    if len(np.unique(offsets, axis=0)) != len(offsets):
        raise ValueError(f"{name} must hold unique rows: each offset gets its own weight "
                         f"slice, got {len(offsets)} rows with duplicates")
    return offsets
