"""``nn.Module`` layers taking and returning a torch :class:`SparseTensor`.

Convolutions own their weight (K, C_in, C_out) (grouped (K, G, C_in/G,
C_out/G), depthwise (K, C)) and bias; pooling, upsampling and the row-wise
wrappers have no parameters of their own beyond the wrapped torch module's.
Each layer calls :mod:`cusparseconv.torch.functional`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..conv import weight_layout, weight_shape_for
from ..offsets import kernel_offsets
from .convert import host_array
from .functional import conv, pool, pool_global, upsample_nearest
from .migration import peer_weight_layout_hint, reject_peer_arguments
from .tensor import SparseTensor

__all__ = [
    "SparseConv", "SparseConv2d", "SparseConv3d", "SparseConvTranspose2d",
    "SparseConvTranspose3d", "SparseDepthwiseConv3d",
    "SparsePool", "SparseMaxPool2d", "SparseMaxPool3d", "SparseAvgPool2d", "SparseAvgPool3d",
    "SparseSumPool2d", "SparseSumPool3d", "SparseGlobalPool", "SparseGlobalAvgPool",
    "SparseGlobalMaxPool", "SparseUpsample", "SparseRowwise", "SparseBatchNorm",
    "SparseLinear", "SparseReLU", "SparseLeakyReLU", "SparseGELU", "SparseSiLU",
    "SparseDropout",
]


class SparseConv(nn.Module):
    """Sparse convolution layer in any regime (see :func:`cusparseconv.sparse_conv`).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or tuple of ``ndim`` ints
    groups : int
        Grouped weight (K, G, C_in/G, C_out/G); depthwise (K, C) when
        ``groups == in_channels == out_channels``.
    bias : bool
    transposed, generative : bool
    offsets : (K, ndim) int array, optional
        Explicit kernel offsets (overrides kernel_size and dilation).
    ndim : int
        Spatial dimensions (1 to 4).

    Weights are (K, C_in, C_out) with ``weight[k]`` for offset k and are
    initialised like ``torch.nn.Conv3d``: uniform in +-1/sqrt(fan_in) with
    fan_in = K * C_in / groups (what ``kaiming_uniform_(a=sqrt(5))`` gives),
    bias likewise.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1,
                 dilation=1, groups: int = 1, bias: bool = True, transposed: bool = False,
                 generative: bool = False, offsets=None, ndim: int = 3, device=None,
                 dtype=None, **peer_arguments):
        reject_peer_arguments(type(self).__name__, peer_arguments)
        super().__init__()
        if offsets is not None:
            offsets = np.ascontiguousarray(host_array(offsets), dtype=np.int32)
            kernel_volume = offsets.shape[0]
        else:
            kernel_volume = kernel_offsets(kernel_size, dilation, ndim).shape[0]
        shape = weight_shape_for(kernel_volume, in_channels, out_channels, groups)
        weight_layout(shape, kernel_volume, in_channels, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.groups, self.transposed, self.generative = groups, transposed, generative
        self.offsets, self.ndim = offsets, ndim
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Name the conversion when a checkpoint holds a peer's weight layout."""
        weight = state_dict.get(prefix + "weight")
        if weight is not None and tuple(weight.shape) != tuple(self.weight.shape):
            kernel = (None if self.offsets is not None else
                      tuple(int(k) for k in np.broadcast_to(self.kernel_size, (self.ndim,))))
            hint = peer_weight_layout_hint(weight.shape, kernel, self.in_channels,
                                           self.out_channels, self.ndim)
            if hint is not None:
                error_msgs.append(
                    f"{prefix}weight of shape {tuple(weight.shape)} does not fit "
                    f"{type(self).__name__}'s (K, C_in, C_out) = {tuple(self.weight.shape)}: "
                    f"{hint} (README, 'Coming from spconv, MinkowskiEngine or TorchSparse')")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def reset_parameters(self) -> None:
        fan_in = self.weight.shape[0] * self.in_channels // self.groups
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor, out_coords=None) -> SparseTensor:
        """``out_coords``: explicit output coordinates for this call (array or a
        SparseTensor of the same cache)."""
        if x.ndim != self.ndim:
            raise ValueError(f"{type(self).__name__} expects a tensor with {self.ndim} spatial "
                             f"dimensions, got {x.ndim}")
        return conv(x, self.weight, self.kernel_size, self.stride, self.dilation,
                    self.transposed, self.generative, self.groups, self.bias, self.offsets,
                    out_coords)

    def extra_repr(self) -> str:
        kernel = (f"offsets={self.offsets.shape[0]}" if self.offsets is not None
                  else f"kernel_size={self.kernel_size}")
        text = (f"{self.in_channels}, {self.out_channels}, {kernel}, stride={self.stride}, "
                f"dilation={self.dilation}")
        for flag in ("transposed", "generative"):
            if getattr(self, flag):
                text += f", {flag}=True"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


class SparseConv3d(SparseConv):
    """3-D sparse convolution; arguments as :class:`SparseConv`."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1,
                 groups=1, bias=True, transposed=False, generative=False, offsets=None,
                 device=None, dtype=None, **peer_arguments):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, transposed, generative, offsets, 3, device, dtype,
                         **peer_arguments)


class SparseConv2d(SparseConv):
    """2-D sparse convolution; arguments as :class:`SparseConv`."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1,
                 groups=1, bias=True, transposed=False, generative=False, offsets=None,
                 device=None, dtype=None, **peer_arguments):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, transposed, generative, offsets, 2, device, dtype,
                         **peer_arguments)


class SparseConvTranspose3d(SparseConv):
    """3-D transposed sparse convolution (restores the finer coordinates of the
    cache, or ``generative=True`` for {s*u + K[k]})."""

    def __init__(self, in_channels, out_channels, kernel_size=2, stride=2, dilation=1,
                 groups=1, bias=True, generative=False, offsets=None, device=None, dtype=None,
                 **peer_arguments):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, True, generative, offsets, 3, device, dtype, **peer_arguments)


class SparseConvTranspose2d(SparseConv):
    """2-D transposed sparse convolution."""

    def __init__(self, in_channels, out_channels, kernel_size=2, stride=2, dilation=1,
                 groups=1, bias=True, generative=False, offsets=None, device=None, dtype=None,
                 **peer_arguments):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, True, generative, offsets, 2, device, dtype, **peer_arguments)


class SparseDepthwiseConv3d(SparseConv):
    """3-D depthwise sparse convolution: weight (K, C), one filter per channel."""

    def __init__(self, channels, kernel_size=3, stride=1, dilation=1, bias=True,
                 transposed=False, generative=False, offsets=None, device=None, dtype=None,
                 **peer_arguments):
        super().__init__(channels, channels, kernel_size, stride, dilation, channels, bias,
                         transposed, generative, offsets, 3, device, dtype, **peer_arguments)


class SparsePool(nn.Module):
    """Max / avg / sum pooling (:func:`cusparseconv.sparse_pool`); no parameters."""

    def __init__(self, kernel_size=2, stride=None, mode: str = "max", dilation=1,
                 offsets=None, ndim: int | None = None, **peer_arguments):
        reject_peer_arguments(type(self).__name__, peer_arguments)
        super().__init__()
        self.kernel_size, self.stride, self.mode = kernel_size, stride, mode
        self.dilation, self.ndim = dilation, ndim
        self.offsets = None if offsets is None else host_array(offsets)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.ndim is not None and x.ndim != self.ndim:
            raise ValueError(f"{type(self).__name__} expects a tensor with {self.ndim} spatial "
                             f"dimensions, got {x.ndim}")
        return pool(x, self.kernel_size, self.stride, self.mode, self.dilation, self.offsets)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, mode={self.mode!r}"


def _pool_class(name, mode, ndim):
    def __init__(self, kernel_size=2, stride=None, dilation=1, offsets=None, **peer_arguments):
        SparsePool.__init__(self, kernel_size, stride, mode, dilation, offsets, ndim,
                            **peer_arguments)

    doc = f"{ndim}-D sparse {mode} pooling (stride defaults to kernel_size)."
    return type(name, (SparsePool,), {"__init__": __init__, "__doc__": doc,
                                      "__module__": __name__})


SparseMaxPool3d = _pool_class("SparseMaxPool3d", "max", 3)
SparseMaxPool2d = _pool_class("SparseMaxPool2d", "max", 2)
SparseAvgPool3d = _pool_class("SparseAvgPool3d", "avg", 3)
SparseAvgPool2d = _pool_class("SparseAvgPool2d", "avg", 2)
SparseSumPool3d = _pool_class("SparseSumPool3d", "sum", 3)
SparseSumPool2d = _pool_class("SparseSumPool2d", "sum", 2)


class SparseGlobalPool(nn.Module):
    """One row per batch item (``mode`` "mean", "max" or "sum"); ``.feats`` is (B, C)."""

    def __init__(self, mode: str = "mean"):
        super().__init__()
        self.mode = mode

    def forward(self, x: SparseTensor) -> SparseTensor:
        return pool_global(x, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class SparseGlobalAvgPool(SparseGlobalPool):
    def __init__(self):
        super().__init__("mean")


class SparseGlobalMaxPool(SparseGlobalPool):
    def __init__(self):
        super().__init__("max")


class SparseUpsample(nn.Module):
    """Nearest-neighbour upsampling back to the finer coordinates of the cache."""

    def __init__(self, stride=2):
        super().__init__()
        self.stride = stride

    def forward(self, x: SparseTensor, out_coords=None) -> SparseTensor:
        return upsample_nearest(x, self.stride, out_coords)


class SparseRowwise(nn.Module):
    """Apply any module mapping (N, C) -> (N, C') to the feature rows."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feats(self.module(x.feats))


def _rowwise_class(name, base):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feats(base.forward(self, x.feats))

    doc = (f"``torch.nn.{base.__name__}`` applied to the feature rows of a SparseTensor "
           f"(same arguments and state_dict keys).")
    cls = type(name, (base,), {"forward": forward, "__doc__": doc})
    cls.__module__ = __name__
    return cls


SparseBatchNorm = _rowwise_class("SparseBatchNorm", nn.BatchNorm1d)
SparseLinear = _rowwise_class("SparseLinear", nn.Linear)
SparseReLU = _rowwise_class("SparseReLU", nn.ReLU)
SparseLeakyReLU = _rowwise_class("SparseLeakyReLU", nn.LeakyReLU)
SparseGELU = _rowwise_class("SparseGELU", nn.GELU)
SparseSiLU = _rowwise_class("SparseSiLU", nn.SiLU)
SparseDropout = _rowwise_class("SparseDropout", nn.Dropout)
