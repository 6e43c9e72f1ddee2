"""Execution plans of the CPU products: which rows each block multiplies, and how.

A forward (or input-gradient) product ``out[u] = sum_k src[in_k(u)] @ W[k]``
runs per block of consecutive output rows, each block on one worker thread:

1. for every offset k with pairs in the block, one product
   ``src[rows] @ W[k]`` written into the block's product buffer, where
   ``rows`` is either

   * the *gathered* input rows of the block's pairs (``src.take``), or
   * the *window* of consecutive input rows from the first to the last of
     them (a plain slice: no gather, but the rows in between that have no
     pair are multiplied too);

2. one sparse sum ``out[block] += S @ products`` (:func:`add_products`): column
   j of ``S`` has a one at the output row of product row j (none for a window
   row without a pair), so every output row sums its terms in the order of
   the offsets, as the blocked algorithm before this one did with a
   scatter-add per offset.

Which of the two, per block and offset, comes from the cost model
(:mod:`cusparseconv.backends._cpu_cost`): the window when multiplying its
extra rows costs less than gathering the paired ones. The dense product
(every slot of a block's neighbour table, one GEMM) is chosen instead when
predicted clearly faster (:func:`choose_dense`). A plan depends only on the
map, the shape and the measured costs, never on the thread count, so the
result is the same at any thread count.

Making a plan is cheap (per offset, one search of the block bounds and one
pass over its input rows); the per-pair layout of a block (its sum's entries,
or its neighbour table for the dense product) is made by the first call that
runs the block, on the worker thread that runs it, and kept. Plans are
memoized in the CPU backend's per-map state (:mod:`._cpu_state`; a map's plans
go when the map goes): :func:`plan_for`.
"""

from __future__ import annotations

import numpy as np

from ._cpu_cost import DENSE_MARGIN, costs, dense_chunk_rows
from ._cpu_state import MAPS, state_of

__all__ = ["Plan", "Block", "plan_for", "choose_dense", "add_products", "note_mirror",
           "mirror_of", "dense_chunk_rows", "in_monotone"]

#: Bytes of one block's product buffer the block size aims at (fits in L2 with its sources),
#: within [_MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS] rows (at C = 256, 1,024-row blocks run 12-20 %
#: faster than 256-row ones: longer GEMMs).
_BUFFER_BYTES = 2 << 20
_MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS = 1024, 16384


def note_mirror(kmap, mirror: np.ndarray) -> None:
    """Record that ``kmap``'s reverse table is ``kmap`` itself with offset k read as
    ``mirror[k]`` (a submanifold map of a symmetric kernel, as its builder knows).

    Parameters
    ----------
    mirror : ndarray of int, shape (K,)
        An involution: the pairs of offset ``mirror[k]`` are the swapped pairs of k.
    """
    state_of(kmap).derived["mirror"] = np.asarray(mirror)


def mirror_of(kmap):
    """The mirror permutation noted for ``kmap`` (:func:`note_mirror`), or None."""
    state = MAPS.get(kmap)
    return None if state is None else state.derived.get("mirror")

try:  # SciPy's compiled sparse x dense product, accumulating into a given output
    from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
except ImportError:  # pragma: no cover - a SciPy without it: the public API below
    _csc_matvecs = None


class Block:
    """One block of output rows ``[first, last)`` and its products.

    Attributes
    ----------
    first, last : int
        Output rows of the block.
    items : list of (k, window, start, length, base, begin, end)
        One product per offset with pairs here, whose pairs are
        ``[begin, end)`` of the map: ``window`` True multiplies the input rows
        ``[start, start + length)``; False gathers the input rows of the pairs
        (then ``start, length == begin, end - begin``). Either way the product
        lands in rows ``[base, base + length)`` of the buffer.
    n_products : int
        Rows of the product buffer.
    """

    __slots__ = ("first", "last", "items", "n_products", "_sum", "_neighbours")

    def __init__(self, first, last, items, n_products):
        self.first, self.last = int(first), int(last)
        self.items = items
        self.n_products = int(n_products)
        self._sum = None
        self._neighbours = None

    def sum_layout(self, kmap) -> tuple[np.ndarray, np.ndarray]:
        """The block's sum in compressed-column form (made on first use, then kept).

        Returns
        -------
        column_starts : ndarray of int32, shape (n_products + 1,)
            Product row j is added to output row ``first + rows[i]`` for ``i``
            in ``[column_starts[j], column_starts[j + 1])``: one entry for a
            pair, none for a window row without a pair.
        rows : ndarray of int32, shape (pairs in the block,)
        """
        layout = self._sum
        if layout is None:
            in_rows, out_rows = kmap.in_rows, kmap.out_rows
            column_starts = np.zeros(self.n_products + 1, dtype=np.int32)
            counts = column_starts[1:]
            counts[:] = 1
            entries = []
            for _, window, start, length, base, begin, end in self.items:
                entries.append(out_rows[begin:end])
                if window and length != end - begin:   # rows without a pair: no entry
                    counts[base:base + length] = 0
                    counts[in_rows[begin:end] - (start - base)] = 1
            np.cumsum(counts, out=counts)
            rows = np.empty(sum(e.shape[0] for e in entries), dtype=np.int32)
            np.subtract(np.concatenate(entries), self.first, out=rows, casting="unsafe")
            layout = self._sum = (column_starts, rows)
        return layout

    def neighbours(self, kmap) -> np.ndarray:
        """(last - first, |K|) int32: the input row paired with each (row, offset),
        ``kmap.n_in`` if none (the zero row the dense product appends to its source;
        made on first use, then kept)."""
        table = self._neighbours
        if table is None:
            table = np.full((self.last - self.first, kmap.kernel_volume), kmap.n_in,
                            dtype=np.int32)
            for k, _, _, _, _, begin, end in self.items:
                table[kmap.out_rows[begin:end] - self.first, k] = kmap.in_rows[begin:end]
            self._neighbours = table
        return table


class Plan:
    """The blocks of one product over one map, and what the cost model predicted.

    Attributes
    ----------
    blocks : list of Block
    predicted_s : float
        Predicted single-thread seconds of the blocked product.
    dense_predicted_s : float
        Predicted single-thread seconds of the dense product.
    """

    __slots__ = ("blocks", "predicted_s", "dense_predicted_s", "_ones")

    def __init__(self, blocks, predicted_s, dense_predicted_s):
        self.blocks = blocks
        self.predicted_s = predicted_s
        self.dense_predicted_s = dense_predicted_s
        self._ones = {}

    def state_nbytes(self) -> int:
        """Bytes of the arrays this plan has made so far (the blocks' sum layouts and
        neighbour tables, the ones); counted in the backend's cache size."""
        total = sum(int(a.nbytes) for a in self._ones.values())
        for block in self.blocks:
            if block._sum is not None:
                total += int(block._sum[0].nbytes + block._sum[1].nbytes)
            if block._neighbours is not None:
                total += int(block._neighbours.nbytes)
        return total

    def ones(self, size: int, dtype) -> np.ndarray:
        """At least ``size`` ones in ``dtype`` (the entries' values; memoized)."""
        key = np.dtype(dtype).str
        found = self._ones.get(key)
        if found is None or found.shape[0] < size:
            longest = max(max((b.n_products for b in self.blocks), default=0), size)
            found = self._ones[key] = np.ones(longest, dtype=dtype)
        return found


def add_products(plan: Plan, block: Block, kmap, products: np.ndarray, out: np.ndarray,
                 compiled: bool = True) -> None:
    """``out += S @ products``: add each product row to its output row, in order.

    Parameters
    ----------
    plan, block : the plan and the block the products belong to.
    kmap : KernelMap the plan was made for.
    products : ndarray, shape (block.n_products, C), C-contiguous
    out : ndarray, shape (block.last - block.first, C), C-contiguous, float32 or
        float64 like ``products``; usually zeros.
    compiled : bool
        Use SciPy's compiled column loop directly (no temporary); False goes
        through ``scipy.sparse.csc_array`` (the same sums in the same order).
    """
    column_starts, rows = block.sum_layout(kmap)
    ones = plan.ones(rows.shape[0], products.dtype)[:rows.shape[0]]
    if compiled and _csc_matvecs is not None:
        _csc_matvecs(out.shape[0], block.n_products, out.shape[1], column_starts, rows, ones,
                     products.reshape(-1), out.reshape(-1))
        return
    import scipy.sparse
    matrix = scipy.sparse.csc_array((ones, rows, column_starts),
                                    shape=(out.shape[0], max(block.n_products, 1)))
    out += matrix @ products


def _block_rows(kmap, c_out: int, itemsize: int) -> int:
    """Output rows per block: about ``_BUFFER_BYTES`` of products."""
    pairs_per_row = kmap.n_pairs / max(kmap.n_out, 1)
    rows = _BUFFER_BYTES / max(pairs_per_row * c_out * itemsize, 1)
    return int(min(_MAX_BLOCK_ROWS, max(_MIN_BLOCK_ROWS, rows)))


def _build(kmap, c_in: int, c_out: int, dtype) -> Plan:
    model = costs(c_in, c_out, kmap.kernel_volume, dtype)
    block_rows = _block_rows(kmap, c_out, np.dtype(dtype).itemsize)
    bounds = np.minimum(np.arange(0, kmap.n_out + block_rows, block_rows, dtype=np.int64),
                        kmap.n_out)
    bounds = bounds[:np.searchsorted(bounds, kmap.n_out) + 1]
    n_blocks = bounds.shape[0] - 1
    kernel_volume = kmap.kernel_volume
    in_rows, out_rows, pair_offsets = kmap.in_rows, kmap.out_rows, kmap.pair_offsets

    # per (offset, block): pair range, first / last input row, window or gather; one
    # search per offset, the rest on (offset, block) arrays (a plan per map and shape is
    # made on every fresh coordinate set: its Python overhead counts on small layers)
    cuts = np.empty((kernel_volume, n_blocks + 1), dtype=np.int64)
    for k in range(kernel_volume):
        begin, end = int(pair_offsets[k]), int(pair_offsets[k + 1])
        cuts[k] = begin + np.searchsorted(out_rows[begin:end], bounds)
    starts, stops = cuts[:, :-1], cuts[:, 1:]
    count = stops - starts
    present = count > 0
    if kmap.n_pairs:
        last_pair = kmap.n_pairs - 1
        first_in = np.where(present, in_rows[np.minimum(starts, last_pair)], 0)
        last_in = np.where(present, in_rows[np.maximum(stops - 1, 0)], 0)
    else:
        first_in = last_in = np.zeros(count.shape, dtype=np.int64)
    span = last_in.astype(np.int64) - first_in + 1
    gather_cost = count * (model.take_row + model.gemm_row)
    window_cost = span * model.gemm_row
    window = present & in_monotone(kmap)[:, None] & (window_cost <= gather_cost)
    item_start = np.where(window, first_in, starts)
    lengths = np.where(window, span, count)
    predicted = float(np.where(window, window_cost, gather_cost)[present].sum()
                      + model.gemm_call * np.count_nonzero(present))
    predicted += model.reduce_entry * kmap.n_pairs

    # product rows of (offset, block): stacked in offset order within each block
    bases = np.zeros_like(lengths)
    np.cumsum(lengths[:-1], axis=0, out=bases[1:])
    n_products = lengths.sum(axis=0).tolist()

    blocks = []
    present = (stops > starts).T.tolist()
    begins, ends = starts.T.tolist(), stops.T.tolist()
    windows, item_starts = window.T.tolist(), item_start.T.tolist()
    item_lengths, item_bases = lengths.T.tolist(), bases.T.tolist()
    bounds_list = bounds.tolist()
    offsets = range(kernel_volume)
    for b in range(n_blocks):
        items = [(k, w, s, n, base, begin, end) for k, p, w, s, n, base, begin, end in zip(
            offsets, present[b], windows[b], item_starts[b], item_lengths[b], item_bases[b],
            begins[b], ends[b]) if p]
        blocks.append(Block(bounds_list[b], bounds_list[b + 1], items, n_products[b]))
    dense_predicted = model.dense_row * kmap.n_out
    return Plan(blocks, predicted, dense_predicted)


def in_monotone(kmap) -> np.ndarray:
    """(K,) bool: are offset k's input rows strictly increasing (memoised per map)?"""
    def make():
        in_rows, pair_offsets = kmap.in_rows, kmap.pair_offsets
        # the pairs whose input row does not exceed the one before; offset k is monotone
        # when none of them lies in k after its first pair (usually there are none)
        flags = np.ones(kmap.kernel_volume, dtype=bool)
        if in_rows.shape[0] > 1:
            falls = np.flatnonzero(in_rows[1:] <= in_rows[:-1]) + 1
            if falls.shape[0]:
                offset = np.searchsorted(pair_offsets, falls, side="right") - 1
                flags[offset[falls != pair_offsets[offset]]] = False
        return flags

    return state_of(kmap).memo("in_monotone", make)


def plan_for(kmap, c_in: int, c_out: int, dtype) -> Plan:
    """The :class:`Plan` of a product over ``kmap`` (memoized per map and shape).

    Parameters
    ----------
    kmap : KernelMap
        Pairs sorted by output row within each offset.
    c_in, c_out : int
        Channels gathered and produced.
    dtype : numpy dtype
        The accumulation dtype.
    """
    key = ("plan", int(c_in), int(c_out), np.dtype(dtype).str)
    return state_of(kmap).memo(key, lambda: _build(kmap, c_in, c_out, dtype))


def choose_dense(kmap, c_in: int, c_out: int, dtype, margin: float = DENSE_MARGIN) -> bool:
    """Is the dense product predicted faster than the blocked one, by ``margin``
    (dense time < margin * blocked time)?"""
    if kmap.n_out == 0 or kmap.n_pairs == 0:
        return False
    plan = plan_for(kmap, c_in, c_out, dtype)
    return plan.dense_predicted_s < margin * plan.predicted_s
