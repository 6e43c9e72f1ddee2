"""Kernel maps: which input row meets which output row through which offset.

For a kernel K (|K|, D), a stride s and a direction, a kernel map lists for
every offset k the pairs (input row, output row) it connects (SPEC section 4):

* forward (``transposed=False``): input ``v`` and output ``u`` pair through k
  when ``v == s * u + K[k]``;
* transposed: input ``u`` and output ``w`` pair through k when
  ``w == s * u + K[k]``;

with equal batch indices in both cases. Each offset connects an input row to
at most one output row and vice versa, so a scatter along one offset never
writes a row twice. Every regime of :func:`cusparseconv.sparse_conv` reduces to
one of these two maps over the right output coordinates.
"""

from __future__ import annotations

import weakref

import numpy as np

from ._checks import MAX_STRIDE, check_coords, per_axis, warn_if_batch_looks_spatial
from ._limits import check_kernel_map_size
from .coords import SortedKeys
from .offsets import check_offsets


class KernelMap:
    """Pair table of one layer geometry (CSR by offset).

    Attributes
    ----------
    in_rows, out_rows : ndarray of int32, shape (P,)
        Pairs grouped by offset; within one offset sorted by ``out_rows``.
    pair_offsets : ndarray of int64, shape (K + 1,)
        Pairs of offset k are ``[pair_offsets[k]:pair_offsets[k + 1]]``.
    n_in, n_out : int
        Number of input and output rows.
    offsets : ndarray of int32, shape (K, D)
        The kernel offsets the map was built for.
    stride : tuple of int
    transposed : bool
    """

    def __init__(self, in_rows, out_rows, pair_offsets, n_in, n_out, offsets, stride,
                 transposed):
        self.in_rows = in_rows
        self.out_rows = out_rows
        self.pair_offsets = pair_offsets
        self.n_in = int(n_in)
        self.n_out = int(n_out)
        self.offsets = offsets
        self.stride = tuple(stride)
        self.transposed = bool(transposed)
        self._reverse = None       # the reverse table: held strongly, or weakly by the
        self._reverse_weak = None  # reverse of a map (no reference cycle between the two)
        self._chunk_cuts = {}
        self._pair_mask = None

    @property
    def _by_input(self):
        """The reverse table if known (None otherwise)."""
        if self._reverse is not None:
            return self._reverse
        return self._reverse_weak() if self._reverse_weak is not None else None

    @_by_input.setter
    def _by_input(self, other) -> None:
        # Link two maps that are each other's reverse without a reference cycle (a
        # cycle would keep their arrays until the cyclic garbage collector runs):
        # the second link of a pair is weak.
        if other is not None and other._reverse is self:
            self._reverse, self._reverse_weak = None, weakref.ref(other)
        else:
            self._reverse, self._reverse_weak = other, None

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this map holds (pair table, encodings built so far, the
        reverse table when this map holds it)."""
        arrays = {}
        for name, value in vars(self).items():
            if name in ("_reverse", "_reverse_weak"):
                continue
            parts = list(value.values()) if isinstance(value, dict) else [value]
            for part in parts:
                for array in (part if isinstance(part, tuple) else (part,)):
                    if hasattr(array, "dtype") and hasattr(array, "nbytes"):
                        arrays[id(array)] = array.nbytes
        total = sum(arrays.values())
        if self._reverse is not None:
            total += self._reverse.nbytes
        return total

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

    def reverse(self) -> "KernelMap":
        """The reverse table: input and output swapped, sorted by the new output.

        The input gradient of this map is the forward product of the reverse
        table with transposed weights, so it runs without atomics or conflicts.
        """
        if self._by_input is None:
            # the new output rows are the old input rows
            out_rows, in_rows = _sort_within_offsets(self.in_rows, self.out_rows,
                                                     self.pair_offsets)
            reverse = KernelMap(in_rows, out_rows, self.pair_offsets, self.n_out,
                                self.n_in, self.offsets, self.stride, not self.transposed)
            self._by_input = reverse
            reverse._by_input = self
        return self._by_input

    def chunk_cuts(self, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Split every offset's pairs by blocks of ``chunk_rows`` output rows.

        Returns
        -------
        bounds : ndarray of int64, shape (n_chunks + 1,)
            Output-row boundaries of the chunks.
        cuts : ndarray of int64, shape (K, n_chunks + 1)
            Pairs of offset k falling in chunk i are
            ``[cuts[k, i]:cuts[k, i + 1]]`` (absolute positions in the table).
        """
        cached = self._chunk_cuts.get(chunk_rows)
        if cached is None:
            bounds = np.arange(0, self.n_out + chunk_rows, chunk_rows, dtype=np.int64)
            bounds[-1] = self.n_out
            bounds = np.unique(bounds)
            cuts = np.empty((self.kernel_volume, bounds.shape[0]), dtype=np.int64)
            for k in range(self.kernel_volume):
                start, stop = self.pair_offsets[k], self.pair_offsets[k + 1]
                cuts[k] = start + np.searchsorted(self.out_rows[start:stop], bounds)
            cached = (bounds, cuts)
            self._chunk_cuts[chunk_rows] = cached
        return cached

    def pair_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """Output-major encoding (SPEC section 4).

        Returns
        -------
        mask : ndarray of uint32, shape (n_out, ceil(K / 32))
            Bit ``k % 32`` of word ``k // 32`` is set when offset k is active.
        neighbour : ndarray of int32, shape (n_out, K)
            The input row paired with each (output row, offset), -1 if none.
        """
        if self._pair_mask is None:
            kernel_volume = self.kernel_volume
            neighbour = np.full((self.n_out, kernel_volume), -1, dtype=np.int32)
            words = np.zeros((self.n_out, (kernel_volume + 31) // 32), dtype=np.uint32)
            for k in range(kernel_volume):
                in_rows, out_rows = self.pairs(k)
                neighbour[out_rows, k] = in_rows
                words[out_rows, k // 32] |= np.uint32(1 << (k % 32))
            self._pair_mask = (words, neighbour)
        return self._pair_mask

    def __repr__(self) -> str:
        return (f"KernelMap(n_in={self.n_in}, n_out={self.n_out}, "
                f"kernel_volume={self.kernel_volume}, n_pairs={self.n_pairs}, "
                f"stride={self.stride}, transposed={self.transposed})")


def _sort_within_offsets(key_rows, other_rows, pair_offsets):
    """Reorder each offset's pairs by ``key_rows``; returns (key_sorted, other_sorted)."""
    key_sorted = key_rows.copy()
    other_sorted = other_rows.copy()
    for k in range(pair_offsets.shape[0] - 1):
        start, stop = pair_offsets[k], pair_offsets[k + 1]
        segment = key_rows[start:stop]
        if segment.shape[0] > 1 and not bool(np.all(segment[1:] > segment[:-1])):
            order = np.argsort(segment, kind="stable")
            key_sorted[start:stop] = segment[order]
            other_sorted[start:stop] = other_rows[start:stop][order]
    return key_sorted, other_sorted


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
    """
    from .backends import backend_for

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
