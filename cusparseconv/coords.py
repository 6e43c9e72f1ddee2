"""Packed 64-bit coordinate keys and the coordinate-set operations built on them.

A coordinate row ``(b, x_1, ..., x_D)`` is packed into one non-negative int64
key: the batch index in the high bits, then each spatial coordinate biased by
``2**(bits - 1)`` into its own bit field, first axis most significant. Sorting
keys therefore sorts rows lexicographically by (batch, x_1, ..., x_D), and
adding a fixed delta to a key moves the row by a fixed offset as long as no
field leaves its range, which the kernel-map search relies on.

=====  ==========  =========================  ===================
D      batch bits  bits per spatial axis      coordinate range
=====  ==========  =========================  ===================
1      15          32                         int32
2      15          24                         [-2**23, 2**23)
3      15          16                         [-2**15, 2**15)
4      11          13                         [-2**12, 2**12)
=====  ==========  =========================  ===================

The same layout is used by the GPU hash table, so keys agree across backends.
"""

from __future__ import annotations

import numpy as np

from ._arrays import array_module, read_only
from ._limits import check_memory, expansion_bytes

BATCH_BITS = {1: 15, 2: 15, 3: 15, 4: 11}
AXIS_BITS = {1: 32, 2: 24, 3: 16, 4: 13}


def coordinate_range(ndim: int) -> tuple[int, int]:
    """Half-open range ``[low, high)`` a spatial coordinate must lie in for D = ndim."""
    bits = AXIS_BITS[ndim]
    return -(1 << (bits - 1)), 1 << (bits - 1)


def batch_limit(ndim: int) -> int:
    """Number of batch indices representable for D = ndim (valid: 0 .. limit - 1)."""
    return 1 << BATCH_BITS[ndim]


def _field_shifts(ndim: int) -> list[int]:
    bits = AXIS_BITS[ndim]
    return [bits * (ndim - 1 - axis) for axis in range(ndim)]


def column_bounds(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column minimum and maximum of ``coords`` (N >= 1, M), as int64 arrays (M,).

    One strided reduction per column: NumPy's ``min(axis=0)`` over a narrow
    C-ordered (N, M) array runs about 50 times slower (~1 ms for 38,500 rows of 3).
    """
    columns = range(coords.shape[1])
    low = np.array([int(coords[:, j].min()) for j in columns], dtype=np.int64)
    high = np.array([int(coords[:, j].max()) for j in columns], dtype=np.int64)
    return low, high


def check_packable(coords: np.ndarray, name: str = "coords") -> None:
    """Raise ValueError when ``coords`` (N, 1 + D) does not fit the key layout."""
    ndim = coords.shape[1] - 1
    if coords.shape[0] == 0:
        return
    low, high = coordinate_range(ndim)
    if array_module(coords) is np:
        column_low, column_high = column_bounds(coords[:, 1:])
        c_min, c_max = int(column_low.min()), int(column_high.max())
    else:   # a device array: two reductions, not one per column
        spatial = coords[:, 1:]
        c_min, c_max = int(spatial.min()), int(spatial.max())
    if c_min < low or c_max >= high:
        raise ValueError(
            f"{name} spatial values must lie in the packable range [{low}, {high}) for "
            f"D={ndim}, got [{c_min}, {c_max}]; shift the coordinates (subtract their "
            f"minimum) or use a coarser voxel size"
        )
    b_max = int(coords[:, 0].max())
    if b_max >= batch_limit(ndim):
        raise ValueError(
            f"{name} batch index must be < {batch_limit(ndim)} for D={ndim}, got {b_max}"
        )


def reach_bounds(coords: np.ndarray, scale, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis minimum and maximum of ``scale * u + K[k]`` over the rows u of
    ``coords`` (N >= 1, 1 + D; host) and the offsets (K, D): the bounding box a map's
    queries or an expansion reach, from :func:`column_bounds` (int64 arrays (D,))."""
    column_low, column_high = column_bounds(coords[:, 1:])
    scale = np.asarray(scale, np.int64)
    ends = (column_low * scale, column_high * scale)
    return (np.minimum(*ends) + offsets.min(axis=0),
            np.maximum(*ends) + offsets.max(axis=0))


def pack(coords: np.ndarray, name: str = "coords", check: bool = True) -> np.ndarray:
    """Pack coordinate rows into int64 keys.

    Parameters
    ----------
    coords : ndarray of int, shape (N, 1 + D)
        Batch index in column 0, spatial coordinates after it.
    name : str
        Argument name used in the range error.
    check : bool
        Verify the range first (skip only for rows known to be in range).

    Returns
    -------
    keys : ndarray of int64, shape (N,)
    """
    if check:
        check_packable(coords, name)
    ndim = coords.shape[1] - 1
    bias = 1 << (AXIS_BITS[ndim] - 1)
    keys = coords[:, 0].astype(np.int64) << (AXIS_BITS[ndim] * ndim)
    for axis, shift in enumerate(_field_shifts(ndim)):
        field = coords[:, 1 + axis].astype(np.int64)
        field += bias
        if shift:
            field <<= shift
        keys |= field
    return keys


def pack_parts(batch: np.ndarray, spatial: np.ndarray) -> np.ndarray:
    """Pack a batch column (N,) and int64 spatial coordinates (N, D) known to be in range."""
    ndim = spatial.shape[1]
    bias = 1 << (AXIS_BITS[ndim] - 1)
    keys = batch.astype(np.int64) << (AXIS_BITS[ndim] * ndim)
    for axis, shift in enumerate(_field_shifts(ndim)):
        keys |= (spatial[:, axis] + bias) << shift
    return keys


def unpack(keys: np.ndarray, ndim: int) -> np.ndarray:
    """Inverse of :func:`pack`: int64 keys (N,) to int32 coordinates (N, 1 + D)."""
    bits = AXIS_BITS[ndim]
    mask = (1 << bits) - 1
    bias = 1 << (bits - 1)
    xp = array_module(keys)
    if xp is np and bits == 16 and (1 + ndim) * bits == 64 and np.little_endian:
        # D = 3: the key's four 16-bit fields are its four coordinates (batch highest):
        # one widening copy in reversed field order, one subtraction of the bias (a
        # shift, mask and strided store per column took ~3 ms on 150k keys)
        fields = np.ascontiguousarray(keys, dtype=np.int64).view(np.uint16)
        coords = fields.reshape(-1, 4)[:, ::-1].astype(np.int32)
        coords -= np.array([0, bias, bias, bias], dtype=np.int32)
        return coords
    coords = xp.empty((keys.shape[0], 1 + ndim), dtype=np.int32)
    coords[:, 0] = keys >> (bits * ndim)
    for axis, shift in enumerate(_field_shifts(ndim)):
        coords[:, 1 + axis] = ((keys >> shift) & mask) - bias
    return coords


def mixed_radix_keys(digits, sizes):
    """One int64 key per row from digit columns: ``sum_i digits[i] * prod(sizes[i+1:])``.

    The scheme of row keys whose ranges are known (dense-grid sites, the
    voxels of :func:`cusparseconv.voxelize`): with ``0 <= digits[i] < sizes[i]``
    the key is the row's flat C-order index in a grid of shape ``sizes``, so
    the numeric order of the keys is the lexicographic order of the rows. The
    caller checks that ``prod(sizes)`` fits in int64. (:func:`pack` is the other
    scheme: fixed bit fields that any coordinate set shares, for keys that must
    agree across sets and with the GPU hash table.)

    Parameters
    ----------
    digits : sequence of integer arrays, each of shape (N,)
    sizes : sequence of ints, one per column

    Returns
    -------
    keys : ndarray of int64, shape (N,)
    """
    keys = digits[0].astype(np.int64)
    for column, size in zip(digits[1:], sizes[1:]):
        keys *= int(size)
        keys += column
    return keys


def offset_deltas(offsets: np.ndarray) -> np.ndarray:
    """Key difference produced by each offset (K, D): valid while no field overflows."""
    ndim = offsets.shape[1]
    deltas = np.zeros(offsets.shape[0], dtype=np.int64)
    for axis, shift in enumerate(_field_shifts(ndim)):
        deltas += offsets[:, axis].astype(np.int64) << shift
    return deltas


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


def content_digest(keys) -> int:
    """64-bit digest of packed keys in row order; two orders of the same rows differ.

    Computed with array operations on the keys' own device (NumPy or CuPy);
    only the final 64-bit value comes back to the host. Each key is combined
    with its row position, mixed (the splitmix64 finaliser) and the results
    are summed modulo 2**64. A digest only proposes a match: the coordinate
    cache compares the rows before it reuses a set.

    Parameters
    ----------
    keys : ndarray of int64, shape (N,)

    Returns
    -------
    int in [0, 2**64)
    """
    xp = array_module(keys)
    mixed = xp.arange(keys.shape[0], dtype=np.uint64)
    mixed *= _GOLDEN
    mixed ^= keys.view(np.uint64)
    mixed ^= mixed >> np.uint64(30)
    mixed *= _MIX_1
    mixed ^= mixed >> np.uint64(27)
    mixed *= _MIX_2
    mixed ^= mixed >> np.uint64(31)
    return int(mixed.sum(dtype=np.uint64))


class SortedKeys:
    """The packed keys of one coordinate set, sorted, with the permutation: a frozen
    value (NumPy arrays read-only; compared by identity, so a backend can keep
    per-set state, e.g. a device hash table, in its own weak-keyed table).

    Attributes
    ----------
    keys : ndarray of int64, shape (N,)
        Packed keys in ascending order.
    order : ndarray of int64, shape (N,)
        ``keys == pack(coords)[order]``; row ``order[i]`` of the set has rank i.
    is_identity : bool
        True when the rows were already sorted (``order`` is ``arange(N)``).
    """

    __slots__ = ("keys", "order", "is_identity", "__weakref__")

    def __init__(self, coords: np.ndarray, name: str = "coords"):
        self._fill(pack(coords, name), coords, name)

    @classmethod
    def _of(cls, keys, order, is_identity: bool) -> "SortedKeys":
        """A value from its parts (no checks: the caller guarantees them)."""
        self = cls.__new__(cls)
        init = object.__setattr__
        init(self, "keys", read_only(keys))
        init(self, "order", read_only(order))
        init(self, "is_identity", bool(is_identity))
        return self

    def __setattr__(self, name, value):
        raise AttributeError(f"SortedKeys is a frozen value: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"SortedKeys is a frozen value: cannot delete {name!r}")

    def __reduce__(self):
        return SortedKeys._of, (self.keys, self.order, self.is_identity)

    @classmethod
    def from_packed(cls, keys: np.ndarray, coords: np.ndarray,
                    name: str = "coords") -> "SortedKeys":
        """Sort keys already packed from ``coords`` (rows in their order); checks
        that the rows are unique."""
        self = cls.__new__(cls)
        self._fill(keys, coords, name)
        return self

    def _fill(self, keys, coords, name):
        xp = array_module(keys)
        init = object.__setattr__
        if keys.shape[0] < 2 or bool(xp.all(keys[1:] > keys[:-1])):
            init(self, "keys", read_only(keys))
            init(self, "order", read_only(xp.arange(keys.shape[0], dtype=np.int64)))
            init(self, "is_identity", True)
            return
        order = xp.argsort(keys, kind="stable") if xp is np else xp.argsort(keys)
        sorted_keys = keys[order]
        duplicate = xp.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        if duplicate.size:
            row = int(order[duplicate[0] + 1])
            first = int(order[duplicate[0]])
            raise ValueError(
                f"{name} must hold unique rows, got {int(duplicate.size)} duplicate(s), e.g. "
                f"rows {first} and {row} are both {coords[row].tolist()}; merge duplicate "
                f"points first (cusparseconv.voxelize does)"
            )
        init(self, "keys", read_only(sorted_keys))
        init(self, "order", read_only(order))
        init(self, "is_identity", False)

    @property
    def nbytes(self) -> int:
        """Bytes held (keys and order; what a backend keeps per set is counted there)."""
        return int(self.keys.nbytes + self.order.nbytes)

    @classmethod
    def from_sorted_unique(cls, keys: np.ndarray) -> "SortedKeys":
        """Wrap keys already sorted and unique (rows in key order)."""
        return cls._of(keys, array_module(keys).arange(keys.shape[0], dtype=np.int64), True)

    def rank_of(self, query_keys: np.ndarray) -> np.ndarray:
        """Row index of each query key in the set, -1 where absent. (M,) int64."""
        xp = array_module(query_keys)
        n = self.keys.shape[0]
        if n == 0:
            return xp.full(query_keys.shape[0], -1, dtype=np.int64)
        pos = xp.searchsorted(self.keys, query_keys)
        xp.minimum(pos, n - 1, out=pos)
        found = self.keys[pos] == query_keys
        rows = self.order[pos]
        rows[~found] = -1
        return rows


def unique_sorted_keys(keys: np.ndarray) -> np.ndarray:
    """Sorted unique int64 keys (a run-aware stable sort, then adjacent difference)."""
    if keys.shape[0] == 0:
        return keys
    xp = array_module(keys)
    keys = xp.sort(keys, kind="stable") if xp is np else xp.sort(keys)
    keep = xp.empty(keys.shape[0], dtype=bool)
    keep[0] = True
    xp.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def downsample(coords: np.ndarray, stride: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``floor(v / s)`` over the rows of ``coords``, sorted by key.

    Parameters
    ----------
    coords : ndarray of int32, shape (N, 1 + D)
    stride : tuple of D ints >= 1

    Returns
    -------
    coarse : ndarray of int32, shape (M, 1 + D), rows sorted lexicographically.
    keys : ndarray of int64, shape (M,), their packed keys (ascending).
    """
    ndim = coords.shape[1] - 1
    xp = array_module(coords)
    spatial = xp.floor_divide(coords[:, 1:].astype(np.int64), xp.asarray(stride, np.int64))
    keys = unique_sorted_keys(pack_parts(coords[:, 0], spatial))
    return unpack(keys, ndim), keys


def expand(coords: np.ndarray, offsets: np.ndarray, scale: tuple[int, ...],
           name: str = "coords") -> tuple[np.ndarray, np.ndarray]:
    """Unique ``scale * u + K[k]`` over rows u and offsets k, sorted by key.

    This is the output set of a transposed generative convolution (scale =
    stride) and, with the negated kernel, of a generative one (scale 1:
    ``{u - K[k]}``, every coordinate some input reaches).

    Parameters
    ----------
    coords : ndarray of int32, shape (N, 1 + D)
    offsets : ndarray of int32, shape (K, D)
    scale : tuple of D ints

    Returns
    -------
    expanded : ndarray of int32, shape (M, 1 + D)
    keys : ndarray of int64, shape (M,), their packed keys (ascending).

    Raises
    ------
    ValueError
        When an expanded coordinate leaves the packable range.
    """
    ndim = coords.shape[1] - 1
    xp = array_module(coords)
    if coords.shape[0] == 0:
        return xp.empty((0, 1 + ndim), dtype=np.int32), xp.empty(0, dtype=np.int64)
    n_candidates = coords.shape[0] * offsets.shape[0]
    check_memory(expansion_bytes(coords.shape[0], offsets.shape[0], ndim),
                 f"{name}: expanding {coords.shape[0]:,} rows by {offsets.shape[0]:,} kernel "
                 f"offsets gives up to {n_candidates:,} output rows",
                 "use a smaller kernel or fewer rows")
    base = coords[:, 1:].astype(np.int64) * xp.asarray(scale, np.int64)
    low, high = coordinate_range(ndim)
    if xp is np:
        lo, hi = reach_bounds(coords, scale, offsets)
    else:
        lo = np.asarray(base.min(axis=0).tolist()) + offsets.min(axis=0)
        hi = np.asarray(base.max(axis=0).tolist()) + offsets.max(axis=0)
    if (lo < low).any() or (hi >= high).any():
        raise ValueError(
            f"{name}: the generated output coordinates span [{lo.min()}, {hi.max()}], "
            f"outside the packable range [{low}, {high}) for D={ndim}; shift the input "
            f"coordinates towards 0"
        )
    keys = pack_parts(coords[:, 0], base)
    # Sorting the base first makes every offset's block an ascending run, which
    # the stable (run-aware) sort merges cheaply.
    keys.sort()
    # A box of offsets (kernel size >= 3, any dilation) is the sum of its axes' values:
    # one axis at a time, each step merges a few runs of a set that grows by the
    # neighbours it reaches (surface-50k, 3x3x3: 3 x (50k + 90k + 125k) candidates, not
    # 27 x 50k, and merges of 3 runs, not 27: see the commit); the same set either way.
    for deltas in _expansion_steps(offsets):
        keys = unique_sorted_keys((keys[None, :] + xp.asarray(deltas)[:, None]).reshape(-1))
    return unpack(keys, ndim), keys


def _expansion_steps(offsets: np.ndarray) -> list[np.ndarray]:
    """Key deltas to add one after the other, each step's set of sums made unique, so
    that the result is ``{key + delta(k)}`` over every offset k: one step per axis when
    the offsets are the Cartesian product of their axes' values (a box kernel), else one
    step with every offset (also for boxes with two values on an axis). (K, D) host
    ints -> list of int64 arrays."""
    offsets = np.asarray(offsets)
    ndim = offsets.shape[1]
    axes = [np.unique(offsets[:, axis]) for axis in range(ndim)]
    box = int(np.prod([len(values) for values in axes]))
    if (ndim < 2 or min(len(values) for values in axes) < 3
            or box != np.unique(offsets, axis=0).shape[0]):
        # not a box, or one of two values on an axis (2x2x2: the steps make 2 + 4 + 8
        # candidates per row for 8 in one step; at stride 2 none coincide)
        return [offset_deltas(offsets)]
    steps = []
    for axis, values in enumerate(axes):
        along = np.zeros((len(values), ndim), dtype=np.int64)
        along[:, axis] = values
        steps.append(offset_deltas(along))
    return steps
