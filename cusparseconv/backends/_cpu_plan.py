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

2. one sparse reduction ``out[block] = R @ products``: row r of ``R`` holds a
   one at the product of each pair of output row r, in offset order, so
   every output row sums its terms in the order of the offsets (the blocked
   algorithm before this one did the same with a scatter-add per offset).

Which of the two, per block and offset, comes from the cost model
(:mod:`cusparseconv.backends._cpu_cost`): the window when multiplying its
extra rows costs less than gathering the paired ones. A plan depends only on
the map, the shape and the measured costs, never on the thread count, so the
result is the same at any thread count.

Plans are memoized per map in a weak-keyed table (a map's plan goes when the
map goes): :func:`plan_for`.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from ._cpu_cost import DENSE_MARGIN, costs

__all__ = ["Plan", "Block", "plan_for", "choose_dense"]

#: Bytes of one block's product buffer the block size aims at (fits in L2 with its sources).
_BUFFER_BYTES = 2 << 20
_MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS = 256, 16384

_plans = weakref.WeakKeyDictionary()   # kmap -> {key: Plan}
_lock = threading.Lock()


class Block:
    """One block of output rows ``[first, last)`` and its products.

    Attributes
    ----------
    first, last : int
        Output rows of the block.
    items : list of (k, window, start, length, base)
        One product per offset with pairs here: ``window`` True multiplies the
        input rows ``[start, start + length)``; False gathers the input rows of
        pairs ``[start, start + length)`` of the map. Either way the product
        lands in rows ``[base, base + length)`` of the buffer.
    n_products : int
        Rows of the product buffer.
    rows : ndarray of int32, shape (n_products,)
        The output row (minus ``first``) each product row is summed into;
        ``last - first`` (a sink row, dropped) for window rows without a pair.
    """

    __slots__ = ("first", "last", "items", "n_products", "rows", "_matrices")

    def __init__(self, first, last, items, n_products, rows):
        self.first, self.last = int(first), int(last)
        self.items = items
        self.n_products = int(n_products)
        self.rows = rows
        self._matrices = {}

    def reduction(self, dtype):
        """The sum as a ``scipy.sparse.csc_array`` ``(last - first + 1, n_products)`` of
        ones in ``dtype``, one entry per column (memoized)."""
        key = np.dtype(dtype).str
        matrix = self._matrices.get(key)
        if matrix is None:
            import scipy.sparse
            matrix = scipy.sparse.csc_array(
                (np.ones(self.n_products, dtype=dtype), self.rows,
                 np.arange(self.n_products + 1, dtype=np.int32)),
                shape=(self.last - self.first + 1, max(self.n_products, 1)))
            matrix = self._matrices.setdefault(key, matrix)
        return matrix


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

    __slots__ = ("blocks", "predicted_s", "dense_predicted_s")

    def __init__(self, blocks, predicted_s, dense_predicted_s):
        self.blocks = blocks
        self.predicted_s = predicted_s
        self.dense_predicted_s = dense_predicted_s


def _block_shift(kmap, c_out: int, itemsize: int) -> int:
    """log2 of the output rows per block: a power of two near ``_BUFFER_BYTES`` of products."""
    pairs_per_row = kmap.n_pairs / max(kmap.n_out, 1)
    rows = _BUFFER_BYTES / max(pairs_per_row * c_out * itemsize, 1)
    rows = min(_MAX_BLOCK_ROWS, max(_MIN_BLOCK_ROWS, rows))
    return int(np.floor(np.log2(rows)))


def _build(kmap, c_in: int, c_out: int, dtype) -> Plan:
    itemsize = np.dtype(dtype).itemsize
    model = costs(c_in, c_out, kmap.kernel_volume, dtype)
    shift = _block_shift(kmap, c_out, itemsize)
    block_size = 1 << shift
    bounds = np.minimum(np.arange(0, kmap.n_out + block_size, block_size, dtype=np.int64),
                        kmap.n_out)
    bounds = bounds[:np.searchsorted(bounds, kmap.n_out) + 1]
    n_blocks = bounds.shape[0] - 1
    kernel_volume = kmap.kernel_volume
    in_rows, out_rows, pair_offsets = kmap.in_rows, kmap.out_rows, kmap.pair_offsets
    # positions into the concatenated product buffers fit int32 unless the map is huge
    index = np.int32 if kmap.n_pairs < 2 ** 30 and kmap.n_in < 2 ** 30 else np.int64

    # per (offset, block): pair range, first / last input row, window or gather
    starts = np.empty((kernel_volume, n_blocks), dtype=np.int64)
    stops = np.empty((kernel_volume, n_blocks), dtype=np.int64)
    lengths = np.zeros((kernel_volume, n_blocks), dtype=np.int64)
    window = np.zeros((kernel_volume, n_blocks), dtype=bool)
    in_first = np.zeros((kernel_volume, n_blocks), dtype=np.int64)
    predicted = 0.0
    for k in range(kernel_volume):
        begin, end = int(pair_offsets[k]), int(pair_offsets[k + 1])
        cuts = begin + np.searchsorted(out_rows[begin:end], bounds)
        starts[k], stops[k] = cuts[:-1], cuts[1:]
        count = stops[k] - starts[k]
        present = count > 0
        if not present.any():
            continue
        rows_k = in_rows[begin:end]
        monotone = rows_k.shape[0] < 2 or bool(np.all(rows_k[1:] > rows_k[:-1]))
        first_in = np.where(present, in_rows[np.minimum(starts[k], max(end - 1, 0))], 0)
        last_in = np.where(present, in_rows[np.maximum(stops[k] - 1, 0)], 0)
        span = last_in.astype(np.int64) - first_in + 1
        gather_cost = count * (model.take_row + model.gemm_row)
        window_cost = span * model.gemm_row
        use_window = present & monotone & (window_cost <= gather_cost)
        window[k] = use_window
        in_first[k] = first_in
        lengths[k] = np.where(use_window, span, count)
        predicted += float(np.where(use_window, window_cost, gather_cost)[present].sum()
                           + model.gemm_call * present.sum())
    predicted += model.reduce_entry * kmap.n_pairs

    # product rows of (offset, block): stacked in offset order within each block
    bases = np.zeros_like(lengths)
    np.cumsum(lengths[:-1], axis=0, out=bases[1:])
    n_products = lengths.sum(axis=0)

    # the reduction as a CSC matrix with one entry per product row: the output row (in the
    # block) the product belongs to, or the block's sink row (one past its last) for the
    # window rows without a pair; every output row then sums its products in buffer
    # order, the offset order.
    block_base = np.zeros(n_blocks + 1, dtype=np.int64)
    np.cumsum(n_products, out=block_base[1:])
    rows_of_products = np.repeat(np.diff(bounds).astype(np.int32), n_products)
    mask = np.int32(block_size - 1)
    for k in range(kernel_volume):
        begin, end = int(pair_offsets[k]), int(pair_offsets[k + 1])
        if begin == end:
            continue
        out_k = out_rows[begin:end]
        block_of_pair = out_k >> shift
        item_base = block_base[:-1] + bases[k]
        if window[k].all():
            dest = in_rows[begin:end] + (item_base - in_first[k]).astype(index)[block_of_pair]
        elif not window[k].any():
            dest = np.arange(begin, end, dtype=index) + \
                (item_base - starts[k]).astype(index)[block_of_pair]
        else:
            is_window = window[k][block_of_pair]
            dest = np.where(is_window, in_rows[begin:end], np.arange(begin, end, dtype=index)) \
                + np.where(window[k], item_base - in_first[k],
                           item_base - starts[k]).astype(index)[block_of_pair]
        rows_of_products[dest] = out_k & mask

    blocks = []
    present = (stops > starts).T.tolist()
    item_start = np.where(window, in_first, starts).T.tolist()
    windows, item_lengths, item_bases = window.T.tolist(), lengths.T.tolist(), bases.T.tolist()
    bounds_list, block_base_list = bounds.tolist(), block_base.tolist()
    offsets = range(kernel_volume)
    for b in range(n_blocks):
        items = [(k, w, s, n, base) for k, p, w, s, n, base in zip(
            offsets, present[b], windows[b], item_start[b], item_lengths[b], item_bases[b]) if p]
        blocks.append(Block(bounds_list[b], bounds_list[b + 1], items, block_base_list[b + 1]
                            - block_base_list[b],
                            rows_of_products[block_base_list[b]:block_base_list[b + 1]]))
    dense_predicted = model.dense_row * kmap.n_out
    return Plan(blocks, predicted, dense_predicted)


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
    key = (int(c_in), int(c_out), np.dtype(dtype).str)
    with _lock:
        per_map = _plans.get(kmap)
        if per_map is None:
            per_map = _plans[kmap] = {}
        found = per_map.get(key)
    if found is None:
        built = _build(kmap, c_in, c_out, dtype)
        with _lock:
            found = per_map.setdefault(key, built)
    return found


def choose_dense(kmap, c_in: int, c_out: int, dtype) -> bool:
    """Is the dense product predicted clearly faster than the blocked one?"""
    if kmap.n_out == 0 or kmap.n_pairs == 0:
        return False
    plan = plan_for(kmap, c_in, c_out, dtype)
    return plan.dense_predicted_s < DENSE_MARGIN * plan.predicted_s
