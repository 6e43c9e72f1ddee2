"""One launch layer, two implementations: CuPy on a device, the host emulator otherwise.

The GPU backend asks a :class:`Launcher` for kernels by source file and name
expression (exactly the strings ``cupy.RawModule`` receives) and for its array
module. On a device the module is CuPy and kernels compile through NVRTC,
memoised per device; under emulation the module is NumPy (arrays stand in for
device memory) and kernels compile as host C++ (``cusparseconv._emulate``).
cuBLAS products are ``xp.matmul`` in both cases.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache

import numpy as np

#: NVRTC options shared by every kernel (the include path is added per call).
NVRTC_OPTIONS = ("-std=c++17",)


@lru_cache(maxsize=None)
def kernel_dir() -> str:
    """Directory of the CUDA sources: ``raw_kernels/`` of a source checkout (editable
    installs), else the copy installed as ``cusparseconv/raw_kernels``."""
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "raw_kernels")
    if os.path.isfile(os.path.join(checkout, "csc_common.cuh")):
        return checkout
    installed = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "raw_kernels")
    if os.path.isfile(os.path.join(installed, "csc_common.cuh")):
        return installed
    raise FileNotFoundError(f"CUDA kernel sources not found in {checkout} or {installed}; "
                            f"reinstall cusparseconv")


@lru_cache(maxsize=None)
def kernel_source(filename: str) -> str:
    """Text of one ``raw_kernels`` source file."""
    with open(os.path.join(kernel_dir(), filename), encoding="utf-8") as handle:
        return handle.read()


class Launcher:
    """Compiles kernels on first use and launches them.

    Attributes
    ----------
    xp : module
        ``cupy`` on a device, ``numpy`` under emulation.
    emulated : bool
    max_blocks : int
        Cap on the grid of grid-stride kernels (small under emulation, so that
        every grid-stride loop runs several rounds).
    """

    def __init__(self, xp, emulated: bool):
        self.xp = xp
        self.emulated = emulated
        self.max_blocks = 3 if emulated else 65535
        self._modules = {}
        self._lock = threading.Lock()

    def kernel(self, filename: str, name: str):
        """The compiled kernel ``name`` (a name expression) of ``raw_kernels/filename``.

        The first request compiles the whole file with every instantiation it
        declares (``// csc-instantiate:`` lines), once per device.
        """
        module = self._modules.get((filename, self._device_id()))
        if module is None:
            with self._lock:
                module = self._modules.get((filename, self._device_id()))
                if module is None:
                    module = self._compile(filename)
                    self._modules[(filename, self._device_id())] = module
        return module.get_function(name)

    def _device_id(self):
        return None if self.emulated else self.xp.cuda.runtime.getDevice()

    def _compile(self, filename):
        from .._emulate.nvrtc_check import cuda_include_dirs, parse_instantiations

        source = kernel_source(filename)
        names = tuple(parse_instantiations(source))
        if self.emulated:
            from .._emulate import EmulatedModule

            return EmulatedModule(source, options=NVRTC_OPTIONS, name_expressions=names,
                                  include_dirs=(kernel_dir(),))
        includes = tuple("-I" + path for path in (kernel_dir(), *cuda_include_dirs()))
        return self.xp.RawModule(code=source, options=NVRTC_OPTIONS + includes,
                                 name_expressions=names)

    def launch_1d(self, filename: str, name: str, n_items: int, args, threads: int = 256):
        """Launch a grid-stride kernel over ``n_items`` work items."""
        if n_items <= 0:
            return
        blocks = max(1, min(self.max_blocks, (int(n_items) + threads - 1) // threads))
        self.kernel(filename, name)((blocks,), (threads,), tuple(args))

    def launch(self, filename: str, name: str, grid, block, args, shared_mem: int = 0):
        """Launch with an explicit grid and block."""
        if any(int(g) == 0 for g in grid):
            return
        self.kernel(filename, name)(tuple(int(g) for g in grid), tuple(int(b) for b in block),
                                    tuple(args), shared_mem=shared_mem)

    def to_host(self, array) -> np.ndarray:
        """A NumPy copy of a device array (a no-op under emulation)."""
        return array if self.emulated else self.xp.asnumpy(array)

    def to_device(self, array):
        """A device copy of a host array (the same array under emulation)."""
        return np.ascontiguousarray(array) if self.emulated else self.xp.asarray(array)


_launchers = {}


def device_launcher() -> Launcher:
    """The CuPy launcher (raises ImportError without CuPy)."""
    if "device" not in _launchers:
        import cupy

        _launchers["device"] = Launcher(cupy, emulated=False)
    return _launchers["device"]


def emulated_launcher() -> Launcher:
    """The host-emulation launcher (NumPy arrays, kernels compiled with g++)."""
    if "emulated" not in _launchers:
        _launchers["emulated"] = Launcher(np, emulated=True)
    return _launchers["emulated"]
