"""SparseTensor and the coordinate cache that follows it through a network.

The cache's coordinate operations (downsampling, expansion, batch rows) and
kernel-map builds run on the backend of the coordinates
(:func:`cusparseconv.backends.backend_for`).
"""

from __future__ import annotations

import collections
import itertools
import threading
import weakref

import numpy as np

from ._arrays import array_module
from ._checks import (MAX_STRIDE, check_coords, check_feats, check_finite, per_axis,
                      warn_if_batch_looks_spatial)
from ._limits import check_kernel_map_size
from ._switch import short_switch_interval
from .backends import backend_for, state_nbytes
from .coords import SortedKeys, content_digest, pack


class _Content:
    """The rows of a coordinate set, shared by every set with the same rows in the
    same order (kernel maps are cached per content).

    Attributes
    ----------
    serial : int
        Unique within the process; keys the cache's kernel maps.
    data : ndarray of int32, shape (N, 1 + D)
        The rows, owned here (C-contiguous, never written).
    keys : SortedKeys
    digest : int
        :func:`cusparseconv.coords.content_digest` of the keys in row order.
    """

    __slots__ = ("serial", "data", "keys", "digest", "__weakref__")

    def __init__(self, serial: int, data, keys: SortedKeys, digest: int):
        self.serial = serial
        self.data = data
        self.keys = keys
        self.digest = digest

    @property
    def nbytes(self) -> int:
        """Bytes of the rows, their keys and what backends keep for them (hash tables)."""
        return self.data.nbytes + self.keys.nbytes + state_nbytes(self.keys)

    def __reduce__(self):
        return _restore_content, (self.data, self.digest)


def _restore_content(data, digest) -> _Content:
    """Unpickled rows (a new serial: kernel maps are not pickled)."""
    return _Content(next(_SERIALS), data, SortedKeys(data), digest)


class _CoordSet:
    """One coordinate set of a cache: its rows (a shared :class:`_Content`) and where
    it came from.

    Tensors, kernel-map lookups and :func:`cusparseconv.layer_kernel_map` hand
    this object around as the set's id; holding it (or the array
    :meth:`public` returns, whose ``base`` it is) keeps the set alive. Two sets
    may hold equal rows (registered separately, or downsampled from different
    finer sets): they share rows and kernel maps, but each knows only its own
    history, so a decoder restores the finer set its own tensor came from.

    Attributes
    ----------
    content : _Content
    finer : dict
        stride -> the set this one was downsampled from (kept alive: a decoder
        restores it).
    derived : dict
        relation -> weak reference to a set derived from this one (downsampled,
        expanded, one row per batch item).
    """

    __slots__ = ("_owner", "content", "finer", "derived", "_view", "__weakref__")

    def __init__(self, owner, content: _Content):
        self._owner = owner
        self.content = content
        self.finer = {}
        self.derived = {}
        self._view = None

    @property
    def data(self):
        """The (N, 1 + D) int32 rows (internal: never write)."""
        return self.content.data

    @property
    def keys(self) -> SortedKeys:
        return self.content.keys

    @property
    def __array_interface__(self):
        # NumPy builds the public view from this: read-only, and its ``base`` is
        # the set, so whoever holds the coordinates keeps the set alive.
        interface = dict(self.content.data.__array_interface__)
        interface["data"] = (interface["data"][0], True)
        return interface

    def public(self):
        """The rows as the user sees them: a read-only NumPy view (CuPy: the array)."""
        if not isinstance(self.content.data, np.ndarray):
            return self.content.data
        view = self._view() if self._view is not None else None
        if view is None:
            view = np.asarray(self)
            self._view = weakref.ref(view)
        return view

    def is_public_view(self, array) -> bool:
        """Is ``array`` the view :meth:`public` handed out?"""
        return self._view is not None and self._view() is array

    def __reduce__(self):
        # Rows and history travel; derived sets and the view are rebuilt on demand.
        return _restore_set, (self._owner, self.content, self.finer)

    def __repr__(self) -> str:
        return (f"<coordinate set of {self.content.data.shape[0]} rows "
                f"(content #{self.content.serial})>")


def _restore_set(owner, content, finer) -> _CoordSet:
    restored = _CoordSet(owner, content)
    restored.finer.update(finer)
    return restored


def _same_rows(a, b) -> bool:
    return a.shape == b.shape and bool(array_module(a).array_equal(a, b))


def _released(cache_ref, serial: int) -> None:
    """Rows died: their kernel maps go (now if the cache is free, else at its next use)."""
    cache = cache_ref()
    if cache is None:
        return
    cache._dead.append(serial)
    if cache._lock.acquire(blocking=False):  # never waits: may run inside a locked section
        try:
            cache._purge()
        finally:
            cache._lock.release()


class CoordinateCache:
    """Coordinate sets, their relations and kernel maps, shared along a network.

    Every tensor produced from another one shares its cache, so a kernel map is
    built once per geometry and reused by every layer, by the backward pass and
    by the transposed convolutions of a U-Net decoder (which find the finer
    coordinates they restore here).

    Rows are deduplicated by content: rows equal (same rows, same order) to
    rows the cache still holds share them and their kernel maps. The cache
    always stores its own copy, so later writes into the caller's array change
    nothing. Where a set came from (the finer set a downsampled set restores)
    belongs to the set, never to its rows: registering equal rows again gives a
    new set without that history. The cache is bounded:

    * a set lives while something holds it: a tensor, the array its
      ``coords`` returned, a coarser set of a U-Net (which keeps the finer set
      it was downsampled from), or the cache's list of the ``keep_recent`` sets
      used last (so that repeated calls on the same coordinates find their
      rows and maps again);
    * a kernel map is released with the rows of either of its sets, and at
      most ``max_kernel_maps`` maps are kept (least recently used dropped
      first).

    So a training loop that reuses one cache holds what the live tensors reach
    plus ``keep_recent`` sets and the maps among them, whatever the number of
    steps. All methods are thread-safe.

    Parameters
    ----------
    keep_recent : int
        Sets kept after their tensors are gone (default 16; 0 keeps none).
    max_kernel_maps : int
        Kernel maps kept at most (default 256).
    """

    def __init__(self, *, keep_recent: int = 16, max_kernel_maps: int = 256):
        for name, value, low in (("keep_recent", keep_recent, 0),
                                 ("max_kernel_maps", max_kernel_maps, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self._keep_recent = keep_recent
        self._max_kernel_maps = max_kernel_maps
        self._lock = threading.Lock()
        self._token = object()                            # marks this cache's sets
        self._sets = weakref.WeakSet()                    # every live set
        self._contents = weakref.WeakValueDictionary()    # serial -> live rows
        self._by_digest = weakref.WeakValueDictionary()   # (rows, columns, digest) -> rows
        self._recent = collections.OrderedDict()          # id(set) -> set (strong, LRU)
        self._kernel_maps = collections.OrderedDict()     # key -> KernelMap (LRU)
        self._maps_of = {}                                # content serial -> map keys
        self._dead = collections.deque()                  # serials of released rows
        # id(array handed out by coords()) -> its set, for adapters that look arrays
        # up by identity before registering (register() itself needs no lookup).
        self._by_array = weakref.WeakValueDictionary()

    def __reduce__(self):
        # A pickled cache (e.g. inside a tensor a DataLoader worker returns) arrives
        # empty: sets travel with the tensors that hold them, kernel maps are rebuilt.
        return _restore_cache, (self._token, self._keep_recent, self._max_kernel_maps)

    # ------------------------------------------------------------ internals
    def _purge(self) -> None:
        """Drop the kernel maps of released rows (lock held)."""
        while self._dead:
            serial = self._dead.popleft()
            for key in tuple(self._maps_of.pop(serial, ())):
                self._drop_map(key)

    def _drop_map(self, key) -> None:
        self._kernel_maps.pop(key, None)
        for serial in (key[0], key[1]):
            keys = self._maps_of.get(serial)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._maps_of[serial]

    def _touch(self, *sets) -> None:
        """Mark sets as used last (lock held); the oldest beyond keep_recent are let go."""
        for coord_set in sets:
            self._recent[id(coord_set)] = coord_set
            self._recent.move_to_end(id(coord_set))
        while len(self._recent) > self._keep_recent:
            self._recent.popitem(last=False)

    def _own(self, coord_set) -> _CoordSet:
        if not isinstance(coord_set, _CoordSet) or coord_set._owner is not self._token:
            raise ValueError(f"{coord_set!r} is not a coordinate set of this cache")
        return coord_set

    def _new_set(self, content: _Content) -> _CoordSet:
        """A new set on these rows (lock held)."""
        created = _CoordSet(self._token, content)
        self._sets.add(created)
        self._touch(created)
        return created

    def _content_for(self, coords, keys, name, owned) -> _Content:
        """Rows equal to ``coords`` that the cache holds, or new ones (validated)."""
        xp = array_module(coords)
        if keys is None:
            packed = pack(coords, name)                  # checks the packable range
        elif keys.is_identity:
            packed = keys.keys
        else:
            packed = pack(coords, name, check=False)
        lookup = (coords.shape[0], coords.shape[1], content_digest(packed))
        with self._lock:
            found = self._by_digest.get(lookup)
        if found is not None and _same_rows(found.data, coords):
            return found
        data = coords if owned else xp.array(coords, dtype=np.int32, order="C", copy=True)
        if keys is None:
            keys = SortedKeys.from_packed(packed, data, name)   # checks unique rows
        with self._lock:
            found = self._by_digest.get(lookup)        # another thread may have been faster
            if found is not None and _same_rows(found.data, data):
                return found
            content = _Content(next(_SERIALS), data, keys, lookup[2])
            self._contents[content.serial] = content
            if found is None:                          # (a digest collision keeps the first)
                self._by_digest[lookup] = content
            weakref.finalize(content, _released, weakref.ref(self),
                             content.serial).atexit = False
            return content

    def _derived(self, coord_set, relation):
        """The live set derived from ``coord_set`` by ``relation``, or None."""
        with self._lock:
            ref = coord_set.derived.get(relation)
            found = ref() if ref is not None else None
            if found is not None:
                self._touch(found)
            return found

    # ---------------------------------------------------------------- sets
    @short_switch_interval
    def register(self, coords, keys: SortedKeys | None = None, name: str = "coords", *,
                 owned: bool = False) -> _CoordSet:
        """A new coordinate set on these rows (validated: packable range, unique rows).

        Rows equal (same rows in the same order) to rows the cache holds are
        shared with them, and so are their kernel maps; otherwise the cache
        stores a copy of ``coords`` (no copy with ``owned=True``, for arrays the
        library itself just created and hands out nowhere else). The array a
        set's :meth:`coords` returned maps back to that very set.

        Parameters
        ----------
        coords : ndarray of int32, shape (N, 1 + D)
            Validated by :func:`cusparseconv._checks.check_coords`.
        keys : SortedKeys, optional
            The rows' sorted keys when already known.
        name : str
            Argument name for error messages.
        owned : bool

        Returns
        -------
        The set (an opaque id: pass it to :meth:`coords`, :meth:`kernel_map`, ...).
        """
        if isinstance(coords, _CoordSet):
            return self._own(coords)
        base = getattr(coords, "base", None)
        if (type(base) is _CoordSet and base._owner is self._token
                and base.is_public_view(coords)):
            with self._lock:
                self._touch(base)
            return base
        content = self._content_for(coords, keys, name, owned)
        with self._lock:
            return self._new_set(content)

    def coords(self, set_id) -> np.ndarray:
        """The (N, 1 + D) int32 coordinates of a set (read-only)."""
        coord_set = self._own(set_id)
        view = coord_set.public()
        with self._lock:
            self._by_array[id(view)] = coord_set
        return view

    def keys(self, set_id) -> SortedKeys:
        """The sorted packed keys of a set."""
        return self._own(set_id).keys

    @short_switch_interval
    def downsample(self, set_id, stride: tuple[int, ...]) -> _CoordSet:
        """The set ``unique(floor(v / stride))``; it remembers ``set_id`` as its finer set."""
        fine = self._own(set_id)
        stride = tuple(stride)
        relation = ("down", stride)
        coarse = self._derived(fine, relation)
        if coarse is None:
            coarse_coords, coarse_keys = backend_for(fine.data).downsample(fine.data, stride)
            content = self._content_for(coarse_coords, SortedKeys.from_sorted_unique(
                coarse_keys), "coords", owned=True)
            with self._lock:
                coarse = self._new_set(content)
                coarse.finer[stride] = fine
                fine.derived[relation] = weakref.ref(coarse)
        return coarse

    def finer(self, set_id, stride: tuple[int, ...]) -> _CoordSet | None:
        """The set that ``set_id`` was downsampled from by ``stride``, or None."""
        with self._lock:
            return self._own(set_id).finer.get(tuple(stride))

    def _derive(self, source, relation, make_rows) -> _CoordSet:
        """The set derived from ``source`` by ``relation`` (built by ``make_rows``)."""
        known = self._derived(source, relation)
        if known is None:
            coords, keys = make_rows()
            content = self._content_for(coords, keys, "coords", owned=True)
            with self._lock:
                known = self._new_set(content)
                source.derived[relation] = weakref.ref(known)
        return known

    @short_switch_interval
    def expand(self, set_id, offsets: np.ndarray, scale: tuple[int, ...]) -> _CoordSet:
        """The set ``unique(scale * u + K[k])`` over its rows u and the offsets k."""
        source = self._own(set_id)

        def make_rows():
            coords, keys = backend_for(source.data).expand(source.data, offsets, scale)
            return coords, SortedKeys.from_sorted_unique(keys)

        return self._derive(source, ("expand", offsets.tobytes(), offsets.shape,
                                     tuple(scale)), make_rows)

    @short_switch_interval
    def batch_rows(self, set_id) -> _CoordSet:
        """The set ``(b, 0, ..., 0)`` for the batch indices present in ``set_id``, sorted
        by b (global pooling); derived once per set."""
        source = self._own(set_id)

        def make_rows():
            backend = backend_for(source.data)
            batches, _ = backend.batch_segments(source.data)
            rows = backend.xp.zeros((batches.shape[0], source.data.shape[1]), dtype=np.int32)
            rows[:, 0] = batches
            return rows, None

        return self._derive(source, ("items",), make_rows)

    # ---------------------------------------------------------- kernel maps
    @short_switch_interval
    def kernel_map(self, in_id, out_id, offsets: np.ndarray, stride: tuple[int, ...],
                   transposed: bool):
        """The kernel map for this geometry, built on first use.

        A transposed map is the reverse of the forward map with input and output
        exchanged, so a decoder layer reuses its encoder's map. The size of a new
        map is estimated first (:func:`cusparseconv.set_memory_limit`).
        """
        in_set, out_set = self._own(in_id), self._own(out_id)
        rows_in, rows_out = in_set.content, out_set.content
        geometry = (offsets.tobytes(), offsets.shape, tuple(stride))
        key = (rows_in.serial, rows_out.serial, bool(transposed)) + geometry
        with self._lock:
            self._purge()
            self._touch(in_set, out_set)
            kmap = self._kernel_maps.get(key)
            if kmap is not None:
                self._kernel_maps.move_to_end(key)
                return kmap
            mirror = self._kernel_maps.get(
                (rows_out.serial, rows_in.serial, not transposed) + geometry)
        backend = backend_for(rows_in.data, rows_out.data)
        if mirror is not None:
            kmap = backend.reverse(mirror)
        else:
            check_kernel_map_size(rows_in.data.shape[0], rows_out.data.shape[0],
                                  offsets.shape[0], backend)
            kmap = backend.build_kernel_map(
                rows_in.data, rows_out.data, offsets, tuple(stride), transposed,
                same_set=rows_in is rows_out, in_keys=rows_in.keys, out_keys=rows_out.keys)
        with self._lock:
            existing = self._kernel_maps.get(key)   # built by another thread meanwhile
            if existing is not None:
                return existing
            self._kernel_maps[key] = kmap
            for serial in (rows_in.serial, rows_out.serial):
                self._maps_of.setdefault(serial, set()).add(key)
            while len(self._kernel_maps) > self._max_kernel_maps:
                self._drop_map(next(iter(self._kernel_maps)))
        return kmap

    def clear_kernel_maps(self) -> None:
        """Drop the cached kernel maps (coordinate sets are kept)."""
        with self._lock:
            self._kernel_maps.clear()
            self._maps_of.clear()

    def clear(self) -> None:
        """Drop the kernel maps and the recently used sets (live tensors keep theirs)."""
        with self._lock:
            self._kernel_maps.clear()
            self._maps_of.clear()
            self._recent.clear()

    def stats(self) -> dict:
        """What the cache holds now.

        Returns
        -------
        dict
            ``sets`` (live coordinate sets), ``rows`` (distinct row arrays they
            share), ``kernel_maps``, ``recent`` (sets kept by the recent list)
            and ``bytes`` (rows, keys and cached maps).
        """
        with self._lock:
            self._purge()
            n_sets = len(self._sets)
            contents = list(self._contents.values())
            maps = list(self._kernel_maps.values())
            recent = len(self._recent)
        return {"sets": n_sets, "rows": len(contents), "kernel_maps": len(maps),
                "recent": recent,
                "bytes": sum(c.nbytes for c in contents)
                + sum(m.nbytes + state_nbytes(m) for m in maps)}

    def __repr__(self) -> str:
        stats = self.stats()
        return (f"CoordinateCache(sets={stats['sets']}, rows={stats['rows']}, "
                f"kernel_maps={stats['kernel_maps']}, keep_recent={self._keep_recent}, "
                f"max_kernel_maps={self._max_kernel_maps})")


_SERIALS = itertools.count()


def _restore_cache(token, keep_recent, max_kernel_maps) -> CoordinateCache:
    cache = CoordinateCache(keep_recent=keep_recent, max_kernel_maps=max_kernel_maps)
    cache._token = token   # the sets pickled with it still belong to it
    return cache


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
        The cache stores its own copy of ``coords``: later writes into the
        caller's array change nothing.
    check_finite : bool
        Raise ValueError if ``feats`` holds NaN or Inf (off by default: it reads
        every feature).
    ndim : int, optional
        The number of spatial dimensions D the coordinates must have (1 to 4);
        an error names the mismatch. Without it, three columns with a column 0
        reaching 1024 or more warn that the batch column may be missing.

    Examples
    --------
    >>> import numpy as np, cusparseconv as csc
    >>> coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=np.int32)
    >>> x = csc.SparseTensor(coords, np.ones((3, 4), dtype=np.float32))
    >>> x.ndim, x.stride, x.feats.shape
    (3, (1, 1, 1), (3, 4))
    """

    @short_switch_interval
    def __init__(self, coords, feats, stride=1, *, cache: CoordinateCache | None = None,
                 check_finite: bool = False, ndim: int | None = None):
        checked = check_coords(coords, "coords", ndim=ndim)
        if ndim is None:
            warn_if_batch_looks_spatial(checked)
        feats = check_feats(feats, checked.shape[0], "feats")
        if check_finite:
            _assert_finite(feats, "feats")
        self._cache = cache if cache is not None else CoordinateCache()
        # The cache keeps its own copy (check_coords' conversions are ours already).
        self._coord_id = self._cache.register(checked, owned=checked is not coords)
        self._feats = feats
        self._stride = per_axis(stride, checked.shape[1] - 1, "stride", maximum=MAX_STRIDE)

    @classmethod
    def _from_set(cls, cache: CoordinateCache, coord_id, feats,
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
        """int32 array (N, 1 + D): batch index, then the D coordinates (read-only)."""
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
        return self._coord_id.data.shape[1] - 1

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
        return self._coord_id.data.shape[0]

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
