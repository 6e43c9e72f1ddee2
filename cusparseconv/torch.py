"""PyTorch adapter: differentiable sparse convolution, pooling and ``nn`` layers.

Import it explicitly (``import cusparseconv.torch as cst``); the core never
imports torch. Everything here is glue: features cross between torch and the
core through zero-copy views (``torch.from_numpy`` / ``Tensor.numpy()`` on the
CPU, DLPack with CuPy on CUDA), the core computes, the result comes back the
same way. The gradients are the core's backward functions:

=====================  =================================================
autograd op            backward (core)
=====================  =================================================
convolution            ``conv_input_grad``, ``conv_weight_grad``,
                       ``conv_bias_grad``
pooling                ``pool_backward``
global pooling         ``global_pool_backward``
nearest upsampling     a differentiable ``torch`` gather of the parents
=====================  =================================================

Two ways in:

* functional on arrays, mirroring :func:`cusparseconv.sparse_conv`:
  ``out_coords, out_feats = sparse_conv(coords, feats, weight, kernel_size=3,
  ...)``; likewise :func:`sparse_pool` and :func:`global_pool`;
* a torch-side :class:`SparseTensor` (coordinates, a ``torch.Tensor`` of
  features, the tensor stride and the core :class:`~cusparseconv.CoordinateCache`)
  passed through ``nn.Module`` layers (:class:`SparseConv3d`, ...), so kernel
  maps are built once per geometry and a decoder's transposed convolutions
  reuse its encoder's maps.

CUDA (written for the CuPy backend, not yet run on a GPU): features are handed
to CuPy with ``cupy.from_dlpack`` (no copy), the core runs on PyTorch's current
stream (``cupy.cuda.ExternalStream``), and CuPy allocates from PyTorch's
caching allocator (:func:`use_torch_allocator`).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import torch
from torch import nn

from .conv import (conv_bias_grad, conv_forward, conv_input_grad, conv_weight_grad,
                   layer_kernel_map, weight_layout)
from .offsets import kernel_offsets
from .pool import (global_pool as _core_global_pool, global_pool_backward, pool_backward,
                   pool_forward, upsample_nearest as _core_upsample_nearest, upsample_parents)
from .tensor import CoordinateCache
from .tensor import SparseTensor as _CoreTensor

__all__ = [
    "SparseTensor", "to_array", "from_array", "use_torch_allocator",
    "sparse_conv", "sparse_pool", "global_pool",
    "conv", "pool", "pool_global", "upsample_nearest", "cat",
    "SparseConv", "SparseConv2d", "SparseConv3d", "SparseConvTranspose2d",
    "SparseConvTranspose3d", "SparseDepthwiseConv3d",
    "SparsePool", "SparseMaxPool2d", "SparseMaxPool3d", "SparseAvgPool2d", "SparseAvgPool3d",
    "SparseSumPool3d", "SparseGlobalPool", "SparseGlobalAvgPool", "SparseGlobalMaxPool",
    "SparseUpsample", "SparseRowwise", "SparseBatchNorm", "SparseLinear", "SparseReLU",
    "SparseLeakyReLU", "SparseGELU", "SparseSiLU", "SparseDropout",
]


# --------------------------------------------------------------------------
# Zero-copy conversion
# --------------------------------------------------------------------------

def _cupy():
    try:
        import cupy
    except ImportError as error:  # pragma: no cover - depends on the machine
        raise RuntimeError("CUDA tensors need CuPy (pip install 'cusparseconv[cuda12]')") \
            from error
    return cupy


def to_array(tensor: torch.Tensor):
    """A view of a tensor's memory as a NumPy (CPU) or CuPy (CUDA) array; no copy.

    The tensor is detached first; strides are kept (the core handles
    non-contiguous arrays). bfloat16, which NumPy lacks, becomes an
    ``ml_dtypes.bfloat16`` view of the same bytes.

    Parameters
    ----------
    tensor : torch.Tensor, any shape, on the CPU or a CUDA device

    Returns
    -------
    numpy.ndarray or cupy.ndarray sharing the tensor's memory
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
    tensor = tensor.detach()
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    if tensor.device.type == "cpu":
        if tensor.dtype == torch.bfloat16:
            import ml_dtypes

            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()
    if tensor.device.type == "cuda":
        cupy = _cupy()
        try:
            return cupy.from_dlpack(tensor)
        except (TypeError, ValueError, BufferError) as error:
            if tensor.dtype == torch.bfloat16:  # a CuPy without bfloat16 DLPack: raw bits
                import ml_dtypes

                try:
                    return cupy.from_dlpack(tensor.view(torch.int16)).view(ml_dtypes.bfloat16)
                except (TypeError, ValueError) as retry_error:
                    error = retry_error
            raise TypeError(f"cannot hand a CUDA tensor of dtype {tensor.dtype} to CuPy "
                            f"through DLPack: {error}") from error
    raise TypeError(f"tensors must live on the CPU or a CUDA device, got {tensor.device}")


def from_array(array) -> torch.Tensor:
    """A torch tensor viewing a NumPy or CuPy array's memory; no copy.

    A read-only NumPy array (the core's coordinate arrays) is shared too and
    must not be written through the tensor.
    """
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        if not array.flags.writeable:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not writable.*")
                return torch.from_numpy(array)
        return torch.from_numpy(array)
    if type(array).__module__.split(".")[0] == "cupy":
        if array.dtype.name == "bfloat16":
            return torch.from_dlpack(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_dlpack(array)
    raise TypeError(f"expected a NumPy or CuPy array, got {type(array).__name__}")


_ALLOCATOR = {"wanted": True, "installed": False}


def use_torch_allocator(enabled: bool = True) -> None:
    """Make CuPy allocate from PyTorch's CUDA caching allocator (process-wide).

    It is installed on the first CUDA operation of this module unless
    ``use_torch_allocator(False)`` was called before; with it, the core's
    temporaries reuse the memory torch has cached instead of a second pool.
    """
    _ALLOCATOR["wanted"] = bool(enabled)
    if enabled:
        _install_torch_allocator()
    elif _ALLOCATOR["installed"]:
        cupy = _cupy()
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
        _ALLOCATOR["installed"] = False


def _install_torch_allocator() -> None:
    if _ALLOCATOR["installed"]:
        return
    cupy = _cupy()

    def malloc(size, device_id):
        stream = torch.cuda.current_stream(device_id)
        return torch.cuda.caching_allocator_alloc(size, device_id, stream)

    def free(pointer, device_id):
        torch.cuda.caching_allocator_delete(pointer)

    allocator = cupy.cuda.memory.PythonFunctionAllocator(malloc, free)
    cupy.cuda.set_allocator(allocator.malloc)
    _ALLOCATOR["installed"] = True


@contextlib.contextmanager
def _device_scope(device: torch.device):
    """Run core calls for tensors on ``device``: on CUDA, on torch's current stream."""
    if device.type != "cuda":
        yield
        return
    cupy = _cupy()
    if _ALLOCATOR["wanted"]:
        _install_torch_allocator()
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        yield


def _host_array(value):
    """Kernel offsets and similar geometry: always a NumPy array."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "get") and not isinstance(value, np.ndarray):
        return value.get()
    return np.asarray(value)


def _coords_array(coords, device: torch.device):
    """Coordinates as an array of the backend that serves ``device``."""
    if isinstance(coords, SparseTensor):
        raise TypeError("coords must be an integer array or tensor; pass a SparseTensor to "
                        "the tensor-level functions (conv, pool) instead")
    if device.type == "cpu":
        if isinstance(coords, torch.Tensor):
            if coords.device.type != "cpu":
                raise ValueError(f"coords are on {coords.device} but feats on the CPU; move "
                                 f"one of them (cusparseconv never copies between devices)")
            return coords.detach().numpy()
        return _host_array(coords)
    cupy = _cupy()
    if isinstance(coords, torch.Tensor):
        if coords.device != device:
            raise ValueError(f"coords are on {coords.device} but feats on {device}; move "
                             f"one of them (cusparseconv never copies between devices)")
        return cupy.from_dlpack(coords.detach())
    with cupy.cuda.Device(device.index):
        return cupy.asarray(coords)


def _empty_feats(n_rows: int, device: torch.device):
    """A (n, 0) feature array: stands in where the core needs a tensor but no features."""
    if device.type == "cuda":
        return _cupy().empty((n_rows, 0), dtype=np.float32)
    return np.empty((n_rows, 0), dtype=np.float32)


# --------------------------------------------------------------------------
# The torch-side sparse tensor
# --------------------------------------------------------------------------

class SparseTensor:
    """Coordinates, ``torch`` features, tensor stride and a coordinate cache.

    Parameters
    ----------
    coords : torch.Tensor or ndarray of int, shape (N, 1 + D)
        Batch index, then D voxel coordinates; unique rows. On the features'
        device (a NumPy array is accepted for CPU features).
    feats : torch.Tensor, shape (N, C)
        float16, bfloat16, float32 or float64; may require grad.
    stride : int or tuple of D ints
        Tensor stride (1 for raw voxels).
    cache : cusparseconv.CoordinateCache, optional
        Share coordinate sets and kernel maps with other tensors.

    Operations return tensors sharing the input's cache, so kernel maps are
    built once per geometry and transposed layers find the finer coordinates
    their encoder came from.
    """

    def __init__(self, coords, feats, stride=1, *, cache: CoordinateCache | None = None):
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        if feats.ndim != 2:
            raise ValueError(f"feats must have shape (N, C), got {tuple(feats.shape)}")
        with _device_scope(feats.device):
            core = _CoreTensor(_coords_array(coords, feats.device),
                               _empty_feats(feats.shape[0], feats.device), stride, cache=cache)
        self._cache = core.cache
        self._coord_id = core._coord_id
        self._stride = core.stride
        self.feats = feats
        self._coords_tensor = None

    @classmethod
    def _from_set(cls, cache: CoordinateCache, coord_id: int, feats: torch.Tensor,
                  stride) -> "SparseTensor":
        tensor = cls.__new__(cls)
        tensor._cache = cache
        tensor._coord_id = coord_id
        tensor._stride = tuple(stride)
        tensor.feats = feats
        tensor._coords_tensor = None
        return tensor

    def _core(self, feats=None) -> _CoreTensor:
        """The core tensor on the same coordinate set (features: ``feats`` or empty)."""
        if feats is None:
            feats = _empty_feats(len(self), self.feats.device)
        return _CoreTensor._from_set(self._cache, self._coord_id, feats, self._stride)

    @property
    def coords(self) -> torch.Tensor:
        """int32 tensor (N, 1 + D) on the features' device; read-only (it views the
        cache's coordinates)."""
        if self._coords_tensor is None:
            coords = from_array(self._cache.coords(self._coord_id))
            if coords.device != self.feats.device:
                coords = coords.to(self.feats.device)
            self._coords_tensor = coords
        return self._coords_tensor

    @property
    def stride(self) -> tuple[int, ...]:
        """Tensor stride, one int per spatial axis."""
        return self._stride

    @property
    def cache(self) -> CoordinateCache:
        """The core coordinate/kernel-map cache shared along the network."""
        return self._cache

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions D."""
        return self._cache.coords(self._coord_id).shape[1] - 1

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def num_channels(self) -> int:
        return self.feats.shape[1]

    def __len__(self) -> int:
        return self._cache.coords(self._coord_id).shape[0]

    def replace_feats(self, feats: torch.Tensor) -> "SparseTensor":
        """Same coordinates, stride and cache with new (N, C') features."""
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != len(self):
            shape = tuple(feats.shape) if hasattr(feats, "shape") else type(feats).__name__
            raise ValueError(f"feats must be a torch.Tensor of shape ({len(self)}, C), "
                             f"got {shape}")
        return SparseTensor._from_set(self._cache, self._coord_id, feats, self._stride)

    def same_coords(self, other: "SparseTensor") -> bool:
        """Whether ``other`` holds the same coordinate set of the same cache (row order
        included)."""
        return self._cache is other._cache and self._coord_id == other._coord_id

    def _check_same(self, other, what):
        if not isinstance(other, SparseTensor) or not self.same_coords(other):
            raise ValueError(f"{what} needs two SparseTensors on the same coordinate set of "
                             f"the same cache (e.g. a layer's input and output at stride 1)")

    def __add__(self, other: "SparseTensor") -> "SparseTensor":
        """Feature-wise sum of two tensors on the same coordinates (residual blocks)."""
        self._check_same(other, "adding")
        return self.replace_feats(self.feats + other.feats)

    def to_core(self) -> _CoreTensor:
        """A :class:`cusparseconv.SparseTensor` viewing the (detached) features."""
        return self._core(to_array(self.feats))

    def __repr__(self) -> str:
        return (f"SparseTensor(n={len(self)}, ndim={self.ndim}, channels={self.num_channels}, "
                f"dtype={self.feats.dtype}, device={self.feats.device}, stride={self._stride})")


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate the features of tensors on the same coordinates (U-Net skips)."""
    first = tensors[0]
    for other in tensors[1:]:
        first._check_same(other, "cat")
    return first.replace_feats(torch.cat([t.feats for t in tensors], dim=1))


# --------------------------------------------------------------------------
# Autograd functions (thin: convert, call the core, convert back)
# --------------------------------------------------------------------------

class _SparseConvFunction(torch.autograd.Function):
    """``Y = conv_forward(X, W, kmap) + b``; backward by the core's three gradients."""

    @staticmethod
    def forward(ctx, feats, weight, bias, kmap, groups):
        with _device_scope(feats.device):
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
        with _device_scope(grad_out.device):
            grad = to_array(grad_out)
            if ctx.needs_input_grad[0]:
                grad_feats = from_array(conv_input_grad(grad, to_array(weight), ctx.kmap,
                                                        ctx.groups))
            if ctx.needs_input_grad[1]:
                grad_weight = from_array(conv_weight_grad(
                    to_array(feats), grad, ctx.kmap, ctx.groups, tuple(weight.shape)))
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_bias = from_array(conv_bias_grad(grad))
        return grad_feats, grad_weight, grad_bias, None, None


class _SparsePoolFunction(torch.autograd.Function):
    """Max / avg / sum pooling over a kernel map; backward by ``pool_backward``."""

    @staticmethod
    def forward(ctx, feats, kmap, mode):
        with _device_scope(feats.device):
            out = from_array(pool_forward(to_array(feats), kmap, mode))
        ctx.save_for_backward(feats)
        ctx.kmap, ctx.mode = kmap, mode
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (feats,) = ctx.saved_tensors
        with _device_scope(grad_out.device):
            grad = from_array(pool_backward(to_array(grad_out), to_array(feats), ctx.kmap,
                                            ctx.mode))
        return grad, None, None


class _GlobalPoolFunction(torch.autograd.Function):
    """One row per batch item; backward by ``global_pool_backward``."""

    @staticmethod
    def forward(ctx, feats, x, mode, result):
        with _device_scope(feats.device):
            pooled = _core_global_pool(x._core(to_array(feats)), mode)
            out = from_array(pooled.feats)
        result["coord_id"] = pooled._coord_id
        ctx.save_for_backward(feats)
        ctx.x, ctx.mode = x, mode
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (feats,) = ctx.saved_tensors
        with _device_scope(grad_out.device):
            grad = from_array(global_pool_backward(to_array(grad_out),
                                                   ctx.x._core(to_array(feats)), ctx.mode))
        return grad, None, None, None


# --------------------------------------------------------------------------
# Tensor-level operations
# --------------------------------------------------------------------------

def _autocast(feats, *others):
    """Under ``torch.autocast`` run in the autocast dtype (cast by torch, so the
    gradients flow back to the original dtypes)."""
    device_type = feats.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return (feats.to(dtype),) + tuple(None if t is None else t.to(dtype) for t in others)
    return (feats,) + others


def _check_operand(tensor, name, feats):
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
    return _coords_array(out_coords, x.device)


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
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a cusparseconv.torch.SparseTensor, got {type(x).__name__}")
    with _device_scope(x.device):
        kmap, out_id, out_stride = layer_kernel_map(
            x._core(), kernel_size, stride, dilation, transposed, generative,
            _host_array(offsets), _out_coords_arg(out_coords, x))
    feats, weight, bias = _autocast(x.feats, weight, bias)
    _check_operand(weight, "weight", feats)
    _check_operand(bias, "bias", feats)
    out = _SparseConvFunction.apply(feats, weight, bias, kmap, groups)
    return SparseTensor._from_set(x.cache, out_id, out, out_stride)


def pool(x: SparseTensor, kernel_size=2, stride=None, mode: str = "max", dilation=1,
         offsets=None) -> SparseTensor:
    """Differentiable :func:`cusparseconv.sparse_pool` on a torch :class:`SparseTensor`.

    ``stride`` defaults to ``kernel_size`` (to 1 with explicit ``offsets``).
    """
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a cusparseconv.torch.SparseTensor, got {type(x).__name__}")
    if stride is None:
        stride = kernel_size if offsets is None else 1
    with _device_scope(x.device):
        kmap, out_id, out_stride = layer_kernel_map(
            x._core(), kernel_size, stride, dilation, offsets=_host_array(offsets))
    out = _SparsePoolFunction.apply(x.feats, kmap, mode)
    return SparseTensor._from_set(x.cache, out_id, out, out_stride)


def pool_global(x: SparseTensor, mode: str = "mean") -> SparseTensor:
    """Differentiable :func:`cusparseconv.global_pool`: one row (b, 0, ..., 0) per
    batch item, sorted by b; ``.feats`` is (B, C)."""
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a cusparseconv.torch.SparseTensor, got {type(x).__name__}")
    result = {}
    out = _GlobalPoolFunction.apply(x.feats, x, mode, result)
    return SparseTensor._from_set(x.cache, result["coord_id"], out, x.stride)


def upsample_nearest(x: SparseTensor, stride, out_coords=None) -> SparseTensor:
    """Differentiable :func:`cusparseconv.upsample_nearest`: each finer row takes
    its coarse parent's features (a torch gather, so autograd sums the children
    into the parent)."""
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a cusparseconv.torch.SparseTensor, got {type(x).__name__}")
    with _device_scope(x.device):
        fine = _core_upsample_nearest(x._core(), stride, _out_coords_arg(out_coords, x))
        parents = from_array(upsample_parents(fine.coords, x._core().coords, stride))
    return SparseTensor._from_set(x.cache, fine._coord_id, x.feats[parents.to(x.device)],
                                  fine.stride)


# --------------------------------------------------------------------------
# Functional API on coordinates and features
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
    out_coords : torch.Tensor of int32, shape (M, 1 + D) (read-only view)
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


# --------------------------------------------------------------------------
# nn.Module layers
# --------------------------------------------------------------------------

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
                 dtype=None):
        super().__init__()
        if offsets is not None:
            offsets = np.ascontiguousarray(_host_array(offsets), dtype=np.int32)
            kernel_volume = offsets.shape[0]
        else:
            kernel_volume = kernel_offsets(kernel_size, dilation, ndim).shape[0]
        if groups == 1:
            shape = (kernel_volume, in_channels, out_channels)
        elif groups == in_channels == out_channels:
            shape = (kernel_volume, in_channels)
        else:
            if in_channels % groups or out_channels % groups:
                raise ValueError(f"groups ({groups}) must divide in_channels ({in_channels}) "
                                 f"and out_channels ({out_channels})")
            shape = (kernel_volume, groups, in_channels // groups, out_channels // groups)
        weight_layout(shape, kernel_volume, in_channels, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.groups, self.transposed, self.generative = groups, transposed, generative
        self.offsets, self.ndim = offsets, ndim
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

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
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, transposed, generative, offsets, 3, device, dtype)


class SparseConv2d(SparseConv):
    """2-D sparse convolution; arguments as :class:`SparseConv`."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilation=1,
                 groups=1, bias=True, transposed=False, generative=False, offsets=None,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, transposed, generative, offsets, 2, device, dtype)


class SparseConvTranspose3d(SparseConv):
    """3-D transposed sparse convolution (restores the finer coordinates of the
    cache, or ``generative=True`` for {s*u + K[k]})."""

    def __init__(self, in_channels, out_channels, kernel_size=2, stride=2, dilation=1,
                 groups=1, bias=True, generative=False, offsets=None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, True, generative, offsets, 3, device, dtype)


class SparseConvTranspose2d(SparseConv):
    """2-D transposed sparse convolution."""

    def __init__(self, in_channels, out_channels, kernel_size=2, stride=2, dilation=1,
                 groups=1, bias=True, generative=False, offsets=None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, dilation, groups,
                         bias, True, generative, offsets, 2, device, dtype)


class SparseDepthwiseConv3d(SparseConv):
    """3-D depthwise sparse convolution: weight (K, C), one filter per channel."""

    def __init__(self, channels, kernel_size=3, stride=1, dilation=1, bias=True,
                 transposed=False, generative=False, offsets=None, device=None, dtype=None):
        super().__init__(channels, channels, kernel_size, stride, dilation, channels, bias,
                         transposed, generative, offsets, 3, device, dtype)


class SparsePool(nn.Module):
    """Max / avg / sum pooling (:func:`cusparseconv.sparse_pool`); no parameters."""

    def __init__(self, kernel_size=2, stride=None, mode: str = "max", dilation=1,
                 offsets=None, ndim: int | None = None):
        super().__init__()
        self.kernel_size, self.stride, self.mode = kernel_size, stride, mode
        self.dilation, self.ndim = dilation, ndim
        self.offsets = None if offsets is None else _host_array(offsets)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.ndim is not None and x.ndim != self.ndim:
            raise ValueError(f"{type(self).__name__} expects a tensor with {self.ndim} spatial "
                             f"dimensions, got {x.ndim}")
        return pool(x, self.kernel_size, self.stride, self.mode, self.dilation, self.offsets)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, mode={self.mode!r}"


def _pool_class(name, mode, ndim):
    def __init__(self, kernel_size=2, stride=None, dilation=1, offsets=None):
        SparsePool.__init__(self, kernel_size, stride, mode, dilation, offsets, ndim)

    doc = f"{ndim}-D sparse {mode} pooling (stride defaults to kernel_size)."
    return type(name, (SparsePool,), {"__init__": __init__, "__doc__": doc})


SparseMaxPool3d = _pool_class("SparseMaxPool3d", "max", 3)
SparseMaxPool2d = _pool_class("SparseMaxPool2d", "max", 2)
SparseAvgPool3d = _pool_class("SparseAvgPool3d", "avg", 3)
SparseAvgPool2d = _pool_class("SparseAvgPool2d", "avg", 2)
SparseSumPool3d = _pool_class("SparseSumPool3d", "sum", 3)
for _cls in (SparseMaxPool3d, SparseMaxPool2d, SparseAvgPool3d, SparseAvgPool2d,
             SparseSumPool3d):
    _cls.__module__ = __name__


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
