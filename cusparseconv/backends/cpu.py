"""CPU backend: NumPy/SciPy implementations of the kernel-map search and the products.

Layout choices that make the CPU path fast without compiled code:

* Coordinates are packed into int64 keys and sorted once per coordinate set.
  The queries ``s * u + K[k]`` of one offset, taken in key order, are sorted
  too, so every offset is one vectorised ``searchsorted`` against the sorted
  keys; offsets that differ only along the last axis reuse the previous
  offset's positions and step a few places instead of searching again. For a
  submanifold map (same set in and out, symmetric kernel) only half of the
  offsets are searched: the pairs of ``-d`` are the swapped pairs of ``d``.
* Products run per block of output rows (:mod:`._cpu_plan`): for each offset,
  the block's pairs are a contiguous slice of the pair table; their input rows
  are gathered (or, when cheaper, the window of consecutive input rows they
  span is used as it is) and multiplied into the block's product buffer, and
  one sparse reduction sums each output row's products in offset order. The
  buffer stays in cache. Blocks write disjoint output rows, so they run on
  worker threads without changing any bit of the result. A cost model
  calibrated on the machine (:mod:`._cpu_cost`) makes the choices.

:class:`CpuBackend` is the :class:`cusparseconv.backends.protocol.Backend` over
the functions of this module. What they derive from a kernel map (the reverse
table, block cuts, the pair mask, product plans, the offset mirror of a
symmetric submanifold map) lives in ``_MAPS``, the CPU backend's weak-keyed
per-map state, never on the map.
"""

from __future__ import annotations

import logging

import numpy as np

from .._arrays import read_only
from .._dtypes import accumulate_dtype
from .._switch import short_switch_interval
from .._threads import parallel_for
from ._cpu_cost import DENSE_MARGIN
from ._cpu_plan import (add_products, choose_dense, dense_chunk_rows, in_monotone, mirror_of,
                        neighbours, note_mirror, plan_for)
from ..coords import SortedKeys, coordinate_range, offset_deltas, pack_parts, reach_bounds
from ..kmap import KernelMap
from ._array_ops import ArrayOps, reduce_runs
from ._cpu_state import MAPS, state_of
from ._state import MapState, link_reverse

__all__ = ["CpuBackend", "build_kernel_map", "reverse_map", "pair_mask", "chunk_cuts",
           "conv_forward", "conv_input_grad", "conv_weight_grad", "pool_forward",
           "pool_backward", "segment_reduce", "accumulate_dtype", "ALGORITHMS"]

_log = logging.getLogger(__name__)
_INT64_MAX = np.iinfo(np.int64).max
#: Largest last-axis gap between consecutive offsets bridged by stepping.
_MAX_STEP = 4


# --------------------------------------------------------------------------
# Kernel-map search
# --------------------------------------------------------------------------

def _symmetric_half(offsets: np.ndarray):
    """Split a symmetric kernel into (searched, mirrored-from, zero) index lists.

    Returns None when the kernel is not symmetric.
    """
    index = {tuple(row): k for k, row in enumerate(offsets.tolist())}
    searched, mirrored, zero = [], {}, None
    for k, row in enumerate(offsets.tolist()):
        negated = tuple(-v for v in row)
        if negated not in index:
            return None
        if not any(row):
            zero = k
            continue
        first_nonzero = next(v for v in row if v)
        if first_nonzero > 0:
            searched.append(k)
        else:
            mirrored[k] = index[negated]
    return searched, mirrored, zero


def _search_fast(fine_keys: np.ndarray, base_keys: np.ndarray, offsets: np.ndarray,
                 wanted: list[int], same_keys: bool = False) -> dict:
    """Positions of ``base_keys + delta_k`` in ``fine_keys`` for the wanted offsets.

    Both key arrays are sorted and every query field is known to be in range.
    With ``same_keys`` (base_keys is fine_keys), the offsets (0, ..., 0, dz) step
    from each row's own position instead of searching.

    Returns
    -------
    dict k -> (fine_rank, coarse_rank), int64 arrays of the hits.
    """
    n_fine = fine_keys.shape[0]
    padded = np.append(fine_keys, _INT64_MAX)
    deltas = offset_deltas(offsets)
    groups: dict[tuple, list[int]] = {}
    for k in wanted:
        groups.setdefault(tuple(offsets[k, :-1].tolist()), []).append(k)
    found = {}

    def search_group(members):
        members = sorted(members, key=lambda k: int(offsets[k, -1]))
        position = None
        previous_last = 0
        if same_keys and not offsets[members[0], :-1].any() and offsets[members[0], -1] >= 0:
            position = np.arange(base_keys.shape[0], dtype=np.intp)  # each row finds itself
        for k in members:
            query = base_keys + deltas[k]
            gap = int(offsets[k, -1]) - previous_last
            if position is None or gap > _MAX_STEP:
                position = np.searchsorted(fine_keys, query)
            else:
                # Between the previous query and this one lie at most `gap` keys
                # (they differ in the last field only), so step instead of searching.
                for _ in range(gap):
                    position += padded[position] < query
            previous_last = int(offsets[k, -1])
            hit = padded[position] == query
            if query.shape[0] and position[-1] == n_fine:  # positions are non-decreasing
                hit &= position < n_fine
            coarse_rank = np.flatnonzero(hit)
            found[k] = (position[coarse_rank], coarse_rank)  # distinct keys per group

    # Groups are independent: they run on the worker threads (NumPy releases the GIL).
    parallel_for(search_group, list(groups.values()))
    return found


def _search_checked(fine_keys: np.ndarray, batch: np.ndarray, base: np.ndarray,
                    offsets: np.ndarray, wanted: list[int]) -> dict:
    """Like :func:`_search_fast` for queries that may leave the packable range."""
    ndim = base.shape[1]
    low, high = coordinate_range(ndim)
    n_fine = fine_keys.shape[0]
    found = {}
    for k in wanted:
        spatial = base + offsets[k].astype(np.int64)
        valid = np.all((spatial >= low) & (spatial < high), axis=1)
        coarse_rank = np.flatnonzero(valid)
        query = pack_parts(batch[coarse_rank], spatial[coarse_rank])
        position = np.searchsorted(fine_keys, query)
        np.minimum(position, max(n_fine - 1, 0), out=position)
        hit = fine_keys[position] == query if n_fine else np.zeros(0, bool)
        found[k] = (position[hit], coarse_rank[hit])
    return found


def build_kernel_map(in_coords, out_coords, offsets, stride, transposed, *, same_set=False,
                     in_keys=None, out_keys=None) -> KernelMap:
    """CPU kernel-map build; see :func:`cusparseconv.build_kernel_map`."""
    ndim = in_coords.shape[1] - 1
    kernel_volume = offsets.shape[0]
    if in_keys is None:
        in_keys = SortedKeys(in_coords, "in_coords")
    if same_set:
        out_keys = in_keys
    elif out_keys is None:
        out_keys = SortedKeys(out_coords, "out_coords")
    # fine = s * coarse + K[k]: the input is fine for a forward map, coarse for a transposed one.
    if transposed:
        fine, coarse, coarse_coords = out_keys, in_keys, in_coords
    else:
        fine, coarse, coarse_coords = in_keys, out_keys, out_coords
    n_coarse = coarse.keys.shape[0]
    unit_stride = all(s == 1 for s in stride)

    symmetric = _symmetric_half(offsets) if (same_set and unit_stride) else None
    if symmetric is None:
        wanted, mirrored, zero = list(range(kernel_volume)), {}, None
    else:
        wanted, mirrored, zero = symmetric

    found = {}
    fine_coords = in_coords if not transposed else out_coords
    if (unit_stride and not same_set and 0 < fine.keys.shape[0] < n_coarse
            and _in_range_after(fine_coords, -offsets)):
        # Stride 1 between different sets (e.g. generative outputs): search from the
        # smaller set with the negated kernel, then swap the roles back.
        reverse = _search_fast(coarse.keys, fine.keys, -offsets, wanted)
        found = {k: (hits[1], hits[0]) for k, hits in reverse.items()}
        wanted = []
    if n_coarse and fine.keys.shape[0] and wanted:
        # the reach of the queries from the bounding box (min and max of the rows in any
        # order: no sorted copy for it; a unit stride searches from the keys themselves)
        low, high = coordinate_range(ndim)
        scale = np.asarray(stride, dtype=np.int64)
        reach_low, reach_high = reach_bounds(coarse_coords, scale, offsets)
        in_range = bool((reach_low >= low).all() and (reach_high < high).all())
        if in_range and unit_stride:
            found = _search_fast(fine.keys, coarse.keys, offsets, wanted,
                                 same_keys=fine is coarse)
        else:
            sorted_coords = coarse_coords if coarse.is_identity else coarse_coords[coarse.order]
            spatial = sorted_coords[:, 1:].astype(np.int64)
            if not unit_stride:
                spatial *= scale
            if in_range:
                found = _search_fast(fine.keys, pack_parts(sorted_coords[:, 0], spatial),
                                     offsets, wanted)
            else:
                found = _search_checked(fine.keys, sorted_coords[:, 0], spatial, offsets,
                                        wanted)

    empty = np.zeros(0, dtype=np.int64)
    fine_rows, coarse_rows = [], []
    for k in range(kernel_volume):
        if k == zero:
            rows = np.arange(n_coarse, dtype=np.int64)
            fine_rows.append(rows)
            coarse_rows.append(rows)
        elif k in mirrored:
            source = found.get(mirrored[k])
            if source is None:
                fine_rows.append(empty)
                coarse_rows.append(empty)
            else:  # pairs of -d are the swapped pairs of d
                fine_rows.append(_rows(coarse, source[1]))
                coarse_rows.append(_rows(fine, source[0]))
        elif k in found:
            fine_rank, coarse_rank = found[k]
            fine_rows.append(_rows(fine, fine_rank))
            coarse_rows.append(_rows(coarse, coarse_rank))
        else:
            fine_rows.append(empty)
            coarse_rows.append(empty)

    counts = np.fromiter((r.shape[0] for r in fine_rows), dtype=np.int64, count=kernel_volume)
    pair_offsets = np.zeros(kernel_volume + 1, dtype=np.int64)
    np.cumsum(counts, out=pair_offsets[1:])
    # int32 rows (half the memory of the int64 search results; row counts < 2**31 are
    # checked before a build, cusparseconv._limits.check_kernel_map_size), cast while
    # they are concatenated
    fine_all = np.concatenate(fine_rows, dtype=np.int32, casting="unsafe") if kernel_volume \
        else empty.astype(np.int32)
    coarse_all = np.concatenate(coarse_rows, dtype=np.int32, casting="unsafe") if kernel_volume \
        else empty.astype(np.int32)
    if transposed:
        in_rows, out_rows, out_sorted = coarse_all, fine_all, fine.is_identity
    else:
        in_rows, out_rows, out_sorted = fine_all, coarse_all, coarse.is_identity
    if not out_sorted:  # rows in key order give pairs already sorted by output row
        out_rows, in_rows = _sort_within_offsets(out_rows, in_rows, pair_offsets)
    kmap = KernelMap(in_rows, out_rows, pair_offsets,
                     in_coords.shape[0], out_coords.shape[0], offsets, stride, transposed)
    if symmetric is not None:
        # the pairs of -d are the swapped pairs of d: the reverse table is this map with
        # the offsets mirrored (conv_input_grad uses it instead of building the reverse)
        mirror = np.arange(kernel_volume)
        for k, source in symmetric[1].items():
            mirror[k], mirror[source] = source, k
        note_mirror(kmap, mirror)
    return kmap


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


def _in_range_after(coords: np.ndarray, offsets: np.ndarray) -> bool:
    """Do all ``coords + offsets`` stay inside the packable range (bounding-box test)?"""
    low, high = coordinate_range(coords.shape[1] - 1)
    reach_low, reach_high = reach_bounds(coords, 1, offsets)
    return bool((reach_low >= low).all() and (reach_high < high).all())


def _rows(keys: SortedKeys, rank: np.ndarray) -> np.ndarray:
    return rank if keys.is_identity else keys.order[rank]


# --------------------------------------------------------------------------
# Per-map state: what the CPU backend derives from a kernel map
# --------------------------------------------------------------------------

#: The CPU backend's state per kernel map (weakly keyed by the map): a MapState
#: whose ``derived`` holds ("chunk_cuts", rows) -> (bounds, cuts), "pair_mask" ->
#: (words, neighbour), "in_monotone" -> (K,) bool, "one_pair_per_output" -> bool,
#: and the link to the reverse table.
_MAPS = MAPS


def _state(kmap: KernelMap) -> MapState:
    return state_of(kmap)


def reverse_map(kmap: KernelMap) -> KernelMap:
    """The reverse table: input and output swapped, sorted by the new output.

    The input gradient of ``kmap`` is the forward product of the reverse table
    with transposed weights, so it runs without conflicts. Built once per map
    (and the reverse of the reverse is the map itself while it lives).
    """
    reverse = _state(kmap).reverse
    if reverse is None:
        # the new output rows are the old input rows
        out_rows, in_rows = _sort_within_offsets(kmap.in_rows, kmap.out_rows,
                                                 kmap.pair_offsets)
        reverse = KernelMap(in_rows, out_rows, kmap.pair_offsets, kmap.n_out, kmap.n_in,
                            kmap.offsets, kmap.stride, not kmap.transposed)
        link_reverse(_MAPS, kmap, reverse)
    return reverse


def chunk_cuts(kmap: KernelMap, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Split every offset's pairs by blocks of ``chunk_rows`` output rows (memoised).

    Returns
    -------
    bounds : ndarray of int64, shape (n_chunks + 1,)
        Output-row boundaries of the chunks.
    cuts : ndarray of int64, shape (K, n_chunks + 1)
        Pairs of offset k falling in chunk i are
        ``[cuts[k, i]:cuts[k, i + 1]]`` (absolute positions in the table).
    """
    def make():
        bounds = np.arange(0, kmap.n_out + chunk_rows, chunk_rows, dtype=np.int64)
        bounds[-1] = kmap.n_out
        bounds = np.unique(bounds)
        cuts = np.empty((kmap.kernel_volume, bounds.shape[0]), dtype=np.int64)
        for k in range(kmap.kernel_volume):
            start, stop = kmap.pair_offsets[k], kmap.pair_offsets[k + 1]
            cuts[k] = start + np.searchsorted(kmap.out_rows[start:stop], bounds)
        return bounds, cuts

    return _state(kmap).memo(("chunk_cuts", int(chunk_rows)), make)


def pair_mask(kmap: KernelMap) -> tuple[np.ndarray, np.ndarray]:
    """Output-major encoding (docs/SPEC.md section 4), memoised per map.

    Returns
    -------
    mask : ndarray of uint32, shape (n_out, ceil(K / 32))
        Bit ``k % 32`` of word ``k // 32`` is set when offset k is active.
    neighbour : ndarray of int32, shape (n_out, K)
        The input row paired with each (output row, offset), -1 if none.
    """
    def make():
        kernel_volume = kmap.kernel_volume
        neighbour = np.full((kmap.n_out, kernel_volume), -1, dtype=np.int32)
        words = np.zeros((kmap.n_out, (kernel_volume + 31) // 32), dtype=np.uint32)
        for k in range(kernel_volume):
            in_rows, out_rows = kmap.pairs(k)
            neighbour[out_rows, k] = in_rows
            words[out_rows, k // 32] |= np.uint32(1 << (k % 32))
        return read_only(words), read_only(neighbour)   # shared with every later call

    return _state(kmap).memo("pair_mask", make)


# --------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------

def _direct(out, dtype):
    """``out`` when the result can be computed in it directly (it has the
    accumulation dtype), else None."""
    return out if out is not None and out.dtype == dtype else None


def _deliver(result, out, dtype):
    """The result in ``dtype``: ``out`` itself when given (written here unless the
    result was computed in it), else ``result`` cast."""
    if out is None:
        return result.astype(dtype, copy=False)
    if result is not out:
        out[...] = result
    return out


def _block_rows(channels: int) -> int:
    """Output rows per block: about 1 MiB of float32 accumulator, within [1024, 16384]."""
    return int(min(16384, max(1024, 262144 // max(channels, 1))))


def _in_monotone(kmap: KernelMap) -> np.ndarray:
    """Per offset: are the input rows strictly increasing (memoised per map)?"""
    return in_monotone(kmap)


def _one_pair_per_output(kmap: KernelMap) -> bool:
    """Does every output row have exactly one pair over all offsets (memoised)?"""
    if kmap.n_pairs != kmap.n_out:
        return False
    return _state(kmap).memo("one_pair_per_output", lambda: bool(
        np.all(np.bincount(kmap.out_rows, minlength=kmap.n_out) == 1)))


def gather_apply_scatter(src: np.ndarray, kmap: KernelMap, apply, n_channels: int,
                         dtype: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """``out[out_rows] += apply(k, src[in_rows])`` over every offset k.

    Parameters
    ----------
    src : ndarray, shape (n_in, C_src)
        Source rows, already in the accumulation dtype.
    kmap : KernelMap
        Pairs sorted by output row within each offset.
    apply : callable (k, gathered (n, C_src)) -> (n, n_channels)
    n_channels : int
    dtype : numpy dtype of the result.
    out : ndarray, shape (n_out, n_channels), optional
        C-contiguous, of ``dtype``: the result is written there.

    Returns
    -------
    out : ndarray, shape (n_out, n_channels)
    """
    n_out = kmap.n_out
    if n_out == 0 or kmap.n_pairs == 0:
        if out is None:
            return np.zeros((n_out, n_channels), dtype=dtype)
        out[...] = 0
        return out
    if out is None:
        out = np.empty((n_out, n_channels), dtype=dtype)
    bounds, cuts = chunk_cuts(kmap, _block_rows(n_channels))
    in_monotone = _in_monotone(kmap)
    # Every output row paired exactly once (e.g. a transposed 2x2x2 stride-2 map):
    # products are assigned, not added, and need no zeroed accumulator.
    assign = _one_pair_per_output(kmap)
    in_rows_all, out_rows_all = kmap.in_rows, kmap.out_rows
    active = [k for k in range(kmap.kernel_volume)
              if kmap.pair_offsets[k + 1] > kmap.pair_offsets[k]]

    def run_block(block: int) -> None:
        first, last = bounds[block], bounds[block + 1]
        if assign:
            acc = out[first:last]
            for k in active:
                start, stop = cuts[k, block], cuts[k, block + 1]
                if start == stop:
                    continue
                in_rows = in_rows_all[start:stop]
                acc[out_rows_all[start:stop] - first] = apply(k, src.take(in_rows, axis=0))
            return
        acc = np.zeros((last - first, n_channels), dtype=dtype)
        for k in active:
            start, stop = cuts[k, block], cuts[k, block + 1]
            count = stop - start
            if count == 0:
                continue
            in_rows = in_rows_all[start:stop]
            out_rows = out_rows_all[start:stop]
            in_first = in_rows[0]
            if in_monotone[k] and in_rows[-1] - in_first == count - 1:
                gathered = src[in_first:in_first + count]
            else:
                gathered = src.take(in_rows, axis=0)
            product = apply(k, gathered)
            out_first = out_rows[0] - first
            if out_rows[-1] - out_rows[0] == count - 1:
                acc[out_first:out_first + count] += product
            else:
                acc[out_rows - first] += product
        out[first:last] = acc

    parallel_for(run_block, range(bounds.shape[0] - 1))
    return out


def gather_multiply_reduce(src: np.ndarray, kmap: KernelMap, apply_into, n_channels: int,
                           dtype: np.dtype, out: np.ndarray | None = None,
                           visitor=None) -> np.ndarray:
    """``out[u] = sum_k apply(k, src[in_k(u)])``, summed in offset order per output row.

    Per block of output rows (:func:`._cpu_plan.plan_for`): one product per
    offset into the block's buffer, from the window of input rows its pairs
    span or from their gathered input rows (taken for a group of offsets at
    once: :meth:`._cpu_plan.Plan.gathers`), then one sparse reduction of the
    buffer into the block's output rows (zeroed by the same worker just
    before), or, when the map pairs every output row exactly once, one copy of
    the buffer's rows into them (:meth:`._cpu_plan.Plan.assignment`).

    Parameters
    ----------
    src : ndarray, shape (n_in, C_src)
        Source rows, C-contiguous, in the accumulation dtype.
    kmap : KernelMap
        Pairs sorted by output row within each offset.
    apply_into : callable (k, rows (n, C_src), out (n, n_channels)) -> None
        Writes the product of offset k for ``rows`` into ``out``.
    n_channels : int
    dtype : numpy dtype of the result.
    out : ndarray, shape (n_out, n_channels), optional
        C-contiguous, of ``dtype``: the result is written there.
    visitor : callable (block) -> callable (position, rows), optional
        Called once per block on the worker that runs it; the callable it
        returns gets, right after each product of the block, the item's
        position in ``block.items`` and the source rows the product read (the
        window's rows, or the item's gathered rows). :func:`conv_backward`
        makes the weight gradient from them.

    Returns
    -------
    out : ndarray, shape (n_out, n_channels)
    """
    n_out = kmap.n_out
    # every output row paired exactly once (a transposed 2x2x2 stride-2 map, the input
    # gradient of a 2x2x2 stride-2 one): each block's rows are a copy of its products in
    # another order, with no zeros to add them to (paired, 2 threads, C = 32: see the
    # commit)
    assign = n_out > 0 and _one_pair_per_output(kmap)
    if out is None:
        out = np.empty((n_out, n_channels), dtype=dtype)
    if n_out == 0 or kmap.n_pairs == 0:
        out[...] = 0
        return out
    plan = plan_for(kmap, src.shape[1], n_channels, dtype)
    if not assign:
        plan.make_sums(kmap)   # every block's sum layout (in parts on the workers), first
    row_bytes = src.shape[1] * src.itemsize

    def run_block(block) -> None:
        products = np.empty((block.n_products, n_channels), dtype=dtype)
        items = block.items
        visit = None if visitor is None else visitor(block)
        for p, (k, window, start, length, base, _, _) in enumerate(items):
            if window:
                rows = src[start:start + length]
                apply_into(k, rows, products[base:base + length])
                if visit is not None:
                    visit(p, rows)
        # the gathered items, a group of offsets per take (one GIL release, not one per
        # offset: see the module _cpu_plan)
        index, groups = plan.gathers(kmap, block, row_bytes)
        for first, last, members in groups:
            gathered = src.take(index[first:last], axis=0)
            at = 0
            for p in members:
                k, _, _, length, base, _, _ = items[p]
                rows = gathered[at:at + length]
                apply_into(k, rows, products[base:base + length])
                if visit is not None:
                    visit(p, rows)
                at += length
        if assign:
            products.take(plan.assignment(kmap, block), axis=0, mode="clip",
                          out=out[block.first:block.last])
        else:
            # the block's rows are zeroed here, on the worker, right before its sum adds
            # into them (not all rows at once on the calling thread first: lidar-136k
            # subm3 C = 32, 2 threads, paired: forward 0.91-0.92 of before)
            block_out = out[block.first:block.last]
            block_out[...] = 0
            add_products(plan, block, kmap, products, block_out)

    parallel_for(run_block, plan.blocks)
    return out


def _into_standard(weight):
    def apply_into(k, rows, out):
        np.matmul(rows, weight[k], out=out)
    return apply_into


def _into(apply):
    def apply_into(k, rows, out):
        out[...] = apply(k, rows)
    return apply_into


def _apply_into_for(weight: np.ndarray, layout: str, transpose: bool):
    if layout == "standard":
        if transpose:
            weight = np.ascontiguousarray(weight.transpose(0, 2, 1))
        return _into_standard(weight)
    return _into(_apply_for(weight, layout, transpose))


def _matmul_standard(weight):
    return lambda k, rows: rows @ weight[k]


def _matmul_grouped(weight):
    groups, _, group_out = weight.shape[1:]

    def apply(k, rows):
        n = rows.shape[0]
        per_group = rows.reshape(n, groups, -1).transpose(1, 0, 2)
        return np.matmul(per_group, weight[k]).transpose(1, 0, 2).reshape(n, groups * group_out)

    return apply


def _scale_depthwise(weight):
    return lambda k, rows: rows * weight[k]


def _apply_for(weight: np.ndarray, layout: str, transpose: bool):
    if layout == "depthwise":
        return _scale_depthwise(weight)
    if layout == "grouped":
        if transpose:
            weight = np.ascontiguousarray(weight.transpose(0, 1, 3, 2))
        return _matmul_grouped(weight)
    if transpose:
        weight = np.ascontiguousarray(weight.transpose(0, 2, 1))
    return _matmul_standard(weight)


ALGORITHMS = {"forward": ("blocked", "dense"), "input_grad": ("blocked", "dense"),
              "weight_grad": ("blocked", "dense")}


def _choose(kmap, layout, algorithm, weight) -> str:
    """``algorithm`` if given, else the one the cost model predicts faster on this machine
    (:func:`._cpu_plan.choose_dense`)."""
    if algorithm not in (None, "auto"):
        if algorithm == "dense" and layout != "standard":
            raise ValueError(f"algorithm 'dense' supports the standard weight layout only, "
                             f"got a {layout} weight")
        chosen = algorithm
    else:
        dense = layout == "standard" and choose_dense(kmap, weight.shape[1], weight.shape[2],
                                                      weight.dtype)
        chosen = "dense" if dense else "blocked"
    if chosen == "dense" and not np.isfinite(weight).all():
        # The dense product multiplies the zeros of missing (row, offset) slots by
        # W[k]: 0 * inf would put NaN where no pair exists. The blocked product
        # touches real pairs only, so results keep the same non-finite pattern
        # whatever the algorithm (checking the weight costs |K| C_in C_out reads).
        chosen = "blocked"
    return chosen


def _choice_reason(kmap, layout, algorithm, chosen, weight) -> str:
    """Why :func:`_choose` picked ``chosen`` on ``kmap`` (for the log and ``explain``)."""
    slots = kmap.n_out * kmap.kernel_volume
    occupancy = kmap.n_pairs / slots if slots else 0.0
    filled = f"{occupancy:.0%} of the (row, offset) slots hold a pair"
    if algorithm not in (None, "auto"):
        if chosen != algorithm:
            return f"{algorithm!r} asked, but the weight holds inf/NaN (dense would spread them)"
        return "forced by algorithm="
    if layout != "standard":
        return f"the {layout} weight layout runs blocked only"
    if kmap.n_out == 0 or kmap.n_pairs == 0:
        return "no pairs"
    plan = plan_for(kmap, weight.shape[1], weight.shape[2], weight.dtype)
    predicted = (f"cost model (one thread): blocked {plan.predicted_s * 1e3:.2f} ms, "
                 f"dense {plan.dense_predicted_s * 1e3:.2f} ms")
    if chosen == "dense":
        return f"{filled}; {predicted}: dense below {DENSE_MARGIN:g}x blocked"
    if choose_dense(kmap, weight.shape[1], weight.shape[2], weight.dtype):
        return f"{filled}; {predicted}, but the weight holds inf/NaN (dense would spread them)"
    return f"{filled}; {predicted}: dense not below {DENSE_MARGIN:g}x blocked"


def _weight_grad_reason(kmap, layout, algorithm, chosen, c_in, c_out, dtype) -> str:
    """Why the weight gradient runs ``chosen`` (see :func:`_weight_grad_is_dense`)."""
    if algorithm not in (None, "auto"):
        if chosen != algorithm:
            return (f"{algorithm!r} asked, but the output gradient holds inf/NaN (dense "
                    f"would spread them)")
        return "forced by algorithm="
    if layout != "standard":
        return f"the {layout} weight layout runs blocked only"
    if kmap.n_out == 0 or kmap.n_pairs == 0:
        return "no pairs"
    plan = plan_for(kmap, c_in, c_out, dtype)
    predicted = (f"the forward over this map by the cost model (one thread): blocked "
                 f"{plan.predicted_s * 1e3:.2f} ms, dense {plan.dense_predicted_s * 1e3:.2f} ms")
    if chosen == "dense":
        return f"{predicted}: dense faster"
    if choose_dense(kmap, c_in, c_out, dtype, margin=1.0):
        return f"{predicted}, but the output gradient holds inf/NaN (dense would spread them)"
    return f"{predicted}: dense not faster"


def _log_choice(product, chosen, kmap, layout, algorithm, weight=None, channels=None):
    """One DEBUG record per product run (nothing is computed when DEBUG is off).
    ``weight`` as the product reads it (forward, input gradient); ``channels``
    (c_in, c_out, accumulation dtype) for the weight gradient."""
    if _log.isEnabledFor(logging.DEBUG):
        reason = (_weight_grad_reason(kmap, layout, algorithm, chosen, *channels)
                  if product == "weight_grad"
                  else _choice_reason(kmap, layout, algorithm, chosen, weight))
        _log.debug("cpu %s: algorithm %r, %s", product, chosen, reason,
                   extra={"product": product, "algorithm": chosen, "reason": reason})


def dense_product(src, kmap, weight, n_channels, dtype, out=None):
    """``out = [src[nbr[:, 0]], ..., src[nbr[:, K-1]]] @ W.reshape(K * C_in, C_out)``.

    Gathers every offset's input row of a block of output rows through the
    map's neighbour table (:func:`._cpu_plan.neighbours`, made once per map; a
    missing pair reads a zero row appended to a copy of ``src``) and
    multiplies in chunks of :func:`._cpu_plan.dense_chunk_rows` rows, so that
    each gathered chunk is still in cache when multiplied: no scatter at all,
    at the price of the missing slots' work. Chosen when the cost model
    predicts it clearly faster (dense volumes).
    """
    n_out, kernel_volume = kmap.n_out, kmap.kernel_volume
    if out is None:
        out = np.empty((n_out, n_channels), dtype=dtype)
    if n_out == 0:
        return out
    if kmap.n_pairs == 0:
        out[...] = 0
        return out
    flat_weight = weight.reshape(kernel_volume * src.shape[1], n_channels)
    plan = plan_for(kmap, src.shape[1], n_channels, dtype)
    padded = _with_zero_row(src)
    chunk = dense_chunk_rows(kernel_volume, src.shape[1], np.dtype(dtype).itemsize)
    table = neighbours(kmap)

    def run_block(block) -> None:
        for first in range(block.first, block.last, chunk):
            rows = table[:, first:min(first + chunk, block.last)].T
            gathered = padded.take(rows, axis=0)
            np.matmul(gathered.reshape(rows.shape[0], -1), flat_weight,
                      out=out[first:first + rows.shape[0]])

    parallel_for(run_block, plan.blocks)
    return out


def _with_zero_row(src: np.ndarray) -> np.ndarray:
    """``src`` with one row of zeros appended (row ``n_in``: what missing pairs read)."""
    padded = np.empty((src.shape[0] + 1, src.shape[1]), dtype=src.dtype)
    padded[:-1] = src
    padded[-1] = 0
    return padded


def _check_algorithm(algorithm, product):
    if algorithm not in (None, "auto") + ALGORITHMS[product]:
        raise ValueError(f"algorithm for the {product} product on the CPU must be one of "
                         f"{('auto',) + ALGORITHMS[product]}, got {algorithm!r}")


def conv_forward(feats, weight, kmap, layout, c_out, bias=None, algorithm=None, out=None):
    """Forward product (+ bias), returned in the dtype of ``feats`` (n_out, C_out)
    (``out`` itself when given: the result is written into it)."""
    _check_algorithm(algorithm, "forward")
    dtype = accumulate_dtype(feats.dtype)
    direct = _direct(out, dtype)
    src = np.ascontiguousarray(feats, dtype=dtype)
    weight = np.ascontiguousarray(weight, dtype=dtype)
    chosen = _choose(kmap, layout, algorithm, weight)
    _log_choice("forward", chosen, kmap, layout, algorithm, weight)
    if chosen == "dense":
        result = dense_product(src, kmap, weight, c_out, dtype, out=direct)
    else:
        result = gather_multiply_reduce(src, kmap, _apply_into_for(weight, layout, False),
                                        c_out, dtype, out=direct)
    if bias is not None:
        result += bias.astype(dtype)
    return _deliver(result, out, feats.dtype)


def _input_grad_operands(kmap, weight, layout):
    """(map, weight, weight as the product reads it) of the input gradient: the reverse
    table and ``W``, or, for a submanifold map of a symmetric kernel, the map itself
    with the offsets mirrored and ``W[mirror]``; the third is transposed per offset for
    the standard layout."""
    mirror = mirror_of(kmap)
    if mirror is not None:
        reverse, weight = kmap, np.ascontiguousarray(weight[mirror])
    else:
        reverse = reverse_map(kmap)
    transposed = np.ascontiguousarray(weight.transpose(0, 2, 1)) if layout == "standard" \
        else weight
    return reverse, weight, transposed


def conv_input_grad(grad_out, weight, kmap, layout, c_in, algorithm=None, out=None):
    """Input gradient: the forward product of the reverse table with W transposed
    (``out`` itself when given).

    For a submanifold map of a symmetric kernel the reverse table is the map
    itself with the offsets mirrored (:func:`._cpu_plan.mirror_of`): the product
    then runs over the map with ``W[mirror[k]]^T`` and reuses its plan.
    """
    _check_algorithm(algorithm, "input_grad")
    dtype = accumulate_dtype(grad_out.dtype)
    direct = _direct(out, dtype)
    src = np.ascontiguousarray(grad_out, dtype=dtype)
    weight = np.ascontiguousarray(weight, dtype=dtype)
    reverse, weight, transposed = _input_grad_operands(kmap, weight, layout)
    chosen = _choose(reverse, layout, algorithm, transposed)
    _log_choice("input_grad", chosen, reverse, layout, algorithm, transposed)
    if chosen == "dense":
        result = dense_product(src, reverse, transposed, c_in, dtype, out=direct)
    else:
        result = gather_multiply_reduce(src, reverse, _apply_into_for(weight, layout, True),
                                        c_in, dtype, out=direct)
    return _deliver(result, out, grad_out.dtype)


def _weight_grad_is_dense(kmap, layout, algorithm, c_in, dtype, dst) -> bool:
    """Run the weight gradient densely? When asked to, or (``algorithm`` None / "auto")
    when the forward product over this map is predicted faster dense: the dense
    weight gradient gathers and multiplies the same rows as the dense forward, the
    blocked one gathers the pairs' rows on both sides where the blocked forward
    sums its products, so no margin (paired A/B, one thread, C = 32: dense / blocked
    0.62 on frog-2x, 0.75 on frog-4x; 2.1 on surface-50k at 37 % of slots paired,
    never predicted dense). Never when ``dst`` holds a non-finite value (a missing
    slot's zero row times it would add NaN)."""
    if algorithm in (None, "auto"):
        dense = layout == "standard" and choose_dense(kmap, c_in, dst.shape[1], dtype,
                                                      margin=1.0)
    elif algorithm == "dense":
        if layout != "standard":
            raise ValueError(f"algorithm 'dense' supports the standard weight layout only, "
                             f"got a {layout} weight")
        dense = True
    else:
        dense = False
    return dense and kmap.n_pairs > 0 and bool(np.isfinite(dst).all())


#: Most partial sums of the dense weight gradient (each one weight's size).
_DENSE_WGRAD_PARTS = 16


def dense_weight_grad(src, dst, kmap, grad_weight) -> None:
    """``dW.reshape(K * C_in, C_out) += sum over blocks of G^T @ dY[block]``, where
    ``G = [src[nbr[:, 0]], ..., src[nbr[:, K-1]]]`` is the block's neighbour table
    gathered (a missing pair reads a zero row), in chunks as :func:`dense_product`.

    The blocks of the forward plan are split into at most ``_DENSE_WGRAD_PARTS``
    runs of consecutive blocks, one partial sum each; the partials are added in
    order, so the result does not depend on the thread count. ``dY`` is read as a
    slice: no gather of it at all.

    Parameters
    ----------
    src : ndarray, shape (n_in, C_in), C-contiguous, accumulation dtype
    dst : ndarray, shape (n_out, C_out), C-contiguous, accumulation dtype
    kmap : KernelMap
    grad_weight : ndarray, shape (K, C_in, C_out), zeros: the result is added here.
    """
    kernel_volume, c_in, c_out = grad_weight.shape
    plan = plan_for(kmap, c_in, c_out, src.dtype)
    padded = _with_zero_row(src)
    chunk = dense_chunk_rows(kernel_volume, c_in, src.dtype.itemsize)
    blocks = plan.blocks
    n_parts = min(_DENSE_WGRAD_PARTS, len(blocks))
    cuts = [len(blocks) * p // n_parts for p in range(n_parts + 1)]
    partials = [None] * n_parts
    table = neighbours(kmap)

    def run_part(part: int) -> None:
        total = None
        for block in blocks[cuts[part]:cuts[part + 1]]:
            for first in range(block.first, block.last, chunk):
                rows = table[:, first:min(first + chunk, block.last)].T
                gathered = padded.take(rows, axis=0).reshape(rows.shape[0], -1)
                term = gathered.T @ dst[first:first + rows.shape[0]]
                if total is None:
                    total = term
                else:
                    total += term
        partials[part] = total

    parallel_for(run_part, range(n_parts))
    total = partials[0]
    for partial in partials[1:]:  # fixed order: deterministic sums
        total += partial
    grad_weight += total.reshape(grad_weight.shape)


def rows_of_table(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``table[rows]``: a slice when ``rows`` are consecutive (e.g. the centre offset of
    a submanifold map), else gathered (``take``)."""
    first = int(rows[0])
    if int(rows[-1]) - first == rows.shape[0] - 1 and (
            rows.shape[0] < 3 or rows[rows.shape[0] // 2] == first + rows.shape[0] // 2):
        if rows.shape[0] < 3 or bool(np.all(rows[1:] > rows[:-1])):
            return table[first:first + rows.shape[0]]
    return table.take(rows, axis=0)


#: Pairs per weight-gradient work item (bounds the gathered blocks' size).
_WGRAD_PAIRS = 16384
#: Pairs gathered and multiplied at once inside a work item.
_WGRAD_CHUNK = 2048


def conv_weight_grad(feats, grad_out, kmap, layout, weight_shape, algorithm=None, out=None):
    """Weight gradient ``dW[k] = A[in]^T @ dY[out]``, deterministic at any thread count.

    Returned in the dtype of ``feats`` with shape ``weight_shape`` (``out`` itself
    when given).
    """
    _check_algorithm(algorithm, "weight_grad")
    dtype = accumulate_dtype(np.result_type(feats.dtype, grad_out.dtype))
    src = np.ascontiguousarray(feats, dtype=dtype)
    dst = np.ascontiguousarray(grad_out, dtype=dtype)
    grad_weight = _direct(out, dtype)
    if grad_weight is None:
        grad_weight = np.zeros(weight_shape, dtype=dtype)
    else:
        grad_weight[...] = 0
    dense = _weight_grad_is_dense(kmap, layout, algorithm, src.shape[1], dtype, dst)
    _log_choice("weight_grad", "dense" if dense else "blocked", kmap, layout, algorithm,
                channels=(src.shape[1], dst.shape[1], dtype))
    if dense:
        dense_weight_grad(src, dst, kmap, grad_weight)
        return _deliver(grad_weight, out, feats.dtype)
    items = []
    for k in range(kmap.kernel_volume):
        start, stop = int(kmap.pair_offsets[k]), int(kmap.pair_offsets[k + 1])
        for first in range(start, stop, _WGRAD_PAIRS):
            items.append((k, first, min(stop, first + _WGRAD_PAIRS)))
    partials = [None] * len(items)

    if layout == "depthwise":
        def product(a, b):
            return np.einsum("nc,nc->c", a, b)
    elif layout == "grouped":
        groups = weight_shape[1]

        def product(a, b):
            n = a.shape[0]
            return np.matmul(a.reshape(n, groups, -1).transpose(1, 2, 0),
                             b.reshape(n, groups, -1).transpose(1, 0, 2))
    else:
        def product(a, b):
            return a.T @ b

    in_rows_all, out_rows_all = kmap.in_rows, kmap.out_rows

    def run_item(index: int) -> None:
        # sub-chunks of _WGRAD_CHUNK pairs: the gathered rows stay in cache
        k, first, last = items[index]
        partial = None
        for begin in range(first, last, _WGRAD_CHUNK):
            end = min(last, begin + _WGRAD_CHUNK)
            term = product(rows_of_table(src, in_rows_all[begin:end]),
                           rows_of_table(dst, out_rows_all[begin:end]))
            partial = term if partial is None else partial + term
        partials[index] = partial

    parallel_for(run_item, range(len(items)))
    for (k, _, _), partial in zip(items, partials):  # fixed order: deterministic sums
        grad_weight[k] += partial
    return _deliver(grad_weight, out, feats.dtype)


#: Most bytes of the fused backward's per-(block, offset) weight-gradient terms (a C_in x
#: C_out matrix each); a layer that would need more runs the two gradients one after the
#: other (C = 32: about 600 blocks fit, C = 128: about 37).
_FUSED_TERM_BYTES = 64 << 20


def conv_backward(feats, grad_out, weight, kmap, layout, c_in, weight_shape, out=(None, None)):
    """Both gradients of the forward product: ``(grad_in, grad_weight)``, as
    :func:`conv_input_grad` and :func:`conv_weight_grad` give them.

    When both would run blocked (standard weight layout, features and output
    gradient of one dtype, the choices made as the two calls make them) they
    share one pass: each (block, offset) product of the input gradient
    multiplies output-gradient rows ``G`` (gathered, or a window) by
    ``W[k]^T``, and the weight gradient's term of those pairs is
    ``X[rows]^T @ G`` with the same ``G``: the rows ``X`` are the block's own
    (its input rows, in cache), taken once per block. The weight gradient's
    two gathers per pair (``X`` and ``dY`` at random rows) are gone. Its terms
    are added per weight in block order, then offset order: the result does
    not depend on the thread count (it differs from :func:`conv_weight_grad`'s
    in the last bits: another order of the same sums). The input gradient is
    bit for bit :func:`conv_input_grad`'s.

    ``out``: the two results' ``out=`` (None or a checked array each).

    Returns
    -------
    grad_in : ndarray, shape (n_in, C_in), the dtype of ``grad_out``
    grad_weight : ndarray of ``weight_shape``, the dtype of ``feats``
    """
    out_in, out_weight = out
    dtype = accumulate_dtype(grad_out.dtype)
    fused = (layout == "standard" and kmap.n_pairs > 0
             and feats.dtype == grad_out.dtype == weight.dtype
             and not _weight_grad_is_dense(kmap, layout, None, c_in, dtype, grad_out))
    if fused:
        weight_acc = np.ascontiguousarray(weight, dtype=dtype)
        reverse, _, transposed = _input_grad_operands(kmap, weight_acc, layout)
        fused = (_choose(reverse, layout, None, transposed) == "blocked"
                 and _fused_term_bytes(reverse, grad_out.shape[1], c_in, dtype)
                 <= _FUSED_TERM_BYTES)
    if not fused:
        return (conv_input_grad(grad_out, weight, kmap, layout, c_in, out=out_in),
                conv_weight_grad(feats, grad_out, kmap, layout, weight_shape, out=out_weight))
    _log_choice("input_grad", "blocked", reverse, layout, None, transposed)
    _log_choice("weight_grad", "blocked (with the input gradient)", kmap, layout, None,
                channels=(c_in, grad_out.shape[1], dtype))
    src = np.ascontiguousarray(grad_out, dtype=dtype)
    x = np.ascontiguousarray(feats, dtype=dtype)
    # the input gradient's offset k reads weight k, or its mirror's where the map is its
    # own reverse table (_input_grad_operands made that choice)
    weight_index = (np.asarray(mirror_of(kmap)) if reverse is kmap
                    else np.arange(kmap.kernel_volume)).tolist()
    direct_weight = _direct(out_weight, dtype)
    grad_in, grad_weight = _input_and_weight_grad(
        src, x, reverse, transposed, weight_index, c_in, dtype, out=_direct(out_in, dtype),
        weight_out=None if direct_weight is None else direct_weight.reshape(
            len(weight_index), c_in, -1))
    return (_deliver(grad_in, out_in, grad_out.dtype),
            _deliver(grad_weight.reshape(weight_shape), out_weight, feats.dtype))


def _fused_term_bytes(reverse, c_out, c_in, dtype) -> int:
    """Bytes of the fused pass's terms: one weight's worth per (block, offset)."""
    plan = plan_for(reverse, c_out, c_in, dtype)
    return len(plan.blocks) * reverse.kernel_volume * c_in * c_out * np.dtype(dtype).itemsize


def _input_and_weight_grad(src, x, reverse, transposed, weight_index, c_in, dtype, out=None,
                           weight_out=None):
    """The fused pass of :func:`conv_backward` over the input gradient's map ``reverse``
    (its pairs: output-gradient row ``reverse.in_rows``, input row ``reverse.out_rows``,
    weight ``weight_index[k]``); the input gradient into ``out`` (n_in, C_in) and the
    weight gradient into ``weight_out`` (K, C_in, C_out) when given, both of ``dtype``."""
    c_out = src.shape[1]
    plan = plan_for(reverse, c_out, c_in, dtype)
    # terms[b, w]: block b's term of weight w (zeros where the block has no such pair);
    # summed over the blocks in order at the end, one vectorized reduction
    terms = np.zeros((len(plan.blocks), len(weight_index), c_in, c_out), dtype=dtype)
    pair_rows = reverse.in_rows

    def visitor(block):
        items = block.items
        # the input rows of the block's pairs, item after item (the order of its sum)
        _, rows = plan.sum_layout(reverse, block)
        x_rows = x[block.first:block.last].take(rows, axis=0)
        starts = np.cumsum([0] + [item[6] - item[5] for item in items]).tolist()
        block_terms = terms[block.index]

        def visit(p, g):
            k, window, start, length, _, begin, end = items[p]
            if window and length != end - begin:   # a window's rows without a pair out
                g = g.take(pair_rows[begin:end] - start, axis=0)
            np.matmul(x_rows[starts[p]:starts[p + 1]].T, g, out=block_terms[weight_index[k]])
        return visit

    grad_in = gather_multiply_reduce(src, reverse, _apply_into_for(transposed, "standard",
                                                                   False),
                                     c_in, dtype, out=out, visitor=visitor)
    # in block order: the same at any thread count
    grad_weight = terms.sum(axis=0, out=weight_out)
    return grad_in, grad_weight


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------

def pool_sum(feats, kmap):
    """Sum over active offsets, accumulation dtype (n_out, C)."""
    dtype = accumulate_dtype(feats.dtype)
    src = np.ascontiguousarray(feats, dtype=dtype)
    return gather_apply_scatter(src, kmap, lambda k, rows: rows, src.shape[1], dtype)


def pool_counts(kmap) -> np.ndarray:
    """Active offsets per output row, (n_out,) int64."""
    return np.bincount(kmap.out_rows, minlength=kmap.n_out).astype(np.int64)


def pool_max(feats, kmap):
    """Max over active offsets and the winning input row per (row, channel).

    Returns
    -------
    values : (n_out, C) in the accumulation dtype; 0 for rows with no pair.
    argmax : (n_out, C) int64 input row, -1 for rows with no pair. Ties go to
        the first active offset in kernel order. NaN propagates (as in NumPy and
        PyTorch): an active NaN input gives NaN, and the first such input (in
        kernel order) is the winner that receives the gradient.
    """
    dtype = accumulate_dtype(feats.dtype)
    src = np.ascontiguousarray(feats, dtype=dtype)
    n_out, channels = kmap.n_out, src.shape[1]
    values = np.zeros((n_out, channels), dtype=dtype)
    argmax = np.full((n_out, channels), -1, dtype=np.int64)
    if n_out == 0 or kmap.n_pairs == 0:
        return values, argmax
    bounds, cuts = chunk_cuts(kmap, _block_rows(channels))
    has_nan = bool(np.isnan(src).any())  # one pass here saves one per offset and block

    def run_block(block: int) -> None:
        first, last = bounds[block], bounds[block + 1]
        best = np.full((last - first, channels), -np.inf, dtype=dtype)
        winner = np.full((last - first, channels), -1, dtype=np.int64)
        for k in range(kmap.kernel_volume):
            start, stop = cuts[k, block], cuts[k, block + 1]
            if start == stop:
                continue
            in_rows = kmap.in_rows[start:stop]
            local = kmap.out_rows[start:stop] - first
            candidate = src.take(in_rows, axis=0)
            current = best[local]
            # strictly greater (or the first pair of a row): ties keep the earlier offset;
            # a NaN beats every number and the first NaN stays (NaN propagates)
            better = (candidate > current) | (winner[local] < 0)
            if has_nan:
                better |= np.isnan(candidate) & ~np.isnan(current)
            best[local] = np.where(better, candidate, current)
            winner[local] = np.where(better, in_rows[:, None], winner[local])
        has_pair = winner >= 0
        values[first:last] = np.where(has_pair, best, 0)
        argmax[first:last] = winner

    parallel_for(run_block, range(bounds.shape[0] - 1))
    return values, argmax


def pool_forward(feats, kmap, mode):
    """max / avg / sum over the active offsets, in the dtype of ``feats``."""
    if mode == "max":
        values, _ = pool_max(feats, kmap)
        return values.astype(feats.dtype, copy=False)
    out = pool_sum(feats, kmap)
    if mode == "avg":
        out /= np.maximum(pool_counts(kmap), 1)[:, None]
    return out.astype(feats.dtype, copy=False)


def pool_backward(grad_out, feats, kmap, mode):
    """Gradient of :func:`pool_forward` with respect to ``feats``, dtype of ``grad_out``."""
    if mode == "max":
        _, argmax = pool_max(feats, kmap)
        return scatter_rows_by_index(grad_out, argmax, kmap.n_in).astype(grad_out.dtype,
                                                                        copy=False)
    scaled = grad_out
    if mode == "avg":
        scaled = grad_out.astype(accumulate_dtype(grad_out.dtype)) / np.maximum(
            pool_counts(kmap), 1)[:, None]
    return pool_sum(scaled, reverse_map(kmap)).astype(grad_out.dtype, copy=False)


def scatter_rows_by_index(grad_out, argmax, n_in):
    """``grad_in[argmax[r, c], c] += grad_out[r, c]`` (deterministic, via bincount)."""
    channels = grad_out.shape[1]
    valid = argmax >= 0
    flat = (argmax * channels + np.arange(channels))[valid]
    summed = np.bincount(flat, weights=grad_out[valid].astype(np.float64),
                         minlength=n_in * channels)
    return summed.reshape(n_in, channels)


def segment_reduce(feats, segment_ids, n_segments, mode):
    """Reduce rows into ``n_segments`` groups (sum / mean / max); (n_segments, C).

    Returned in the accumulation dtype."""
    dtype = accumulate_dtype(feats.dtype)
    channels = feats.shape[1]
    if n_segments == 0:
        return np.zeros((0, channels), dtype=dtype)
    order = np.argsort(segment_ids, kind="stable")
    sorted_ids = segment_ids[order]
    starts = np.searchsorted(sorted_ids, np.arange(n_segments))
    values = np.ascontiguousarray(feats, dtype=dtype)[order]
    if mode == "max":
        return reduce_runs(np, values, starts, "max")
    sums = reduce_runs(np, values, starts, "sum")
    if mode == "mean":
        counts = np.diff(np.append(starts, values.shape[0]))
        sums /= counts[:, None]
    return sums


# --------------------------------------------------------------------------
# The backend object
# --------------------------------------------------------------------------

class CpuBackend(ArrayOps):
    """:class:`cusparseconv.backends.protocol.Backend` on NumPy and SciPy: the functions
    of this module, with their per-map state in ``_MAPS``."""

    name = "cpu"
    xp = np
    neighbour_tables = False

    # each a few hundred NumPy calls that hand the GIL over: run with a short switch
    # interval, so that a thread of the user's running Python does not keep the GIL
    # for 5 ms at each hand-over (cusparseconv._switch)
    build_kernel_map = staticmethod(short_switch_interval(build_kernel_map))
    reverse = staticmethod(short_switch_interval(reverse_map))
    pair_mask = staticmethod(short_switch_interval(pair_mask))
    conv_forward = staticmethod(short_switch_interval(conv_forward))
    conv_input_grad = staticmethod(short_switch_interval(conv_input_grad))
    conv_weight_grad = staticmethod(short_switch_interval(conv_weight_grad))
    conv_backward = staticmethod(short_switch_interval(conv_backward))
    pool_forward = staticmethod(short_switch_interval(pool_forward))
    pool_backward = staticmethod(short_switch_interval(pool_backward))
    segment_reduce = staticmethod(short_switch_interval(segment_reduce))

    @staticmethod
    def choose_algorithm(product, feats, weight, kmap, layout, c_out, algorithm=None):
        """(algorithm, reason) of ``product``, by the products' own choice (nothing runs)."""
        _check_algorithm(algorithm, product)
        if product == "weight_grad":
            # as conv_weight_grad decides it for an output gradient of finite values
            # (one holding inf/NaN runs blocked)
            dtype = accumulate_dtype(feats.dtype)
            c_in = feats.shape[1]
            dense = (algorithm == "dense" or (
                algorithm in (None, "auto") and layout == "standard"
                and choose_dense(kmap, c_in, c_out, dtype, margin=1.0))) and kmap.n_pairs > 0
            if algorithm == "dense" and layout != "standard":
                raise ValueError(f"algorithm 'dense' supports the standard weight layout only, "
                                 f"got a {layout} weight")
            chosen = "dense" if dense else "blocked"
            return chosen, _weight_grad_reason(kmap, layout, algorithm, chosen, c_in, c_out,
                                               dtype)
        weight = np.ascontiguousarray(weight, dtype=accumulate_dtype(feats.dtype))
        if product == "forward":
            target = kmap
        else:
            target, _, weight = _input_grad_operands(kmap, weight, layout)
        chosen = _choose(target, layout, algorithm, weight)
        return chosen, _choice_reason(target, layout, algorithm, chosen, weight)

    @staticmethod
    def state_nbytes(value) -> int:
        state = _MAPS.get(value)
        return state.nbytes if state is not None else 0

    def __repr__(self) -> str:
        return "<CpuBackend>"
