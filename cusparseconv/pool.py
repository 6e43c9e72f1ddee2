"""Pooling over kernel maps, global pooling per batch item, nearest upsampling.

Every reduction runs on the backend of the arrays
(:func:`cusparseconv.backends.backend_for`).
"""

from __future__ import annotations

import numpy as np

from ._checks import MAX_STRIDE, check_coords, check_feats, check_same_dtype, per_axis
from ._switch import short_switch_interval
from .backends import backend_for
from .conv import output_coordinates
from .coords import SortedKeys, pack_parts
from .kmap import KernelMap
from .maps import check_kernel_map
from .offsets import check_offsets, kernel_offsets
from .tensor import SparseTensor

POOL_MODES = ("max", "avg", "sum")
GLOBAL_MODES = ("mean", "max", "sum")


def _check_mode(mode, valid):
    if mode not in valid:
        raise ValueError(f"mode must be one of {valid}, got {mode!r}")


def _check_pool_args(feats, kmap, mode):
    """The mode, the map and the (n_in, C) features of a pooling product."""
    _check_mode(mode, POOL_MODES)
    check_kernel_map(kmap)
    return check_feats(feats, kmap.n_in, "feats")


@short_switch_interval
def pool_forward(feats, kmap: KernelMap, mode: str = "max"):
    """Reduce the input rows paired with each output row.

    Parameters
    ----------
    feats : ndarray, shape (n_in, C)
    kmap : KernelMap
    mode : {"max", "avg", "sum"}
        ``avg`` divides by the number of active offsets of the row. Rows with
        no active offset get 0. ``max`` propagates NaN: a NaN among a row's
        active inputs gives NaN.

    Returns
    -------
    out : ndarray, shape (n_out, C), dtype of ``feats``
    """
    feats = _check_pool_args(feats, kmap, mode)
    return backend_for(feats, kmap.in_rows).pool_forward(feats, kmap, mode)


@short_switch_interval
def pool_backward(grad_out, feats, kmap: KernelMap, mode: str = "max"):
    """Gradient of :func:`pool_forward` with respect to ``feats``.

    Parameters
    ----------
    grad_out : ndarray, shape (n_out, C)
    feats : ndarray, shape (n_in, C)
        The forward input (needed by ``max`` to find the winners; ties go to the
        first active offset in kernel order, and a NaN input wins over numbers).
    kmap : KernelMap
    mode : {"max", "avg", "sum"}

    Returns
    -------
    grad_in : ndarray, shape (n_in, C), dtype of ``grad_out``
    """
    feats = _check_pool_args(feats, kmap, mode)
    grad_out = check_feats(grad_out, kmap.n_out, "grad_out")
    if grad_out.shape[1] != feats.shape[1]:
        raise ValueError(f"grad_out must have {feats.shape[1]} columns like feats, "
                         f"got {grad_out.shape[1]}")
    check_same_dtype(feats, "feats", grad_out=grad_out)
    return backend_for(feats, grad_out, kmap.in_rows).pool_backward(grad_out, feats, kmap,
                                                                     mode)


@short_switch_interval
def sparse_pool(x: SparseTensor, kernel_size=2, stride=None, mode: str = "max",
                dilation=1, offsets=None) -> SparseTensor:
    """Max / average / sum pooling over a box kernel.

    Output coordinates follow the strided convolution: ``unique(floor(v / s))``
    for stride s > 1, the input rows for stride 1.

    Parameters
    ----------
    x : SparseTensor
    kernel_size : int or tuple of D ints
    stride : int or tuple of D ints, optional
        Defaults to ``kernel_size``.
    mode : {"max", "avg", "sum"}
    dilation : int or tuple, optional
    offsets : ndarray (K, D), optional
        Arbitrary pooling window (overrides kernel_size and dilation).

    Returns
    -------
    SparseTensor sharing ``x``'s cache.

    Examples
    --------
    >>> import numpy as np, cusparseconv as csc
    >>> coords = np.array([[0, 0, 0, 0], [0, 1, 1, 1], [0, 2, 0, 0]], dtype=np.int32)
    >>> x = csc.SparseTensor(coords, np.array([[1.0], [5.0], [2.0]]))
    >>> y = csc.sparse_pool(x, kernel_size=2, stride=2, mode="max")
    >>> y.coords.tolist(), y.feats.ravel().tolist()
    ([[0, 0, 0, 0], [0, 1, 0, 0]], [5.0, 2.0])
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    _check_mode(mode, POOL_MODES)
    ndim = x.ndim
    if offsets is None:
        kernel = kernel_offsets(kernel_size, dilation, ndim)
        if stride is None:
            stride = kernel_size
    else:
        kernel = check_offsets(offsets, ndim)
        if stride is None:
            stride = 1
    stride = per_axis(stride, ndim, "stride", maximum=MAX_STRIDE)
    out_id, out_stride = output_coordinates(x, kernel, stride)
    kmap = x.cache.kernel_map(x._coord_id, out_id, kernel, stride, False)
    feats = pool_forward(x.feats, kmap, mode)
    return SparseTensor._from_set(x.cache, out_id, feats, out_stride)


@short_switch_interval
def global_pool(x: SparseTensor, mode: str = "mean") -> SparseTensor:
    """Reduce every batch item to one row.

    Parameters
    ----------
    x : SparseTensor
    mode : {"mean", "max", "sum"}

    Returns
    -------
    SparseTensor
        One row per batch index present in ``x``, coordinates ``(b, 0, ..., 0)``
        sorted by b, features (B, C). Use ``.feats`` for a classifier head.
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    _check_mode(mode, GLOBAL_MODES)
    backend = backend_for(x.coords, x.feats)
    batches, segment = backend.batch_segments(x.coords)
    feats = backend.segment_reduce(x.feats, segment, batches.shape[0], mode)
    return SparseTensor._from_set(x.cache, global_pool_rows(x),
                                  feats.astype(x.feats.dtype, copy=False), x.stride)


def global_pool_rows(x: SparseTensor):
    """Id in ``x.cache`` of the coordinate set :func:`global_pool` returns: one row
    ``(b, 0, ..., 0)`` per batch index present, sorted by b (no features computed)."""
    return x.cache.batch_rows(x._coord_id)


@short_switch_interval
def global_pool_backward(grad_out, x: SparseTensor, mode: str = "mean"):
    """Gradient of :func:`global_pool` with respect to ``x.feats``; (N, C).

    For ``max`` the gradient of each (item, channel) goes to the first row (in
    row order) that holds the maximum; when the item holds NaN in that channel
    (its maximum is NaN), to the first NaN row.
    """
    _check_mode(mode, GLOBAL_MODES)
    coords, feats = x.coords, x.feats
    backend = backend_for(coords, feats)
    xp = backend.xp
    batches, segment = backend.batch_segments(coords)
    n_items = batches.shape[0]
    grad_out = check_feats(grad_out, n_items, "grad_out")
    check_same_dtype(feats, "x.feats", grad_out=grad_out)
    if mode == "sum":
        return grad_out[segment]
    if mode == "mean":
        counts = xp.bincount(segment, minlength=n_items)
        return (grad_out[segment] / counts[segment, None]).astype(grad_out.dtype, copy=False)
    maxima = backend.segment_reduce(feats, segment, n_items, "max")
    reached = maxima[segment].astype(feats.dtype)
    winners = feats == reached
    if feats.dtype.kind == "f":  # NaN maxima: the NaN rows hold them
        winners |= xp.isnan(feats) & xp.isnan(reached)
    else:  # bfloat16 (ml_dtypes): compare in float32
        wide = feats.astype(np.float32)
        winners |= xp.isnan(wide) & xp.isnan(reached.astype(np.float32))
    rows, channels = xp.nonzero(winners)
    first = xp.full(maxima.shape, feats.shape[0], dtype=np.int64)
    xp.minimum.at(first, (segment[rows], channels), rows)
    grad = xp.zeros(feats.shape, dtype=grad_out.dtype)
    grad[first, xp.arange(feats.shape[1])[None, :]] = grad_out
    return grad


@short_switch_interval
def upsample_parents(fine_coords, coarse_coords, stride) -> np.ndarray:
    """Row of ``coarse_coords`` holding ``floor(v / stride)`` for each fine row v.

    Returns
    -------
    parents : ndarray of int, shape (N_fine,); -1 where the parent is absent (int64 on
        the CPU backend, int32 on the GPU backend's hash-table lookup).
    """
    fine_coords = check_coords(fine_coords, "fine_coords")
    coarse_coords = check_coords(coarse_coords, "coarse_coords", ndim=fine_coords.shape[1] - 1)
    ndim = fine_coords.shape[1] - 1
    stride = per_axis(stride, ndim, "stride")
    backend = backend_for(fine_coords, coarse_coords)
    xp = backend.xp
    spatial = xp.floor_divide(fine_coords[:, 1:].astype(np.int64), xp.asarray(stride))
    return backend.lookup(SortedKeys(coarse_coords, "coarse_coords"),
                          pack_parts(fine_coords[:, 0], spatial))


@short_switch_interval
def upsample_nearest(x: SparseTensor, stride, out_coords=None) -> SparseTensor:
    """Nearest-neighbour unpooling: each finer row takes its coarse parent's features.

    Parameters
    ----------
    x : SparseTensor
        A coarse tensor, produced by a stride-``stride`` downsampling in this
        cache (or give ``out_coords``).
    stride : int or tuple of D ints
    out_coords : ndarray (M, 1 + D), optional
        The finer coordinates; by default the set ``x`` was downsampled from.

    Returns
    -------
    SparseTensor on the finer coordinates, stride ``x.stride / stride``.
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    ndim = x.ndim
    stride = per_axis(stride, ndim, "stride")
    out_id, out_stride = output_coordinates(x, kernel_offsets(1, 1, ndim), stride,
                                            transposed=True, out_coords=out_coords)
    fine_coords = x.cache.coords(out_id)
    parents = upsample_parents(fine_coords, x.coords, stride)
    if parents.size and int(parents.min()) < 0:
        raise ValueError("out_coords has rows whose parent floor(v / stride) is not in x")
    return SparseTensor._from_set(x.cache, out_id, x.feats[parents], out_stride)
