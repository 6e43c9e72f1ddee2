"""Kernel-map tables on the GPU: neighbour tables, pair masks and pair tables.

Python side of the tiled build in ``raw_kernels/kernel_map.cu``. Given a
launcher (:mod:`cusparseconv.backends._launch`: CuPy on a device, the host
emulator otherwise), the coordinates, the offsets, the stride and the hash
tables of the two sets, :func:`build_pair_tables` returns both directions of
a kernel map in the encodings of SPEC section 4:

* forward (query = output rows): the neighbour table, pair mask, pair table
  (CSR by offset, sorted by output row within an offset) and position table;
* reverse (query = input rows): the same for the input gradient.

Per direction the work is three kernels of ours, no CuPy scan: a search that
also counts each offset's pairs per tile of 32 rows, a scan of those counts
(the CSR boundaries are written on the device), and a compaction that writes
the pair table, the position table and the pair mask, all C-contiguous by
construction. The host reads once per new geometry: the pair counts of both
directions and the hash tables' duplicate counts, in one transfer (they size
the pair tables). A submanifold map (one coordinate set, stride 1, a kernel
closed under negation) searches once: its reverse tables are the forward ones
with the offsets mirrored (the pairs of offset -d are the swapped pairs of d).

Nothing is cached here: the caller keeps the tables (per-map state of its
backend) and the hash tables (per coordinate set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairTables", "MapTables", "TILE_ROWS", "hash_capacity", "insert_keys",
           "mirror_permutation", "build_pair_tables"]

SOURCE = "kernel_map.cu"
HASH_SOURCE = "hash_table.cu"
#: Query rows per tile of the search and compaction kernels (one warp each).
TILE_ROWS = 32
_WARPS_PER_BLOCK = 4
_THREADS = 32 * _WARPS_PER_BLOCK
_SCAN_THREADS = 256
_EMPTY_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class PairTables:
    """One direction of a kernel map on the device.

    Attributes
    ----------
    neighbour : array of int32, shape (n_query, K)
        Row of the other set paired with each query row through offset k, -1: none.
    mask : array of uint32, shape (n_query, ceil(K / 32))
        Bit k % 32 of word k // 32 set when ``neighbour[:, k] >= 0``.
    pair_offsets : ndarray of int64, shape (K + 1,), host
        Pairs of offset k are ``[pair_offsets[k], pair_offsets[k + 1])``.
    pair_offsets_device : array of int64, shape (K + 1,)
        The same on the device (written there, not copied from the host).
    query_rows, partner_rows : arrays of int32, shape (P,)
        The pair table, sorted by query row within each offset.
    position : array of int32, shape (n_query, K)
        Index of the pair (query row, k) within offset k's list, -1: none.
    """

    neighbour: object
    mask: object
    pair_offsets: np.ndarray
    pair_offsets_device: object
    query_rows: object
    partner_rows: object
    position: object

    @property
    def n_pairs(self) -> int:
        return int(self.pair_offsets[-1])


@dataclass(frozen=True)
class MapTables:
    """Both directions of a kernel map.

    Attributes
    ----------
    forward : PairTables
        Query = output rows (partners: input rows): the forward product's map.
    reverse : PairTables
        Query = input rows (partners: output rows): the input gradient's map.
    duplicates : tuple of int
        The values read from the ``duplicates`` counters passed in, in order.
    mirrored : bool
        True when the reverse tables were taken by symmetry (one search).
    """

    forward: PairTables
    reverse: PairTables
    duplicates: tuple
    mirrored: bool


def hash_capacity(n_keys: int) -> int:
    """Slots of the hash table of ``n_keys`` keys: a power of two >= 2 n_keys, >= 16."""
    return 1 << max(4, (2 * max(int(n_keys), 1) - 1).bit_length())


def insert_keys(launcher, keys, rows):
    """A device hash table of packed keys (``raw_kernels/hash_table.cu``).

    Parameters
    ----------
    launcher : Launcher
    keys : array of int64, shape (N,)
        Packed keys (``cusparseconv.coords.pack``), non-negative.
    rows : array of int64, shape (N,)
        The row each key stands for.

    Returns
    -------
    table : tuple (table_keys uint64 (capacity,), table_values int32 (capacity,),
        numpy.uint64 capacity - 1)
    duplicates : array of int32, shape (1,)
        Keys found already present (on the device: pass it to
        :func:`build_pair_tables` to read it with the pair counts).
    """
    xp = launcher.xp
    n_keys = int(keys.shape[0])
    capacity = hash_capacity(n_keys)
    table_keys = xp.full(capacity, _EMPTY_KEY, dtype=np.uint64)
    table_values = xp.full(capacity, -1, dtype=np.int32)
    duplicates = xp.zeros(1, dtype=np.int32)
    launcher.launch_1d(HASH_SOURCE, "hash_insert", n_keys,
                       (xp.ascontiguousarray(keys, dtype=np.int64),
                        xp.ascontiguousarray(rows, dtype=np.int64), np.int64(n_keys),
                        table_keys, table_values, np.uint64(capacity - 1), duplicates))
    return (table_keys, table_values, np.uint64(capacity - 1)), duplicates


def mirror_permutation(offsets) -> np.ndarray | None:
    """``mirror[k]`` = the index of ``-offsets[k]``, or None when the kernel is not
    closed under negation (host arrays).

    Parameters
    ----------
    offsets : ndarray of int, shape (K, D)
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 2:
        raise ValueError(f"offsets must have shape (K, D), got {offsets.shape}")
    index = {tuple(row): k for k, row in enumerate(offsets.tolist())}
    if len(index) != offsets.shape[0]:
        return None  # repeated offsets: no one-to-one mirror
    mirror = [index.get(tuple(-v for v in row)) for row in offsets.tolist()]
    if any(m is None for m in mirror):
        return None
    return np.asarray(mirror, dtype=np.int32)


def _n_tiles(n_rows: int) -> int:
    return -(-int(n_rows) // TILE_ROWS)


def _blocks(n_tiles: int) -> int:
    return -(-int(n_tiles) // _WARPS_PER_BLOCK)


class _Search:
    """One direction after the search and the scan, before the host read."""

    def __init__(self, launcher, query_coords, offsets_dev, stride_dev, kernel_volume, divide,
                 table, mirror_dev=None):
        xp = launcher.xp
        self.launcher = launcher
        self.n_rows, ndim = int(query_coords.shape[0]), int(query_coords.shape[1]) - 1
        self.kernel_volume = kernel_volume
        self.n_words = -(-kernel_volume // 32)
        self.n_tiles = _n_tiles(self.n_rows)
        self.neighbour = xp.empty((self.n_rows, kernel_volume), dtype=np.int32)
        self.tile_start = xp.empty((kernel_volume, max(self.n_tiles, 1)), dtype=np.int32)
        table_keys, table_values, table_mask = table
        launcher.launch(
            SOURCE, f"kmap_search_tiles<{ndim}>", (_blocks(self.n_tiles), 1, 1), (_THREADS,),
            (xp.ascontiguousarray(query_coords, dtype=np.int32), np.int32(self.n_rows),
             offsets_dev, np.int32(kernel_volume), stride_dev, np.int32(int(divide)),
             table_keys, table_values, table_mask, self.neighbour, np.int32(self.n_words),
             self.tile_start, np.int32(self.n_tiles)))
        self.counts = xp.empty(kernel_volume, dtype=np.int32)
        self.pair_offsets_device = xp.empty(kernel_volume + 1, dtype=np.int64)
        self.mirrored_offsets = xp.empty(kernel_volume + 1, dtype=np.int64)
        ticket = xp.zeros(1, dtype=np.uint32)
        has_mirror = mirror_dev is not None
        launcher.launch(
            SOURCE, "kmap_scan_tiles", (kernel_volume, 1, 1), (_SCAN_THREADS,),
            (self.tile_start, np.int32(self.n_tiles), np.int32(kernel_volume), self.counts,
             self.pair_offsets_device, mirror_dev if has_mirror else xp.zeros(1, np.int32),
             np.int32(int(has_mirror)), self.mirrored_offsets, ticket))

    def compact(self, counts_host) -> PairTables:
        xp, launcher = self.launcher.xp, self.launcher
        pair_offsets = np.zeros(self.kernel_volume + 1, dtype=np.int64)
        np.cumsum(counts_host, out=pair_offsets[1:])
        n_pairs = int(pair_offsets[-1])
        query_rows = xp.empty(n_pairs, dtype=np.int32)
        partner_rows = xp.empty(n_pairs, dtype=np.int32)
        position = xp.empty((self.n_rows, self.kernel_volume), dtype=np.int32)
        mask = xp.empty((self.n_rows, self.n_words), dtype=np.uint32)
        launcher.launch(
            SOURCE, "kmap_compact_tiles", (_blocks(self.n_tiles), 1, 1), (_THREADS,),
            (self.neighbour, np.int32(self.n_rows), np.int32(self.kernel_volume),
             np.int32(self.n_words), self.tile_start, np.int32(self.n_tiles),
             self.pair_offsets_device, query_rows, partner_rows, position, mask))
        return PairTables(self.neighbour, mask, pair_offsets, self.pair_offsets_device,
                          query_rows, partner_rows, position)

    def mirror(self, forward: PairTables, mirror, mirror_dev) -> PairTables:
        """The reverse tables of a submanifold map from the forward ones."""
        xp, launcher = self.launcher.xp, self.launcher
        kernel_volume = self.kernel_volume
        pair_offsets = np.zeros(kernel_volume + 1, dtype=np.int64)
        np.cumsum(np.diff(forward.pair_offsets)[mirror], out=pair_offsets[1:])
        n_pairs = forward.n_pairs
        neighbour = xp.empty((self.n_rows, kernel_volume), dtype=np.int32)
        position = xp.empty((self.n_rows, kernel_volume), dtype=np.int32)
        mask = xp.empty((self.n_rows, self.n_words), dtype=np.uint32)
        launcher.launch(
            SOURCE, "kmap_mirror_tables", (_blocks(self.n_tiles), 1, 1), (_THREADS,),
            (forward.neighbour, forward.position, np.int32(self.n_rows),
             np.int32(kernel_volume), np.int32(self.n_words), np.int32(self.n_tiles),
             mirror_dev, neighbour, position, mask))
        query_rows = xp.empty(n_pairs, dtype=np.int32)
        partner_rows = xp.empty(n_pairs, dtype=np.int32)
        launcher.launch_1d(
            SOURCE, "kmap_mirror_pairs", n_pairs,
            (forward.query_rows, forward.partner_rows, forward.pair_offsets_device,
             self.mirrored_offsets, mirror_dev, np.int32(kernel_volume), query_rows,
             partner_rows))
        return PairTables(neighbour, mask, pair_offsets, self.mirrored_offsets, query_rows,
                          partner_rows, position)


def _check_coords(coords, name, ndim=None):
    if coords.ndim != 2 or not 2 <= coords.shape[1] <= 5:
        raise ValueError(f"{name} must have shape (N, 1 + D) with D in 1..4, "
                         f"got {tuple(coords.shape)}")
    if ndim is not None and coords.shape[1] != ndim + 1:
        raise ValueError(f"{name} must have {ndim + 1} columns like in_coords, "
                         f"got {coords.shape[1]}")
    if coords.shape[0] >= 2**31:
        raise ValueError(f"{name} has {coords.shape[0]} rows: the kernel-map kernels index "
                         f"rows with int32 (at most 2**31 - 1)")


def build_pair_tables(launcher, in_coords, out_coords, offsets, stride, transposed: bool,
                      in_table, out_table=None, *, same_set: bool = False,
                      duplicates=()) -> MapTables:
    """Both directions of a kernel map, with one host read.

    Forward map: input ``v`` and output ``u`` pair through offset k when
    ``v == stride * u + K[k]`` (transposed: ``u == stride * v + K[k]``), batch
    indices equal (SPEC section 4).

    Parameters
    ----------
    launcher : Launcher
    in_coords : array of int32, shape (N_in, 1 + D), D in 1..4
    out_coords : array of int32, shape (N_out, 1 + D)
        The same array as `in_coords` with ``same_set=True`` for a submanifold map.
    offsets : ndarray of int, shape (K, D), host
    stride : sequence of D positive ints
    transposed : bool
    in_table, out_table : tuple
        Hash tables of the input and output sets, as :func:`insert_keys` returns
        them (`out_table` may be None when ``same_set``).
    same_set : bool
        `in_coords` and `out_coords` are one set (rows in the same order).
    duplicates : sequence of arrays of int32, shape (1,)
        Device counters read in the same transfer as the pair counts (e.g. the
        hash tables' duplicate counts); their values come back in
        ``MapTables.duplicates``.

    Returns
    -------
    MapTables

    Raises
    ------
    RuntimeError
        When the two directions disagree on a pair count (a bug, never expected) while
        every counter of `duplicates` reads 0.
    """
    xp = launcher.xp
    _check_coords(in_coords, "in_coords")
    ndim = int(in_coords.shape[1]) - 1
    _check_coords(out_coords, "out_coords", ndim)
    offsets = np.asarray(offsets)
    if offsets.ndim != 2 or offsets.shape[1] != ndim or offsets.shape[0] < 1:
        raise ValueError(f"offsets must have shape (K >= 1, D={ndim}), got {offsets.shape}")
    stride = tuple(int(s) for s in stride)
    if len(stride) != ndim or min(stride) < 1:
        raise ValueError(f"stride must hold {ndim} positive ints, got {stride}")
    if out_table is None:
        if not same_set:
            raise ValueError("out_table is required unless same_set=True")
        out_table = in_table
    kernel_volume = int(offsets.shape[0])
    offsets_dev = launcher.to_device(np.ascontiguousarray(offsets, dtype=np.int32))
    stride_dev = launcher.to_device(np.asarray(stride, dtype=np.int32))
    mirror = (mirror_permutation(offsets)
              if same_set and all(s == 1 for s in stride) else None)
    mirror_dev = launcher.to_device(mirror) if mirror is not None else None
    # forward: input = stride * output + K[k] (divide when transposed: the query is the
    # output, the coarse side of a transposed map); reverse: the other way round
    forward = _Search(launcher, out_coords, offsets_dev, stride_dev, kernel_volume,
                      divide=transposed, table=in_table, mirror_dev=mirror_dev)
    reverse = None if mirror is not None else _Search(
        launcher, in_coords, offsets_dev, stride_dev, kernel_volume, divide=not transposed,
        table=out_table)
    # the one host read of a new geometry
    parts = [xp.ascontiguousarray(d, dtype=np.int32).reshape(1) for d in duplicates]
    parts.append(forward.counts)
    if reverse is not None:
        parts.append(reverse.counts)
    read = launcher.to_host(xp.concatenate(parts)).astype(np.int64)
    n_dup = len(parts) - (1 if reverse is None else 2)
    counts_forward = read[n_dup:n_dup + kernel_volume]
    forward_tables = forward.compact(counts_forward)
    if reverse is None:
        reverse_tables = forward.mirror(forward_tables, mirror, mirror_dev)
    else:
        counts_reverse = read[n_dup + kernel_volume:]
        # a set with duplicate keys (a counter read non-zero, which the caller refuses)
        # pairs differently from each side: only a map of unique sets must agree
        if not read[:n_dup].any() and not np.array_equal(counts_forward, counts_reverse):
            raise RuntimeError("kernel-map build: the two neighbour tables disagree "
                               "(please report this bug)")
        reverse_tables = reverse.compact(counts_reverse)
    return MapTables(forward_tables, reverse_tables, tuple(int(v) for v in read[:n_dup]),
                     mirror is not None)
