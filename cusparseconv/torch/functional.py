"""Differentiable operations: on a torch :class:`SparseTensor`, and on
coordinates and features (mirroring :func:`cusparseconv.sparse_conv`).

The geometry (output coordinates, kernel map) comes from the core through
the tensor's coordinate cache; the features go through the autograd
functions of :mod:`cusparseconv.torch.autograd`.
"""

from __future__ import annotations

import torch

from ..conv import layer_kernel_map
from ..pool import global_pool_rows, upsample_parents
from ..pool import upsample_nearest as core_upsample_nearest
from ..tensor import CoordinateCache
from .autograd import ConvFunction, GlobalPoolFunction, PoolFunction
from .convert import coords_array, device_scope, from_array, host_array
from .tensor import SparseTensor

__all__ = ["conv", "pool", "pool_global", "upsample_nearest", "sparse_conv", "sparse_pool",
           "global_pool"]


def _check_tensor(x, name="x"):
    if not isinstance(x, SparseTensor):
        raise TypeError(f"{name} must be a cusparseconv.torch.SparseTensor, got "
                        f"{type(x).__name__}")


def _autocast(feats, *others):
    """Under ``torch.autocast`` run in the autocast dtype (cast by torch, so the
    gradients flow back to the original dtypes)."""
    device_type = feats.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return (feats.to(dtype),) + tuple(None if t is None else t.to(dtype) for t in others)
    return (feats,) + others


def _check_operand(tensor, name, feats):
    """Device and dtype of a weight or bias against the features (the core checks shapes)."""
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device != feats.device:
        raise ValueError(f"{name} is on {tensor.device} but feats on {feats.device}")
    if tensor.dtype != feats.dtype:
        raise TypeError(f"{name} has dtype {tensor.dtype} but feats {feats.dtype}; cast one "
                        f"of them (or run under torch.autocast)")


def _out_coords_arg(out_coords, x: SparseTensor):
    if out_coords is None:
        return None
    if isinstance(out_coords, SparseTensor):
        if out_coords.cache is not x.cache:
            raise ValueError("out_coords is a SparseTensor with another coordinate cache; "
                             "pass its .coords instead")
        return out_coords._core()
    return coords_array(out_coords, x.device)


def conv(x: SparseTensor, weight: torch.Tensor, kernel_size=3, stride=1, dilation=1,
         transposed: bool = False, generative: bool = False, groups: int = 1,
         bias: torch.Tensor | None = None, offsets=None, out_coords=None) -> SparseTensor:
    """Differentiable :func:`cusparseconv.sparse_conv` on a torch :class:`SparseTensor`.

    Same arguments as the core function; ``weight`` (K, C_in, C_out), grouped
    (K, G, C_in/G, C_out/G) or depthwise (K, C) and ``bias`` (C_out,) are
    torch tensors of the features' dtype and device. ``out_coords`` may be an
    (M, 1 + D) array/tensor or a SparseTensor of the same cache. The kernel map
    comes from ``x.cache`` (built once per geometry).
    """
    _check_tensor(x)
    with device_scope(x.device):
        kmap, out_id, out_stride = layer_kernel_map(
            x._core(), kernel_size, stride, dilation, transposed, generative,
            host_array(offsets), _out_coords_arg(out_coords, x))
    feats, weight, bias = _autocast(x.feats, weight, bias)
    _check_operand(weight, "weight", feats)
    _check_operand(bias, "bias", feats)
    out = ConvFunction.apply(feats, weight, bias, kmap, groups)
    return SparseTensor._from_set(x.cache, out_id, out, out_stride)


def pool(x: SparseTensor, kernel_size=2, stride=None, mode: str = "max", dilation=1,
         offsets=None) -> SparseTensor:
    """Differentiable :func:`cusparseconv.sparse_pool` on a torch :class:`SparseTensor`.

    ``stride`` defaults to ``kernel_size`` (to 1 with explicit ``offsets``).
    """
    _check_tensor(x)
    if stride is None:
        stride = kernel_size if offsets is None else 1
    with device_scope(x.device):
        kmap, out_id, out_stride = layer_kernel_map(
            x._core(), kernel_size, stride, dilation, offsets=host_array(offsets))
    out = PoolFunction.apply(x.feats, kmap, mode)
    return SparseTensor._from_set(x.cache, out_id, out, out_stride)


def pool_global(x: SparseTensor, mode: str = "mean") -> SparseTensor:
    """Differentiable :func:`cusparseconv.global_pool`: one row (b, 0, ..., 0) per
    batch item, sorted by b; ``.feats`` is (B, C)."""
    _check_tensor(x)
    geometry = x._core()
    out = GlobalPoolFunction.apply(x.feats, geometry, mode)
    return SparseTensor._from_set(x.cache, global_pool_rows(geometry), out, x.stride)


def upsample_nearest(x: SparseTensor, stride, out_coords=None) -> SparseTensor:
    """Differentiable :func:`cusparseconv.upsample_nearest`: each finer row takes
    its coarse parent's features (a torch gather, so autograd sums the children
    into the parent)."""
    _check_tensor(x)
    with device_scope(x.device):
        coarse = x._core()
        fine = core_upsample_nearest(coarse, stride, _out_coords_arg(out_coords, x))
        parents = from_array(upsample_parents(fine.coords, coarse.coords, stride))
    return SparseTensor._from_set(x.cache, fine._coord_id, x.feats[parents.to(x.device)],
                                  fine.stride)


# --------------------------------------------------------------------------
# On coordinates and features
# --------------------------------------------------------------------------

def sparse_conv(coords, feats: torch.Tensor, weight: torch.Tensor, kernel_size=3, stride=1,
                dilation=1, transposed: bool = False, generative: bool = False,
                groups: int = 1, bias: torch.Tensor | None = None, offsets=None,
                out_coords=None, *, cache: CoordinateCache | None = None):
    """Differentiable sparse convolution on coordinates and features.

    Parameters
    ----------
    coords : torch.Tensor or ndarray of int, shape (N, 1 + D)
    feats : torch.Tensor, shape (N, C_in)
    weight : torch.Tensor
        (K, C_in, C_out); grouped (K, G, C_in/G, C_out/G); depthwise (K, C).
    kernel_size, stride, dilation, transposed, generative, groups, bias, offsets, out_coords
        As in :func:`cusparseconv.sparse_conv`.
    cache : cusparseconv.CoordinateCache, optional
        Reuse coordinate sets and kernel maps across calls.

    Returns
    -------
    out_coords : torch.Tensor of int32, shape (M, 1 + D)
    out_feats : torch.Tensor, shape (M, C_out), differentiable in feats, weight, bias
    """
    y = conv(SparseTensor(coords, feats, cache=cache), weight, kernel_size, stride, dilation,
             transposed, generative, groups, bias, offsets, out_coords)
    return y.coords, y.feats


def sparse_pool(coords, feats: torch.Tensor, kernel_size=2, stride=None, mode: str = "max",
                dilation=1, offsets=None, *, cache: CoordinateCache | None = None):
    """Differentiable :func:`cusparseconv.sparse_pool` on coordinates and features;
    returns ``(out_coords, out_feats)``."""
    y = pool(SparseTensor(coords, feats, cache=cache), kernel_size, stride, mode, dilation,
             offsets)
    return y.coords, y.feats


def global_pool(coords, feats: torch.Tensor, mode: str = "mean"):
    """Differentiable :func:`cusparseconv.global_pool` on coordinates and features;
    returns ``(out_coords, out_feats)`` with one row per batch item."""
    y = pool_global(SparseTensor(coords, feats), mode)
    return y.coords, y.feats
