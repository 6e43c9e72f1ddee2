"""Tensor-core products and re-parallelised reductions of the GPU backend (sm_80+).

Python side of ``raw_kernels/tc_gemm.cu`` (forward / input gradient as an
implicit GEMM on ``mma.sync``), ``raw_kernels/tc_wgrad.cu`` (weight gradient,
split over pairs with a deterministic reduction), ``depthwise_wgrad_split`` in
``raw_kernels/depthwise.cu`` and ``segment_reduce_split`` in
``raw_kernels/pooling.cu``. Every function takes a launcher
(:mod:`cusparseconv.backends._launch`: CuPy on a device, the host emulator
otherwise) and the arrays, and returns the result; nothing is cached here
(the row order of :func:`row_order_by_mask` is per-map state the caller keeps).

Data types: float16 and bfloat16 run ``mma.sync.m16n8k16`` with fp32
accumulation; float32 runs ``mma.sync.m16n8k8`` on TF32 operands (inputs
rounded to 10 mantissa bits) and is refused unless ``allow_tf32=True``.
float64 and grouped convolutions are not handled by these kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "TileShape", "VARIANTS", "SCALAR_VARIANT", "MAX_KERNEL_VOLUME",
    "supports", "vectorizable", "variants_for", "default_variant",
    "row_order_by_mask", "tile_offset_steps",
    "implicit_gemm", "weight_grad", "wgrad_chunking",
    "depthwise_weight_grad", "segment_reduce",
]

GEMM_SOURCE = "tc_gemm.cu"
WGRAD_SOURCE = "tc_wgrad.cu"
THREADS = 128
MAX_KERNEL_VOLUME = 32 * 16       # pair-mask words the GEMM kernel holds per tile
_INT32_MAX = 2**31 - 1

_CTYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}
_ANY_CTYPES = {**_CTYPES, "float64": "double"}


@dataclass(frozen=True)
class TileShape:
    """A compiled tile shape of ``tc_implicit_gemm``: rows x output channels, pipeline depth."""

    rows: int
    cols: int
    stages: int
    vectorized: bool = True

    @property
    def name(self) -> str:
        return f"m{self.rows}n{self.cols}s{self.stages}" + ("" if self.vectorized else "-scalar")

    def kernel(self, ctype: str) -> str:
        return (f"tc_implicit_gemm<{ctype}, {self.rows}, {self.cols}, {self.stages}, "
                f"{int(self.vectorized)}>")


#: The 16-byte-copy variants (channel counts that are multiples of 16 bytes).
VARIANTS = {shape.name: shape for shape in (TileShape(128, 64, 3), TileShape(64, 64, 4),
                                            TileShape(64, 32, 4))}
#: The element-wise fallback (any channel count).
SCALAR_VARIANT = TileShape(64, 64, 3, vectorized=False)


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


def supports(dtype, allow_tf32: bool = False) -> bool:
    """Whether the tensor-core kernels handle `dtype` (float32 only with TF32 allowed)."""
    name = _dtype_name(dtype)
    return name in ("float16", "bfloat16") or (name == "float32" and bool(allow_tf32))


def _check_dtype(dtype, allow_tf32, what):
    name = _dtype_name(dtype)
    if name not in _CTYPES:
        raise TypeError(f"{what} must be float16, bfloat16 or float32 for the tensor-core "
                        f"kernels, got {name}")
    if name == "float32" and not allow_tf32:
        raise ValueError(f"{what} is float32: the tensor-core kernels multiply it as TF32 "
                         "(10-bit mantissa); pass allow_tf32=True to accept that, or use the "
                         "SIMT kernels")
    return _CTYPES[name]


def _elements_per_16_bytes(dtype) -> int:
    return 16 // np.dtype(dtype).itemsize


def _address(array) -> int:
    if isinstance(array, np.ndarray):
        return array.ctypes.data
    return int(array.data.ptr)


def vectorizable(dtype, c_src: int, c_dst: int, *arrays) -> bool:
    """True when every row moves as 16-byte chunks: both channel counts are multiples
    of 16 bytes and every array starts on a 16-byte boundary."""
    vec = _elements_per_16_bytes(dtype)
    return (c_src % vec == 0 and c_dst % vec == 0
            and all(_address(a) % 16 == 0 for a in arrays if a is not None and a.size))


def variants_for(dtype, c_src: int, c_dst: int) -> list[str]:
    """Names of the tile shapes worth trying for a (C_src, C_dst, dtype) product.

    The autotuner chooses among them; a scalar-fallback product has one.
    """
    vec = _elements_per_16_bytes(dtype)
    if c_src % vec or c_dst % vec:
        return [SCALAR_VARIANT.name]
    names = ["m64n32s4"] if c_dst <= 32 else []
    return names + ["m128n64s3", "m64n64s4"] + ([] if c_dst <= 32 else ["m64n32s4"])


def default_variant(n_rows: int, c_src: int, c_dst: int, dtype) -> str:
    """The heuristic choice: narrow tiles for C_dst <= 32, tall tiles when the grid is
    large enough to fill a GPU with them (about four blocks per SM of an H100)."""
    candidates = variants_for(dtype, c_src, c_dst)
    if candidates == [SCALAR_VARIANT.name]:
        return candidates[0]
    if c_dst <= 32:
        return "m64n32s4"
    blocks_128 = -(-n_rows // 128) * -(-c_dst // 64)
    return "m128n64s3" if blocks_128 >= 4 * 132 else "m64n64s4"


# ---------------------------------------------------------------------------
# row order
# ---------------------------------------------------------------------------

def row_order_by_mask(launcher, mask):
    """A permutation of the output rows that groups rows with the same pair mask.

    A tile of the implicit GEMM runs over the union of its rows' active offsets;
    sorting the rows by their mask (stable, so equal masks keep their input order
    and their gathers stay local) makes neighbouring rows share offsets and
    shrinks that union. Compute it once per kernel map and pass it as
    ``row_order`` to every product on that map.

    Parameters
    ----------
    launcher : Launcher
    mask : array of uint32, shape (n_rows, n_words)
        The pair mask (bit k % 32 of word k // 32: offset k active).

    Returns
    -------
    array of int32, shape (n_rows,)
        ``row_order[i]`` is the output row computed in position i.
    """
    xp = launcher.xp
    if mask.ndim != 2 or np.dtype(mask.dtype) != np.uint32:
        raise ValueError(f"mask must be a 2-D uint32 array, got {mask.dtype} {mask.shape}")
    n_rows, n_words = mask.shape
    if n_rows == 0:
        return xp.zeros(0, dtype=np.int32)
    if n_words <= 2:
        key = mask[:, 0].astype(np.uint64)
        if n_words == 2:
            key = key | (mask[:, 1].astype(np.uint64) << np.uint64(32))
        order = xp.argsort(key, kind="stable") if xp is np else xp.argsort(key)
    else:  # lexicographic, word 0 most significant
        order = xp.lexsort(xp.ascontiguousarray(mask.T[::-1]))
    return xp.ascontiguousarray(order.astype(np.int32))


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def tile_offset_steps(mask, row_order=None, tile_rows: int = 128) -> int:
    """Sum over tiles of ``tile_rows`` output rows of the number of offsets active in the
    tile: the implicit GEMM's pipeline steps per channel chunk (a model of its work).

    Host NumPy arrays (use ``launcher.to_host`` first).
    """
    mask = np.asarray(mask)
    if row_order is not None:
        mask = mask[np.asarray(row_order)]
    n_rows, n_words = mask.shape
    if n_rows == 0:
        return 0
    padded = np.zeros((-(-n_rows // tile_rows) * tile_rows, n_words), np.uint32)
    padded[:n_rows] = mask
    union = np.bitwise_or.reduce(padded.reshape(-1, tile_rows, n_words), axis=1)
    return int(_POPCOUNT8[union.view(np.uint8)].sum())


# ---------------------------------------------------------------------------
# forward / input gradient
# ---------------------------------------------------------------------------

def _check_array(array, name, ndim, dtype=None):
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(array.shape)}")
    if dtype is not None and np.dtype(array.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {np.dtype(array.dtype).name}")


def implicit_gemm(launcher, src, weight, neighbour, mask, bias=None, row_order=None, *,
                  variant: str | None = None, allow_tf32: bool = False, out=None):
    """``out[r] = bias + sum_k src[neighbour[r, k]] @ weight[k]`` on the tensor cores.

    The forward product of a kernel map (``neighbour``/``mask`` of the output-major
    encoding); on the reverse table with ``weight`` transposed per offset it is the
    input gradient. Every output row is written once: deterministic, no atomics.
    Non-finite values follow the pairs: an output element whose tile result is not
    finite (a zero-filled row times an inf or NaN in ``weight[k]``) is recomputed
    from its row's own pairs, so the result has the non-finite pattern of a
    pair-by-pair product.

    Parameters
    ----------
    launcher : Launcher
    src : array, shape (n_src, C_src), float16 / bfloat16 / float32 (TF32)
    weight : array, shape (K, C_src, C_dst), same dtype as `src`
    neighbour : array of int32, shape (n_rows, K)
        Input row of each (output row, offset), -1 where there is no pair.
    mask : array of uint32, shape (n_rows, ceil(K / 32))
        Pair mask of the same map.
    bias : array, shape (C_dst,), same dtype, optional
    row_order : array of int32, shape (n_rows,), optional
        Permutation of the output rows (:func:`row_order_by_mask`).
    variant : str, optional
        A tile shape of :data:`VARIANTS` (vectorizable products) or
        ``SCALAR_VARIANT.name``; default :func:`default_variant`.
    allow_tf32 : bool
        Required for float32.
    out : array, shape (n_rows, C_dst), dtype of `src`, C-contiguous, optional
        Where to write the result (returned).

    Returns
    -------
    array, shape (n_rows, C_dst), dtype of `src`
    """
    xp = launcher.xp
    ctype = _check_dtype(src.dtype, allow_tf32, "src")
    _check_array(src, "src", 2)
    _check_array(weight, "weight", 3, src.dtype)
    _check_array(neighbour, "neighbour", 2, np.int32)
    _check_array(mask, "mask", 2, np.uint32)
    n_rows, kernel_volume = neighbour.shape
    c_src, c_dst = src.shape[1], weight.shape[2]
    if weight.shape[:2] != (kernel_volume, c_src):
        raise ValueError(f"weight must have shape (K={kernel_volume}, C_src={c_src}, C_dst), "
                         f"got {tuple(weight.shape)}")
    n_words = -(-kernel_volume // 32)
    if mask.shape != (n_rows, n_words):
        raise ValueError(f"mask must have shape {(n_rows, n_words)}, got {tuple(mask.shape)}")
    if kernel_volume > MAX_KERNEL_VOLUME:
        raise ValueError(f"the tensor-core GEMM handles up to {MAX_KERNEL_VOLUME} offsets, "
                         f"got {kernel_volume}")
    if max(n_rows, src.shape[0]) > _INT32_MAX:
        raise ValueError("the tensor-core GEMM indexes rows with int32: at most 2**31 - 1 rows")
    if bias is not None:
        _check_array(bias, "bias", 1, src.dtype)
        if bias.shape[0] != c_dst:
            raise ValueError(f"bias must have shape ({c_dst},), got {tuple(bias.shape)}")
    if row_order is not None:
        _check_array(row_order, "row_order", 1, np.int32)
        if row_order.shape[0] != n_rows:
            raise ValueError(f"row_order must have shape ({n_rows},), "
                             f"got {tuple(row_order.shape)}")
    src, weight = xp.ascontiguousarray(src), xp.ascontiguousarray(weight)
    neighbour, mask = xp.ascontiguousarray(neighbour), xp.ascontiguousarray(mask)
    if out is None:
        out = xp.empty((n_rows, c_dst), dtype=src.dtype)
    elif (tuple(out.shape) != (n_rows, c_dst) or np.dtype(out.dtype) != np.dtype(src.dtype)
          or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous {np.dtype(src.dtype).name} array of shape "
                         f"{(n_rows, c_dst)}, got {np.dtype(out.dtype).name} "
                         f"{tuple(out.shape)}")
    if n_rows == 0 or c_dst == 0:
        return out
    if c_src == 0:
        out[...] = 0 if bias is None else bias[None, :]
        return out
    vec = vectorizable(src.dtype, c_src, c_dst, src, weight, bias, out)
    shape = _pick_shape(variant, vec, n_rows, c_src, c_dst, src.dtype)
    dummy_rows = xp.zeros(1, dtype=np.int32)
    args = (src, weight, neighbour, mask,
            xp.ascontiguousarray(row_order) if row_order is not None else dummy_rows,
            np.int32(row_order is not None), np.int32(n_words), np.int32(n_rows),
            np.int32(kernel_volume), np.int32(c_src), np.int32(c_dst),
            xp.ascontiguousarray(bias) if bias is not None else xp.zeros(1, dtype=src.dtype),
            np.int32(bias is not None), out)
    grid = (-(-n_rows // shape.rows), -(-c_dst // shape.cols), 1)
    launcher.launch(GEMM_SOURCE, shape.kernel(ctype), grid, (THREADS,), args)
    return out


def _pick_shape(variant, vec, n_rows, c_src, c_dst, dtype) -> TileShape:
    if variant is None:
        return VARIANTS[default_variant(n_rows, c_src, c_dst, dtype)] if vec else SCALAR_VARIANT
    if variant == SCALAR_VARIANT.name:
        return SCALAR_VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS) + [SCALAR_VARIANT.name]}, "
                         f"got {variant!r}")
    if not vec:
        raise ValueError(f"variant {variant!r} copies 16-byte chunks: C_src={c_src} and "
                         f"C_dst={c_dst} must be multiples of "
                         f"{_elements_per_16_bytes(dtype)} and the arrays 16-byte aligned; "
                         f"use {SCALAR_VARIANT.name!r}")
    return VARIANTS[variant]


# ---------------------------------------------------------------------------
# weight gradient
# ---------------------------------------------------------------------------

#: Blocks the split aims for (about four per SM of an H100: 132 SMs).
_TARGET_BLOCKS = 4 * 132


def wgrad_chunking(pair_offsets, c_in: int, c_out: int, chunk_pairs: int | None = None):
    """How the weight gradient splits each offset's pairs into chunks.

    Depends only on the map's pair counts and the channel counts, so the
    reduction order (and the result) is the same on every run.

    Parameters
    ----------
    pair_offsets : ndarray of int64, shape (K + 1,), host
        CSR boundaries of the pair table.
    c_in, c_out : int
    chunk_pairs : int, optional
        Pairs per chunk (default: enough chunks for about 528 blocks, between
        256 and 16384 pairs, a multiple of 256).

    Returns
    -------
    chunk_pairs : int
    chunk_begin, chunk_end : ndarray of int64, shape (n_chunks,)
        Pair range of each chunk (chunks of offset k are consecutive).
    chunk_start : ndarray of int64, shape (K + 1,)
        Offset k owns chunks chunk_start[k] .. chunk_start[k + 1].
    """
    pair_offsets = np.asarray(pair_offsets, dtype=np.int64)
    n_pairs = int(pair_offsets[-1] - pair_offsets[0])
    if chunk_pairs is None:
        chunk_pairs = _chunk_size(n_pairs * (-(-c_in // 64) * -(-c_out // 64)))
    chunk_pairs = int(chunk_pairs)
    if chunk_pairs <= 0:
        raise ValueError(f"chunk_pairs must be positive, got {chunk_pairs}")
    return (chunk_pairs, *_split_ranges(pair_offsets, chunk_pairs))


def _chunk_size(work: int) -> int:
    """Items per chunk so that `work` (items x column blocks) makes about
    _TARGET_BLOCKS blocks: a multiple of 256 in [256, 16384]."""
    wanted = -(-int(work) // _TARGET_BLOCKS)
    return int(min(16384, max(256, -(-wanted // 256) * 256)))


def _split_ranges(boundaries, chunk: int):
    """Cut each range [boundaries[r], boundaries[r + 1]) into chunks of at most `chunk`
    items (none for an empty range): (chunk_begin, chunk_end, chunk_start), where
    range r owns chunks chunk_start[r] .. chunk_start[r + 1]."""
    boundaries = np.asarray(boundaries, dtype=np.int64)
    counts = np.diff(boundaries)
    per_range = -(-counts // chunk)
    chunk_start = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(per_range, out=chunk_start[1:])
    range_of_chunk = np.repeat(np.arange(counts.shape[0]), per_range)
    index_in_range = np.arange(int(chunk_start[-1]), dtype=np.int64) - chunk_start[range_of_chunk]
    chunk_begin = boundaries[range_of_chunk] + index_in_range * chunk
    chunk_end = np.minimum(chunk_begin + chunk, boundaries[range_of_chunk + 1])
    return chunk_begin.astype(np.int64), chunk_end.astype(np.int64), chunk_start


def weight_grad(launcher, feats, grad_out, in_rows, out_rows, pair_offsets, *,
                allow_tf32: bool = False, chunk_pairs: int | None = None):
    """``grad_weight[k] = sum over offset k's pairs (i, o) of feats[i]^T grad_out[o]``.

    Tensor cores with fp32 accumulation; each offset's pairs are split into
    chunks (:func:`wgrad_chunking`) whose partial products are summed in a fixed
    order by a second kernel: deterministic, no atomics.

    Parameters
    ----------
    launcher : Launcher
    feats : array, shape (n_in, C_in), float16 / bfloat16 / float32 (TF32)
    grad_out : array, shape (n_out, C_out), same dtype
    in_rows, out_rows : arrays of int32, shape (n_pairs,)
        The pair table (CSR by offset).
    pair_offsets : ndarray of int64, shape (K + 1,), host
    allow_tf32 : bool
        Required for float32.
    chunk_pairs : int, optional
        Pairs per chunk (see :func:`wgrad_chunking`).

    Returns
    -------
    array, shape (K, C_in, C_out), dtype of `feats`
    """
    xp = launcher.xp
    ctype = _check_dtype(feats.dtype, allow_tf32, "feats")
    _check_array(feats, "feats", 2)
    _check_array(grad_out, "grad_out", 2, feats.dtype)
    _check_array(in_rows, "in_rows", 1, np.int32)
    _check_array(out_rows, "out_rows", 1, np.int32)
    pair_offsets = np.asarray(pair_offsets, dtype=np.int64)
    kernel_volume = pair_offsets.shape[0] - 1
    n_pairs = int(pair_offsets[-1]) if kernel_volume >= 0 else 0
    if in_rows.shape[0] != n_pairs or out_rows.shape[0] != n_pairs:
        raise ValueError(f"in_rows and out_rows must have pair_offsets[-1] = {n_pairs} entries, "
                         f"got {in_rows.shape[0]} and {out_rows.shape[0]}")
    c_in, c_out = feats.shape[1], grad_out.shape[1]
    out = xp.zeros((kernel_volume, c_in, c_out), dtype=feats.dtype)
    if n_pairs == 0 or c_in == 0 or c_out == 0:
        return out
    feats, grad_out = xp.ascontiguousarray(feats), xp.ascontiguousarray(grad_out)
    chunk_pairs, begin, end, start = wgrad_chunking(pair_offsets, c_in, c_out, chunk_pairs)
    partial = xp.empty((begin.shape[0], c_in, c_out), dtype=np.float32)
    vec = vectorizable(feats.dtype, c_in, c_out, feats, grad_out)
    grid = (begin.shape[0], -(-c_in // 64), -(-c_out // 64))
    launcher.launch(WGRAD_SOURCE, f"tc_wgrad_partial<{ctype}, {int(vec)}>", grid, (THREADS,),
                    (feats, grad_out, xp.ascontiguousarray(in_rows),
                     xp.ascontiguousarray(out_rows), launcher.to_device(begin),
                     launcher.to_device(end), np.int32(c_in), np.int32(c_out), partial))
    launcher.launch_1d(WGRAD_SOURCE, f"tc_wgrad_reduce<{ctype}>", out.size,
                       (partial, launcher.to_device(start), np.int32(kernel_volume),
                        np.int64(c_in * c_out), out))
    return out


# ---------------------------------------------------------------------------
# depthwise weight gradient, segment reduction (SIMT, split for parallelism)
# ---------------------------------------------------------------------------

def _any_ctype(dtype, what) -> str:
    name = _dtype_name(dtype)
    if name not in _ANY_CTYPES:
        raise TypeError(f"{what} must be one of {tuple(_ANY_CTYPES)}, got {name}")
    return _ANY_CTYPES[name]


def _accumulate_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def depthwise_weight_grad(launcher, feats, grad_out, in_rows, out_rows, pair_offsets, *,
                          chunk_pairs: int | None = None):
    """``grad_weight[k, c] = sum over offset k's pairs (i, o) of feats[i, c] * grad_out[o, c]``.

    Each offset's pairs are split into chunks (one block each, per 32 channels),
    whose sums a second kernel adds in chunk order: any number of blocks, no
    atomics, bit-identical run to run (kernels ``depthwise_wgrad_split`` and
    ``depthwise_wgrad_reduce`` of ``raw_kernels/depthwise.cu``).

    Parameters
    ----------
    launcher : Launcher
    feats : array, shape (n_in, C), float16 / bfloat16 / float32 / float64
    grad_out : array, shape (n_out, C), same dtype
    in_rows, out_rows : arrays of int32, shape (n_pairs,)
    pair_offsets : ndarray of int64, shape (K + 1,), host
    chunk_pairs : int, optional
        Pairs per chunk (default: about 528 blocks in all, 256 to 16384 pairs).

    Returns
    -------
    array, shape (K, C), dtype of `feats` (accumulated in float32, float64 for float64)
    """
    xp = launcher.xp
    ctype = _any_ctype(feats.dtype, "feats")
    _check_array(feats, "feats", 2)
    _check_array(grad_out, "grad_out", 2, feats.dtype)
    _check_array(in_rows, "in_rows", 1, np.int32)
    _check_array(out_rows, "out_rows", 1, np.int32)
    channels = feats.shape[1]
    if grad_out.shape[1] != channels:
        raise ValueError(f"grad_out must have {channels} channels like feats, "
                         f"got {grad_out.shape[1]}")
    pair_offsets = np.asarray(pair_offsets, dtype=np.int64)
    kernel_volume = pair_offsets.shape[0] - 1
    n_pairs = int(pair_offsets[-1])
    if in_rows.shape[0] != n_pairs or out_rows.shape[0] != n_pairs:
        raise ValueError(f"in_rows and out_rows must have pair_offsets[-1] = {n_pairs} entries, "
                         f"got {in_rows.shape[0]} and {out_rows.shape[0]}")
    out = xp.zeros((kernel_volume, channels), dtype=feats.dtype)
    if n_pairs == 0 or channels == 0:
        return out
    col_blocks = -(-channels // 32)
    chunk = int(chunk_pairs) if chunk_pairs is not None else _chunk_size(n_pairs * col_blocks)
    if chunk <= 0:
        raise ValueError(f"chunk_pairs must be positive, got {chunk}")
    begin, end, start = _split_ranges(pair_offsets, chunk)
    partial = xp.empty((begin.shape[0], channels), dtype=_accumulate_dtype(feats.dtype))
    launcher.launch("depthwise.cu", f"depthwise_wgrad_split<{ctype}>",
                    (begin.shape[0], col_blocks, 1), (256,),
                    (xp.ascontiguousarray(feats), xp.ascontiguousarray(grad_out),
                     xp.ascontiguousarray(in_rows), xp.ascontiguousarray(out_rows),
                     launcher.to_device(begin), launcher.to_device(end), np.int32(channels),
                     partial))
    launcher.launch_1d("depthwise.cu", f"depthwise_wgrad_reduce<{ctype}>", out.size,
                       (partial, launcher.to_device(start), np.int32(kernel_volume),
                        np.int32(channels), out))
    return out


_SEGMENT_MODES = {"sum": 0, "mean": 1, "max": 2}


def segment_reduce(launcher, feats, segment_ids, n_segments: int, mode: str, *,
                   chunk_rows: int | None = None):
    """Reduce the rows of `feats` by segment: sum, mean or max (global pooling).

    The rows of each segment are split into chunks (one block each, per 32
    channels) combined in chunk order by a second kernel, so a few long segments
    still fill the GPU (kernels ``segment_reduce_split`` / ``segment_reduce_finish``
    of ``raw_kernels/pooling.cu``). Max propagates NaN; an empty segment gives 0.

    Parameters
    ----------
    launcher : Launcher
    feats : array, shape (N, C), float16 / bfloat16 / float32 / float64
    segment_ids : array of int, shape (N,), values in [0, n_segments)
    n_segments : int
    mode : {"sum", "mean", "max"}
    chunk_rows : int, optional
        Rows per chunk (default: about 528 blocks in all, 256 to 16384 rows).

    Returns
    -------
    array, shape (n_segments, C), dtype of `feats` (accumulated in float32 / float64)
    """
    xp = launcher.xp
    ctype = _any_ctype(feats.dtype, "feats")
    _check_array(feats, "feats", 2)
    if mode not in _SEGMENT_MODES:
        raise ValueError(f"mode must be one of {sorted(_SEGMENT_MODES)}, got {mode!r}")
    if segment_ids.ndim != 1 or segment_ids.shape[0] != feats.shape[0]:
        raise ValueError(f"segment_ids must have shape ({feats.shape[0]},), "
                         f"got {tuple(segment_ids.shape)}")
    n_segments = int(n_segments)
    channels = feats.shape[1]
    out = xp.zeros((n_segments, channels), dtype=feats.dtype)
    if n_segments == 0 or channels == 0 or feats.shape[0] == 0:
        return out
    order = xp.argsort(segment_ids, kind="stable") if xp is np else xp.argsort(segment_ids)
    starts = xp.searchsorted(segment_ids[order], xp.arange(n_segments + 1))
    starts_host = np.asarray(launcher.to_host(starts), dtype=np.int64)
    if starts_host[0] != 0 or starts_host[-1] != feats.shape[0]:
        raise ValueError(f"segment_ids must lie in [0, n_segments={n_segments})")
    col_blocks = -(-channels // 32)
    chunk = int(chunk_rows) if chunk_rows is not None else _chunk_size(
        feats.shape[0] * col_blocks)
    if chunk <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk}")
    begin, end, start = _split_ranges(starts_host, chunk)
    partial = xp.empty((max(begin.shape[0], 1), channels),
                       dtype=_accumulate_dtype(feats.dtype))
    launcher.launch("pooling.cu", f"segment_reduce_split<{ctype}>",
                    (begin.shape[0], col_blocks, 1), (256,),
                    (xp.ascontiguousarray(feats), xp.ascontiguousarray(order, dtype=np.int64),
                     launcher.to_device(begin), launcher.to_device(end), np.int32(channels),
                     np.int32(_SEGMENT_MODES[mode]), partial))
    launcher.launch_1d("pooling.cu", f"segment_reduce_finish<{ctype}>", out.size,
                       (partial, launcher.to_device(start),
                        launcher.to_device(starts_host), np.int64(n_segments),
                        np.int32(channels), np.int32(_SEGMENT_MODES[mode]), out))
    return out
