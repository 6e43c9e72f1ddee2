"""Backends: the array type picks the implementation (docs/SPEC.md section 1).

``backend_for(*arrays)`` returns the :class:`~cusparseconv.backends.protocol.Backend`
for those arrays; every public function dispatches through it:

* NumPy arrays: :class:`cusparseconv.backends.cpu.CpuBackend`;
* CuPy arrays: :class:`cusparseconv.backends.cuda.CudaBackend` on
  ``cupy.RawModule`` kernels.

Arrays of different devices are refused rather than copied.

For development, NumPy arrays can be routed through the GPU backend's own code
with its kernels run by the host emulator: ``with use_backend("cuda-emulated"):``
(also :func:`cusparseconv.config.use_backend`) or ``CUSPARSECONV_BACKEND=cuda-emulated``
for a whole process (read at every dispatch; slow: for tests).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from .._arrays import is_cupy
from .cpu import CpuBackend
from .protocol import Backend

__all__ = ["Backend", "BACKEND_NAMES", "backend_for", "get_backend", "use_backend",
           "state_nbytes"]

#: Backends NumPy arrays can be routed to (``use_backend``, ``CUSPARSECONV_BACKEND``).
BACKEND_NAMES = ("cpu", "cuda-emulated")
_state = threading.local()
_instances: dict = {}
_lock = threading.Lock()


def _default_backend_name() -> str:
    name = os.environ.get("CUSPARSECONV_BACKEND", "cpu")
    if name not in BACKEND_NAMES:
        raise ValueError(f"CUSPARSECONV_BACKEND must be one of {BACKEND_NAMES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run NumPy arrays on ``"cpu"`` (default) or ``"cuda-emulated"`` inside the block
    (this thread only); yields the backend."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"name must be one of {BACKEND_NAMES}, got {name!r}")
    previous = getattr(_state, "name", None)
    _state.name = name
    try:
        yield get_backend(name)
    finally:
        _state.name = previous


def get_backend(name: str) -> Backend:
    """The backend object called ``name`` ("cpu", "cuda-emulated" or "cuda"), made once
    per process ("cuda" imports CuPy)."""
    found = _instances.get(name)
    if found is not None:
        return found
    if name not in ("cpu", "cuda", "cuda-emulated"):
        raise ValueError(f"unknown backend {name!r}; expected 'cpu', 'cuda-emulated' or "
                         f"'cuda'")
    with _lock:
        found = _instances.get(name)
        if found is None:
            if name == "cpu":
                found = CpuBackend()
            else:
                # the GPU backend's modules load on first use (import cost; CuPy only for "cuda")
                from ._launch import device_launcher, emulated_launcher
                from .cuda import CudaBackend

                found = CudaBackend(device_launcher() if name == "cuda" else emulated_launcher())
            _instances[name] = found
    return found


def backend_for(*arrays) -> Backend:
    """The backend for these arrays (``None`` entries are ignored)."""
    present = [a for a in arrays if a is not None]
    if any(is_cupy(a) for a in present):
        if not all(is_cupy(a) for a in present):
            kinds = sorted({type(a).__module__.split(".")[0] for a in present})
            raise TypeError(
                f"arrays must all live on one device, got a mix of {kinds}; move them "
                f"explicitly (cupy.asarray / .get()) — cusparseconv never copies between "
                f"devices behind your back"
            )
        return get_backend("cuda")
    for array in present:
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"expected NumPy or CuPy arrays, got {type(array).__name__}"
            )
    name = getattr(_state, "name", None) or _default_backend_name()
    return get_backend(name)


def state_nbytes(value) -> int:
    """Bytes every backend made so far keeps for a kernel map or sorted keys."""
    return sum(backend.state_nbytes(value) for backend in list(_instances.values()))
