"""The explicit algorithm: gather, grouped cuBLAS GEMMs, scatter (the cuBLAS baseline).

Python side of ``raw_kernels/explicit.cu``. The offsets of a kernel map are
grouped by pair count (:func:`group_offsets`, the adaptive grouping of Minuet
and TorchSparse++): offsets with similar counts share one batched GEMM, each
padded to the largest count of its group, with a bounded padding waste (at most
``max_waste`` of the gathered rows are padding) instead of every offset padded
to the largest count of the map. Per group the rows are gathered in the
input's own type, multiplied by one batched ``matmul`` and the products added
into the output rows, with atomics or, when asked, deterministically through
the output-major position table.

Arithmetic, as cuBLAS does it through CuPy's ``matmul`` (CuPy's
``cupy/_core/_routines_linalg.pyx``): float16 and bfloat16 operands stay 16-bit
and the batched GEMM computes in fp32 (``CUBLAS_COMPUTE_32F``, tensor cores;
bfloat16 from sm_80, converted to float32 before that by CuPy), rounding the
products to the 16-bit type; the scatter then adds them in float32. float32
multiplies in full float32 unless the user has enabled TF32 through CuPy's
documented switch (the ``CUPY_TF32`` environment variable, or
``cupy._core.set_compute_type``): CuPy applies it to 2-D products only, so the
groups of a float32 product then run one 2-D GEMM per offset. Under the host
emulation NumPy computes the same way (16-bit operands multiplied in float32,
products rounded to the 16-bit type).

Functions take a launcher (:mod:`cusparseconv.backends._launch`) and the
arrays of one direction of a kernel map; nothing is cached here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OffsetGroup", "DEFAULT_MAX_WASTE", "group_offsets", "padding_waste",
           "workspace_bytes", "product", "weight_grad"]

SOURCE = "explicit.cu"
FINISH_SOURCE = "gather_scatter.cu"
#: Default bound on the padding rows' share of a group's gathered rows.
DEFAULT_MAX_WASTE = 0.25
_CTYPES = {"float32": "float", "float64": "double", "float16": "__half",
           "bfloat16": "__nv_bfloat16"}


@dataclass(frozen=True)
class OffsetGroup:
    """Offsets multiplied by one batched GEMM.

    Attributes
    ----------
    offsets : ndarray of int32, shape (n,)
        Kernel offsets of the group, by decreasing pair count.
    padded_rows : int
        Rows per offset in the gathered stack (the group's largest pair count).
    pair_rows : int
        Pairs of the group's offsets (the useful rows).
    """

    offsets: np.ndarray
    padded_rows: int
    pair_rows: int

    @property
    def gathered_rows(self) -> int:
        return int(self.offsets.shape[0]) * self.padded_rows


def group_offsets(pair_counts, max_waste: float = DEFAULT_MAX_WASTE) -> tuple:
    """Group the offsets that have pairs by pair count, with bounded padding.

    Offsets are taken by decreasing pair count (ties: ascending offset); a group
    starts at the largest remaining count, which is its padded length, and takes
    the next offset while its padding stays at most ``max_waste`` of its gathered
    rows. So every group, and the whole product, gathers at most
    ``pair_rows / (1 - max_waste)`` rows; ``max_waste=0`` groups only equal counts.

    Parameters
    ----------
    pair_counts : array of int, shape (K,), host
    max_waste : float in [0, 1)

    Returns
    -------
    tuple of OffsetGroup
        Each offset with pairs in exactly one group; offsets without pairs in none.
    """
    counts = np.asarray(pair_counts, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"pair_counts must be a 1-D array of non-negative counts, "
                         f"got shape {counts.shape}")
    if not 0.0 <= float(max_waste) < 1.0:
        raise ValueError(f"max_waste must lie in [0, 1), got {max_waste}")
    order = np.lexsort((np.arange(counts.shape[0]), -counts))
    order = order[counts[order] > 0]
    groups, start = [], 0
    while start < order.shape[0]:
        padded = int(counts[order[start]])
        end, useful = start + 1, padded
        while end < order.shape[0]:
            with_next = useful + int(counts[order[end]])
            if (end + 1 - start) * padded - with_next > max_waste * (end + 1 - start) * padded:
                break
            useful, end = with_next, end + 1
        groups.append(OffsetGroup(order[start:end].astype(np.int32), padded, useful))
        start = end
    return tuple(groups)


def padding_waste(groups) -> float:
    """Share of the gathered rows that are padding (0 when nothing is gathered)."""
    gathered = sum(g.gathered_rows for g in groups)
    return 1.0 - sum(g.pair_rows for g in groups) / gathered if gathered else 0.0


def workspace_bytes(pair_counts, c_in: int, c_out: int, dtype,
                    max_waste: float = DEFAULT_MAX_WASTE) -> int:
    """Device bytes the forward product allocates beyond its output: the gathered
    rows and the products of every group (kept until the scatter), in the input's
    type, plus a float32 (float64) accumulator of the output when it scatters."""
    itemsize = np.dtype(dtype).itemsize
    rows = sum(g.gathered_rows for g in group_offsets(pair_counts, max_waste))
    return rows * (int(c_in) + int(c_out)) * itemsize


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _ctype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _CTYPES:
        raise TypeError(f"the explicit algorithm takes {tuple(_CTYPES)} arrays, got {name}")
    return _CTYPES[name]


def _accumulate_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _cupy_uses_tf32(xp) -> bool:
    """Whether CuPy's 2-D matmul runs float32 on TF32 (the user's CUPY_TF32 / compute type)."""
    if xp is np:
        return False
    linalg = getattr(getattr(xp, "_core", None), "_routines_linalg", None)
    get = getattr(linalg, "get_compute_type", None)
    tf32 = getattr(linalg, "COMPUTE_TYPE_TF32", None)
    return get is not None and tf32 is not None and get(np.float32) == tf32


def _batched_gemm(xp, left, right, out):
    """out[...] = left @ right (batched), as cuBLAS computes it through CuPy: 16-bit
    operands in fp32, the result rounded to out's type. float32 with CuPy's TF32
    switch on: one 2-D product per batch entry (CuPy applies TF32 to those only)."""
    if xp is np:
        compute = _accumulate_dtype(out.dtype)
        out[...] = np.matmul(left.astype(compute, copy=False),
                             right.astype(compute, copy=False)).astype(out.dtype)
        return out
    if np.dtype(out.dtype) == np.float32 and _cupy_uses_tf32(xp):
        flat_left = left.reshape((-1,) + left.shape[-2:])
        flat_right = right.reshape((-1,) + right.shape[-2:])
        flat_out = out.reshape((-1,) + out.shape[-2:])
        for index in range(flat_out.shape[0]):
            xp.matmul(flat_left[index], flat_right[index], out=flat_out[index])
        return out
    return xp.matmul(left, right, out=out)


def _check_pairs(in_rows, out_rows, pair_offsets):
    pair_offsets = np.asarray(pair_offsets, dtype=np.int64)
    if pair_offsets.ndim != 1 or pair_offsets.shape[0] < 2:
        raise ValueError(f"pair_offsets must have shape (K + 1,), got {pair_offsets.shape}")
    n_pairs = int(pair_offsets[-1])
    for name, rows in (("in_rows", in_rows), ("out_rows", out_rows)):
        if rows.ndim != 1 or rows.shape[0] != n_pairs or np.dtype(rows.dtype) != np.int32:
            raise ValueError(f"{name} must be int32 of shape ({n_pairs},) = "
                             f"(pair_offsets[-1],), got {np.dtype(rows.dtype).name} "
                             f"{tuple(rows.shape)}")
    return pair_offsets


def _gather(launcher, src, rows, pair_offsets_device, group, group_dev):
    xp = launcher.xp
    channels = src.shape[1]
    out = xp.empty((group.offsets.shape[0], group.padded_rows, channels), dtype=src.dtype)
    launcher.launch_1d(SOURCE, f"gather_grouped<{_ctype(src.dtype)}>", out.size,
                       (src, np.int32(channels), rows, pair_offsets_device, group_dev,
                        np.int32(group.offsets.shape[0]), np.int64(group.padded_rows), out))
    return out


def _weights_of(xp, weight4, offsets):
    """weight4[offsets] as a C-contiguous (n, G, gin, gout) array."""
    return xp.ascontiguousarray(weight4[xp.asarray(offsets) if xp is not np else offsets])


# ---------------------------------------------------------------------------
# forward / input gradient
# ---------------------------------------------------------------------------

def product(launcher, src, weight, in_rows, out_rows, pair_offsets, pair_offsets_device,
            n_out: int, *, groups: int = 1, bias=None, position=None,
            max_waste: float = DEFAULT_MAX_WASTE):
    """``out[o] = bias + sum over pairs (i, o) of offset k of src[i] @ W[k]``.

    The forward product of a kernel map; on the reverse map with the weights
    transposed per offset (and per group) it is the input gradient.

    Parameters
    ----------
    launcher : Launcher
    src : array, shape (n_src, C_src), float16 / bfloat16 / float32 / float64
    weight : array, shape (K, C_src, C_dst), or (K, G, C_src / G, C_dst / G) with
        ``groups=G``, same dtype as `src`
    in_rows, out_rows : arrays of int32, shape (P,)
        The pair table (CSR by offset): the rows read from `src` and written in
        the output.
    pair_offsets : ndarray of int64, shape (K + 1,), host
    pair_offsets_device : array of int64, shape (K + 1,)
        The same boundaries on the device.
    n_out : int
    groups : int
    bias : array, shape (C_dst,), same dtype, optional
    position : array of int32, shape (n_out, K), optional
        The output-major position table (index of each output row's pair within
        its offset, -1: none); given, the scatter is deterministic (offsets added
        in ascending order, no atomics).
    max_waste : float
        Bound on the padding share of the gathered rows (:func:`group_offsets`).

    Returns
    -------
    array, shape (n_out, C_dst), dtype of `src` (accumulated in float32, float64
    for float64)
    """
    xp = launcher.xp
    ctype = _ctype(src.dtype)
    pair_offsets = _check_pairs(in_rows, out_rows, pair_offsets)
    kernel_volume = pair_offsets.shape[0] - 1
    if src.ndim != 2:
        raise ValueError(f"src must be 2-D (n_src, C_src), got shape {tuple(src.shape)}")
    weight4 = weight if groups > 1 else weight.reshape((weight.shape[0], 1) + weight.shape[1:])
    if (weight4.ndim != 4 or weight4.shape[:2] != (kernel_volume, groups)
            or weight4.shape[2] * groups != src.shape[1]
            or np.dtype(weight.dtype) != np.dtype(src.dtype)):
        raise ValueError(f"weight must be {np.dtype(src.dtype).name} of shape (K={kernel_volume}, "
                         f"C_src={src.shape[1]}, C_dst) or (K, G={groups}, C_src / G, "
                         f"C_dst / G), got {np.dtype(weight.dtype).name} "
                         f"{tuple(weight.shape)}")
    group_out = weight4.shape[3]
    c_dst = groups * group_out
    acc_dtype = _accumulate_dtype(src.dtype)
    deterministic = position is not None
    if deterministic and tuple(position.shape) != (int(n_out), kernel_volume):
        raise ValueError(f"position must have shape ({n_out}, {kernel_volume}), "
                         f"got {tuple(position.shape)}")
    src = xp.ascontiguousarray(src)
    weight4 = xp.ascontiguousarray(weight4)
    offset_groups = group_offsets(np.diff(pair_offsets), max_waste)
    total_rows = sum(g.gathered_rows for g in offset_groups)
    products = xp.empty(total_rows * c_dst, dtype=src.dtype)
    acc = (xp.empty if deterministic else xp.zeros)((int(n_out), c_dst), dtype=acc_dtype)
    base = np.full(kernel_volume, -1, dtype=np.int64)
    first = 0
    for group in offset_groups:
        group_dev = launcher.to_device(group.offsets)
        n_group, padded = group.offsets.shape[0], group.padded_rows
        gathered = _gather(launcher, src, in_rows, pair_offsets_device, group, group_dev)
        stack = products[first:first + group.gathered_rows * c_dst].reshape(
            n_group, padded, c_dst)
        weights = _weights_of(xp, weight4, group.offsets)          # (n, G, gin, gout)
        if groups == 1:
            _batched_gemm(xp, gathered, weights[:, 0], stack)
        else:  # (n, G, padded, gin) @ (n, G, gin, gout) -> (n, padded, G, gout)
            per_group = xp.ascontiguousarray(gathered.reshape(
                n_group, padded, groups, -1).transpose(0, 2, 1, 3))
            result = xp.empty((n_group, groups, padded, group_out), dtype=src.dtype)
            _batched_gemm(xp, per_group, weights, result)
            stack[...] = result.transpose(0, 2, 1, 3).reshape(n_group, padded, c_dst)
        base[group.offsets] = first + np.arange(n_group, dtype=np.int64) * padded * c_dst
        if not deterministic:
            launcher.launch_1d(SOURCE, f"scatter_add_grouped<{ctype}>", stack.size,
                               (stack, out_rows, pair_offsets_device, group_dev,
                                np.int32(n_group), np.int64(padded), np.int32(c_dst), acc))
        first += group.gathered_rows * c_dst
    if deterministic:
        if total_rows:
            launcher.launch_1d(SOURCE, f"scatter_sorted_grouped<{ctype}>", acc.size,
                               (products, launcher.to_device(base),
                                xp.ascontiguousarray(position, dtype=np.int32),
                                np.int64(n_out), np.int32(kernel_volume), np.int32(c_dst),
                                acc))
        else:
            acc[...] = 0
    if np.dtype(src.dtype) == acc_dtype and bias is None:
        return acc
    out = xp.empty(acc.shape, dtype=src.dtype)
    if acc.size:
        has_bias = bias is not None
        launcher.launch_1d(FINISH_SOURCE, f"finish_rows<{ctype}>", acc.size,
                           (acc, np.int64(acc.shape[0]), np.int32(c_dst),
                            xp.ascontiguousarray(bias) if has_bias else xp.zeros(1, src.dtype),
                            np.int32(int(has_bias)), out))
    return out


# ---------------------------------------------------------------------------
# weight gradient
# ---------------------------------------------------------------------------

def weight_grad(launcher, feats, grad_out, in_rows, out_rows, pair_offsets,
                pair_offsets_device, *, groups: int = 1,
                max_waste: float = DEFAULT_MAX_WASTE):
    """``grad_weight[k] = sum over offset k's pairs (i, o) of feats[i]^T grad_out[o]``.

    Per group of offsets (:func:`group_offsets`) both sides are gathered, zero
    padded, and multiplied by one batched GEMM (``X^T G``, fp32 compute, the
    result rounded once to the input's type): no atomics, deterministic.

    Parameters
    ----------
    launcher : Launcher
    feats : array, shape (n_in, C_in), float16 / bfloat16 / float32 / float64
    grad_out : array, shape (n_out, C_out), same dtype
    in_rows, out_rows : arrays of int32, shape (P,)
    pair_offsets : ndarray of int64, shape (K + 1,), host
    pair_offsets_device : array of int64, shape (K + 1,)
    groups : int
        G > 1: the grouped layout.
    max_waste : float

    Returns
    -------
    array, shape (K, C_in, C_out), or (K, G, C_in / G, C_out / G) for G > 1,
    dtype of `feats`
    """
    xp = launcher.xp
    _ctype(feats.dtype)
    pair_offsets = _check_pairs(in_rows, out_rows, pair_offsets)
    kernel_volume = pair_offsets.shape[0] - 1
    if feats.ndim != 2 or grad_out.ndim != 2 or np.dtype(grad_out.dtype) != np.dtype(
            feats.dtype):
        raise ValueError(f"feats and grad_out must be 2-D arrays of one dtype, got "
                         f"{np.dtype(feats.dtype).name} {tuple(feats.shape)} and "
                         f"{np.dtype(grad_out.dtype).name} {tuple(grad_out.shape)}")
    c_in, c_out = feats.shape[1], grad_out.shape[1]
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups ({groups}) must divide C_in ({c_in}) and C_out ({c_out})")
    group_in, group_out = c_in // groups, c_out // groups
    grad = xp.zeros((kernel_volume, groups, group_in, group_out), dtype=feats.dtype)
    feats, grad_out = xp.ascontiguousarray(feats), xp.ascontiguousarray(grad_out)
    for group in group_offsets(np.diff(pair_offsets), max_waste):
        group_dev = launcher.to_device(group.offsets)
        n_group, padded = group.offsets.shape[0], group.padded_rows
        inputs = _gather(launcher, feats, in_rows, pair_offsets_device, group, group_dev)
        grads = _gather(launcher, grad_out, out_rows, pair_offsets_device, group, group_dev)
        # (n, G, gin, padded) @ (n, G, padded, gout) -> (n, G, gin, gout)
        left = xp.ascontiguousarray(inputs.reshape(n_group, padded, groups, group_in)
                                    .transpose(0, 2, 3, 1))
        right = xp.ascontiguousarray(grads.reshape(n_group, padded, groups, group_out)
                                     .transpose(0, 2, 1, 3))
        result = xp.empty((n_group, groups, group_in, group_out), dtype=feats.dtype)
        _batched_gemm(xp, left, right, result)
        grad[xp.asarray(group.offsets) if xp is not np else group.offsets] = result
    return grad if groups > 1 else grad.reshape(kernel_volume, group_in, group_out)
