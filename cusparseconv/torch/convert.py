"""Zero-copy exchange between torch tensors and the core's arrays.

CPU tensors cross as NumPy views (``Tensor.numpy()`` / ``torch.from_numpy``,
bfloat16 as an ``ml_dtypes`` view of the same bytes); CUDA tensors as CuPy
arrays through DLPack. Core calls for CUDA tensors run inside
:func:`device_scope`: on the device of the tensors, on PyTorch's current
stream, with CuPy allocating from PyTorch's caching allocator
(:func:`use_torch_allocator`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import numpy as np
import torch

from .._arrays import is_cupy
from .._threads import framework_threads

__all__ = ["to_array", "from_array", "use_torch_allocator"]


def cupy_module():
    """The ``cupy`` module, or a RuntimeError saying how to install it."""
    try:
        import cupy
    except ImportError as error:  # pragma: no cover - depends on the machine
        raise RuntimeError("CUDA tensors need CuPy (pip install 'cusparseconv[cuda12]' or "
                           "'cusparseconv[cuda13]')") from error
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
        cupy = cupy_module()
        try:
            return cupy.from_dlpack(tensor)
        except (TypeError, ValueError, BufferError) as error:
            failure = error
        if tensor.dtype == torch.bfloat16:  # a CuPy without bfloat16 DLPack: raw bits
            import ml_dtypes

            try:
                return cupy.from_dlpack(tensor.view(torch.int16)).view(ml_dtypes.bfloat16)
            except (TypeError, ValueError) as error:
                failure = error
        raise TypeError(f"cannot hand a CUDA tensor of dtype {tensor.dtype} to CuPy "
                        f"through DLPack: {failure}") from failure
    raise TypeError(f"tensors must live on the CPU or a CUDA device, got {tensor.device}")


def from_array(array) -> torch.Tensor:
    """A torch tensor viewing a NumPy or CuPy array's memory; no copy.

    A read-only NumPy array is shared too (torch has no read-only tensors):
    callers hand out such views only internally, never to users.
    """
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        if not array.flags.writeable:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not writable.*")
                return torch.from_numpy(array)
        return torch.from_numpy(array)
    if is_cupy(array):
        if array.dtype.name == "bfloat16":
            return torch.from_dlpack(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_dlpack(array)
    raise TypeError(f"expected a NumPy or CuPy array, got {type(array).__name__}")


class _AllocatorChoice:
    """Whether CuPy should allocate from torch's caching allocator, and whether it does."""

    def __init__(self):
        self.wanted = True
        self.installed = False
        self.lock = threading.Lock()


_ALLOCATOR = _AllocatorChoice()


def use_torch_allocator(enabled: bool = True) -> None:
    """Make CuPy allocate from PyTorch's CUDA caching allocator (process-wide).

    It is installed on the first CUDA operation of this adapter unless
    ``use_torch_allocator(False)`` was called before; with it, the core's
    temporaries reuse the memory torch has cached instead of a second pool.
    """
    with _ALLOCATOR.lock:
        _ALLOCATOR.wanted = bool(enabled)
    if enabled:
        _install_torch_allocator()
        return
    with _ALLOCATOR.lock:
        if _ALLOCATOR.installed:
            cupy = cupy_module()
            cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
            _ALLOCATOR.installed = False


def _install_torch_allocator() -> None:
    with _ALLOCATOR.lock:
        if _ALLOCATOR.installed:
            return
        cupy = cupy_module()

        def malloc(size, device_id):
            stream = torch.cuda.current_stream(device_id)
            return torch.cuda.caching_allocator_alloc(size, device_id, stream)

        def free(pointer, device_id):
            torch.cuda.caching_allocator_delete(pointer)

        allocator = cupy.cuda.memory.PythonFunctionAllocator(malloc, free)
        cupy.cuda.set_allocator(allocator.malloc)
        _ALLOCATOR.installed = True


@contextlib.contextmanager
def device_scope(device: torch.device):
    """Run core calls for tensors on ``device``: on CUDA, on torch's current stream; on
    the CPU with as many threads as torch uses (``torch.get_num_threads()``, unless
    ``cusparseconv.set_num_threads`` or ``CUSPARSECONV_NUM_THREADS`` chose ours)."""
    if device.type != "cuda":
        with framework_threads(torch.get_num_threads()):
            yield
        return
    cupy = cupy_module()
    if _ALLOCATOR.wanted:
        _install_torch_allocator()
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(stream.cuda_stream, index):
        yield


def host_array(value):
    """Kernel offsets and similar small geometry: always a NumPy array (or None)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "get") and not isinstance(value, np.ndarray):
        return value.get()
    return np.asarray(value)


def coords_array(coords, device: torch.device):
    """Coordinates (a tensor or an array) as an array of the backend that serves ``device``.

    Never copies between devices: coordinates on another device than the
    features raise a ValueError.
    """
    if device.type == "cpu":
        if isinstance(coords, torch.Tensor):
            if coords.device.type != "cpu":
                raise ValueError(f"coords are on {coords.device} but feats on the CPU; move "
                                 f"one of them (cusparseconv never copies between devices)")
            return coords.detach().numpy()
        return host_array(coords)
    cupy = cupy_module()
    if isinstance(coords, torch.Tensor):
        if coords.device != device:
            raise ValueError(f"coords are on {coords.device} but feats on {device}; move "
                             f"one of them (cusparseconv never copies between devices)")
        return cupy.from_dlpack(coords.detach())
    with cupy.cuda.Device(device.index):
        return cupy.asarray(coords)


def empty_feats(n_rows: int, device: torch.device):
    """A (n, 0) feature array: stands in where the core needs a tensor but no features."""
    if device.type == "cuda":
        return cupy_module().empty((n_rows, 0), dtype=np.float32)
    return np.empty((n_rows, 0), dtype=np.float32)
