"""cusparseconv: spatially sparse convolutions on integer voxel grids.

NumPy/SciPy on the CPU, CuPy on the GPU; the array type picks the backend.
See README.md for the concepts, the regimes and the internals, and
docs/SPEC.md for the mathematics. Process-wide settings: :mod:`cusparseconv.config`.
"""

from . import config
from ._limits import MemoryLimitError, get_memory_limit, set_memory_limit
from ._threads import get_num_threads, set_num_threads
from .conv import (conv_backward, conv_bias_grad, conv_forward, conv_input_grad,
                   conv_weight_grad, layer_kernel_map, sparse_conv)
from .coords import coordinate_range
from .explanation import Explanation, ProductChoice, explain
from .dense import from_dense, gather_from_dense, scatter_to_dense, to_dense
from .kmap import KernelMap
from .maps import build_kernel_map, pair_mask, reverse_kernel_map
from .offsets import kernel_offsets
from .pool import (global_pool, global_pool_backward, pool_backward, pool_forward,
                   sparse_pool, upsample_nearest, upsample_parents)
from .tensor import CoordinateCache, SparseTensor
from .voxelize import devoxelize, voxelize

__version__ = "0.1.0"

__all__ = [
    "SparseTensor", "CoordinateCache", "KernelMap",
    "kernel_offsets", "build_kernel_map", "reverse_kernel_map", "pair_mask",
    "coordinate_range",
    "sparse_conv", "layer_kernel_map",
    "conv_forward", "conv_input_grad", "conv_weight_grad", "conv_backward", "conv_bias_grad",
    "sparse_pool", "global_pool", "global_pool_backward", "pool_forward", "pool_backward",
    "upsample_nearest", "upsample_parents",
    "voxelize", "devoxelize", "to_dense", "from_dense", "scatter_to_dense",
    "gather_from_dense",
    "set_num_threads", "get_num_threads",
    "set_memory_limit", "get_memory_limit", "MemoryLimitError", "config",
    "explain", "Explanation", "ProductChoice",
]
