"""Kernel maps: which input row meets which output row through which offset.

For a kernel K (|K|, D), a stride s and a direction, a kernel map lists for
every offset k the pairs (input row, output row) it connects (docs/SPEC.md
section 4):

* forward (``transposed=False``): input ``v`` and output ``u`` pair through k
  when ``v == s * u + K[k]``;
* transposed: input ``u`` and output ``w`` pair through k when
  ``w == s * u + K[k]``;

with equal batch indices in both cases. Each offset connects an input row to
at most one output row and vice versa, so a scatter along one offset never
writes a row twice. Every regime of :func:`cusparseconv.sparse_conv` reduces to
one of these two maps over the right output coordinates.

This module holds the value only. Building a map, its reverse table and its
pair mask are operations of the backends (:func:`cusparseconv.build_kernel_map`,
:func:`cusparseconv.reverse_kernel_map`, :func:`cusparseconv.pair_mask`); what a
backend derives from a map stays in that backend's per-map state.
"""

from __future__ import annotations

import numpy as np

from ._arrays import read_only

__all__ = ["KernelMap"]


class KernelMap:
    """Pair table of one layer geometry (CSR by offset): a frozen value.

    Nothing can be set on a map once built, and its NumPy arrays are
    read-only (CuPy arrays have no read-only flag: never write them). Maps
    compare by identity, so backends can key their own per-map state by the
    map (weakly, see :mod:`cusparseconv.backends`).

    Attributes
    ----------
    in_rows, out_rows : ndarray of int32, shape (P,)
        Pairs grouped by offset; within one offset sorted by ``out_rows``.
        NumPy arrays on the CPU, CuPy arrays on the GPU.
    pair_offsets : ndarray of int64, shape (K + 1,)
        Pairs of offset k are ``[pair_offsets[k]:pair_offsets[k + 1]]`` (NumPy,
        host memory, on every backend).
    n_in, n_out : int
        Number of input and output rows.
    offsets : ndarray of int32, shape (K, D)
        The kernel offsets the map was built for (NumPy).
    stride : tuple of int
    transposed : bool
    """

    __slots__ = ("in_rows", "out_rows", "pair_offsets", "n_in", "n_out", "offsets",
                 "stride", "transposed", "__weakref__")

    def __init__(self, in_rows, out_rows, pair_offsets, n_in, n_out, offsets, stride,
                 transposed):
        if in_rows.dtype != np.int32 or out_rows.dtype != np.int32:
            raise TypeError(f"in_rows and out_rows must be int32, got {in_rows.dtype} and "
                            f"{out_rows.dtype}")
        if in_rows.shape != out_rows.shape or in_rows.ndim != 1:
            raise ValueError(f"in_rows and out_rows must have one shape (P,), got "
                             f"{tuple(in_rows.shape)} and {tuple(out_rows.shape)}")
        pair_offsets = np.asarray(pair_offsets, dtype=np.int64)
        if pair_offsets.ndim != 1 or int(pair_offsets[-1]) != in_rows.shape[0]:
            raise ValueError(f"pair_offsets must be (K + 1,) ending at the {in_rows.shape[0]} "
                             f"pairs, got shape {pair_offsets.shape}")
        init = object.__setattr__
        init(self, "in_rows", read_only(in_rows))
        init(self, "out_rows", read_only(out_rows))
        init(self, "pair_offsets", read_only(pair_offsets))
        init(self, "n_in", int(n_in))
        init(self, "n_out", int(n_out))
        init(self, "offsets", read_only(np.asarray(offsets)))
        init(self, "stride", tuple(int(s) for s in stride))
        init(self, "transposed", bool(transposed))

    def __setattr__(self, name, value):
        raise AttributeError(f"KernelMap is a frozen value: cannot set {name!r} (backends "
                             f"keep what they derive from a map in their own state)")

    def __delattr__(self, name):
        raise AttributeError(f"KernelMap is a frozen value: cannot delete {name!r}")

    def __reduce__(self):
        return KernelMap, (self.in_rows, self.out_rows, self.pair_offsets, self.n_in,
                           self.n_out, self.offsets, self.stride, self.transposed)

    @property
    def nbytes(self) -> int:
        """Bytes of the pair table (what a backend derives is counted by the backend)."""
        return int(self.in_rows.nbytes + self.out_rows.nbytes + self.pair_offsets.nbytes
                   + self.offsets.nbytes)

    # ------------------------------------------------------------------ views
    @property
    def kernel_volume(self) -> int:
        """|K|, the number of offsets."""
        return self.pair_offsets.shape[0] - 1

    @property
    def n_pairs(self) -> int:
        """Total number of (input, output) pairs over all offsets."""
        return int(self.pair_offsets[-1])

    def pair_counts(self) -> np.ndarray:
        """Pairs per offset, (K,) int64."""
        return np.diff(self.pair_offsets)

    def pairs(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(in_rows, out_rows) of offset k."""
        start, stop = self.pair_offsets[k], self.pair_offsets[k + 1]
        return self.in_rows[start:stop], self.out_rows[start:stop]

    def __repr__(self) -> str:
        return (f"KernelMap(n_in={self.n_in}, n_out={self.n_out}, "
                f"kernel_volume={self.kernel_volume}, n_pairs={self.n_pairs}, "
                f"stride={self.stride}, transposed={self.transposed})")

