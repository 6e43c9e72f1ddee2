"""SparseTensor and the coordinate cache that follows it through a network."""

from __future__ import annotations

import numpy as np

from ._arrays import array_module
from ._checks import check_coords, check_feats, check_finite, per_axis
from .coords import SortedKeys, downsample, expand


class CoordinateCache:
    """Coordinate sets, their relations and kernel maps, shared along a network.

    Every tensor produced from another one shares its cache, so a kernel map is
    built once per geometry and reused by every layer, by the backward pass and
    by the transposed convolutions of a U-Net decoder (which find the finer
    coordinates they restore here).

    Coordinate sets are identified by integer ids; the arrays are immutable by
    convention (do not write into ``tensor.coords``).
    """

    def __init__(self):
        self._coords: list[np.ndarray] = []
        self._keys: list[SortedKeys | None] = []
        self._by_array: dict[int, int] = {}
        self._coarser: dict[tuple, int] = {}     # (fine id, stride) -> coarse id
        self._finer: dict[tuple, int] = {}       # (coarse id, stride) -> fine id
        self._expanded: dict[tuple, int] = {}    # (id, offsets, scale) -> id
        self._per_item: dict[int, int] = {}      # id -> id of its (b, 0, ..., 0) rows
        self._kernel_maps: dict[tuple, object] = {}

    # ---------------------------------------------------------------- sets
    def register(self, coords: np.ndarray, keys: SortedKeys | None = None,
                 name: str = "coords") -> int:
        """Add a coordinate set (validated: packable range, unique rows); return its id."""
        known = self._by_array.get(id(coords))
        if known is not None and self._coords[known] is coords:
            return known
        if keys is None:
            keys = SortedKeys(coords, name)  # checks range and duplicates
        if isinstance(coords, np.ndarray) and coords.flags.writeable:
            coords = coords.view()
            coords.flags.writeable = False  # the cache relies on sets never changing
        self._coords.append(coords)
        self._keys.append(keys)
        set_id = len(self._coords) - 1
        self._by_array[id(self._coords[set_id])] = set_id
        return set_id

    def coords(self, set_id: int) -> np.ndarray:
        """The (N, 1 + D) int32 coordinates of a set."""
        return self._coords[set_id]

    def keys(self, set_id: int) -> SortedKeys:
        """The sorted packed keys of a set."""
        return self._keys[set_id]

    def downsample(self, set_id: int, stride: tuple[int, ...]) -> int:
        """Id of ``unique(floor(v / stride))``; remembers the finer set for later."""
        cache_key = (set_id, tuple(stride))
        coarse = self._coarser.get(cache_key)
        if coarse is None:
            coarse_coords, coarse_keys = downsample(self._coords[set_id], stride)
            coarse = self.register(coarse_coords, SortedKeys.from_sorted_unique(coarse_keys))
            self._coarser[cache_key] = coarse
            self._finer.setdefault((coarse, tuple(stride)), set_id)
        return coarse

    def finer(self, set_id: int, stride: tuple[int, ...]) -> int | None:
        """Id of the set that ``set_id`` was downsampled from by ``stride``, or None."""
        return self._finer.get((set_id, tuple(stride)))

    def expand(self, set_id: int, offsets: np.ndarray, scale: tuple[int, ...]) -> int:
        """Id of ``unique(scale * u + K[k])`` (generative output coordinates)."""
        cache_key = (set_id, offsets.tobytes(), offsets.shape, tuple(scale))
        expanded = self._expanded.get(cache_key)
        if expanded is None:
            coords, keys = expand(self._coords[set_id], offsets, scale)
            expanded = self.register(coords, SortedKeys.from_sorted_unique(keys))
            self._expanded[cache_key] = expanded
        return expanded

    def batch_rows(self, set_id: int, batches) -> int:
        """Id of the set ``(b, 0, ..., 0)`` for the batch indices present (global pooling)."""
        known = self._per_item.get(set_id)
        if known is None:
            coords = self._coords[set_id]
            xp = array_module(coords)
            rows = xp.zeros((batches.shape[0], coords.shape[1]), dtype=np.int32)
            rows[:, 0] = batches
            known = self.register(rows)
            self._per_item[set_id] = known
        return known

    # ---------------------------------------------------------- kernel maps
    def kernel_map(self, in_id: int, out_id: int, offsets: np.ndarray,
                   stride: tuple[int, ...], transposed: bool):
        """The kernel map for this geometry, built on first use.

        A transposed map is the reverse of the forward map with input and output
        exchanged, so a decoder layer reuses its encoder's map.
        """
        from .backends import backend_for

        geometry = (offsets.tobytes(), offsets.shape, tuple(stride))
        cache_key = (in_id, out_id, transposed) + geometry
        kmap = self._kernel_maps.get(cache_key)
        if kmap is not None:
            return kmap
        mirror = self._kernel_maps.get((out_id, in_id, not transposed) + geometry)
        if mirror is not None:
            kmap = mirror.reverse()
        else:
            in_coords, out_coords = self._coords[in_id], self._coords[out_id]
            backend = backend_for(in_coords, out_coords)
            kmap = backend.build_kernel_map(
                in_coords, out_coords, offsets, tuple(stride), transposed,
                same_set=in_id == out_id, in_keys=self._keys[in_id],
                out_keys=self._keys[out_id])
        self._kernel_maps[cache_key] = kmap
        return kmap

    def clear_kernel_maps(self) -> None:
        """Drop the cached kernel maps (coordinate sets are kept)."""
        self._kernel_maps.clear()

    def __repr__(self) -> str:
        return (f"CoordinateCache(sets={len(self._coords)}, "
                f"kernel_maps={len(self._kernel_maps)})")


class SparseTensor:
    """A sparse tensor: unique integer coordinates with a feature row each.

    Parameters
    ----------
    coords : ndarray of int, shape (N, 1 + D)
        Column 0 is the batch index (>= 0), columns 1..D the voxel coordinates
        (negative values allowed). Rows must be unique; order is kept. Stored
        as int32.
    feats : ndarray, shape (N, C)
        float16, bfloat16, float32 or float64 features, one row per coordinate.
    stride : int or tuple of D ints
        Tensor stride (1 for raw voxels); grows by ``s`` after a stride-``s``
        convolution.
    cache : CoordinateCache, optional
        Share coordinates and kernel maps with other tensors; a new cache is made
        when omitted. Tensors returned by operations share their input's cache.
    check_finite : bool
        Raise ValueError if ``feats`` holds NaN or Inf (off by default: it reads
        every feature).

    Examples
    --------
    >>> import numpy as np, cusparseconv as csc
    >>> coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=np.int32)
    >>> x = csc.SparseTensor(coords, np.ones((3, 4), dtype=np.float32))
    >>> x.ndim, x.stride, x.feats.shape
    (3, (1, 1, 1), (3, 4))
    """

    def __init__(self, coords, feats, stride=1, *, cache: CoordinateCache | None = None,
                 check_finite: bool = False):
        original = coords
        coords = check_coords(coords, "coords")
        if coords is original:  # own a copy: the cache relies on it not changing
            coords = coords.copy()
        if isinstance(coords, np.ndarray):
            coords.flags.writeable = False
        feats = check_feats(feats, coords.shape[0], "feats")
        if check_finite:
            _assert_finite(feats, "feats")
        self._cache = cache if cache is not None else CoordinateCache()
        self._coord_id = self._cache.register(coords)
        self._feats = feats
        self._stride = per_axis(stride, coords.shape[1] - 1, "stride")

    @classmethod
    def _from_set(cls, cache: CoordinateCache, coord_id: int, feats,
                  stride: tuple[int, ...]) -> "SparseTensor":
        """Internal constructor for operation outputs (coordinates already validated)."""
        tensor = cls.__new__(cls)
        tensor._cache = cache
        tensor._coord_id = coord_id
        tensor._feats = feats
        tensor._stride = tuple(stride)
        return tensor

    @property
    def coords(self) -> np.ndarray:
        """int32 array (N, 1 + D): batch index, then the D coordinates."""
        return self._cache.coords(self._coord_id)

    @property
    def feats(self):
        """Feature array (N, C)."""
        return self._feats

    @property
    def stride(self) -> tuple[int, ...]:
        """Tensor stride, one int per spatial axis."""
        return self._stride

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions D."""
        return self.coords.shape[1] - 1

    @property
    def num_channels(self) -> int:
        """Number of feature channels C."""
        return self._feats.shape[1]

    @property
    def batch_size(self) -> int:
        """1 + the largest batch index (0 for an empty tensor)."""
        coords = self.coords
        return int(coords[:, 0].max()) + 1 if coords.shape[0] else 0

    @property
    def cache(self) -> CoordinateCache:
        """The coordinate/kernel-map cache this tensor shares."""
        return self._cache

    def __len__(self) -> int:
        return self.coords.shape[0]

    def replace_feats(self, feats) -> "SparseTensor":
        """Same coordinates, stride and cache with new features (N, C') — e.g. after
        a normalisation or an activation applied to the rows."""
        feats = check_feats(feats, len(self), "feats")
        return SparseTensor._from_set(self._cache, self._coord_id, feats, self._stride)

    def assert_finite(self) -> "SparseTensor":
        """Raise ValueError if the features hold NaN or Inf; return self."""
        _assert_finite(self._feats, "feats")
        return self

    def __repr__(self) -> str:
        return (f"SparseTensor(n={len(self)}, ndim={self.ndim}, channels={self.num_channels}, "
                f"dtype={self._feats.dtype}, stride={self._stride})")


def _assert_finite(feats, name: str) -> None:
    check_finite(np.asarray(feats, dtype=np.float64) if feats.dtype.name == "bfloat16"
                 else feats, name)
