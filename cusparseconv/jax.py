"""JAX adapter: differentiable sparse convolution and pooling, eager and under ``jit``.

Import it explicitly (``import cusparseconv.jax as csj``); the core never
imports JAX.

Coordinates and kernel maps have data-dependent shapes, so they stay outside
JAX's tracing: ``coords`` must be a concrete array (NumPy, or a concrete JAX
array) when the function is called or traced, and the kernel map is built
then, once, through the coordinate cache. Features, weights and biases are
ordinary (traced) JAX values. Inside ``jax.jit`` close over the coordinates::

    step = jax.jit(lambda feats, weight: loss(sparse_conv(coords_np, feats, weight)[1]))

The products run as callbacks into the core (:mod:`cusparseconv._jax_callback`):
with JAX >= 0.7 through ``jax.experimental.buffer_callback``, in place on
XLA's buffers (NumPy views on the CPU; on a CUDA GPU CuPy arrays on XLA's
stream, so features never leave the device), the core writing straight into
the output buffer through the products' ``out=``; with older JAX through
``jax.pure_callback`` (operands copied to the host and back). The backward
pass (``jax.custom_vjp`` with symbolic zeros, so it knows which arguments a
gradient flows to) makes only the gradients needed: both of a convolution's
in one callback of the core's ``conv_backward`` (on the CPU one pass that
gathers the rows once for both), one alone through ``conv_input_grad`` or
``conv_weight_grad``; ``conv_bias_grad``, ``pool_backward`` and
``global_pool_backward`` one callback each. ``jax.vmap`` runs the callbacks once per element of
the mapped axis, one after another. Global pooling always takes the host
route (it needs the host coordinates).

Where it runs: on the CPU, tested (buffer and host routes). The GPU branch of
the buffer route is written for CuPy and the CUDA backend but has not been
run on a GPU.
"""

from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

from . import _jax_callback
from ._checks import check_coords
from .conv import (conv_backward, conv_bias_grad, conv_forward, conv_input_grad,
                   conv_weight_grad, layer_kernel_map, weight_layout)
from .pool import global_pool as _core_global_pool
from .pool import global_pool_backward, pool_backward, pool_forward
from .tensor import CoordinateCache
from .tensor import SparseTensor as _CoreTensor

__all__ = ["sparse_conv", "sparse_pool", "global_pool", "conv_features", "pool_features",
           "callback_route"]


def callback_route() -> str:
    """How the products reach the core under ``jit``: ``"buffer"`` (in place on XLA's
    buffers, JAX >= 0.7) or ``"host"`` (``jax.pure_callback``, older JAX)."""
    return _jax_callback.route()


def _concrete_coords(coords, name="coords"):
    if isinstance(coords, jax.core.Tracer):
        raise TypeError(
            f"{name} must be concrete (a NumPy array closed over by the jitted function), "
            f"got a traced value: coordinates decide the shapes of the outputs, so they "
            f"cannot be jit arguments")
    return check_coords(np.asarray(coords), name)


def _core_tensor(coords, cache: CoordinateCache | None) -> _CoreTensor:
    """A core tensor on ``coords`` (stride 1, no features) in ``cache``.

    Arrays already in the cache (the coordinates an earlier call returned)
    map to their existing set, so chained calls reuse kernel maps and
    a transposed convolution finds the finer set it restores.
    """
    coords = _concrete_coords(coords)
    cache = cache if cache is not None else CoordinateCache()
    set_id = cache._by_array.get(id(coords))
    if set_id is None or cache.coords(set_id) is not coords:
        coords = coords.copy()                 # the cache relies on its arrays not changing
        coords.flags.writeable = False
        set_id = cache.register(coords)
    empty = np.empty((coords.shape[0], 0), dtype=np.float32)
    return _CoreTensor._from_set(cache, set_id, empty, (1,) * (coords.shape[1] - 1))


def _check_dtypes(feats, **others):
    for name, value in others.items():
        if value is not None and value.dtype != feats.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but feats {feats.dtype}; "
                            f"cast one of them")


# --------------------------------------------------------------------------
# Differentiable products over a fixed kernel map
# --------------------------------------------------------------------------

def conv_features(feats, weight, kmap, groups: int = 1, bias=None):
    """``conv_forward(feats, weight, kmap, groups, bias)`` as a differentiable JAX op.

    Parameters
    ----------
    feats : jax.Array, shape (kmap.n_in, C_in)
    weight : jax.Array, (K, C_in, C_out), (K, G, C_in/G, C_out/G) or (K, C)
    kmap : cusparseconv.KernelMap
        Built outside the traced code (e.g. :func:`cusparseconv.layer_kernel_map`).
    groups : int
    bias : jax.Array, shape (C_out,), optional

    Returns
    -------
    jax.Array, shape (kmap.n_out, C_out), the dtype of ``feats``
    """
    feats, weight = jnp.asarray(feats), jnp.asarray(weight)
    bias = None if bias is None else jnp.asarray(bias)
    _check_dtypes(feats, weight=weight, bias=bias)
    if feats.ndim != 2 or feats.shape[0] != kmap.n_in:
        raise ValueError(f"feats must have shape (n_in, C_in) = ({kmap.n_in}, C_in), "
                         f"got {feats.shape}")
    _, c_out = weight_layout(weight.shape, kmap.kernel_volume, feats.shape[1], groups)
    out_shape = jax.ShapeDtypeStruct((kmap.n_out, c_out), feats.dtype)
    weight_shape = tuple(weight.shape)
    feats_in, feats_dtype, has_bias = feats.shape[1], feats.dtype, bias is not None

    call, on = _jax_callback.call, _jax_callback.kernel_map_on

    @jax.custom_vjp
    def product(feats, weight, bias):
        return call(lambda f, w, b, out: conv_forward(f, w, on(kmap, f), groups, b, out=out),
                    out_shape, feats, weight, bias)

    def forward(feats, weight, bias):
        # symbolic zeros: each argument says whether a gradient flows to it; the
        # residuals keep only what the needed gradients read (feats for the weight's,
        # weight for the features'), and their structure tells the backward which
        bias_value = None if bias is None else bias.value
        saved = (feats.value if weight.perturbed else None,
                 weight.value if feats.perturbed else None)
        return product(feats.value, weight.value, bias_value), saved

    def backward(saved, grad_out):
        feats, weight = saved
        if isinstance(grad_out, jax.custom_derivatives.SymbolicZero):
            return None, None, None
        feats_shape = jax.ShapeDtypeStruct((kmap.n_in, feats_in), feats_dtype)
        weight_struct = jax.ShapeDtypeStruct(weight_shape, feats_dtype)
        if feats is not None and weight is not None:   # both: one pass (conv_backward)
            grad_feats, grad_weight = call(
                lambda f, g, w, out: conv_backward(f, g, w, on(kmap, f), groups, out=out),
                (feats_shape, weight_struct), feats, grad_out, weight)
        elif weight is not None:
            grad_feats, grad_weight = call(
                lambda g, w, out: conv_input_grad(g, w, on(kmap, g), groups, out=out),
                feats_shape, grad_out, weight), None
        elif feats is not None:
            grad_feats, grad_weight = None, call(
                lambda f, g, out: conv_weight_grad(f, g, on(kmap, f), groups, weight_shape,
                                                   out=out),
                weight_struct, feats, grad_out)
        else:
            grad_feats = grad_weight = None
        grad_bias = None if not has_bias else call(
            lambda g, out: conv_bias_grad(g), jax.ShapeDtypeStruct((c_out,), feats_dtype),
            grad_out)
        return grad_feats, grad_weight, grad_bias

    product.defvjp(forward, backward, symbolic_zeros=True)
    return product(feats, weight, bias)


def pool_features(feats, kmap, mode: str = "max"):
    """``pool_forward(feats, kmap, mode)`` as a differentiable JAX op; (n_out, C)."""
    feats = jnp.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] != kmap.n_in:
        raise ValueError(f"feats must have shape (n_in, C) = ({kmap.n_in}, C), "
                         f"got {feats.shape}")
    out_shape = jax.ShapeDtypeStruct((kmap.n_out, feats.shape[1]), feats.dtype)

    call, on = _jax_callback.call, _jax_callback.kernel_map_on

    @jax.custom_vjp
    def reduce(feats):
        return call(lambda f, out: pool_forward(f, on(kmap, f), mode), out_shape, feats)

    def forward(feats):
        return reduce(feats), feats

    def backward(feats, grad_out):
        grad = call(lambda g, f, out: pool_backward(g, f, on(kmap, g), mode),
                    jax.ShapeDtypeStruct(feats.shape, feats.dtype), grad_out, feats)
        return (grad,)

    reduce.defvjp(forward, backward)
    return reduce(feats)


# --------------------------------------------------------------------------
# Functional API on coordinates and features
# --------------------------------------------------------------------------

def sparse_conv(coords, feats, weight, kernel_size=3, stride=1, dilation=1,
                transposed: bool = False, generative: bool = False, groups: int = 1,
                bias=None, offsets=None, out_coords=None, *,
                cache: CoordinateCache | None = None):
    """Differentiable sparse convolution (:func:`cusparseconv.sparse_conv`) for JAX.

    Parameters
    ----------
    coords : ndarray of int, shape (N, 1 + D)
        Concrete (not traced).
    feats : jax.Array, shape (N, C_in)
    weight : jax.Array, (K, C_in, C_out); grouped (K, G, C_in/G, C_out/G); depthwise (K, C)
    kernel_size, stride, dilation, transposed, generative, groups, bias, offsets, out_coords
        As in :func:`cusparseconv.sparse_conv` (``out_coords`` concrete).
    cache : cusparseconv.CoordinateCache, optional
        Share coordinate sets and kernel maps between calls. Pass the
        coordinates an earlier call returned to stay on the same set (a
        transposed convolution then restores the set a strided one came from).

    Returns
    -------
    out_coords : ndarray of int32, shape (M, 1 + D) (read-only, concrete)
    out_feats : jax.Array, shape (M, C_out)
    """
    x = _core_tensor(coords, cache)
    if out_coords is not None:
        out_coords = _concrete_coords(out_coords, "out_coords")
    kmap, out_id, _ = layer_kernel_map(x, kernel_size, stride, dilation, transposed,
                                       generative, offsets, out_coords)
    return x.cache.coords(out_id), conv_features(feats, weight, kmap, groups, bias)


def sparse_pool(coords, feats, kernel_size=2, stride=None, mode: str = "max", dilation=1,
                offsets=None, *, cache: CoordinateCache | None = None):
    """Differentiable :func:`cusparseconv.sparse_pool` for JAX; returns
    ``(out_coords, out_feats)``. ``stride`` defaults to ``kernel_size`` (1 with
    explicit ``offsets``)."""
    x = _core_tensor(coords, cache)
    if stride is None:
        stride = kernel_size if offsets is None else 1
    kmap, out_id, _ = layer_kernel_map(x, kernel_size, stride, dilation, offsets=offsets)
    return x.cache.coords(out_id), pool_features(feats, kmap, mode)


def global_pool(coords, feats, mode: str = "mean"):
    """Differentiable :func:`cusparseconv.global_pool` for JAX: one row
    (b, 0, ..., 0) per batch item; returns ``(out_coords, out_feats)``."""
    x = _core_tensor(coords, None)
    feats = jnp.asarray(feats)
    if feats.ndim != 2 or feats.shape[0] != len(x):
        raise ValueError(f"feats must have shape (N, C) = ({len(x)}, C), got {feats.shape}")
    pooled_coords = _core_global_pool(x, mode).coords
    out_shape = jax.ShapeDtypeStruct((pooled_coords.shape[0], feats.shape[1]), feats.dtype)

    def with_feats(f):
        return _CoreTensor._from_set(x.cache, x._coord_id, f, x.stride)

    @jax.custom_vjp
    def reduce(feats):
        # host route: the core pools by the batch column of the host coordinates
        return _jax_callback.call(lambda f, out: _core_global_pool(with_feats(f), mode).feats,
                                  out_shape, feats, host=True)

    def forward(feats):
        return reduce(feats), feats

    def backward(feats, grad_out):
        grad = _jax_callback.call(
            lambda g, f, out: global_pool_backward(g, with_feats(f), mode),
            jax.ShapeDtypeStruct(feats.shape, feats.dtype), grad_out, feats, host=True)
        return (grad,)

    reduce.defvjp(forward, backward)
    return pooled_coords, reduce(feats)
