"""Kernel maps as operations: build one between two coordinate sets, take its
reverse table or its pair mask (docs/SPEC.md section 4).

Each function validates its arguments and runs on the backend of the arrays
(:func:`cusparseconv.backends.backend_for`). The :class:`~cusparseconv.KernelMap`
value itself lives in :mod:`cusparseconv.kmap`; what a backend derives from a
map (the reverse table, the pair mask) it keeps in its own per-map state, so
asking twice costs nothing.
"""

from __future__ import annotations

from ._checks import MAX_STRIDE, check_coords, per_axis, warn_if_batch_looks_spatial
from ._limits import check_kernel_map_size
from ._switch import short_switch_interval
from .backends import backend_for
from .coords import SortedKeys
from .kmap import KernelMap
from .offsets import check_offsets

__all__ = ["build_kernel_map", "reverse_kernel_map", "pair_mask", "check_kernel_map"]


def check_kernel_map(kmap, name: str = "kmap") -> KernelMap:
    """Raise TypeError unless ``kmap`` is a KernelMap."""
    if not isinstance(kmap, KernelMap):
        raise TypeError(f"{name} must be a KernelMap (from build_kernel_map), "
                        f"got {type(kmap).__name__}")
    return kmap


@short_switch_interval
def build_kernel_map(in_coords, out_coords, offsets, stride=1, transposed=False, *,
                     in_keys: SortedKeys | None = None,
                     out_keys: SortedKeys | None = None, ndim: int | None = None) -> KernelMap:
    """Build the kernel map between two coordinate sets.

    Parameters
    ----------
    in_coords : ndarray of int32, shape (N_in, 1 + D)
        Input coordinates (unique rows).
    out_coords : ndarray of int32, shape (N_out, 1 + D)
        Output coordinates (unique rows). Pass the same array as ``in_coords``
        for a submanifold (stride 1) map: the search then uses the symmetry of
        the kernel and is about twice as fast.
    offsets : ndarray of int, shape (K, D)
        Kernel offsets, e.g. from :func:`cusparseconv.kernel_offsets`.
    stride : int or tuple of D ints
    transposed : bool
        Build the transposed map (``w == s * u + K[k]``) instead of the forward
        one (``v == s * u + K[k]``).
    in_keys, out_keys : SortedKeys, optional
        Sorted packed keys of the two sets when already known (the coordinate
        cache passes them); computed otherwise.
    ndim : int, optional
        Require D = ``ndim`` spatial dimensions (coordinates of shape
        (N, 1 + ndim)); an error names a missing batch column.

    Returns
    -------
    KernelMap
        int32 rows (NumPy or CuPy, as the coordinates).
    """
    same_set = out_coords is in_coords
    in_coords = check_coords(in_coords, "in_coords", ndim=ndim)
    out_coords = in_coords if same_set else check_coords(out_coords, "out_coords", ndim=ndim)
    if ndim is None:
        warn_if_batch_looks_spatial(in_coords, "in_coords")
    ndim = in_coords.shape[1] - 1
    if out_coords.shape[1] != in_coords.shape[1]:
        raise ValueError(
            f"out_coords must have the same number of columns as in_coords "
            f"({in_coords.shape[1]}), got {out_coords.shape[1]}"
        )
    offsets = check_offsets(offsets, ndim)
    stride = per_axis(stride, ndim, "stride", maximum=MAX_STRIDE)
    backend = backend_for(in_coords, out_coords)
    check_kernel_map_size(in_coords.shape[0], out_coords.shape[0], offsets.shape[0], backend)
    return backend.build_kernel_map(in_coords, out_coords, offsets, stride, bool(transposed),
                                    same_set=same_set, in_keys=in_keys, out_keys=out_keys)


@short_switch_interval
def reverse_kernel_map(kmap: KernelMap) -> KernelMap:
    """The reverse table of ``kmap``: input and output swapped, pairs sorted by the new
    output row within each offset (``transposed`` flipped).

    The input gradient of ``kmap`` is the forward product of the reverse table
    with transposed weights. Built once per map by its backend (the GPU backend
    builds it with the map); the reverse of the reverse is ``kmap`` itself
    while ``kmap`` lives.
    """
    check_kernel_map(kmap)
    return backend_for(kmap.in_rows).reverse(kmap)


@short_switch_interval
def pair_mask(kmap: KernelMap):
    """The output-major encoding of ``kmap`` (docs/SPEC.md section 4).

    Returns
    -------
    mask : ndarray of uint32, shape (n_out, ceil(K / 32))
        Bit ``k % 32`` of word ``k // 32`` is set when offset k pairs the row.
    neighbour : ndarray of int32, shape (n_out, K)
        The input row paired with each (output row, offset), -1 if none.
    """
    check_kernel_map(kmap)
    return backend_for(kmap.in_rows).pair_mask(kmap)
