"""Sparse convolution in every regime, and its three products as array functions.

The regimes (stride 1, strided, transposed, generative, explicit output
coordinates) differ only in how the output coordinates are chosen
(:func:`output_coordinates`) and in the kernel map built between the two sets;
the products :func:`conv_forward`, :func:`conv_input_grad` and
:func:`conv_weight_grad` do not know which regime they serve (docs/SPEC.md
sections 3 to 5).

The products dispatch to the backend of their arrays
(:func:`cusparseconv.backends.backend_for`) and may write into a caller's
``out=`` array.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._checks import (MAX_STRIDE, check_coords, check_feats, check_float_array, check_out,
                      check_same_dtype, native, per_axis)
from ._arrays import array_module
from ._dtypes import accumulate_dtype
from ._limits import check_memory, expansion_bytes, kernel_map_bytes
from ._switch import short_switch_interval
from .backends import backend_for
from .kmap import KernelMap
from .maps import check_kernel_map
from .offsets import check_offsets, kernel_offsets, kernel_volume
from .tensor import SparseTensor


# --------------------------------------------------------------------------
# Weight layouts
# --------------------------------------------------------------------------

def weight_layout(weight_shape, kernel_volume: int, c_in: int, groups: int,
                  name: str = "weight") -> tuple[str, int]:
    """Check a weight shape against the kernel and channels; return (layout, C_out).

    Layouts (docs/SPEC.md section 2): ``"standard"`` (K, C_in, C_out) for groups == 1,
    ``"grouped"`` (K, G, C_in / G, C_out / G), ``"depthwise"`` (K, C) when
    groups == C_in == C_out.
    """
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    shape = tuple(weight_shape)
    if groups == 1:
        if len(shape) != 3 or shape[0] != kernel_volume or shape[1] != c_in:
            raise ValueError(
                f"{name} must have shape (K, C_in, C_out) = ({kernel_volume}, {c_in}, C_out) "
                f"for a kernel of {kernel_volume} offsets and {c_in} input channels, "
                f"got {shape}")
        return "standard", shape[2]
    if c_in % groups:
        raise ValueError(f"groups ({groups}) must divide the input channels ({c_in})")
    if len(shape) == 2:
        if groups != c_in or shape != (kernel_volume, c_in):
            raise ValueError(
                f"a 2-D {name} is depthwise and needs groups == C_in and shape "
                f"(K, C) = ({kernel_volume}, {c_in}); got groups={groups}, shape {shape}")
        return "depthwise", c_in
    if (len(shape) != 4 or shape[0] != kernel_volume or shape[1] != groups
            or shape[2] != c_in // groups):
        raise ValueError(
            f"{name} must have shape (K, G, C_in/G, C_out/G) = ({kernel_volume}, {groups}, "
            f"{c_in // groups}, C_out/G) for groups={groups}, or (K, C) for depthwise; "
            f"got {shape}")
    return "grouped", groups * shape[3]


def weight_shape_for(kernel_volume: int, c_in: int, c_out: int, groups: int = 1):
    """The weight shape of a layer (docs/SPEC.md section 2): (K, C_in, C_out) for
    groups == 1, depthwise (K, C) when groups == C_in == C_out, else grouped
    (K, G, C_in/G, C_out/G)."""
    if groups == 1:
        return (kernel_volume, c_in, c_out)
    if groups == c_in == c_out:
        return (kernel_volume, c_in)
    if (isinstance(groups, (int, np.integer)) and not isinstance(groups, bool) and groups > 1
            and c_in % groups == 0 and c_out % groups == 0):
        return (kernel_volume, groups, c_in // groups, c_out // groups)
    raise ValueError(f"groups ({groups}) must be a positive int dividing C_in ({c_in}) and "
                     f"C_out ({c_out})")


def _check_output_size(n_rows: int, channels: int, dtype, what: str) -> None:
    """The result (and its float32/float64 accumulator) must fit the memory limit."""
    itemsize = np.dtype(dtype).itemsize
    check_memory(n_rows * channels * (itemsize + (8 if itemsize == 8 else 4)),
                 f"{what} of {n_rows:,} rows x {channels:,} channels",
                 "use fewer channels or rows")


def _as_depthwise(weight, layout):
    """A grouped weight with one channel per group runs as depthwise (K, C)."""
    if layout == "grouped" and weight.shape[2] == 1 and weight.shape[3] == 1:
        return weight.reshape(weight.shape[0], weight.shape[1]), "depthwise"
    return weight, layout


# --------------------------------------------------------------------------
# The three products on arrays
# --------------------------------------------------------------------------

@short_switch_interval
def conv_forward(feats, weight, kmap: KernelMap, groups: int = 1, bias=None, algorithm=None,
                 out=None):
    """Forward product ``Y[out] += A[in] @ W[k]`` over the pairs of every offset.

    Parameters
    ----------
    feats : ndarray, shape (n_in, C_in)
        Input features A (float16 / bfloat16 / float32 / float64).
    weight : ndarray
        (K, C_in, C_out), (K, G, C_in/G, C_out/G) or depthwise (K, C).
    kmap : KernelMap
        From :func:`cusparseconv.build_kernel_map` or a tensor's cache.
    groups : int
    bias : ndarray, shape (C_out,), optional
    algorithm : str, optional
        Force an implementation; None or "auto" lets the backend choose. CPU:
        "blocked" or "dense"; GPU: "explicit", "explicit_sorted", "implicit",
        "mask" (README, GPU backend).
    out : ndarray, shape (n_out, C_out), the dtype of ``feats``, optional
        C-contiguous array of the features' device the result is written into
        (no copy is made when it has the accumulation dtype); it must not
        overlap an input.

    Returns
    -------
    out : ndarray, shape (n_out, C_out), the dtype of ``feats``
        Accumulated in float32 (float64 for float64 inputs); ``out`` itself
        when given.

    Raises
    ------
    TypeError
        When ``weight`` or ``bias`` has another dtype than ``feats`` (nothing is
        cast implicitly, as in PyTorch).
    """
    check_kernel_map(kmap)
    feats = check_feats(feats, kmap.n_in, "feats")
    weight = check_float_array(weight, "weight")
    layout, c_out = weight_layout(weight.shape, kmap.kernel_volume, feats.shape[1], groups)
    weight, layout = _as_depthwise(weight, layout)
    if bias is not None:
        bias = check_float_array(bias, "bias")
        if tuple(bias.shape) != (c_out,):
            raise ValueError(f"bias must have shape (C_out,) = ({c_out},), "
                             f"got {tuple(bias.shape)}")
    check_same_dtype(feats, "feats", weight=weight, bias=bias)
    _check_output_size(kmap.n_out, c_out, feats.dtype, "the output features")
    out = check_out(out, (kmap.n_out, c_out), feats.dtype, feats=feats, weight=weight,
                    bias=bias)
    backend = backend_for(feats, weight, bias, kmap.in_rows, out)
    return backend.conv_forward(feats, weight, kmap, layout, c_out, bias=bias,
                                algorithm=algorithm, out=out)


@short_switch_interval
def conv_input_grad(grad_out, weight, kmap: KernelMap, groups: int = 1, algorithm=None,
                    out=None):
    """Input gradient ``dX[in] += dY[out] @ W[k]^T``.

    Parameters
    ----------
    grad_out : ndarray, shape (n_out, C_out)
    weight : ndarray, as in :func:`conv_forward`
    kmap : KernelMap
    groups : int
    algorithm : str, optional
        As for :func:`conv_forward` (run on the reverse table).
    out : ndarray, shape (n_in, C_in), the dtype of ``grad_out``, optional
        As for :func:`conv_forward`.

    Returns
    -------
    grad_in : ndarray, shape (n_in, C_in), the dtype of ``grad_out`` (``out`` when given)
    """
    check_kernel_map(kmap)
    weight = check_float_array(weight, "weight")
    c_in = _input_channels(weight, groups)
    layout, c_out = weight_layout(weight.shape, kmap.kernel_volume, c_in, groups)
    grad_out = check_feats(grad_out, kmap.n_out, "grad_out")
    if grad_out.shape[1] != c_out:
        raise ValueError(f"grad_out must have {c_out} columns (C_out of weight), "
                         f"got {grad_out.shape[1]}")
    check_same_dtype(grad_out, "grad_out", weight=weight)
    _check_output_size(kmap.n_in, c_in, grad_out.dtype, "the input gradient")
    weight, layout = _as_depthwise(weight, layout)
    out = check_out(out, (kmap.n_in, c_in), grad_out.dtype, grad_out=grad_out, weight=weight)
    backend = backend_for(grad_out, weight, kmap.in_rows, out)
    return backend.conv_input_grad(grad_out, weight, kmap, layout, c_in, algorithm=algorithm,
                                   out=out)


def _input_channels(weight, groups):
    if weight.ndim == 3:
        return weight.shape[1]
    if weight.ndim == 2:
        return weight.shape[1]
    if weight.ndim == 4:
        return weight.shape[1] * weight.shape[2]
    raise ValueError(f"weight must be 2-D (depthwise), 3-D or 4-D (grouped), "
                     f"got shape {tuple(weight.shape)}")


@short_switch_interval
def conv_weight_grad(feats, grad_out, kmap: KernelMap, groups: int = 1, weight_shape=None,
                     algorithm=None, out=None):
    """Weight gradient ``dW[k] = A[in]^T @ dY[out]`` per offset.

    Parameters
    ----------
    feats : ndarray, shape (n_in, C_in)
    grad_out : ndarray, shape (n_out, C_out)
    kmap : KernelMap
    groups : int
    weight_shape : tuple, optional
        Shape of the weight; by default (K, C_in, C_out) for groups == 1,
        (K, C) when groups == C_in == C_out, else (K, G, C_in/G, C_out/G).
    algorithm : str, optional
        CPU: "blocked" or "dense"; GPU: "explicit" or "splitk"; None lets the backend
        choose.
    out : ndarray of ``weight_shape``, the dtype of ``feats``, optional
        As for :func:`conv_forward`.

    Returns
    -------
    grad_weight : ndarray of ``weight_shape``, the dtype of ``feats`` (``out`` when given)
    """
    check_kernel_map(kmap)
    feats = check_feats(feats, kmap.n_in, "feats")
    grad_out = check_feats(grad_out, kmap.n_out, "grad_out")
    check_same_dtype(feats, "feats", grad_out=grad_out)
    c_in, c_out = feats.shape[1], grad_out.shape[1]
    kernel_volume = kmap.kernel_volume
    if weight_shape is None:
        weight_shape = weight_shape_for(kernel_volume, c_in, c_out, groups)
    weight_shape = tuple(weight_shape)
    layout, layout_c_out = weight_layout(weight_shape, kernel_volume, c_in, groups,
                                         "weight_shape")
    if layout_c_out != c_out:
        raise ValueError(f"grad_out has {c_out} columns but weight_shape {weight_shape} "
                         f"gives C_out = {layout_c_out}")
    run_shape = weight_shape
    if layout == "grouped" and weight_shape[2] == 1 and weight_shape[3] == 1:
        layout, run_shape = "depthwise", (kernel_volume, groups)
    out = check_out(out, weight_shape, feats.dtype, feats=feats, grad_out=grad_out)
    backend = backend_for(feats, grad_out, kmap.in_rows, out)
    grad = backend.conv_weight_grad(feats, grad_out, kmap, layout, run_shape,
                                    algorithm=algorithm,
                                    out=None if out is None else out.reshape(run_shape))
    return out if out is not None else grad.reshape(weight_shape)


@short_switch_interval
def conv_backward(feats, grad_out, weight, kmap: KernelMap, groups: int = 1, out=None):
    """Both gradients of :func:`conv_forward`: ``(conv_input_grad(...),
    conv_weight_grad(...))`` in one call.

    On the CPU the two share one pass where both run the blocked product (a
    standard weight): the output-gradient rows gathered for the input gradient
    also make the weight gradient, which then gathers no rows of its own (see
    README, "Products (CPU)" in "Internals"). The input gradient is bit for bit
    :func:`conv_input_grad`'s; the weight gradient sums the same terms in
    another order than :func:`conv_weight_grad` (equal up to rounding; still
    the same at any thread count). Otherwise, and on the GPU, the two products
    run one after the other.

    Parameters
    ----------
    feats : ndarray, shape (n_in, C_in)
        The forward's input features.
    grad_out : ndarray, shape (n_out, C_out)
    weight : ndarray, as in :func:`conv_forward`
    kmap : KernelMap
    groups : int
    out : (ndarray, ndarray), optional
        ``(grad_in_out, grad_weight_out)``: C-contiguous arrays of the two results'
        shapes and dtypes (as ``out=`` of :func:`conv_input_grad` and
        :func:`conv_weight_grad`), written in place and returned.

    Returns
    -------
    grad_in : ndarray, shape (n_in, C_in), the dtype of ``grad_out``
    grad_weight : ndarray of ``weight.shape``, the dtype of ``feats``
    """
    check_kernel_map(kmap)
    feats = check_feats(feats, kmap.n_in, "feats")
    weight = check_float_array(weight, "weight")
    grad_out = check_feats(grad_out, kmap.n_out, "grad_out")
    check_same_dtype(feats, "feats", grad_out=grad_out, weight=weight)
    layout, c_out = weight_layout(weight.shape, kmap.kernel_volume, feats.shape[1], groups)
    if grad_out.shape[1] != c_out:
        raise ValueError(f"grad_out must have {c_out} columns (C_out of weight), "
                         f"got {grad_out.shape[1]}")
    weight_shape = tuple(weight.shape)
    c_in = feats.shape[1]
    if out is None:
        out_in = out_weight = None
    else:
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError("out must be a pair (grad_in_out, grad_weight_out) of arrays, got "
                            f"{type(out).__name__}")
        out_in = check_out(out[0], (kmap.n_in, c_in), grad_out.dtype, grad_out=grad_out,
                           weight=weight, feats=feats)
        out_weight = check_out(out[1], weight_shape, feats.dtype, feats=feats,
                               grad_out=grad_out, weight=weight)
        if out_in is not None and out_weight is not None and bool(
                array_module(out_in).may_share_memory(out_in, out_weight)):
            raise ValueError("out's two arrays share memory: pass separate arrays")
    run_weight, run_layout = _as_depthwise(weight, layout)
    if run_layout != "standard":   # grouped and depthwise: the two products, as they are
        return (conv_input_grad(grad_out, weight, kmap, groups, out=out_in),
                conv_weight_grad(feats, grad_out, kmap, groups, weight_shape, out=out_weight))
    _check_output_size(kmap.n_in, c_in, grad_out.dtype, "the input gradient")
    backend = backend_for(feats, grad_out, run_weight, kmap.in_rows, out_in, out_weight)
    return backend.conv_backward(feats, grad_out, run_weight, kmap, run_layout, c_in,
                                 weight_shape, out=(out_in, out_weight))


def conv_bias_grad(grad_out):
    """Bias gradient: the column sums of ``grad_out`` (n_out, C_out) -> (C_out,).

    Summed in float32 (float64 for float64), returned in the dtype of ``grad_out``.
    """
    if not hasattr(grad_out, "dtype"):
        grad_out = np.asarray(grad_out)
    grad_out = native(grad_out)
    if grad_out.ndim != 2:
        raise ValueError(f"grad_out must have shape (n_out, C_out), got {tuple(grad_out.shape)}")
    acc_dtype = accumulate_dtype(grad_out.dtype)
    return grad_out.astype(acc_dtype, copy=False).sum(axis=0).astype(grad_out.dtype,
                                                                     copy=False)


# --------------------------------------------------------------------------
# Regimes: choosing the output coordinates
# --------------------------------------------------------------------------

def output_coordinates(x: SparseTensor, offsets: np.ndarray, stride: tuple[int, ...],
                       transposed: bool = False, generative: bool = False, out_coords=None):
    """Output coordinate set of a layer (docs/SPEC.md section 3 table) and its tensor stride.

    Returns
    -------
    out_id
        The output set of ``x.cache`` (an opaque id; ``x.cache.coords(out_id)``
        gives its rows).
    out_stride : tuple of int
        Tensor stride of the output.
    """
    cache = x.cache
    unit = all(s == 1 for s in stride)
    if transposed:
        out_stride = tuple(t // s if t % s == 0 else 1 for t, s in zip(x.stride, stride))
    else:
        out_stride = tuple(t * s for t, s in zip(x.stride, stride))
    if out_coords is not None:
        if generative:
            raise ValueError("out_coords and generative=True are exclusive: out_coords "
                             "fixes the output rows, generative derives them")
        if isinstance(out_coords, SparseTensor):
            if out_coords.cache is not cache:
                raise ValueError("out_coords is a SparseTensor with another coordinate "
                                 "cache; pass its .coords array instead")
            return out_coords._coord_id, out_coords.stride
        given = out_coords
        out_coords = check_coords(out_coords, "out_coords")
        if out_coords.shape[1] != x.coords.shape[1]:
            raise ValueError(f"out_coords must have {x.coords.shape[1]} columns like the "
                             f"input coords, got {out_coords.shape[1]}")
        backend_for(x.coords, out_coords)
        # The cache stores its own copy: writing into `given` later changes nothing.
        return (cache.register(out_coords, name="out_coords", owned=out_coords is not given),
                out_stride)
    if transposed:
        if generative:  # every output some input reaches: { s * u + K[k] }
            _check_generative_size(x, cache.coords(x._coord_id), offsets)
            return cache.expand(x._coord_id, offsets, stride), out_stride
        if unit:
            return x._coord_id, out_stride
        finer = cache.finer(x._coord_id, stride)
        if finer is None:
            raise ValueError(
                f"transposed convolution with stride {stride} has no output coordinates: "
                f"this tensor was not produced by a stride-{stride} downsampling in this "
                f"cache; pass out_coords (the finer coordinates) or use generative=True")
        return finer, out_stride
    base = x._coord_id if unit else cache.downsample(x._coord_id, stride)
    if generative:
        # Every output some input reaches under y_u = sum_k x_{s*u + K[k]}: { u - K[k] }
        # (over the downsampled rows when s > 1; docs/SPEC.md section 3).
        _check_generative_size(x, cache.coords(base), offsets)
        return cache.expand(base, -offsets, (1,) * len(stride)), out_stride
    return base, out_stride


def _check_generative_size(x: SparseTensor, base_coords, offsets: np.ndarray) -> None:
    """A generative layer's output set and kernel map, estimated before either exists."""
    n_rows, n_offsets = base_coords.shape[0], offsets.shape[0]
    # The map's pairs are exactly n_rows * |K|; the device's neighbour tables depend
    # on the real output size and are checked with it when the map is built.
    estimate = (expansion_bytes(n_rows, n_offsets, x.ndim)
                + kernel_map_bytes(n_rows, n_rows * n_offsets, n_offsets, device=False))
    check_memory(estimate,
                 f"a generative convolution of {n_rows:,} rows with {n_offsets:,} kernel "
                 f"offsets would create up to {n_rows * n_offsets:,} output rows and "
                 f"{n_rows * n_offsets:,} kernel-map pairs",
                 "use a smaller kernel, fewer points or a coarser grid")


def resolve_offsets(ndim: int, kernel_size=3, dilation=1, offsets=None) -> np.ndarray:
    """The (K, D) kernel: explicit ``offsets`` or a box of ``kernel_size`` and ``dilation``."""
    if offsets is not None:
        return check_offsets(offsets, ndim)
    return kernel_offsets(kernel_size, dilation, ndim)


def _check_weight_before_offsets(x: SparseTensor, weight, kernel_size, groups, offsets):
    """Check the weight against the kernel's size before any offset is built, so a
    wrong ``kernel_size`` (e.g. 1000) fails on the weight's shape, not on memory."""
    if offsets is not None or not hasattr(weight, "shape"):
        return
    volume = kernel_volume(kernel_size, x.ndim)
    try:
        weight_layout(weight.shape, volume, x.num_channels, groups)
    except ValueError as error:
        hint = ""
        if (x.ndim == 2 and isinstance(kernel_size, numbers.Integral)
                and len(weight.shape) >= 2 and weight.shape[0] == int(kernel_size) ** 3):
            hint = ("; the coordinates have 3 columns, read as (batch, x, y) with D = 2, "
                    "while the weight has the 3-D kernel's "
                    f"{int(kernel_size) ** 3} offsets: if the rows are (x, y, z) without a "
                    "batch column, prepend one (numpy.hstack([numpy.zeros((len(coords), 1), "
                    "numpy.int32), coords]))")
        raise ValueError(f"{error}{hint}") from None


@short_switch_interval
def sparse_conv(x: SparseTensor, weight, kernel_size=3, stride=1, dilation=1,
                transposed: bool = False, generative: bool = False, groups: int = 1,
                bias=None, offsets=None, out_coords=None) -> SparseTensor:
    """Sparse convolution of ``x`` (docs/SPEC.md section 3), in every regime.

    Parameters
    ----------
    x : SparseTensor
        Input, (N, 1 + D) coordinates and (N, C_in) features.
    weight : ndarray
        (K, C_in, C_out); grouped (K, G, C_in/G, C_out/G); depthwise (K, C)
        when groups == C_in == C_out. ``W[k]`` belongs to offset k.
    kernel_size, dilation : int or tuple of D ints
        Box kernel (ignored when ``offsets`` is given).
    stride : int or tuple of D ints
    transposed : bool
        Transposed convolution (the adjoint of the forward one).
    generative : bool
        Output coordinates grow with the kernel: every coordinate some input
        reaches, {u - K[k]} over the input rows u (the downsampled rows when
        stride > 1), or {s * u + K[k]} when transposed.
    groups : int
    bias : ndarray, shape (C_out,), optional
    offsets : ndarray of int, shape (K, D), optional
        Arbitrary kernel offsets (generalised convolution).
    out_coords : ndarray of int, shape (M, 1 + D), or SparseTensor, optional
        Explicit output coordinates, used as given (rows and order).

    Returns
    -------
    SparseTensor
        Output features (M, C_out) in the dtype of ``x.feats``; it shares
        ``x``'s coordinate cache.

    Raises
    ------
    TypeError
        ``weight`` or ``bias`` with another dtype than ``x.feats``.
    cusparseconv.MemoryLimitError
        (a ValueError) when the output set or kernel map would exceed
        :func:`cusparseconv.get_memory_limit` (estimated before allocating).

    Examples
    --------
    >>> import numpy as np, cusparseconv as csc
    >>> coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 2, 2, 2]], dtype=np.int32)
    >>> x = csc.SparseTensor(coords, np.ones((3, 2)))
    >>> y = csc.sparse_conv(x, np.ones((27, 2, 4)))          # 3x3x3, stride 1
    >>> y.feats[:, 0].tolist()
    [4.0, 4.0, 2.0]
    >>> z = csc.sparse_conv(x, np.ones((8, 2, 4)), kernel_size=2, stride=2)
    >>> z.coords.tolist(), z.stride
    ([[0, 0, 0, 0], [0, 1, 1, 1]], (2, 2, 2))
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    ndim = x.ndim
    _check_weight_before_offsets(x, weight, kernel_size, groups, offsets)
    kernel = resolve_offsets(ndim, kernel_size, dilation, offsets)
    stride = per_axis(stride, ndim, "stride", maximum=MAX_STRIDE)
    out_id, out_stride = output_coordinates(x, kernel, stride, bool(transposed),
                                            bool(generative), out_coords)
    kmap = x.cache.kernel_map(x._coord_id, out_id, kernel, stride, bool(transposed))
    feats = conv_forward(x.feats, weight, kmap, groups, bias)
    return SparseTensor._from_set(x.cache, out_id, feats, out_stride)


@short_switch_interval
def layer_kernel_map(x: SparseTensor, kernel_size=3, stride=1, dilation=1,
                     transposed: bool = False, generative: bool = False, offsets=None,
                     out_coords=None) -> tuple[KernelMap, int, tuple[int, ...]]:
    """The kernel map :func:`sparse_conv` would use, without running the product.

    Returns ``(kmap, out_id, out_stride)``; adapters use it to run forward and
    backward with the array functions. ``out_id`` is the output set of
    ``x.cache`` (an opaque handle: ``x.cache.coords(out_id)`` gives its rows;
    holding it keeps the set alive).
    """
    ndim = x.ndim
    kernel = resolve_offsets(ndim, kernel_size, dilation, offsets)
    stride = per_axis(stride, ndim, "stride", maximum=MAX_STRIDE)
    out_id, out_stride = output_coordinates(x, kernel, stride, bool(transposed),
                                            bool(generative), out_coords)
    return (x.cache.kernel_map(x._coord_id, out_id, kernel, stride, bool(transposed)),
            out_id, out_stride)
