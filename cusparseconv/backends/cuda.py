"""GPU backend: CuPy arrays and the CUDA C kernels of ``raw_kernels/``.

The same object runs on a device (``cupy.RawModule``, cuBLAS through
``cupy.matmul``) or under host emulation (the kernels compiled as C++ and run
on NumPy arrays standing in for device memory), so CI executes this file's
code paths without a GPU. :class:`CudaBackend` implements
:class:`cusparseconv.backends.protocol.Backend`.

Kernel maps are built with a hash table of packed keys and the tiled
kernel-map kernels (:func:`._kmap_gpu.build_pair_tables`): the output-major
neighbour table (pair mask, pair table sorted by output row, positions for the
deterministic scatter) and the input-major one (the reverse table used by the
input gradient), taken by symmetry for a submanifold map. One read comes back
to the host per new geometry: the duplicate counts of the two hash tables and
the pair counts, in one transfer, to size the pair tables.

Products (the algorithms of each in ``PRODUCT_ALGORITHMS``, chosen by
:mod:`cusparseconv.tuning`): ``tensor_core`` (:mod:`._tensor_core`: implicit
GEMM on ``mma.sync`` with rows ordered by pair mask, and the split-K weight
gradient), the default for float16 / bfloat16 on sm_80+ and for float32 when
TF32 is allowed; ``explicit`` / ``explicit_sorted`` (:mod:`._explicit`:
grouped cuBLAS GEMMs, the baseline the tuner compares with); the SIMT and WMMA
kernels ``implicit``, ``mask`` and ``splitk`` for float64, grouped
convolutions and devices older than sm_80.

Layouts: kernels read raw pointers, so every array handed to a kernel is one
this backend made C-contiguous (``_c``) or allocated itself (``xp.empty`` /
``zeros`` / ``full``); the launcher refuses anything else, naming the kernel
and the argument. CuPy routines may return F-ordered or strided results (e.g.
``cumsum`` along axis 0), which the tests reproduce under emulation.

Device state kept per coordinate set and per kernel map lives in one place,
the "device state" section below: two weak-keyed tables of the backend
object, never attributes of the sets or maps. The algorithms of each product
are listed in one registry (``PRODUCT_ALGORITHMS``).
"""

from __future__ import annotations

import logging
import threading
import warnings

import numpy as np

from .. import tuning
from .._dtypes import FLOAT_DTYPE_NAMES, accumulate_dtype
from .._kernels import KERNEL_CONSTANTS
from ..coords import SortedKeys
from ..kmap import KernelMap
from . import _explicit as explicit_gemm
from . import _kmap_gpu
from . import _tensor_core as tensor_core
from ._array_ops import ArrayOps
from ._launch import MAX_GRID, KernelUnavailableError
from ._state import MapState, StateTable, array_nbytes, link_reverse

_CTYPES = dict(zip(FLOAT_DTYPE_NAMES, ("__half", "__nv_bfloat16", "float", "double")))
# Tile, block and chunk sizes of the kernels (defined once, in cusparseconv/_kernels.py).
_TILE = KERNEL_CONSTANTS["CSC_TILE"]                 # implicit_gemm / wgrad_splitk tiles
_THREADS = KERNEL_CONSTANTS["CSC_THREADS"]
_CHUNK = KERNEL_CONSTANTS["CSC_CHUNK"]               # pairs per split-K chunk
_MASK_TILE = KERNEL_CONSTANTS["CSC_MASK_TILE"]       # mask_gemm (SIMT)
_MASK_THREADS = KERNEL_CONSTANTS["CSC_MASK_THREADS"]
_WMMA_TILE = KERNEL_CONSTANTS["CSC_WMMA_TILE"]       # mask_gemm_wmma (16-bit tensor cores)
_WMMA_THREADS = KERNEL_CONSTANTS["CSC_WMMA_THREADS"]
_MAX_MASK_WORDS = KERNEL_CONSTANTS["CSC_MAX_MASK_WORDS"]


def _i32(value):
    return np.int32(value)


def _i64(value):
    return np.int64(value)


def _ceil_div(a, b):
    return -(-int(a) // int(b))


_log = logging.getLogger(__name__)
_WARNED: set = set()
_WARN_LOCK = threading.Lock()


def _warn_once(key, message):
    with _WARN_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class _DeviceMapState(MapState):
    """The GPU backend's state of one kernel map (beside MapState's reverse link and
    ``derived`` memo, which holds ("tile_starts", per_tile) -> (device starts, tiles)
    and "row_order" -> the output rows ordered by pair mask for the tensor-core
    GEMM, each computed once per map).

    Attributes
    ----------
    pair_offsets : device array of int64, shape (K + 1,)
    neighbour : device array of int32, shape (n_out, K)
        Input row of each (output row, offset), -1 where none.
    position : device array of int32, shape (n_out, K)
        Position of each (output row, offset) pair in its offset's pairs, -1 where
        none (the deterministic scatter).
    mask : device array of uint32, shape (n_out, ceil(K / 32))
    """

    __slots__ = ("pair_offsets", "neighbour", "position", "mask")

    def __init__(self, tables: _kmap_gpu.PairTables):
        super().__init__()
        self.pair_offsets = tables.pair_offsets_device
        self.neighbour = tables.neighbour
        self.position = tables.position
        self.mask = tables.mask

    @property
    def nbytes(self) -> int:
        return super().nbytes + array_nbytes((self.pair_offsets, self.neighbour,
                                              self.position, self.mask))


class _HashTables(dict):
    """The GPU backend's state of one coordinate set (SortedKeys): device id ->
    {"table": (keys, values, mask), "duplicates": (1,) int32 device array, or None
    once the set is known to hold no duplicates}."""


class _Conv:
    """A forward or input-gradient product as the algorithms see it (arrays C-contiguous
    device arrays; ``weight4`` (K, G, group_in, group_out); ``out`` the caller's output
    array or None)."""

    __slots__ = ("src", "weight4", "kmap", "state", "groups", "group_in", "group_out",
                 "c_dst", "bias", "out")

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


class _WeightGrad:
    """A weight-gradient product as the algorithms see it."""

    __slots__ = ("feats", "grad_out", "kmap", "state", "groups", "group_in", "group_out",
                 "out")

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


class _Planned(Exception):
    """Raised at the algorithm choice of a product run by :meth:`CudaBackend.choose_algorithm`
    (before anything runs), carrying (algorithm, reason)."""


class CudaBackend(ArrayOps):
    """Kernel maps, products and pooling on the GPU (or its emulation)."""

    neighbour_tables = True

    #: The algorithms of every product: name -> the method that runs it on a job
    #: (``_Conv`` or ``_WeightGrad``). The names are those of
    #: :data:`cusparseconv.tuning.ALGORITHMS` (checked when this module loads); an
    #: algorithm is added as a method, an entry here and its limits in ``_limits``.
    PRODUCT_ALGORITHMS = {
        "forward": {"explicit": "_explicit_atomic", "explicit_sorted": "_explicit_sorted",
                    "implicit": "_implicit", "mask": "_mask", "tensor_core": "_tensor_core"},
        "input_grad": {"explicit": "_explicit_atomic", "explicit_sorted": "_explicit_sorted",
                       "implicit": "_implicit", "mask": "_mask", "tensor_core": "_tensor_core"},
        "weight_grad": {"explicit": "_wgrad_explicit", "splitk": "_wgrad_splitk",
                        "tensor_core": "_wgrad_tensor_core"},
    }
    #: Algorithms the tuner considers where the tensor cores run a product (the SIMT
    #: and WMMA kernels then run only when forced).
    TENSOR_CORE_FIELD = {"forward": ("tensor_core", "explicit", "explicit_sorted"),
                         "input_grad": ("tensor_core", "explicit", "explicit_sorted"),
                         "weight_grad": ("tensor_core", "explicit")}

    def __init__(self, launcher):
        self.launcher = launcher
        self.xp = launcher.xp
        self.name = "cuda-emulated" if launcher.emulated else "cuda"
        # device state (see the section below)
        self._maps = StateTable(f"{self.name} kernel-map state")
        self._sets = StateTable(f"{self.name} hash tables per coordinate set")
        self._planning = threading.local()   # choose_algorithm: stop at the choice
        #: product -> the algorithm its last call ran (``tensor_core:<shape>`` included),
        #: for benchmarks and diagnostics
        self.last_algorithm = {}

    def __repr__(self) -> str:
        return f"<CudaBackend {self.name}>"

    def _c(self, array, dtype=None):
        """``array`` as a C-contiguous array of this backend's module (no copy when it
        already is one)."""
        return self.xp.ascontiguousarray(array, dtype=dtype)

    # ------------------------------------------------------------ device state
    # Everything the backend keeps beyond a call lives in two weak-keyed tables of
    # this object (an entry goes with its key; nothing is attached to sets or maps):
    # * ``_sets``: per coordinate set (SortedKeys), its hash table per device,
    #   {device id: {"table": (keys, values, mask), "duplicates": array or None}};
    # * ``_maps``: per kernel map (and its reverse), a _DeviceMapState: device pair
    #   offsets, neighbour table, scatter positions, pair mask, the reverse link, and
    #   what the products derive once per map (tile starts, the row order).
    def _set_state(self, keys: SortedKeys) -> _HashTables:
        return self._sets.get_or_make(keys, _HashTables)

    def _new_map_state(self, kmap: KernelMap,
                       tables: _kmap_gpu.PairTables) -> _DeviceMapState:
        state = _DeviceMapState(tables)
        self._maps.set(kmap, state)
        return state

    def _map_state(self, kmap: KernelMap) -> _DeviceMapState:
        """The state of ``kmap``; a map this backend did not build (another backend's on
        the same arrays) gets its tables derived from its pairs once."""
        state = self._maps.get(kmap)
        if state is None:
            state = self._new_map_state(kmap, self._tables_from_pairs(kmap, by_input=False))
        return state

    def state_nbytes(self, value) -> int:
        """Bytes of device state kept for a kernel map or a coordinate set's keys."""
        state = self._maps.get(value)
        if state is not None:
            return state.nbytes
        entries = self._sets.get(value)
        return sum(array_nbytes(entry["table"]) for entry in entries.values()) if entries else 0

    def pair_mask(self, kmap: KernelMap):
        """(mask (n_out, ceil(K / 32)) uint32, neighbour (n_out, K) int32), device arrays."""
        state = self._map_state(kmap)
        return state.mask, state.neighbour

    def choose_algorithm(self, product, feats, weight, kmap, layout, c_out, algorithm=None):
        """(algorithm, reason) of ``product`` on these arrays, from the product's own path
        stopped at its choice (``_run_chosen``): nothing runs, nothing is tuned."""
        if layout == "depthwise":
            tuning.forced_algorithm(product, algorithm)          # still checks the name
            return "depthwise", "depthwise weights have one kernel (depthwise.cu)"
        grad_out = self.xp.zeros((kmap.n_out, c_out), dtype=feats.dtype)
        run = {"forward": lambda: self.conv_forward(feats, weight, kmap, layout, c_out,
                                                    algorithm=algorithm),
               "input_grad": lambda: self.conv_input_grad(grad_out, weight, kmap, layout,
                                                          feats.shape[1], algorithm=algorithm),
               "weight_grad": lambda: self.conv_weight_grad(feats, grad_out, kmap, layout,
                                                            tuple(weight.shape), algorithm)}
        self._planning.active = True
        try:
            run[product]()
        except _Planned as planned:
            return planned.args
        finally:
            self._planning.active = False
        return "none", "no pairs: the result is zeros"

    def reverse(self, kmap: KernelMap) -> KernelMap:
        """The reverse table (built with the map; derived from the pairs otherwise)."""
        state = self._map_state(kmap)
        reverse = state.reverse
        if reverse is None:
            tables = self._tables_from_pairs(kmap, by_input=True)
            reverse = KernelMap(tables.partner_rows, tables.query_rows, tables.pair_offsets,
                                kmap.n_out, kmap.n_in, kmap.offsets, kmap.stride,
                                not kmap.transposed)
            self._new_map_state(reverse, tables)
            link_reverse(self._maps, kmap, reverse)
        return reverse

    def _tables_from_pairs(self, kmap: KernelMap, by_input: bool) -> _kmap_gpu.PairTables:
        """The tables of one direction of a map from its pair table alone (a map this
        backend did not build): output-major, or input-major (the reverse table's,
        pairs re-sorted by input row within each offset) with ``by_input``. Array
        routines only (no host read: the pair counts are the map's host array)."""
        xp, launcher, kernel_volume = self.xp, self.launcher, kmap.kernel_volume
        pair_offsets = np.asarray(kmap.pair_offsets, dtype=np.int64)
        pair_offsets_device = launcher.to_device(pair_offsets)
        offset_of_pair = launcher.to_device(
            np.repeat(np.arange(kernel_volume, dtype=np.int64), kmap.pair_counts()))
        query, partner = ((kmap.in_rows, kmap.out_rows) if by_input
                          else (kmap.out_rows, kmap.in_rows))
        n_query = kmap.n_in if by_input else kmap.n_out
        if by_input and kmap.n_pairs:    # (offset, input row) keys are unique
            order = xp.argsort(offset_of_pair * max(n_query, 1) + query.astype(np.int64))
            query, partner = query[order], partner[order]
        query, partner = self._c(query, np.int32), self._c(partner, np.int32)
        neighbour = xp.full((n_query, kernel_volume), -1, dtype=np.int32)
        neighbour[query, offset_of_pair] = partner
        position = xp.full((n_query, kernel_volume), -1, dtype=np.int32)
        position[query, offset_of_pair] = (
            xp.arange(kmap.n_pairs, dtype=np.int64)
            - pair_offsets_device[offset_of_pair]).astype(np.int32)
        n_words = _ceil_div(kernel_volume, 32)
        active = xp.zeros((n_query, n_words * 32), dtype=np.uint32)
        active[:, :kernel_volume] = neighbour >= 0
        bits = xp.asarray(np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32)))
        mask = self._c((active.reshape(n_query, n_words, 32) * bits).sum(axis=2,
                                                                           dtype=np.uint32))
        return _kmap_gpu.PairTables(neighbour, mask, pair_offsets, pair_offsets_device,
                                    query, partner, position)

    def _tile_starts(self, kmap: KernelMap, state: _DeviceMapState, per_tile: int):
        """(device starts (K + 1,) int64, number of tiles): offset k's pairs split into
        tiles of ``per_tile``, numbered from ``starts[k]`` (memoised per map)."""
        def make():
            starts = np.zeros(kmap.kernel_volume + 1, dtype=np.int64)
            np.cumsum(-(-kmap.pair_counts() // per_tile), out=starts[1:])
            return self.launcher.to_device(starts), int(starts[-1])

        return state.memo(("tile_starts", per_tile), make)

    # ------------------------------------------------------------ utilities
    @staticmethod
    def _ctype(dtype) -> str:
        name = np.dtype(dtype).name
        if name not in _CTYPES:
            raise TypeError(f"the GPU backend supports {tuple(_CTYPES)} features, got {name}")
        return _CTYPES[name]

    def _device_name(self) -> str:
        if self.launcher.emulated:
            return "emulated"
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.runtime.getDevice())
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def _synchronize(self):
        if not self.launcher.emulated:
            self.xp.cuda.get_current_stream().synchronize()

    def _candidate_errors(self) -> tuple:
        """Exceptions that disqualify one algorithm for a shape (the tuner drops and
        remembers the candidate): out of memory, a kernel that does not compile or
        does not exist on this device."""
        errors = [MemoryError, KernelUnavailableError]
        if self.launcher.emulated:
            from .._emulate import EmulatorCompileError

            errors.append(EmulatorCompileError)
        else:
            from cupy.cuda import compiler, memory

            errors += [memory.OutOfMemoryError, compiler.CompileException]
        return tuple(errors)

    def _dummy(self, dtype):
        return self.xp.zeros(1, dtype=dtype)

    def _deliver(self, result, out, dtype):
        """The result in ``dtype`` (C-contiguous): ``out`` itself when given (written
        here unless the result was computed in it)."""
        if out is None:
            return self._c(result.astype(dtype, copy=False))
        if result is not out:
            out[...] = result.reshape(out.shape)
        return out

    # ------------------------------------------------------------ hash table
    def _hash_table(self, keys: SortedKeys):
        """(table, duplicates) of a coordinate set on the current device; ``table`` is
        (table_keys, table_values, mask), ``duplicates`` a (1,) int32 device array,
        or None once the set is known to hold no duplicates."""
        state = self._set_state(keys)
        slot = self.launcher.device_id()
        entry = state.get(slot)
        if entry is not None:
            return entry["table"], entry["duplicates"]
        table, duplicates = _kmap_gpu.insert_keys(self.launcher, keys.keys, keys.order)
        state[slot] = {"table": table, "duplicates": duplicates}
        return table, duplicates

    def _hash_validated(self, keys: SortedKeys, n_duplicates: int):
        """Record the duplicate count read for a set (raising when it is not 0)."""
        slot = self.launcher.device_id()
        state = self._set_state(keys)
        if n_duplicates:
            state.pop(slot, None)
            raise ValueError(f"coords must hold unique rows, got {n_duplicates} duplicates")
        state[slot]["duplicates"] = None

    def hash_table(self, keys: SortedKeys):
        """Device hash table of a coordinate set: (table_keys, table_values, mask)."""
        table, duplicates = self._hash_table(keys)
        if duplicates is not None:
            self._hash_validated(keys, int(self.launcher.to_host(duplicates)[0]))
        return table

    def lookup(self, keys: SortedKeys, query_keys):
        """Row of each query key in the set, -1 where absent ((M,) int32, through the
        set's hash table)."""
        table_keys, table_values, mask = self.hash_table(keys)
        rows = self.xp.empty(query_keys.shape[0], dtype=np.int32)
        self.launcher.launch_1d("hash_table.cu", "hash_lookup", query_keys.shape[0],
                                (self._c(query_keys, np.int64), _i64(query_keys.shape[0]),
                                 table_keys, table_values, mask, rows))
        return rows

    # ------------------------------------------------------------ kernel maps
    def build_kernel_map(self, in_coords, out_coords, offsets, stride, transposed, *,
                         same_set=False, in_keys=None, out_keys=None) -> KernelMap:
        """Both directions of the map through the hash tables of the two sets and the
        tiled kernel-map kernels (one host read: duplicates and pair counts)."""
        in_keys = in_keys if in_keys is not None else SortedKeys(in_coords, "in_coords")
        if same_set:
            out_keys = in_keys
        elif out_keys is None:
            out_keys = SortedKeys(out_coords, "out_coords")
        in_table, in_duplicates = self._hash_table(in_keys)
        out_table, out_duplicates = (None, None) if same_set else self._hash_table(out_keys)
        unchecked = [(keys, counter) for keys, counter in ((in_keys, in_duplicates),
                                                            (out_keys, out_duplicates))
                     if counter is not None]
        tables = _kmap_gpu.build_pair_tables(
            self.launcher, in_coords, out_coords, np.asarray(offsets, dtype=np.int32),
            stride, transposed, in_table, out_table, same_set=same_set,
            duplicates=[counter for _, counter in unchecked])
        for (keys, _), n_duplicates in zip(unchecked, tables.duplicates):
            self._hash_validated(keys, n_duplicates)
        forward, backward = tables.forward, tables.reverse
        kmap = KernelMap(forward.partner_rows, forward.query_rows, forward.pair_offsets,
                         in_coords.shape[0], out_coords.shape[0], offsets, stride, transposed)
        back = KernelMap(backward.partner_rows, backward.query_rows, backward.pair_offsets,
                         out_coords.shape[0], in_coords.shape[0], offsets, stride,
                         not transposed)
        self._new_map_state(kmap, forward)
        self._new_map_state(back, backward)
        link_reverse(self._maps, kmap, back)
        return kmap

    # ------------------------------------------------------------ products
    @staticmethod
    def _split_layout(weight, layout):
        """(groups, group_in, group_out, weight as (K, G, gin, gout))."""
        if layout == "grouped":
            kernel_volume, groups, group_in, group_out = weight.shape
            return groups, group_in, group_out, weight
        kernel_volume, c_in, c_out = weight.shape
        return 1, c_in, c_out, weight.reshape(kernel_volume, 1, c_in, c_out)

    def _transposed_weight(self, weight, layout):
        xp = self.xp
        if layout == "depthwise":
            return weight
        if layout == "grouped":
            return xp.ascontiguousarray(weight.transpose(0, 1, 3, 2))
        return xp.ascontiguousarray(weight.transpose(0, 2, 1))

    def conv_forward(self, feats, weight, kmap, layout, c_out, bias=None, algorithm=None,
                     out=None):
        return self._product("forward", feats, weight, kmap, layout, c_out, bias, algorithm,
                             out)

    def conv_input_grad(self, grad_out, weight, kmap, layout, c_in, algorithm=None, out=None):
        return self._product("input_grad", grad_out, self._transposed_weight(weight, layout),
                             self.reverse(kmap), layout, c_in, None, algorithm, out)

    def _tensor_core_refusal(self, dtype, groups, kernel_volume) -> str | None:
        """Why the tensor-core kernels cannot run a product (None when they can)."""
        name = np.dtype(dtype).name
        if name == "float64":
            return "the tensor-core kernels take float16, bfloat16 and float32 (TF32), not float64"
        if name == "float32" and not tuning.tf32_allowed(self.xp):
            return ("float32 runs on the tensor cores only as TF32, which is off: allow it with "
                    "cusparseconv.config.set_allow_tf32(True) (or CuPy's CUPY_TF32=1)")
        arch = self.launcher.device_arch()
        if arch is not None and arch < 80:
            return f"the tensor-core kernels need sm_80 or newer, this device is sm_{arch}"
        if groups > 1:
            return (f"the tensor-core kernels take one group, got {groups} (grouped "
                    f"convolutions run on the other algorithms)")
        if kernel_volume > tensor_core.MAX_KERNEL_VOLUME:
            return (f"the kernel has {kernel_volume} offsets (the tensor-core kernels take up "
                    f"to {tensor_core.MAX_KERNEL_VOLUME})")
        return None

    def _limits(self, product, job, dtype) -> tuple[dict, dict]:
        """(workspace bytes per algorithm, reason per algorithm that cannot run ``job``)."""
        kmap = job.kmap
        acc_size = accumulate_dtype(dtype).itemsize
        itemsize = np.dtype(dtype).itemsize
        counts = kmap.pair_counts()
        groups, group_in, group_out = job.groups, job.group_in, job.group_out
        c_in, c_out = groups * group_in, groups * group_out
        unusable = {}
        refusal = self._tensor_core_refusal(dtype, groups, kmap.kernel_volume)
        if refusal is not None:
            unusable["tensor_core"] = refusal
        if product == "weight_grad":
            n_chunks = (tensor_core.wgrad_chunking(kmap.pair_offsets, c_in, c_out)[1].shape[0]
                        if refusal is None else 0)
            workspace = {
                "explicit": (explicit_gemm.workspace_bytes(counts, c_in, c_out, dtype)
                             + kmap.kernel_volume * groups * group_in * group_out * itemsize),
                "splitk": kmap.kernel_volume * groups * group_in * group_out * acc_size,
                "tensor_core": n_chunks * c_in * c_out * 4,
            }
            splitk_tiles = _ceil_div(group_in, _TILE) * _ceil_div(group_out, _TILE)
            if groups > MAX_GRID[2] or splitk_tiles > MAX_GRID[1]:
                unusable["splitk"] = (f"its grid ({splitk_tiles} channel tiles, {groups} "
                                      f"groups) exceeds CUDA's limits {MAX_GRID[1:]}")
            return workspace, unusable
        c_dst = job.c_dst
        explicit_bytes = (explicit_gemm.workspace_bytes(counts, c_in, c_dst, dtype)
                          + kmap.n_out * c_dst * acc_size)
        workspace = {"explicit": explicit_bytes, "explicit_sorted": explicit_bytes,
                     "implicit": kmap.n_out * c_dst * acc_size,
                     "mask": kmap.n_out * c_dst * itemsize,
                     "tensor_core": kmap.n_out * c_dst * itemsize}
        if groups > MAX_GRID[2]:
            for name in ("implicit", "mask"):
                unusable[name] = (f"it maps the {groups} groups to gridDim.z, at most "
                                  f"{MAX_GRID[2]}")
        if job.state.mask.shape[1] > _MAX_MASK_WORDS:
            unusable["mask"] = (f"the kernel has {kmap.kernel_volume} offsets (mask supports "
                                f"up to {32 * _MAX_MASK_WORDS})")
        return workspace, unusable

    def _tile_shapes(self, product, job) -> list:
        """The tensor-core tile shapes worth timing for a forward / input-gradient job."""
        if product == "weight_grad":
            return []
        return tensor_core.variants_for(job.src.dtype, job.group_in, job.c_dst)

    def _choose_and_run(self, product, job, algorithm, dtype, fallback):
        """Choose an algorithm of ``product`` for ``job`` (forced, tuned or heuristic)
        among those of PRODUCT_ALGORITHMS that can run it, and run it.

        Where the tensor cores run the product, the candidates are their tile shapes
        (``tensor_core:<shape>``) and the cuBLAS explicit algorithms, the heuristic
        the default shape; elsewhere every algorithm that can run it, the heuristic
        ``fallback``."""
        forced = tuning.forced_algorithm(product, algorithm)
        user_forced = forced is not None
        family = tuning.algorithm_family(forced) if forced is not None else None
        workspace, unusable = self._limits(product, job, dtype)
        if family is not None and family in unusable:
            raise ValueError(f"algorithm {forced!r} cannot run this {product}: "
                             f"{unusable[family]}")
        methods = self.PRODUCT_ALGORITHMS[product]
        on_tensor_cores = "tensor_core" not in unusable
        families = [name for name in (self.TENSOR_CORE_FIELD[product] if on_tensor_cores
                                      else methods) if name not in unusable]
        shapes = self._tile_shapes(product, job) if on_tensor_cores else []
        if family == "tensor_core":
            # the element-wise shape takes any channel count: it may always be forced
            valid = shapes + [tensor_core.SCALAR_VARIANT.name] * (
                tensor_core.SCALAR_VARIANT.name not in shapes and bool(shapes))
            if forced != family and forced.partition(":")[2] not in valid:
                raise ValueError(f"algorithm {forced!r}: the tensor-core tile shapes of this "
                                 f"{product} are {['tensor_core:' + s for s in valid]}")
            families = ["tensor_core"]
            if forced == family and shapes:       # the tuner chooses among the shapes
                forced = None
        candidates = []
        for name in families:
            candidates += [f"tensor_core:{s}" for s in shapes] if (
                name == "tensor_core" and shapes) else [name]
        if forced is not None and forced not in candidates:
            candidates.append(forced)
        if on_tensor_cores:
            heuristic = "tensor_core"
            if shapes:
                heuristic += ":" + tensor_core.default_variant(
                    job.kmap.n_out, job.group_in, job.c_dst, dtype)
        else:
            heuristic = fallback
        workspace = {name: workspace.get(tuning.algorithm_family(name), 0)
                     for name in candidates}
        runners = {name: self._runner(product, name, job) for name in candidates}
        kmap = job.kmap
        if product == "weight_grad":
            c_src, c_dst = job.groups * job.group_in, job.groups * job.group_out
        else:
            c_src, c_dst = job.groups * job.group_in, job.c_dst
        bucket = tuning.shape_bucket(product, kmap.n_in, kmap.n_out, kmap.n_pairs, c_src,
                                     c_dst, kmap.kernel_volume, np.dtype(dtype).name,
                                     self._device_name())
        if user_forced and forced is None and not set(candidates) - tuning.failed(bucket):
            forced = heuristic      # every shape failed here before: let the user see why
        return self._run_chosen(product, candidates, forced, bucket, heuristic, runners,
                                workspace, user_forced)

    def _runner(self, product, name, job):
        """A callable running candidate ``name`` (``tensor_core:<shape>`` included) on job."""
        family, _, shape = name.partition(":")
        method = getattr(self, self.PRODUCT_ALGORITHMS[product][family])
        if shape:
            return lambda: method(job, shape)
        return lambda: method(job)

    def _product(self, product, src, weight, kmap, layout, c_dst, bias, algorithm, out):
        """dst[out] += src[in] @ W[k] over ``kmap`` (forward, or input gradient on the
        reverse table with W transposed)."""
        xp = self.xp
        src = self._c(src)
        weight = self._c(weight.astype(src.dtype, copy=False))
        if bias is not None:
            bias = self._c(bias.astype(src.dtype, copy=False))
        if kmap.n_out == 0:
            tuning.forced_algorithm(product, algorithm)      # still checks the name
            return out if out is not None else xp.zeros((0, c_dst), dtype=src.dtype)
        state = self._map_state(kmap)
        if layout == "depthwise":
            tuning.forced_algorithm(product, algorithm)
            self._log_algorithm(product, "depthwise")
            return self._depthwise(src, weight, kmap, state, bias, out)
        groups, group_in, group_out, weight4 = self._split_layout(weight, layout)
        job = _Conv(src=src, weight4=weight4, kmap=kmap, state=state, groups=groups,
                    group_in=group_in, group_out=group_out, c_dst=c_dst, bias=bias, out=out)
        sixteen_bit = np.dtype(src.dtype).itemsize == 2
        fallback = "mask" if sixteen_bit or tuning.is_deterministic() else "implicit"
        return self._choose_and_run(product, job, algorithm, src.dtype, fallback)

    def _run_chosen(self, product, candidates, forced, bucket, heuristic, runners, workspace,
                    user_forced=False):
        """Choose an algorithm (forced, tuned or heuristic) and run it; a candidate
        that turns out not to exist on this device is dropped with every candidate
        of its algorithm (remembered by the tuner, with a one-time warning) and the
        choice made again, unless the user forced the algorithm (then it raises)."""
        launcher = self.launcher
        if getattr(self._planning, "active", False):
            raise _Planned(*tuning.plan(
                product, candidates, forced, bucket, heuristic,
                autotune=None if not launcher.emulated else launcher.tune_under_emulation,
                workspace=workspace, free_bytes=launcher.free_bytes,
                capturing=launcher.stream_capturing()))
        while True:
            choice = tuning.choose(
                product, candidates, forced, bucket, heuristic,
                run=lambda name: runners[name](), synchronize=self._synchronize,
                autotune=None if not launcher.emulated else launcher.tune_under_emulation,
                workspace=workspace, free_bytes=launcher.free_bytes,
                capturing=launcher.stream_capturing(), failures=self._candidate_errors())
            self._log_algorithm(product, choice)
            try:
                result = runners[choice]()
                self.last_algorithm[product] = choice
                return result
            except KernelUnavailableError as error:
                if forced is not None or user_forced:
                    raise
                family = tuning.algorithm_family(choice)
                same = [c for c in candidates if tuning.algorithm_family(c) == family]
                for name in same:
                    tuning.remember_failure(bucket, name)
                _warn_once(("unavailable", product, family, error.device_arch),
                           f"cusparseconv: the {family!r} {product} algorithm is not available "
                           f"on this device ({error}); using another algorithm")
                candidates = [c for c in candidates if c not in same]
                if not candidates:
                    raise

    def _log_algorithm(self, product, name):
        """One DEBUG record per product run (``cusparseconv.explain`` names the same)."""
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug("%s %s: algorithm %r", self.name, product, name,
                       extra={"product": product, "algorithm": name})

    def _finish(self, acc, bias, dtype, out=None):
        """T(acc + bias) through the finish_rows kernel, into ``out`` when given (``acc``
        itself when it needs nothing)."""
        if np.dtype(dtype) == acc.dtype and bias is None:
            return acc
        if out is None:
            out = self.xp.empty(acc.shape, dtype=dtype)
        has_bias = bias is not None
        self.launcher.launch_1d(
            "gather_scatter.cu", f"finish_rows<{self._ctype(dtype)}>", acc.size,
            (acc, _i64(acc.shape[0]), _i32(acc.shape[1]),
             bias if has_bias else self._dummy(dtype), _i32(int(has_bias)), out))
        return out

    def _accumulator(self, job, zeroed: bool):
        """(n_out, c_dst) accumulator of a product: ``job.out`` itself when the result
        can be accumulated there (accumulation dtype, no bias to add after)."""
        xp, acc_dtype = self.xp, accumulate_dtype(job.src.dtype)
        out = job.out
        if out is not None and out.dtype == acc_dtype and job.bias is None:
            if zeroed:
                out[...] = 0
            return out
        shape = (job.kmap.n_out, job.c_dst)
        return xp.zeros(shape, dtype=acc_dtype) if zeroed else xp.empty(shape, dtype=acc_dtype)

    def _row_order(self, state: _DeviceMapState):
        """The output rows ordered by pair mask (computed once per map)."""
        return state.memo("row_order",
                          lambda: tensor_core.row_order_by_mask(self.launcher, state.mask))

    def _tensor_core(self, job, shape):
        """Implicit GEMM on the tensor cores with tile shape ``shape``; rows ordered by
        pair mask; the 16-byte-copy shapes fall back to the element-wise one when an
        array is not 16-byte aligned."""
        src, state = job.src, job.state
        weight = job.weight4[:, 0]
        if shape != tensor_core.SCALAR_VARIANT.name and not tensor_core.vectorizable(
                src.dtype, job.group_in, job.c_dst, src, weight, job.bias, job.out):
            shape = tensor_core.SCALAR_VARIANT.name
        return tensor_core.implicit_gemm(
            self.launcher, src, weight, state.neighbour, state.mask, job.bias,
            self._row_order(state), variant=shape, allow_tf32=True, out=job.out)

    def _explicit_atomic(self, job):
        return self._explicit(job, deterministic=False)

    def _explicit_sorted(self, job):
        return self._explicit(job, deterministic=True)

    def _explicit(self, job, deterministic):
        """Grouped cuBLAS GEMMs (:func:`._explicit.product`)."""
        kmap, state = job.kmap, job.state
        weight = job.weight4 if job.groups > 1 else job.weight4[:, 0]
        result = explicit_gemm.product(
            self.launcher, job.src, weight, kmap.in_rows, kmap.out_rows, kmap.pair_offsets,
            state.pair_offsets, kmap.n_out, groups=job.groups, bias=job.bias,
            position=state.position if deterministic else None)
        return self._deliver(result, job.out, job.src.dtype)

    def _implicit(self, job):
        src, kmap, state = job.src, job.kmap, job.state
        groups, group_in, group_out = job.groups, job.group_in, job.group_out
        acc = self._accumulator(job, zeroed=True)
        starts, n_tiles = self._tile_starts(kmap, state, _TILE)
        self.launcher.launch(
            "implicit_gemm.cu", f"implicit_gemm<{self._ctype(src.dtype)}>",
            (n_tiles, _ceil_div(group_out, _TILE), groups), (_THREADS,),
            (src, job.weight4, kmap.in_rows, kmap.out_rows, state.pair_offsets, starts,
             _i32(kmap.kernel_volume), _i32(groups), _i32(group_in), _i32(group_out), acc))
        return self._finish(acc, job.bias, src.dtype, job.out)

    def _mask(self, job):
        xp = self.xp
        src, kmap, state, bias = job.src, job.kmap, job.state, job.bias
        groups, group_in, group_out = job.groups, job.group_in, job.group_out
        mask, neighbour = state.mask, state.neighbour
        out = job.out if job.out is not None else xp.empty((kmap.n_out, groups * group_out),
                                                           dtype=src.dtype)
        has_bias = bias is not None
        args = (src, job.weight4, neighbour, mask, _i32(mask.shape[1]), _i64(kmap.n_out),
                _i32(kmap.kernel_volume), _i32(groups), _i32(group_in), _i32(group_out),
                bias if has_bias else self._dummy(src.dtype), _i32(int(has_bias)), out)
        ctype = self._ctype(src.dtype)
        if np.dtype(src.dtype).itemsize == 2:
            grid = (_ceil_div(kmap.n_out, _WMMA_TILE), _ceil_div(group_out, _WMMA_TILE), groups)
            source = "mask_gemm_bf16.cu" if ctype == "__nv_bfloat16" else "mask_gemm.cu"
            try:
                self.launcher.launch(source, f"mask_gemm_wmma<{ctype}>", grid,
                                     (_WMMA_THREADS,), args)
                return out
            except KernelUnavailableError as error:
                _warn_once(("wmma", ctype, error.device_arch),
                           f"cusparseconv: tensor-core mask GEMM for {np.dtype(src.dtype).name} "
                           f"is not available ({error}); using the SIMT mask GEMM")
        grid = (_ceil_div(kmap.n_out, _MASK_TILE), _ceil_div(group_out, _MASK_TILE), groups)
        self.launcher.launch("mask_gemm.cu", f"mask_gemm<{ctype}>", grid, (_MASK_THREADS,),
                             args)
        return out

    def _depthwise(self, src, weight, kmap, state, bias, out=None):
        xp = self.xp
        channels = src.shape[1]
        if out is None:
            out = xp.empty((kmap.n_out, channels), dtype=src.dtype)
        has_bias = bias is not None
        self.launcher.launch_1d(
            "depthwise.cu", f"depthwise_forward<{self._ctype(src.dtype)}>", out.size,
            (src, weight, state.neighbour, _i64(kmap.n_out), _i32(kmap.kernel_volume),
             _i32(channels), bias if has_bias else self._dummy(src.dtype), _i32(int(has_bias)),
             out))
        return out

    def conv_backward(self, feats, grad_out, weight, kmap, layout, c_in, weight_shape,
                      out=(None, None)):
        """The two gradient products one after the other (their own algorithm choices)."""
        out_in, out_weight = out
        return (self.conv_input_grad(grad_out, weight, kmap, layout, c_in, out=out_in),
                self.conv_weight_grad(feats, grad_out, kmap, layout, weight_shape,
                                      out=out_weight))

    def conv_weight_grad(self, feats, grad_out, kmap, layout, weight_shape, algorithm=None,
                         out=None):
        xp = self.xp
        dtype = feats.dtype
        feats = self._c(feats)
        grad_out = self._c(grad_out.astype(dtype, copy=False))
        acc_dtype = accumulate_dtype(dtype)
        if kmap.n_pairs == 0:
            tuning.forced_algorithm("weight_grad", algorithm)   # still checks the name
            if out is None:
                return xp.zeros(weight_shape, dtype=dtype)
            out[...] = 0
            return out
        state = self._map_state(kmap)
        direct = out if out is not None and out.dtype == acc_dtype else None
        if layout == "depthwise":
            tuning.forced_algorithm("weight_grad", algorithm)
            self._log_algorithm("weight_grad", "depthwise")
            grad = tensor_core.depthwise_weight_grad(self.launcher, feats, grad_out,
                                                     kmap.in_rows, kmap.out_rows,
                                                     kmap.pair_offsets)
            return self._deliver(grad.reshape(weight_shape), out, dtype)
        if layout == "grouped":
            _, groups, group_in, group_out = weight_shape
        else:
            (_, group_in, group_out), groups = weight_shape, 1
        job = _WeightGrad(feats=feats, grad_out=grad_out, kmap=kmap, state=state,
                          groups=groups, group_in=group_in, group_out=group_out, out=direct)
        # tensor_core where it runs; else splitk, or explicit (atomic-free) in
        # deterministic mode (the tuner's choice of the heuristic when splitk is barred)
        grad = self._choose_and_run("weight_grad", job, algorithm, dtype, "splitk")
        return self._deliver(grad.reshape(weight_shape), out, dtype)

    def _wgrad_accumulator(self, job, zeroed: bool):
        """(K, G, group_in, group_out) accumulator: the caller's ``out`` when it has the
        accumulation dtype."""
        shape = (job.kmap.kernel_volume, job.groups, job.group_in, job.group_out)
        if job.out is not None:
            acc = job.out.reshape(shape)
            if zeroed:
                acc[...] = 0
            return acc
        dtype = accumulate_dtype(job.feats.dtype)
        return self.xp.zeros(shape, dtype=dtype) if zeroed else self.xp.empty(shape, dtype)

    def _wgrad_explicit(self, job):
        """Grouped cuBLAS GEMMs X^T G per group of offsets (:func:`._explicit.weight_grad`):
        (K, G, gin, gout) in the dtype of the features."""
        kmap = job.kmap
        grad = explicit_gemm.weight_grad(
            self.launcher, job.feats, job.grad_out, kmap.in_rows, kmap.out_rows,
            kmap.pair_offsets, job.state.pair_offsets, groups=job.groups)
        return grad.reshape(kmap.kernel_volume, job.groups, job.group_in, job.group_out)

    def _wgrad_tensor_core(self, job):
        """Split-K weight gradient on the tensor cores (:func:`._tensor_core.weight_grad`):
        fixed chunks, partials reduced in chunk order (deterministic)."""
        kmap = job.kmap
        grad = tensor_core.weight_grad(self.launcher, job.feats, job.grad_out, kmap.in_rows,
                                       kmap.out_rows, kmap.pair_offsets, allow_tf32=True)
        return grad.reshape(kmap.kernel_volume, 1, job.group_in, job.group_out)

    def _wgrad_splitk(self, job):
        kmap, state = job.kmap, job.state
        groups, group_in, group_out = job.groups, job.group_in, job.group_out
        acc = self._wgrad_accumulator(job, zeroed=True)
        starts, n_chunks = self._tile_starts(kmap, state, _CHUNK)
        grid = (n_chunks, _ceil_div(group_in, _TILE) * _ceil_div(group_out, _TILE), groups)
        self.launcher.launch(
            "implicit_gemm.cu", f"wgrad_splitk<{self._ctype(job.feats.dtype)}>", grid,
            (_THREADS,),
            (job.feats, job.grad_out, kmap.in_rows, kmap.out_rows, state.pair_offsets,
             starts, _i32(kmap.kernel_volume), _i32(groups), _i32(group_in), _i32(group_out),
             acc))
        return acc

    # ------------------------------------------------------------ pooling
    def _pool_max(self, feats, kmap):
        xp = self.xp
        channels = feats.shape[1]
        out = xp.empty((kmap.n_out, channels), dtype=feats.dtype)
        argmax = xp.empty((kmap.n_out, channels), dtype=np.int64)
        self.launcher.launch_1d(
            "pooling.cu", f"pool_max<{self._ctype(feats.dtype)}>", out.size,
            (self._c(feats), self._map_state(kmap).neighbour, _i64(kmap.n_out),
             _i32(kmap.kernel_volume), _i32(channels), out, argmax))
        return out, argmax

    def _pool_sum(self, feats, kmap, average):
        xp = self.xp
        channels = feats.shape[1]
        out = xp.empty((kmap.n_out, channels), dtype=feats.dtype)
        self.launcher.launch_1d(
            "pooling.cu", f"pool_sum<{self._ctype(feats.dtype)}>", out.size,
            (self._c(feats), self._map_state(kmap).neighbour, _i64(kmap.n_out),
             _i32(kmap.kernel_volume), _i32(channels), _i32(int(average)), out))
        return out

    def pool_forward(self, feats, kmap, mode):
        if mode == "max":
            return self._pool_max(feats, kmap)[0]
        return self._pool_sum(feats, kmap, mode == "avg")

    def pool_backward(self, grad_out, feats, kmap, mode):
        xp = self.xp
        dtype = grad_out.dtype
        acc_dtype = accumulate_dtype(dtype)
        if mode == "max":
            _, argmax = self._pool_max(feats, kmap)
            grad_in = xp.zeros((kmap.n_in, grad_out.shape[1]), dtype=acc_dtype)
            self.launcher.launch_1d(
                "pooling.cu", f"scatter_by_index<{self._ctype(dtype)}>", argmax.size,
                (self._c(grad_out), argmax, _i64(kmap.n_out),
                 _i32(grad_out.shape[1]), grad_in))
            return self._c(grad_in.astype(dtype))
        scaled = grad_out.astype(acc_dtype)
        if mode == "avg":
            counts = xp.sum(self._map_state(kmap).neighbour >= 0, axis=1)
            scaled = scaled / xp.maximum(counts, 1)[:, None].astype(acc_dtype)
        return self._c(self._pool_sum(self._c(scaled), self.reverse(kmap), False).astype(dtype))

    def segment_reduce(self, feats, segment_ids, n_segments, mode):
        """Rows reduced by segment, each segment split into chunks combined in a fixed
        order (:func:`._tensor_core.segment_reduce`; max propagates NaN)."""
        return tensor_core.segment_reduce(self.launcher, feats, segment_ids, n_segments, mode)


def _check_registry() -> None:
    """The algorithm names of PRODUCT_ALGORITHMS are tuning.ALGORITHMS' (what the tuner,
    CUSPARSECONV_ALGORITHM and the docs name)."""
    names = {product: tuple(methods) for product, methods in
             CudaBackend.PRODUCT_ALGORITHMS.items()}
    if names != tuning.ALGORITHMS:
        raise RuntimeError(f"CudaBackend.PRODUCT_ALGORITHMS {names} and tuning.ALGORITHMS "
                           f"{tuning.ALGORITHMS} disagree")


_check_registry()
