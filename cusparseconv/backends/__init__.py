"""Backends: the array type picks the implementation (SPEC section 1).

``backend_for(*arrays)`` returns the object that implements the kernel-map
search, the products and pooling for those arrays:

* NumPy arrays: :mod:`cusparseconv.backends.cpu`;
* CuPy arrays: the GPU backend (:class:`cusparseconv.backends.cuda.CudaBackend`
  on ``cupy.RawModule`` kernels).

Arrays of different devices are refused rather than copied.

For development, NumPy arrays can be routed through the GPU backend's own code
with its kernels run by the host emulator: ``with use_backend("cuda-emulated"):``
or ``CUSPARSECONV_BACKEND=cuda-emulated`` for a whole process (slow: for tests).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from .._arrays import is_cupy

BACKEND_NAMES = ("cpu", "cuda-emulated")
_state = threading.local()
_instances = {}


def _default_backend_name() -> str:
    name = os.environ.get("CUSPARSECONV_BACKEND", "cpu")
    if name not in BACKEND_NAMES:
        raise ValueError(f"CUSPARSECONV_BACKEND must be one of {BACKEND_NAMES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Run NumPy arrays on ``"cpu"`` (default) or ``"cuda-emulated"`` inside the block."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"name must be one of {BACKEND_NAMES}, got {name!r}")
    previous = getattr(_state, "name", None)
    _state.name = name
    try:
        yield get_backend(name)
    finally:
        _state.name = previous


def get_backend(name: str):
    """The backend object called ``name`` ("cpu", "cuda-emulated" or "cuda")."""
    if name == "cpu":
        from . import cpu

        return cpu
    if name not in _instances:
        from ._launch import device_launcher, emulated_launcher
        from .cuda import CudaBackend

        if name == "cuda":
            _instances[name] = CudaBackend(device_launcher())
        elif name == "cuda-emulated":
            _instances[name] = CudaBackend(emulated_launcher())
        else:
            raise ValueError(f"unknown backend {name!r}")
    return _instances[name]


def backend_for(*arrays):
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
