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

__all__ = ["Plan", "Block", "plan_for", "choose_dense", "add_products"]

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
    column_starts : ndarray of int, shape (n_products + 1,)
        The sum in compressed-column form over the plan's :attr:`Plan.rows`:
        product row j is added to output row ``first + rows[i]`` for ``i`` in
        ``[column_starts[j], column_starts[j + 1])`` (one entry for a pair, none
        for a window row without a pair).
    """

    __slots__ = ("first", "last", "items", "n_products", "column_starts")

    def __init__(self, first, last, items, n_products, column_starts):
        self.first, self.last = int(first), int(last)
        self.items = items
        self.n_products = int(n_products)
        self.column_starts = column_starts


class Plan:
    """The blocks of one product over one map, and what the cost model predicted.

    Attributes
    ----------
    blocks : list of Block
    rows : ndarray of int32, shape (n_pairs,)
        Row entries of every block's sum: the output row of each pair, minus
        its block's first row, in the order of the blocks' product rows.
    predicted_s : float
        Predicted single-thread seconds of the blocked product.
    dense_predicted_s : float
        Predicted single-thread seconds of the dense product.
    """

    __slots__ = ("blocks", "rows", "predicted_s", "dense_predicted_s", "_ones")

    def __init__(self, blocks, rows, predicted_s, dense_predicted_s):
        self.blocks = blocks
        self.rows = rows
        self.predicted_s = predicted_s
        self.dense_predicted_s = dense_predicted_s
        self._ones = {}

    def ones(self, dtype) -> np.ndarray:
        """The entries' values (all one) in ``dtype``, shape (n_pairs,) (memoized)."""
        key = np.dtype(dtype).str
        found = self._ones.get(key)
        if found is None:
            found = self._ones.setdefault(key, np.ones(self.rows.shape[0], dtype=dtype))
        return found


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

    # the sum in compressed-column form: column j of a block's sum is its product row j,
    # with one entry (the output row in the block) for a pair and none for a window row
    # without a pair; every output row then sums its products in buffer order, the
    # offset order.
    block_base = np.zeros(n_blocks + 1, dtype=np.int64)
    np.cumsum(n_products, out=block_base[1:])
    total = int(block_base[-1])
    # entries per product row: one for a gathered row; for a window, one at each paired row
    if window.any():
        dest = np.empty(kmap.n_pairs, dtype=index)
        for k in range(kernel_volume):
            begin, end = int(pair_offsets[k]), int(pair_offsets[k + 1])
            if begin == end:
                continue
            block_of_pair = out_rows[begin:end] >> shift
            item_base = block_base[:-1] + bases[k]
            shift_k = np.where(window[k], item_base - in_first[k], item_base - starts[k])
            source = in_rows[begin:end] if window[k].all() else np.where(
                window[k][block_of_pair], in_rows[begin:end], np.arange(begin, end, dtype=index))
            np.add(source, shift_k.astype(index)[block_of_pair], out=dest[begin:end])
        column_starts = np.zeros(total + 1, dtype=index)
        np.cumsum(np.bincount(dest, minlength=total), out=column_starts[1:])
    else:
        column_starts = np.arange(total + 1, dtype=index)
    # the entries (output row within the block) in product order: block, then offset
    segment_start = starts.T.ravel()
    segment_length = (stops - starts).T.ravel()
    order = np.repeat((segment_start - (np.cumsum(segment_length) - segment_length))
                      .astype(index), segment_length)
    order += np.arange(kmap.n_pairs, dtype=index)
    rows = np.take((out_rows & (block_size - 1)).astype(np.int32), order)

    blocks = []
    present = (stops > starts).T.tolist()
    item_start = np.where(window, in_first, starts).T.tolist()
    windows, item_lengths, item_bases = window.T.tolist(), lengths.T.tolist(), bases.T.tolist()
    bounds_list, block_base_list = bounds.tolist(), block_base.tolist()
    offsets = range(kernel_volume)
    for b in range(n_blocks):
        items = [(k, w, s, n, base) for k, p, w, s, n, base in zip(
            offsets, present[b], windows[b], item_start[b], item_lengths[b], item_bases[b]) if p]
        blocks.append(Block(bounds_list[b], bounds_list[b + 1], items,
                            block_base_list[b + 1] - block_base_list[b],
                            column_starts[block_base_list[b]:block_base_list[b + 1] + 1]))
    dense_predicted = model.dense_row * kmap.n_out
    return Plan(blocks, rows, predicted, dense_predicted)


try:  # SciPy's compiled sparse x dense product, accumulating into a given output
    from scipy.sparse._sparsetools import csc_matvecs as _csc_matvecs
except ImportError:  # pragma: no cover - a SciPy without it: the public API below
    _csc_matvecs = None


def add_products(plan: Plan, block: Block, products: np.ndarray, out: np.ndarray,
                 compiled: bool = True) -> None:
    """``out += S @ products``: add each product row to its output row, in order.

    Parameters
    ----------
    plan, block : the plan and the block the products belong to.
    products : ndarray, shape (block.n_products, C), C-contiguous
    out : ndarray, shape (block.last - block.first, C), C-contiguous, float32 or
        float64 like ``products``; usually zeros.
    compiled : bool
        Use SciPy's compiled column loop directly (no temporary); False goes
        through ``scipy.sparse.csc_array`` (the same sums in the same order).
    """
    starts = block.column_starts
    ones = plan.ones(products.dtype)
    if compiled and _csc_matvecs is not None:
        _csc_matvecs(out.shape[0], block.n_products, out.shape[1], starts, plan.rows, ones,
                     products.reshape(-1), out.reshape(-1))
        return
    import scipy.sparse
    first, last = int(starts[0]), int(starts[-1])
    matrix = scipy.sparse.csc_array(
        (ones[first:last], plan.rows[first:last], starts - first),
        shape=(out.shape[0], max(block.n_products, 1)))
    out += matrix @ products


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
