"""``torch.autograd.Function``s over the core: convert, call the core, convert back.

=====================  ===============================  ==============================
function               forward (core)                   backward (core)
=====================  ===============================  ==============================
:class:`ConvFunction`  ``conv_forward``                 ``conv_backward`` (both
                                                        gradients; or one of
                                                        ``conv_input_grad``,
                                                        ``conv_weight_grad``),
                                                        ``conv_bias_grad``
:class:`PoolFunction`  ``pool_forward``                 ``pool_backward``
:class:`GlobalPool...` ``global_pool``                  ``global_pool_backward``
:class:`DenseFunction` ``scatter_to_dense``             ``gather_from_dense``
=====================  ===============================  ==============================

No maths here: every number is computed by the core. Double backward is not
supported (``once_differentiable``).
"""

from __future__ import annotations

import torch

from ..conv import (conv_backward, conv_bias_grad, conv_forward, conv_input_grad,
                    conv_weight_grad)
from ..dense import gather_from_dense, scatter_to_dense
from ..pool import global_pool, global_pool_backward, pool_backward, pool_forward
from ..tensor import SparseTensor as CoreTensor
from .convert import device_scope, from_array, to_array

__all__ = ["ConvFunction", "PoolFunction", "GlobalPoolFunction", "DenseFunction"]


class ConvFunction(torch.autograd.Function):
    """``Y = conv_forward(X, W, kmap) + b``; backward by the core's three gradients.

    ``apply(feats (N, C_in), weight, bias (C_out,) or None, kmap, groups)``
    returns the (M, C_out) output features.
    """

    @staticmethod
    def forward(ctx, feats, weight, bias, kmap, groups):
        with device_scope(feats.device):
            out = conv_forward(to_array(feats), to_array(weight), kmap, groups,
                               None if bias is None else to_array(bias))
            out = from_array(out)
        ctx.save_for_backward(feats, weight)
        ctx.kmap, ctx.groups, ctx.has_bias = kmap, groups, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        feats, weight = ctx.saved_tensors
        grad_feats = grad_weight = grad_bias = None
        with device_scope(grad_out.device):
            grad = to_array(grad_out)
            if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
                # both: one call, which on the CPU shares the gathered rows of grad
                grad_in, grad_w = conv_backward(to_array(feats), grad, to_array(weight),
                                                ctx.kmap, ctx.groups)
                grad_feats, grad_weight = from_array(grad_in), from_array(grad_w)
            elif ctx.needs_input_grad[0]:
                grad_feats = from_array(conv_input_grad(grad, to_array(weight), ctx.kmap,
                                                        ctx.groups))
            elif ctx.needs_input_grad[1]:
                grad_weight = from_array(conv_weight_grad(
                    to_array(feats), grad, ctx.kmap, ctx.groups, tuple(weight.shape)))
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = from_array(conv_bias_grad(grad))
        return grad_feats, grad_weight, grad_bias, None, None


class PoolFunction(torch.autograd.Function):
    """Max / avg / sum pooling over a kernel map; backward by ``pool_backward``.

    ``apply(feats (N, C), kmap, mode)`` returns the (M, C) pooled features.
    """

    @staticmethod
    def forward(ctx, feats, kmap, mode):
        with device_scope(feats.device):
            out = from_array(pool_forward(to_array(feats), kmap, mode))
        ctx.save_for_backward(feats)
        ctx.kmap, ctx.mode = kmap, mode
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (feats,) = ctx.saved_tensors
        with device_scope(grad_out.device):
            grad = from_array(pool_backward(to_array(grad_out), to_array(feats), ctx.kmap,
                                            ctx.mode))
        return grad, None, None


class GlobalPoolFunction(torch.autograd.Function):
    """One row per batch item; backward by ``global_pool_backward``.

    ``apply(feats (N, C), geometry, mode)`` with ``geometry`` a core
    :class:`~cusparseconv.SparseTensor` on the input's coordinate set (its
    own features are ignored) returns the pooled features (B, C); their
    coordinate set is :func:`cusparseconv.pool.global_pool_rows` of the geometry.
    """

    @staticmethod
    def forward(ctx, feats, geometry, mode):
        with device_scope(feats.device):
            pooled = global_pool(_with_feats(geometry, to_array(feats)), mode)
            out = from_array(pooled.feats)
        ctx.save_for_backward(feats)
        ctx.geometry, ctx.mode = geometry, mode
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (feats,) = ctx.saved_tensors
        with device_scope(grad_out.device):
            grad = from_array(global_pool_backward(
                to_array(grad_out), _with_feats(ctx.geometry, to_array(feats)), ctx.mode))
        return grad, None, None


class DenseFunction(torch.autograd.Function):
    """Sparse rows scattered into a zero-filled dense grid; backward gathers them back.

    ``apply(feats (N, C), coords array (N, 1 + D), spatial_shape, origin,
    batch_size, channels_last)`` returns ``(dense, origin)``: the dense tensor
    (B, C, *spatial) or (B, *spatial, C) of the features' dtype and device,
    and the int64 origin (D,) (not differentiable).
    """

    @staticmethod
    def forward(ctx, feats, coords, spatial_shape, origin, batch_size, channels_last):
        with device_scope(feats.device):
            dense, used_origin = scatter_to_dense(
                coords, to_array(feats), spatial_shape=spatial_shape, origin=origin,
                batch_size=batch_size, channels_last=channels_last)
            dense, used_origin = from_array(dense), from_array(used_origin)
        ctx.mark_non_differentiable(used_origin)
        ctx.coords, ctx.origin, ctx.channels_last = coords, used_origin, channels_last
        return dense, used_origin

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_dense, grad_origin):
        with device_scope(grad_dense.device):
            grad = from_array(gather_from_dense(to_array(grad_dense), ctx.coords,
                                                to_array(ctx.origin), ctx.channels_last))
        return grad, None, None, None, None, None


def _with_feats(geometry: CoreTensor, feats) -> CoreTensor:
    """The core tensor on ``geometry``'s coordinate set with ``feats``."""
    return CoreTensor._from_set(geometry.cache, geometry._coord_id, feats, geometry.stride)
