"""Execution plans of the CPU products: which rows each block multiplies, and how.

A forward (or input-gradient) product ``out[u] = sum_k src[in_k(u)] @ W[k]``
runs per block of consecutive output rows, each block on one worker thread:

1. for every offset k with pairs in the block, one product
   ``src[rows] @ W[k]`` written into the block's product buffer, where
   ``rows`` is either

   * the *gathered* input rows of the block's pairs, or
   * the *window* of consecutive input rows from the first to the last of
     them (a plain slice: no gather, but the rows in between that have no
     pair are multiplied too);

   the gathered rows of all the block's offsets are taken at once, one
   ``src.take`` per group of about ``_BUFFER_BYTES`` (:meth:`Plan.gathers`):
   every NumPy call releases and retakes the GIL, and on worker threads a
   retake that finds the GIL held puts the thread to sleep, so fewer calls
   per block keep the workers busy (2 threads, C = 32, paired: forward 0.81
   to 0.87 of the time with one ``take`` per offset; the same at one thread);

2. one sparse sum ``out[block] += S @ products`` (:func:`add_products`): column
   j of ``S`` has a one at the output row of product row j (none for a window
   row without a pair), so every output row sums its terms in the order of
   the offsets, as the blocked algorithm before this one did with a
   scatter-add per offset; for a map that pairs every output row exactly once
   (transposed 2x2x2 stride 2), one copy of the products in the order of the
   output rows instead (:meth:`Plan.assignment`).

Which of the two, per block and offset, comes from the cost model
(:mod:`cusparseconv.backends._cpu_cost`): the window when multiplying its
extra rows costs less than gathering the paired ones. The dense product
(every slot of a block's neighbour table, one GEMM) is chosen instead when
predicted clearly faster (:func:`choose_dense`). A plan depends only on the
map, the shape and the measured costs, never on the thread count, so the
result is the same at any thread count.

Making a plan is cheap (per offset, one search of the block bounds and one
pass over its input rows). The per-pair layouts are made on first use, for
all blocks at once with whole-array operations (a fresh coordinate set, as in
every training step, pays them once per map and shape), and kept: the sums of
the blocked product (:meth:`Plan.make_sums`, per plan) and the neighbour table
of the dense product (:func:`neighbours`, per map, whatever the channels). Plans are
memoized in the CPU backend's per-map state (:mod:`._cpu_state`; a map's plans
go when the map goes): :func:`plan_for`.
"""

from __future__ import annotations

import numpy as np

from ._cpu_cost import DENSE_MARGIN, costs, dense_chunk_rows
from ._cpu_state import MAPS, state_of

__all__ = ["Plan", "Block", "plan_for", "neighbours", "choose_dense", "add_products", "note_mirror",
           "mirror_of", "dense_chunk_rows", "in_monotone"]

#: Bytes of one block's product buffer the block size aims at (fits in L2 with its sources),
#: within [_MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS] rows (at C = 256, 1,024-row blocks run 12-20 %
#: faster than 256-row ones: longer GEMMs).
_BUFFER_BYTES = 2 << 20
_MIN_BLOCK_ROWS, _MAX_BLOCK_ROWS = 1024, 16384
#: The sum layouts of a plan are made in parts of consecutive blocks on the worker threads
#: (:meth:`Plan.make_sums`): at most _SUM_PARTS parts, at least _SUM_PART_PAIRS pairs each.
_SUM_PARTS, _SUM_PART_PAIRS = 4, 200_000


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
    index : int
        Position of the block in its plan.
    """

    __slots__ = ("first", "last", "items", "n_products", "index")

    def __init__(self, first, last, items, n_products, index=0):
        self.first, self.last = int(first), int(last)
        self.items = items
        self.n_products = int(n_products)
        self.index = int(index)


def _ranges(firsts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ranges ``[firsts[i], firsts[i] + lengths[i])`` one after the other (int64)."""
    lengths = lengths.astype(np.int64, copy=False)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if ends.shape[0] else 0
    ranges = np.repeat(firsts.astype(np.int64, copy=False) - (ends - lengths), lengths)
    ranges += np.arange(total, dtype=np.int64)
    return ranges


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

    __slots__ = ("blocks", "predicted_s", "dense_predicted_s", "_ones", "_items", "_sums",
                 "_gathers", "_assignments")

    def __init__(self, blocks, predicted_s, dense_predicted_s, items=None):
        self.blocks = blocks
        self.predicted_s = predicted_s
        self.dense_predicted_s = dense_predicted_s
        self._ones = {}
        # (begins, counts, windows, starts, lengths, bases), each (n_blocks, K): the
        # items of every (block, offset), absent ones with no pair and no product row
        self._items = items
        self._sums = None
        self._gathers = [None] * len(blocks)
        self._assignments = [None] * len(blocks)

    def state_nbytes(self) -> int:
        """Bytes of the arrays this plan has made so far (the per-(block, offset) items,
        the blocks' sum layouts and gather indices, the ones); counted in the backend's
        cache size."""
        total = sum(int(a.nbytes) for a in self._ones.values())
        if self._items is not None:
            total += sum(int(a.nbytes) for a in self._items)
        if self._sums is not None:
            total += sum(int(part[1].nbytes + part[2].nbytes) for part in self._sums)
        total += sum(int(g[0].nbytes) for g in self._gathers if g is not None)
        total += sum(int(a.nbytes) for a in self._assignments if a is not None)
        return total

    def gathers(self, kmap, block: Block, row_bytes: int):
        """The input rows ``block`` gathers, all its gathered items one after the other,
        and how they are taken: made on first use for the block, then kept.

        Parameters
        ----------
        kmap : KernelMap the plan was made for.
        block : Block
        row_bytes : int
            Bytes of one gathered row (``C_src * itemsize``): a group is cut once it
            holds about ``_BUFFER_BYTES`` (C = 32: one group per block).

        Returns
        -------
        index : ndarray of intp, shape (rows gathered by the block,)
            Item after item, in the order of ``block.items`` (windows skipped).
        groups : list of (first, last, item_positions)
            One ``take`` of ``index[first:last]`` per group; its items are
            ``block.items[p]`` for p in ``item_positions``, rows consecutive.
        """
        key = int(row_bytes)
        found = self._gathers[block.index]
        if found is not None and found[2] == key:
            return found[0], found[1]
        in_rows = kmap.in_rows
        positions = [p for p, item in enumerate(block.items) if not item[1]]
        parts = [in_rows[block.items[p][2]:block.items[p][2] + block.items[p][3]]
                 for p in positions]
        index = (np.concatenate(parts, dtype=np.intp) if parts
                 else np.empty(0, dtype=np.intp))
        limit = max(_BUFFER_BYTES // max(key, 1), 1)
        groups, first, rows, members = [], 0, 0, []
        for p in positions:
            members.append(p)
            rows += block.items[p][3]
            if rows >= limit:
                groups.append((first, first + rows, members))
                first, rows, members = first + rows, 0, []
        if members:
            groups.append((first, first + rows, members))
        # two threads at once make equal lists: either is kept
        self._gathers[block.index] = (index, groups, key)
        return index, groups

    def assignment(self, kmap, block: Block) -> np.ndarray:
        """Where each output row of ``block`` finds its product, for a map that pairs
        every output row exactly once (a transposed 2x2x2 stride-2 map; the input
        gradient of a 2x2x2 stride-2 one): made on first use for the block, then kept.

        Returns
        -------
        rows : ndarray of intp, shape (block.last - block.first,)
            Output row ``block.first + i`` is product row ``rows[i]``: the block's
            output is ``products[rows]``, a copy instead of a sum into zeros.
        """
        found = self._assignments[block.index]
        if found is None:
            found = np.empty(block.last - block.first, dtype=np.intp)
            in_rows, out_rows = kmap.in_rows, kmap.out_rows
            for _, window, start, length, base, begin, end in block.items:
                targets = out_rows[begin:end] - block.first
                if window:   # the pair's input row within the window
                    found[targets] = in_rows[begin:end] - (start - base)
                else:
                    found[targets] = np.arange(base, base + end - begin)
            self._assignments[block.index] = found   # two threads at once: equal arrays
        return found

    def ones(self, size: int, dtype) -> np.ndarray:
        """At least ``size`` ones in ``dtype`` (the entries' values; memoized)."""
        key = np.dtype(dtype).str
        found = self._ones.get(key)
        if found is None or found.shape[0] < size:
            longest = max(max((b.n_products for b in self.blocks), default=0), size)
            found = self._ones[key] = np.ones(longest, dtype=dtype)
        return found

    def sum_layout(self, kmap, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """The sum of ``block`` in compressed-column form (the layouts of all blocks
        are made together on first use, then kept: :meth:`make_sums`).

        Returns
        -------
        column_starts : ndarray of int32, shape (block.n_products + 1,)
            Product row j is added to output row ``block.first + rows[i]`` for
            ``i`` in ``[column_starts[j], column_starts[j + 1])``: one entry for
            a pair, none for a window row without a pair.
        rows : ndarray of int32, shape (pairs in the block,)
        """
        parts = self.make_sums(kmap)
        per_part = parts[1][0] if len(parts) > 1 else len(self.blocks)   # parts start evenly
        first_block, column_starts, rows, column_cuts, row_cuts = parts[block.index // per_part]
        b = block.index - first_block
        return (column_starts[column_cuts[b]:column_cuts[b + 1]],
                rows[row_cuts[b]:row_cuts[b + 1]])

    def _sum_part_blocks(self) -> int:
        """Blocks per part of the sum layouts (:meth:`make_sums`)."""
        return -(-len(self.blocks) // _sum_parts(self._items[1]))

    def make_sums(self, kmap):
        """The sum layouts of all blocks, made on first use with whole-array operations
        per part of consecutive blocks, the parts on the worker threads (NumPy releases
        the GIL: table-5mm, 1.8M pairs, 14 ms in one part, about half that in two at
        two threads), then kept.

        Returns
        -------
        parts : list of (first_block, column_starts, rows, column_cuts, row_cuts)
            One per part of ``_sum_part_blocks()`` blocks from ``first_block``:
            ``column_starts`` (int32) holds the part's blocks' column starts one
            block after the other, block b's (from 0) at ``[column_cuts[b],
            column_cuts[b + 1])``; ``rows`` (int32) their entries (output rows less
            the block's first row) in the order of the product rows, block b's at
            ``[row_cuts[b], row_cuts[b + 1])``; b counted from ``first_block``.
            The layout of a block does not depend on how the blocks are parted.
        """
        sums = self._sums
        if sums is None:   # two threads at once would make equal layouts: either is kept
            from .._threads import parallel_for
            per_part = self._sum_part_blocks()
            firsts = list(range(0, len(self.blocks), per_part))
            parts = [None] * len(firsts)

            def make(part: int) -> None:
                first = firsts[part]
                last = min(first + per_part, len(self.blocks))
                parts[part] = (first, *_sum_layouts(kmap, self.blocks[first:last],
                                                    *(a[first:last] for a in self._items)))

            parallel_for(make, range(len(firsts)))
            sums = self._sums = parts
        return sums


def _sum_parts(counts: np.ndarray) -> int:
    """Parts the sum layouts are made in: one per ``_SUM_PART_PAIRS`` pairs, at most
    ``_SUM_PARTS`` and one per block (a fixed number, whatever the thread count: the
    layouts are the same either way, only their making is spread)."""
    pairs = int(counts.sum())
    return int(max(1, min(_SUM_PARTS, counts.shape[0], pairs // _SUM_PART_PAIRS)))


def _sum_layouts(kmap, blocks, begins, counts, windows, starts, lengths, bases):
    """The sum layouts of consecutive ``blocks`` (:meth:`Plan.make_sums`); the
    (len(blocks), K) arrays describe their (block, offset) items, in the order the
    products are stacked."""
    n_blocks = len(blocks)
    firsts = np.fromiter((b.first for b in blocks), dtype=np.int64, count=n_blocks)
    n_products = np.fromiter((b.n_products for b in blocks), dtype=np.int64, count=n_blocks)
    pairs_per_block = counts.sum(axis=1)
    row_cuts = np.zeros(n_blocks + 1, dtype=np.int64)
    np.cumsum(pairs_per_block, out=row_cuts[1:])
    column_cuts = np.zeros(n_blocks + 1, dtype=np.int64)
    np.cumsum(n_products + 1, out=column_cuts[1:])

    # entries: each block's pairs, offset after offset (its product rows' order), as
    # output rows relative to the block's first row: one concatenation of the items'
    # slices of the pair table, one subtraction
    out_rows = kmap.out_rows
    flat_begins, flat_counts = begins.ravel().tolist(), counts.ravel().tolist()
    rows = np.concatenate([out_rows[begin:begin + count]
                           for begin, count in zip(flat_begins, flat_counts) if count]
                          or [out_rows[:0]]).astype(np.int32, copy=False)
    row_bounds = row_cuts.tolist()
    for b, first in enumerate(firsts.tolist()):   # in place: no (n_pairs,) temporary
        rows[row_bounds[b]:row_bounds[b + 1]] -= first

    # column starts: column_starts[t] of a block counts its entries in product rows < t,
    # i.e. t less the window rows without a pair before t. No running sum over all rows
    # (np.cumsum: ~2.7 ns a row) and no search (~27 ns a row): the shift is constant
    # between the ends of the windows with such rows ("holes"), and inside those windows
    # it steps at their paired rows.
    n_columns = int(column_cuts[-1])
    block_cuts = column_cuts[:-1]
    holes = windows & (lengths != counts)
    event_at, event_shift = block_cuts, block_cuts   # a block's column starts begin at 0
    if holes.any():
        hole_blocks, hole_offsets = np.nonzero(holes)   # in the order of the product rows
        origin = column_cuts[hole_blocks] + bases[hole_blocks, hole_offsets]
        span = lengths[hole_blocks, hole_offsets]
        paired = counts[hole_blocks, hole_offsets]
        missing = np.cumsum(span - paired)
        first_of_block = np.searchsorted(hole_blocks, hole_blocks)
        missing -= (missing - (span - paired))[first_of_block]   # within the block so far
        event_at = np.concatenate([block_cuts, origin + span])
        event_shift = np.concatenate([block_cuts, column_cuts[hole_blocks] + missing])
        order = np.argsort(event_at, kind="stable")    # distinct positions
        event_at, event_shift = event_at[order], event_shift[order]
    column_starts = np.arange(n_columns, dtype=np.int32)
    event_bounds = event_at.tolist() + [n_columns]
    for e, value in enumerate(event_shift.tolist()):   # in place, one slice per segment
        column_starts[event_bounds[e]:event_bounds[e + 1]] -= value
    if holes.any():
        # inside a hole window (its first and last rows are paired: the window spans
        # from the first to the last paired input row), the column start after the
        # window's i-th paired row, up to and including its next paired row, is
        # (start at the window's first row) + i + 1: one repeat, no search
        paired_at = kmap.in_rows[_ranges(begins[hole_blocks, hole_offsets], paired)]
        paired_at = paired_at.astype(np.int64)
        paired_at += np.repeat(origin - starts[hole_blocks, hole_offsets], paired)
        pair_firsts = np.cumsum(paired) - paired
        values = np.repeat(column_starts[origin] - pair_firsts + 1, paired)
        values += np.arange(values.shape[0], dtype=values.dtype)
        gaps = np.empty_like(paired_at)
        np.subtract(paired_at[1:], paired_at[:-1], out=gaps[:-1])
        gaps[pair_firsts + paired - 1] = 0     # a window's last paired row ends it
        column_starts[_ranges(origin + 1, span - 1)] = np.repeat(values, gaps)
    return column_starts, rows, column_cuts.tolist(), row_cuts.tolist()


def neighbours(kmap) -> np.ndarray:
    """(|K|, n_out) int32, by offset: the input row paired with each (offset, output
    row), ``kmap.n_in`` if none (the zero row the dense product appends to its source);
    made on first use for the map (whatever the channels), then kept.

    Offset k's pairs, sorted by output row, fill row k, one offset per work item on
    the worker threads. The products read a block of output rows as the
    (rows, |K|) view ``table[:, first:last].T``; ``take`` turns it into its own
    index array anyway, so the table is never transposed as a whole (a copy of
    |K| n_out entries: about 30 ms on a 500k-row map).
    """
    from .._threads import parallel_for

    def make():
        kernel_volume = kmap.kernel_volume
        table = np.full((kernel_volume, kmap.n_out), kmap.n_in, dtype=np.int32)
        pair_offsets = kmap.pair_offsets.tolist()

        def fill(k: int) -> None:
            begin, end = pair_offsets[k], pair_offsets[k + 1]
            table[k][kmap.out_rows[begin:end]] = kmap.in_rows[begin:end]

        parallel_for(fill, range(kernel_volume))
        return table

    return state_of(kmap).memo("dense_neighbours", make)


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
    column_starts, rows = plan.sum_layout(kmap, block)
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
        blocks.append(Block(bounds_list[b], bounds_list[b + 1], items, n_products[b], b))
    dense_predicted = model.dense_row * kmap.n_out
    arrays = (starts.T, count.T, window.T, item_start.T, lengths.T, bases.T)
    return Plan(blocks, predicted, dense_predicted,
                tuple(np.ascontiguousarray(a) for a in arrays))


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
