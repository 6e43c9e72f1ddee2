"""The contract between the core and its backends.

The public functions (``conv.py``, ``pool.py``, ``dense.py``, ``voxelize.py``,
the coordinate cache of ``tensor.py``) validate their arguments, pick a
backend with :func:`cusparseconv.backends.backend_for` and call it through
this interface only. :class:`cusparseconv.backends.cpu.CpuBackend` (NumPy and
SciPy) and :class:`cusparseconv.backends.cuda.CudaBackend` (CuPy and the
kernels of ``raw_kernels/``, on a device or under the host emulator)
implement it.

Arguments reach a backend validated and in native byte order: coordinates
int32 (N, 1 + D), features of a dtype in
:data:`cusparseconv._dtypes.FLOAT_DTYPE_NAMES`, weights of the layout named
by ``layout`` ("standard" (K, C_in, C_out), "grouped" (K, G, C_in/G, C_out/G)
or "depthwise" (K, C)), every array of the backend's array module ``xp``.
Kernel maps and sorted keys are frozen values: a backend keeps what it
derives from them in its own weak-keyed state (:mod:`._state`), never on them.

Products return arrays in the dtype of their floating input and accumulate in
:func:`cusparseconv._dtypes.accumulate_dtype` of it. With ``out=`` (an array
the public function has checked: C-contiguous, the result's shape and dtype,
on the backend's device, overlapping no input) the result is written into
``out`` and ``out`` itself is returned.
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol, runtime_checkable

from ..coords import SortedKeys
from ..kmap import KernelMap

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """What a backend provides. Shapes use N (rows), C (channels), K (offsets),
    D (spatial axes), P (pairs)."""

    #: "cpu", "cuda" or "cuda-emulated".
    name: str
    #: The array module of its arrays (numpy, or cupy on a device).
    xp: ModuleType
    #: Whether its kernel maps also hold (N, K) neighbour tables (memory estimates).
    neighbour_tables: bool

    # ------------------------------------------------------------ coordinate sets
    def downsample(self, coords, stride: tuple[int, ...]):
        """Unique ``floor(v / stride)`` over int32 (N, 1 + D) rows, sorted by key;
        returns (coords (M, 1 + D) int32, keys (M,) int64)."""

    def expand(self, coords, offsets, scale: tuple[int, ...], name: str = "coords"):
        """Unique ``scale * u + K[k]`` over rows u and offsets k (K, D), sorted by key;
        returns (coords (M, 1 + D) int32, keys (M,) int64)."""

    def batch_segments(self, coords):
        """(batches (B,), segment (N,) int64): the sorted batch indices present and the
        position of each row's batch index among them."""

    def lookup(self, keys: SortedKeys, query_keys):
        """Row of each packed query key (M,) in the set of ``keys``, -1 where absent."""

    # ------------------------------------------------------------ kernel maps
    def build_kernel_map(self, in_coords, out_coords, offsets, stride: tuple[int, ...],
                         transposed: bool, *, same_set: bool = False,
                         in_keys: SortedKeys | None = None,
                         out_keys: SortedKeys | None = None) -> KernelMap:
        """The kernel map between two validated coordinate sets (docs/SPEC.md section 4)."""

    def reverse(self, kmap: KernelMap) -> KernelMap:
        """The reverse table: input and output swapped, sorted by the new output row
        (the input gradient is the forward product of it with transposed weights)."""

    def pair_mask(self, kmap: KernelMap):
        """(mask (n_out, ceil(K / 32)) uint32, neighbour (n_out, K) int32): bit ``k % 32``
        of word ``k // 32`` is set when offset k pairs the row; -1 where it does not."""

    def state_nbytes(self, value) -> int:
        """Bytes this backend keeps for a kernel map or sorted keys (0 if nothing)."""

    # ------------------------------------------------------------ products
    def conv_forward(self, feats, weight, kmap: KernelMap, layout: str, c_out: int,
                     bias=None, algorithm: str | None = None, out=None):
        """``Y[out] += A[in] @ W[k]`` (+ bias): (n_out, C_out) in the dtype of ``feats``."""

    def conv_input_grad(self, grad_out, weight, kmap: KernelMap, layout: str, c_in: int,
                        algorithm: str | None = None, out=None):
        """``dX[in] += dY[out] @ W[k]^T``: (n_in, C_in) in the dtype of ``grad_out``."""

    def conv_weight_grad(self, feats, grad_out, kmap: KernelMap, layout: str,
                         weight_shape: tuple[int, ...], algorithm: str | None = None,
                         out=None):
        """``dW[k] = A[in]^T @ dY[out]``: ``weight_shape`` in the dtype of ``feats``."""

    def conv_backward(self, feats, grad_out, weight, kmap: KernelMap, layout: str, c_in: int,
                      weight_shape: tuple[int, ...], out=(None, None)):
        """``(conv_input_grad(...), conv_weight_grad(...))`` of one output gradient, as
        the two give them (a backend may share work between them; its weight gradient
        then equals theirs up to rounding); ``out``: their two ``out=`` (each None or
        a checked array), returned when given."""

    def choose_algorithm(self, product: str, feats, weight, kmap: KernelMap, layout: str,
                         c_out: int, algorithm: str | None = None) -> tuple[str | None, str]:
        """(algorithm, reason): what ``product`` ("forward", "input_grad" or "weight_grad")
        would use for features (n_in, C_in) and a weight of ``layout`` over ``kmap`` and why,
        by the products' own choice, without running the product and without changing
        anything that alters later results. ``algorithm`` is None where the choice is
        made by timing on first use (the reason says so)."""

    # ------------------------------------------------------------ pooling, reductions
    def pool_forward(self, feats, kmap: KernelMap, mode: str):
        """max / avg / sum over the active offsets of each output row: (n_out, C)."""

    def pool_backward(self, grad_out, feats, kmap: KernelMap, mode: str):
        """Gradient of :meth:`pool_forward` with respect to ``feats``: (n_in, C)."""

    def segment_reduce(self, feats, segment_ids, n_segments: int, mode: str):
        """sum / mean / max of the rows of each segment id (N,) in [0, n_segments):
        (n_segments, C), accumulation dtype (every segment non-empty)."""

    def reduce_runs(self, values, starts, mode: str):
        """sum / max / min of consecutive runs ``values[starts[i]:starts[i + 1]]`` along
        axis 0 (the last run ends at the end), in the dtype of ``values``."""

    # ------------------------------------------------------------ dense grids
    def scatter_to_grid(self, values, sites, grid_shape: tuple[int, ...],
                        channels_last: bool):
        """A zero grid (B, C, *spatial) (channels last: (B, *spatial, C)), ``grid_shape``
        = (B, *spatial), with row i of ``values`` (N, C) at the flat (C-order) index
        ``sites[i]`` (N,) int64 of ``grid_shape``."""

    def gather_from_grid(self, grid, sites, channels_last: bool):
        """Rows (N, C) of a grid laid out as :meth:`scatter_to_grid` returns, at the
        flat indices ``sites`` (N,) int64 of (B, *spatial): the adjoint of the scatter."""
