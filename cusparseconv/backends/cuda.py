"""GPU backend: CuPy arrays and the CUDA C kernels of ``raw_kernels/``.

The same object runs on a device (``cupy.RawModule``, cuBLAS through
``cupy.matmul``) or under host emulation (the kernels compiled as C++ and run
on NumPy arrays standing in for device memory), so CI executes this file's
code paths without a GPU. It implements the interface of
:mod:`cusparseconv.backends.cpu`.

Kernel maps are built with a hash table of packed keys and two searches: the
output-major neighbour table (pair mask, pair table sorted by output row,
positions for the deterministic scatter) and the input-major one (the reverse
table used by the input gradient). One read comes back to the host per new
geometry: the duplicate counts of the two hash tables and the pair counts of
both tables, in one transfer, to size the pair tables.

Layouts: kernels read raw pointers, so every array handed to a kernel is one
this backend made C-contiguous (``_c``) or allocated itself (``xp.empty`` /
``zeros`` / ``full``); the launcher refuses anything else, naming the kernel
and the argument. CuPy routines may return F-ordered or strided results (e.g.
``cumsum`` along axis 0), which the tests reproduce under emulation.

Device state kept per coordinate set and per kernel map lives in one place,
the "device state" section below.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np

from .. import tuning
from ..coords import SortedKeys
from ..kmap import KernelMap
from ._launch import MAX_GRID, KernelUnavailableError

_CTYPES = {"float32": "float", "float64": "double", "float16": "__half",
           "bfloat16": "__nv_bfloat16"}
_EMPTY_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
_MAX_MASK_WORDS = 16
_TILE = 64          # implicit / mask SIMT tiles (raw_kernels/implicit_gemm.cu, mask_gemm.cu)
_WMMA_TILE = 32
_CHUNK = 1024       # pairs per split-K chunk


def _i32(value):
    return np.int32(value)


def _i64(value):
    return np.int64(value)


def _ceil_div(a, b):
    return -(-int(a) // int(b))


_WARNED: set = set()
_WARN_LOCK = threading.Lock()


def _warn_once(key, message):
    with _WARN_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class CudaBackend:
    """Kernel maps, products and pooling on the GPU (or its emulation)."""

    def __init__(self, launcher):
        self.launcher = launcher
        self.xp = launcher.xp
        self.name = "cuda-emulated" if launcher.emulated else "cuda"

    def _c(self, array, dtype=None):
        """``array`` as a C-contiguous array of this backend's module (no copy when it
        already is one)."""
        return self.xp.ascontiguousarray(array, dtype=dtype)

    # ------------------------------------------------------------ device state
    # Everything the backend keeps beyond a call lives here:
    # * per coordinate set (SortedKeys): its hash table, per (backend, device),
    #   in ``keys._hash_tables``;
    # * per kernel map (KernelMap and its reverse): the device pair offsets, the
    #   neighbour table, the scatter positions and the pair mask, set by
    #   ``_attach`` only.
    def _set_state(self, keys: SortedKeys) -> dict:
        cached = getattr(keys, "_hash_tables", None)
        if cached is None:
            cached = keys._hash_tables = {}
        return cached

    @staticmethod
    def _attach(kmap, tables):
        kmap.pair_offsets_device = tables["pair_offsets_dev"]
        kmap.neighbour = tables["neighbour"]
        kmap.position = tables["position"]
        kmap._pair_mask = (tables["mask"], tables["neighbour"])

    # ------------------------------------------------------------ utilities
    @staticmethod
    def accumulate_dtype(dtype) -> np.dtype:
        return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)

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

    # ------------------------------------------------------------ hash table
    def _hash_table(self, keys: SortedKeys):
        """(table, duplicates) of a coordinate set on the current device; ``table`` is
        (table_keys, table_values, mask), ``duplicates`` a (1,) int32 device array,
        or None once the set is known to hold no duplicates."""
        state = self._set_state(keys)
        slot = (self.name, self.launcher.device_id())
        entry = state.get(slot)
        if entry is not None:
            return entry["table"], entry["duplicates"]
        xp = self.xp
        n_keys = keys.keys.shape[0]
        capacity = 1 << max(4, (2 * max(n_keys, 1) - 1).bit_length())
        table_keys = xp.full(capacity, _EMPTY_KEY, dtype=np.uint64)
        table_values = xp.full(capacity, -1, dtype=np.int32)
        duplicates = xp.zeros(1, dtype=np.int32)
        self.launcher.launch_1d("hash_table.cu", "hash_insert", n_keys,
                                (self._c(keys.keys), self._c(keys.order, np.int64),
                                 _i64(n_keys), table_keys, table_values,
                                 np.uint64(capacity - 1), duplicates))
        table = (table_keys, table_values, np.uint64(capacity - 1))
        state[slot] = {"table": table, "duplicates": duplicates}
        return table, duplicates

    def _hash_validated(self, keys: SortedKeys, n_duplicates: int):
        """Record the duplicate count read for a set (raising when it is not 0)."""
        slot = (self.name, self.launcher.device_id())
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
        """Row of each query key in the set, -1 where absent."""
        table_keys, table_values, mask = self.hash_table(keys)
        rows = self.xp.empty(query_keys.shape[0], dtype=np.int32)
        self.launcher.launch_1d("hash_table.cu", "hash_lookup", query_keys.shape[0],
                                (self._c(query_keys, np.int64), _i64(query_keys.shape[0]),
                                 table_keys, table_values, mask, rows))
        return rows

    # ------------------------------------------------------------ kernel maps
    def _search(self, query_coords, offsets_dev, stride_dev, kernel_volume, divide, table):
        xp = self.xp
        n_query, ndim = query_coords.shape[0], query_coords.shape[1] - 1
        neighbour = xp.empty((n_query, kernel_volume), dtype=np.int32)
        table_keys, table_values, mask = table
        self.launcher.launch_1d(
            "kernel_map.cu", f"kmap_search<{ndim}>", n_query * kernel_volume,
            (self._c(query_coords, np.int32), _i64(n_query), offsets_dev,
             _i32(kernel_volume), stride_dev, _i32(int(divide)), table_keys, table_values, mask,
             neighbour))
        return neighbour

    def _column_ranks(self, neighbour, kernel_volume):
        """(rank, counts): rank[row, k] = active entries of column k up to row
        (inclusive), C-contiguous; counts[k] its last row (device arrays)."""
        xp = self.xp
        n_rows = neighbour.shape[0]
        if not n_rows:
            return (xp.zeros((0, kernel_volume), dtype=np.int32),
                    xp.zeros(kernel_volume, dtype=np.int32))
        # CuPy scans axis 0 of a 2-D array on a rolled copy and hands back an
        # F-ordered view: kmap_compact reads rank as C order, so make it so.
        rank = self._c(xp.cumsum(neighbour >= 0, axis=0, dtype=np.int32))
        return rank, rank[n_rows - 1]

    def _pair_tables(self, neighbour, rank, counts, kernel_volume):
        """Pair table (CSR by offset, sorted by query row), positions and pair mask,
        from the neighbour table, its column ranks and the pair counts (host)."""
        xp, launcher = self.xp, self.launcher
        n_rows = neighbour.shape[0]
        pair_offsets = np.zeros(kernel_volume + 1, dtype=np.int64)
        np.cumsum(counts, out=pair_offsets[1:])
        n_pairs = int(pair_offsets[-1])
        pair_offsets_dev = launcher.to_device(pair_offsets)
        query_rows = xp.empty(n_pairs, dtype=np.int32)
        partner_rows = xp.empty(n_pairs, dtype=np.int32)
        position = xp.empty((n_rows, kernel_volume), dtype=np.int32)
        launcher.launch_1d("kernel_map.cu", "kmap_compact", n_rows * kernel_volume,
                           (neighbour, rank, _i64(n_rows), _i32(kernel_volume), pair_offsets_dev,
                            query_rows, partner_rows, position))
        n_words = _ceil_div(kernel_volume, 32)
        mask = xp.empty((n_rows, n_words), dtype=np.uint32)
        launcher.launch_1d("kernel_map.cu", "kmap_pair_mask", n_rows * n_words,
                           (neighbour, _i64(n_rows), _i32(kernel_volume), _i32(n_words), mask))
        return dict(pair_offsets=pair_offsets, pair_offsets_dev=pair_offsets_dev,
                    query_rows=query_rows, partner_rows=partner_rows, position=position,
                    mask=mask, neighbour=neighbour)

    def build_kernel_map(self, in_coords, out_coords, offsets, stride, transposed, *,
                         same_set=False, in_keys=None, out_keys=None) -> KernelMap:
        """Both neighbour tables through the hash tables of the two sets."""
        launcher = self.launcher
        kernel_volume = offsets.shape[0]
        in_keys = in_keys if in_keys is not None else SortedKeys(in_coords, "in_coords")
        if same_set:
            out_keys = in_keys
        elif out_keys is None:
            out_keys = SortedKeys(out_coords, "out_coords")
        xp = self.xp
        offsets_dev = launcher.to_device(np.asarray(offsets, dtype=np.int32))
        stride_dev = launcher.to_device(np.asarray(stride, dtype=np.int32))
        in_table, in_duplicates = self._hash_table(in_keys)
        out_table, out_duplicates = (in_table, None) if same_set else self._hash_table(out_keys)
        # forward map: input = stride * output + K[k]; transposed: output = stride * input + K[k]
        by_output = self._search(out_coords, offsets_dev, stride_dev, kernel_volume,
                                 divide=transposed, table=in_table)
        by_input = self._search(in_coords, offsets_dev, stride_dev, kernel_volume,
                                divide=not transposed, table=out_table)
        rank_out, counts_out = self._column_ranks(by_output, kernel_volume)
        rank_in, counts_in = self._column_ranks(by_input, kernel_volume)
        # the one host read of a new geometry: duplicates of both sets, both pair counts
        no_duplicates = xp.zeros(1, dtype=np.int32)
        read = launcher.to_host(xp.concatenate([
            in_duplicates if in_duplicates is not None else no_duplicates,
            out_duplicates if out_duplicates is not None else no_duplicates,
            counts_out.astype(np.int32), counts_in.astype(np.int32)])).astype(np.int64)
        if in_duplicates is not None:
            self._hash_validated(in_keys, int(read[0]))
        if out_duplicates is not None:
            self._hash_validated(out_keys, int(read[1]))
        forward = self._pair_tables(by_output, rank_out, read[2:2 + kernel_volume],
                                    kernel_volume)
        reverse = self._pair_tables(by_input, rank_in, read[2 + kernel_volume:], kernel_volume)
        if not np.array_equal(forward["pair_offsets"], reverse["pair_offsets"]):
            raise RuntimeError("kernel-map build: the two neighbour tables disagree "
                               "(please report this bug)")
        kmap = KernelMap(forward["partner_rows"], forward["query_rows"], forward["pair_offsets"],
                         in_coords.shape[0], out_coords.shape[0], offsets, stride, transposed)
        back = KernelMap(reverse["partner_rows"], reverse["query_rows"], reverse["pair_offsets"],
                         out_coords.shape[0], in_coords.shape[0], offsets, stride, not transposed)
        self._attach(kmap, forward)
        self._attach(back, reverse)
        kmap._by_input, back._by_input = back, kmap
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

    def conv_forward(self, feats, weight, kmap, layout, c_out, bias=None, algorithm=None):
        return self._product("forward", feats, weight, kmap, layout, c_out, bias, algorithm)

    def conv_input_grad(self, grad_out, weight, kmap, layout, c_in, algorithm=None):
        return self._product("input_grad", grad_out, self._transposed_weight(weight, layout),
                             kmap.reverse(), layout, c_in, None, algorithm)

    def _product(self, product, src, weight, kmap, layout, c_dst, bias, algorithm):
        """dst[out] += src[in] @ W[k] over ``kmap`` (forward, or input gradient on the
        reverse table with W transposed)."""
        xp = self.xp
        forced = tuning.forced_algorithm(product, algorithm)
        src = self._c(src)
        weight = self._c(weight.astype(src.dtype, copy=False))
        if bias is not None:
            bias = self._c(bias.astype(src.dtype, copy=False))
        if kmap.n_out == 0:
            return xp.zeros((0, c_dst), dtype=src.dtype)
        if layout == "depthwise":
            return self._depthwise(src, weight, kmap, bias)
        groups, group_in, group_out, weight4 = self._split_layout(weight, layout)
        n_words = kmap._pair_mask[0].shape[1]
        acc_size = self.accumulate_dtype(src.dtype).itemsize
        max_count = int(kmap.pair_counts().max()) if kmap.n_pairs else 0
        explicit_bytes = (kmap.kernel_volume * max_count * (group_in + group_out) * groups
                          + kmap.n_out * c_dst) * acc_size
        workspace = {"explicit": explicit_bytes, "explicit_sorted": explicit_bytes,
                     "implicit": kmap.n_out * c_dst * acc_size,
                     "mask": kmap.n_out * c_dst * np.dtype(src.dtype).itemsize}
        unusable = {}
        if groups > MAX_GRID[2]:
            for name in ("implicit", "mask"):
                unusable[name] = (f"it maps the {groups} groups to gridDim.z, at most "
                                  f"{MAX_GRID[2]}")
        if n_words > _MAX_MASK_WORDS:
            unusable["mask"] = (f"the kernel has {kmap.kernel_volume} offsets (mask supports "
                                f"up to {32 * _MAX_MASK_WORDS})")
        candidates = [c for c in tuning.ALGORITHMS[product] if c not in unusable]
        if forced is not None and forced in unusable:
            raise ValueError(f"algorithm {forced!r} cannot run this {product}: "
                             f"{unusable[forced]}")
        sixteen_bit = np.dtype(src.dtype).itemsize == 2
        heuristic = "mask" if "mask" in candidates and (
            sixteen_bit or tuning.is_deterministic()) else "implicit"
        runners = {
            "explicit": lambda: self._explicit(src, weight4, kmap, groups, c_dst, bias, False),
            "explicit_sorted": lambda: self._explicit(src, weight4, kmap, groups, c_dst, bias,
                                                      True),
            "implicit": lambda: self._implicit(src, weight4, kmap, groups, group_in, group_out,
                                               bias),
            "mask": lambda: self._mask(src, weight4, kmap, groups, group_in, group_out, bias),
        }
        bucket = tuning.shape_bucket(product, kmap.n_in, kmap.n_out, kmap.n_pairs,
                                     group_in * groups, c_dst, kmap.kernel_volume,
                                     np.dtype(src.dtype).name, self._device_name())
        return self._run_chosen(product, candidates, forced, bucket, heuristic, runners,
                                workspace)

    def _run_chosen(self, product, candidates, forced, bucket, heuristic, runners, workspace):
        """Choose an algorithm (forced, tuned or heuristic) and run it; a candidate
        that turns out not to exist on this device is dropped (remembered by the
        tuner, with a one-time warning) and the choice made again."""
        launcher = self.launcher
        while True:
            choice = tuning.choose(
                product, candidates, forced, bucket, heuristic,
                run=lambda name: runners[name](), synchronize=self._synchronize,
                autotune=None if not launcher.emulated else launcher.tune_under_emulation,
                workspace=workspace, free_bytes=launcher.free_bytes,
                capturing=launcher.stream_capturing(), failures=self._candidate_errors())
            try:
                return runners[choice]()
            except KernelUnavailableError as error:
                if forced is not None:
                    raise
                tuning.remember_failure(bucket, choice)
                _warn_once(("unavailable", product, choice, error.device_arch),
                           f"cusparseconv: the {choice!r} {product} algorithm is not available "
                           f"on this device ({error}); using another algorithm")
                candidates = [c for c in candidates if c != choice]
                if not candidates:
                    raise

    def _finish(self, acc, bias, dtype):
        """T(acc + bias) through the finish_rows kernel."""
        xp = self.xp
        if np.dtype(dtype) == acc.dtype and bias is None:
            return acc
        out = xp.empty(acc.shape, dtype=dtype)
        has_bias = bias is not None
        self.launcher.launch_1d(
            "gather_scatter.cu", f"finish_rows<{self._ctype(dtype)}>", acc.size,
            (acc, _i64(acc.shape[0]), _i32(acc.shape[1]),
             bias if has_bias else self._dummy(dtype), _i32(int(has_bias)), out))
        return out

    def _gather(self, src, rows, kmap, max_count):
        """(K, max_count, C) gathered rows of every offset, zero-padded, accumulation type."""
        xp = self.xp
        acc_dtype = self.accumulate_dtype(src.dtype)
        channels = src.shape[1]
        out = xp.empty((kmap.kernel_volume, max_count, channels), dtype=acc_dtype)
        self.launcher.launch_1d(
            "gather_scatter.cu",
            f"gather_padded<{self._ctype(src.dtype)}, {self._ctype(acc_dtype)}>", out.size,
            (src, _i32(channels), _i32(0), _i32(channels), rows, kmap.pair_offsets_device,
             _i32(kmap.kernel_volume), _i64(max_count), out))
        return out

    def _explicit(self, src, weight4, kmap, groups, c_dst, bias, deterministic):
        xp = self.xp
        acc_dtype = self.accumulate_dtype(src.dtype)
        kernel_volume = kmap.kernel_volume
        max_count = int(kmap.pair_counts().max()) if kmap.n_pairs else 0
        if max_count == 0:
            return self._finish(xp.zeros((kmap.n_out, c_dst), dtype=acc_dtype), bias, src.dtype)
        gathered = self._gather(src, kmap.in_rows, kmap, max_count)
        weight_acc = weight4.astype(acc_dtype)
        if groups == 1:
            products = xp.matmul(gathered, weight_acc[:, 0])
        else:
            group_in = weight4.shape[2]
            stacked = gathered.reshape(kernel_volume, max_count, groups, group_in).transpose(
                0, 2, 1, 3)
            products = xp.matmul(stacked, weight_acc).transpose(0, 2, 1, 3).reshape(
                kernel_volume, max_count, c_dst)
        products = xp.ascontiguousarray(products)
        ctype = self._ctype(acc_dtype)
        if deterministic:
            acc = xp.empty((kmap.n_out, c_dst), dtype=acc_dtype)
            self.launcher.launch_1d(
                "gather_scatter.cu", f"scatter_sorted<{ctype}>", acc.size,
                (products, kmap.position, _i64(kmap.n_out), _i32(kernel_volume),
                 _i64(max_count), _i32(c_dst), _i32(c_dst), _i32(0), acc))
        else:
            acc = xp.zeros((kmap.n_out, c_dst), dtype=acc_dtype)
            self.launcher.launch_1d(
                "gather_scatter.cu", f"scatter_add_pairs<{ctype}>", products.size,
                (products, kmap.out_rows, kmap.pair_offsets_device, _i32(kernel_volume),
                 _i64(max_count), _i32(c_dst), _i32(c_dst), _i32(0), acc))
        return self._finish(acc, bias, src.dtype)

    def _tile_starts(self, kmap, per_tile):
        starts = np.zeros(kmap.kernel_volume + 1, dtype=np.int64)
        np.cumsum(-(-kmap.pair_counts() // per_tile), out=starts[1:])
        return starts

    def _implicit(self, src, weight4, kmap, groups, group_in, group_out, bias):
        xp = self.xp
        acc_dtype = self.accumulate_dtype(src.dtype)
        acc = xp.zeros((kmap.n_out, groups * group_out), dtype=acc_dtype)
        starts = self._tile_starts(kmap, _TILE)
        self.launcher.launch(
            "implicit_gemm.cu", f"implicit_gemm<{self._ctype(src.dtype)}>",
            (int(starts[-1]), _ceil_div(group_out, _TILE), groups), (256,),
            (src, weight4, kmap.in_rows, kmap.out_rows, kmap.pair_offsets_device,
             self.launcher.to_device(starts), _i32(kmap.kernel_volume), _i32(groups),
             _i32(group_in), _i32(group_out), acc))
        return self._finish(acc, bias, src.dtype)

    def _mask(self, src, weight4, kmap, groups, group_in, group_out, bias):
        xp = self.xp
        mask, neighbour = kmap._pair_mask
        out = xp.empty((kmap.n_out, groups * group_out), dtype=src.dtype)
        has_bias = bias is not None
        args = (src, weight4, neighbour, mask, _i32(mask.shape[1]), _i64(kmap.n_out),
                _i32(kmap.kernel_volume), _i32(groups), _i32(group_in), _i32(group_out),
                bias if has_bias else self._dummy(src.dtype), _i32(int(has_bias)), out)
        ctype = self._ctype(src.dtype)
        if np.dtype(src.dtype).itemsize == 2:
            grid = (_ceil_div(kmap.n_out, _WMMA_TILE), _ceil_div(group_out, _WMMA_TILE), groups)
            source = "mask_gemm_bf16.cu" if ctype == "__nv_bfloat16" else "mask_gemm.cu"
            try:
                self.launcher.launch(source, f"mask_gemm_wmma<{ctype}>", grid, (128,), args)
                return out
            except KernelUnavailableError as error:
                _warn_once(("wmma", ctype, error.device_arch),
                           f"cusparseconv: tensor-core mask GEMM for {np.dtype(src.dtype).name} "
                           f"is not available ({error}); using the SIMT mask GEMM")
        grid = (_ceil_div(kmap.n_out, _TILE), _ceil_div(group_out, _TILE), groups)
        self.launcher.launch("mask_gemm.cu", f"mask_gemm<{ctype}>", grid, (256,), args)
        return out

    def _depthwise(self, src, weight, kmap, bias):
        xp = self.xp
        channels = src.shape[1]
        out = xp.empty((kmap.n_out, channels), dtype=src.dtype)
        has_bias = bias is not None
        self.launcher.launch_1d(
            "depthwise.cu", f"depthwise_forward<{self._ctype(src.dtype)}>", out.size,
            (src, weight, kmap.neighbour, _i64(kmap.n_out), _i32(kmap.kernel_volume),
             _i32(channels), bias if has_bias else self._dummy(src.dtype), _i32(int(has_bias)),
             out))
        return out

    def conv_weight_grad(self, feats, grad_out, kmap, layout, weight_shape, algorithm=None):
        xp = self.xp
        forced = tuning.forced_algorithm("weight_grad", algorithm)
        dtype = feats.dtype
        feats = self._c(feats)
        grad_out = self._c(grad_out.astype(dtype, copy=False))
        acc_dtype = self.accumulate_dtype(dtype)
        if kmap.n_pairs == 0:
            return xp.zeros(weight_shape, dtype=dtype)
        if layout == "depthwise":
            channels = feats.shape[1]
            grad = xp.empty((kmap.kernel_volume, channels), dtype=acc_dtype)
            self.launcher.launch(
                "depthwise.cu", f"depthwise_wgrad<{self._ctype(dtype)}>",
                (kmap.kernel_volume, _ceil_div(channels, 32), 1), (256,),
                (feats, grad_out, kmap.in_rows, kmap.out_rows, kmap.pair_offsets_device,
                 _i32(channels), grad))
            return self._c(grad.astype(dtype).reshape(weight_shape))
        if layout == "grouped":
            kernel_volume, groups, group_in, group_out = weight_shape
        else:
            (kernel_volume, group_in, group_out), groups = weight_shape, 1
        acc_size = acc_dtype.itemsize
        max_count = int(kmap.pair_counts().max())
        workspace = {
            "explicit": kernel_volume * (max_count * (group_in + group_out)
                                         + group_in * group_out) * groups * acc_size,
            "splitk": kernel_volume * groups * group_in * group_out * acc_size,
        }
        splitk_tiles = _ceil_div(group_in, _TILE) * _ceil_div(group_out, _TILE)
        candidates = ["explicit", "splitk"]
        if groups > MAX_GRID[2] or splitk_tiles > MAX_GRID[1]:
            candidates.remove("splitk")
            if forced == "splitk":
                raise ValueError(f"algorithm 'splitk' cannot run this weight gradient: its grid "
                                 f"({splitk_tiles} channel tiles, {groups} groups) exceeds "
                                 f"CUDA's limits {MAX_GRID[1:]}")
        runners = {
            "explicit": lambda: self._wgrad_explicit(feats, grad_out, kmap, groups, group_in,
                                                     group_out),
            "splitk": lambda: self._wgrad_splitk(feats, grad_out, kmap, groups, group_in,
                                                 group_out),
        }
        bucket = tuning.shape_bucket("weight_grad", kmap.n_in, kmap.n_out, kmap.n_pairs,
                                     groups * group_in, groups * group_out, kernel_volume,
                                     np.dtype(dtype).name, self._device_name())
        # splitk by default: explicit pads every offset to the largest pair count
        # (the centre offset pairs every row) and gathers both sides
        grad = self._run_chosen("weight_grad", candidates, forced, bucket, "splitk", runners,
                                workspace)
        return self._c(grad.astype(dtype).reshape(weight_shape))

    def _wgrad_explicit(self, feats, grad_out, kmap, groups, group_in, group_out):
        xp = self.xp
        kernel_volume = kmap.kernel_volume
        max_count = int(kmap.pair_counts().max())
        inputs = self._gather(feats, kmap.in_rows, kmap, max_count)
        grads = self._gather(grad_out, kmap.out_rows, kmap, max_count)
        inputs = inputs.reshape(kernel_volume, max_count, groups, group_in).transpose(0, 2, 3, 1)
        grads = grads.reshape(kernel_volume, max_count, groups, group_out).transpose(0, 2, 1, 3)
        return self._c(xp.matmul(inputs, grads))  # (K, G, gin, gout)

    def _wgrad_splitk(self, feats, grad_out, kmap, groups, group_in, group_out):
        xp = self.xp
        acc = xp.zeros((kmap.kernel_volume, groups, group_in, group_out),
                       dtype=self.accumulate_dtype(feats.dtype))
        starts = self._tile_starts(kmap, _CHUNK)
        grid = (int(starts[-1]), _ceil_div(group_in, _TILE) * _ceil_div(group_out, _TILE), groups)
        self.launcher.launch(
            "implicit_gemm.cu", f"wgrad_splitk<{self._ctype(feats.dtype)}>", grid, (256,),
            (feats, grad_out, kmap.in_rows, kmap.out_rows, kmap.pair_offsets_device,
             self.launcher.to_device(starts), _i32(kmap.kernel_volume), _i32(groups),
             _i32(group_in), _i32(group_out), acc))
        return acc

    # ------------------------------------------------------------ pooling
    def _pool_max(self, feats, kmap):
        xp = self.xp
        channels = feats.shape[1]
        out = xp.empty((kmap.n_out, channels), dtype=feats.dtype)
        argmax = xp.empty((kmap.n_out, channels), dtype=np.int64)
        self.launcher.launch_1d(
            "pooling.cu", f"pool_max<{self._ctype(feats.dtype)}>", out.size,
            (self._c(feats), kmap.neighbour, _i64(kmap.n_out),
             _i32(kmap.kernel_volume), _i32(channels), out, argmax))
        return out, argmax

    def _pool_sum(self, feats, kmap, average):
        xp = self.xp
        channels = feats.shape[1]
        out = xp.empty((kmap.n_out, channels), dtype=feats.dtype)
        self.launcher.launch_1d(
            "pooling.cu", f"pool_sum<{self._ctype(feats.dtype)}>", out.size,
            (self._c(feats), kmap.neighbour, _i64(kmap.n_out),
             _i32(kmap.kernel_volume), _i32(channels), _i32(int(average)), out))
        return out

    def pool_forward(self, feats, kmap, mode):
        if mode == "max":
            return self._pool_max(feats, kmap)[0]
        return self._pool_sum(feats, kmap, mode == "avg")

    def pool_backward(self, grad_out, feats, kmap, mode):
        xp = self.xp
        dtype = grad_out.dtype
        acc_dtype = self.accumulate_dtype(dtype)
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
            counts = xp.sum(kmap.neighbour >= 0, axis=1)
            scaled = scaled / xp.maximum(counts, 1)[:, None].astype(acc_dtype)
        return self._c(self._pool_sum(self._c(scaled), kmap.reverse(), False).astype(dtype))

    def segment_reduce(self, feats, segment_ids, n_segments, mode):
        xp = self.xp
        channels = feats.shape[1]
        out = xp.empty((n_segments, channels), dtype=feats.dtype)
        if n_segments == 0:
            return out
        order = xp.argsort(segment_ids, kind="stable") if xp is np else xp.argsort(segment_ids)
        starts = xp.searchsorted(segment_ids[order], xp.arange(n_segments + 1))
        self.launcher.launch_1d(
            "pooling.cu", f"segment_reduce<{self._ctype(feats.dtype)}>", out.size,
            (self._c(feats), self._c(order, np.int64),
             self._c(starts, np.int64), _i64(n_segments), _i32(channels),
             _i32({"sum": 0, "mean": 1, "max": 2}[mode]), out))
        return out
