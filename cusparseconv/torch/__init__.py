"""PyTorch adapter: differentiable sparse convolution, pooling and ``nn`` layers.

Import it explicitly (``import cusparseconv.torch as cst``); the core never
imports torch. Everything here is glue: features cross between torch and the
core through zero-copy views, the core computes, the result comes back the
same way, and autograd's backward calls the core's backward functions.

=======================  ========================================================
module                   holds
=======================  ========================================================
``convert``              zero-copy exchange (NumPy views, DLPack with CuPy), the
                         CUDA stream and allocator
``tensor``               the torch :class:`SparseTensor` (coordinates, features,
                         stride, coordinate cache), :func:`cat`
``autograd``             the ``torch.autograd.Function``s over the core's forward
                         and backward functions
``functional``           differentiable operations on a :class:`SparseTensor`
                         (:func:`conv`, :func:`pool`, ...) and on coordinates and
                         features (:func:`sparse_conv`, ...)
``layers``               the ``nn.Module`` layers
``migration``            clear errors for spconv's, MinkowskiEngine's and
                         TorchSparse's names
=======================  ========================================================

CUDA (written for the CuPy backend, not yet run on a GPU): features are handed
to CuPy with ``cupy.from_dlpack`` (no copy), the core runs on PyTorch's current
stream (``cupy.cuda.ExternalStream``), and CuPy allocates from PyTorch's
caching allocator (:func:`use_torch_allocator`).
"""

from .convert import from_array, to_array, use_torch_allocator
from .functional import (conv, global_pool, pool, pool_global, sparse_conv, sparse_pool,
                         upsample_nearest)
from .layers import (SparseAvgPool2d, SparseAvgPool3d, SparseBatchNorm, SparseConv,
                     SparseConv2d, SparseConv3d, SparseConvTranspose2d, SparseConvTranspose3d,
                     SparseDepthwiseConv3d, SparseDropout, SparseGELU, SparseGlobalAvgPool,
                     SparseGlobalMaxPool, SparseGlobalPool, SparseLeakyReLU, SparseLinear,
                     SparseMaxPool2d, SparseMaxPool3d, SparsePool, SparseReLU, SparseRowwise,
                     SparseSiLU, SparseSumPool2d, SparseSumPool3d, SparseUpsample)
from .migration import peer_name_error
from .tensor import SparseTensor, cat

__all__ = [
    "SparseTensor", "to_array", "from_array", "use_torch_allocator",
    "sparse_conv", "sparse_pool", "global_pool",
    "conv", "pool", "pool_global", "upsample_nearest", "cat",
    "SparseConv", "SparseConv2d", "SparseConv3d", "SparseConvTranspose2d",
    "SparseConvTranspose3d", "SparseDepthwiseConv3d",
    "SparsePool", "SparseMaxPool2d", "SparseMaxPool3d", "SparseAvgPool2d", "SparseAvgPool3d",
    "SparseSumPool2d", "SparseSumPool3d", "SparseGlobalPool", "SparseGlobalAvgPool",
    "SparseGlobalMaxPool", "SparseUpsample", "SparseRowwise", "SparseBatchNorm",
    "SparseLinear", "SparseReLU", "SparseLeakyReLU", "SparseGELU", "SparseSiLU",
    "SparseDropout",
]


def __getattr__(name):
    # Only reached for names this package does not define: the peers' names get
    # their equivalent here.
    raise peer_name_error(__name__, name)
