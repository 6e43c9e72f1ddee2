"""One launch layer, two implementations: CuPy on a device, the host emulator otherwise.

The GPU backend asks a :class:`Launcher` for kernels by source file and name
expression (exactly the strings ``cupy.RawModule`` receives) and for its array
module. On a device the module is CuPy and kernels compile through NVRTC,
memoised per device; under emulation the module is NumPy (arrays stand in for
device memory) and kernels compile as host C++ (``cusparseconv._emulate``).
cuBLAS products are ``xp.matmul`` in both cases.

Every launch is checked before it starts, the same way on both sides
(:func:`cusparseconv._kernel_args.check_launch_args`): array
arguments C-contiguous, of the parameter's dtype and (on a device) on the
current device; scalars of the parameter's exact type; the grid within the
limits of CUDA. Nothing is copied to make an argument fit.

A source may declare the oldest architecture it compiles for with a line
``// csc-min-arch: sm_80``; on an older device asking for one of its kernels
raises :class:`KernelUnavailableError` (the backend then falls back to another
algorithm). Sources, their compile options and the text handed to NVRTC
come from :mod:`cusparseconv._kernels`.
"""

from __future__ import annotations

import threading

import numpy as np

from .._kernel_args import check_launch_args, param_names, params_from_mangled
from .._kernels import NVRTC_OPTIONS, kernel_dir, kernel_source, min_arch, nvrtc_source

__all__ = [
    "MAX_GRID",
    "KernelUnavailableError",
    "Launcher",
    "device_launcher",
    "emulated_launcher",
]

#: CUDA's grid limits (x, y, z), every architecture since sm_30.
MAX_GRID = (2**31 - 1, 65535, 65535)


class KernelUnavailableError(RuntimeError):
    """A kernel's source needs a newer architecture than the current device's.

    Attributes
    ----------
    filename : str
    required : int
        e.g. 80 for ``// csc-min-arch: sm_80``.
    device_arch : int
    """

    def __init__(self, filename: str, required: int, device_arch: int):
        self.filename, self.required, self.device_arch = filename, required, device_arch
        super().__init__(f"raw_kernels/{filename} needs sm_{required} or newer; this device "
                         f"is sm_{device_arch}")


class _CheckedKernel:
    """A device kernel with its parameter descriptors: checks, then launches."""

    def __init__(self, launcher, name, raw, params, names):
        self.launcher, self.name, self.raw = launcher, name, raw
        self.params, self.names = params, names

    def __call__(self, grid, block, args, shared_mem=0):
        launcher = self.launcher
        check_launch_args(self.name, self.params, args, names=self.names, device_arrays=True,
                          current_device=launcher.device_id(), device_of=launcher.device_of)
        self.raw(grid, block, args, shared_mem=shared_mem)


class Launcher:
    """Compiles kernels on first use, checks every launch and runs it.

    Parameters
    ----------
    xp : module
        ``cupy`` on a device, ``numpy`` under emulation (or a stand-in with
        the same interface, for tests).
    emulated : bool
    arch : int, optional
        Architecture to behave as (e.g. 75). On a device the current device's
        compute capability is used when None; under emulation None means
        "every kernel is available" and a number makes ``csc-min-arch``
        sources unavailable as on such a device.

    Attributes
    ----------
    max_blocks : int
        Cap on the grid of grid-stride kernels (small under emulation, so that
        every grid-stride loop runs several rounds).
    host_reads : int
        Device-to-host reads so far (each one waits for the device: a host
        synchronisation). Every read of the GPU backend goes through
        :meth:`to_host`, so tests can count them.
    emulated_free_bytes : int
        Free device memory reported under emulation (tests lower it to
        exercise the tuner's workspace budget).
    tune_under_emulation : bool
        Let the autotuner time candidates under emulation (off by default:
        emulated timings mean nothing; tests switch it on).
    emulated_capturing : bool
        What `stream_capturing` reports under emulation (for tests).
    """

    def __init__(self, xp, emulated: bool, arch: int | None = None):
        self.xp = xp
        self.emulated = emulated
        self.arch = arch
        self.max_blocks = 3 if emulated else 65535
        self.host_reads = 0
        self.emulated_free_bytes = 16 << 30
        self.tune_under_emulation = False
        self.emulated_capturing = False
        self._modules = {}
        self._kernels = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ devices
    def device_id(self):
        """Current device (None under emulation)."""
        return None if self.emulated else int(self.xp.cuda.runtime.getDevice())

    def device_of(self, array) -> int | None:
        """Device an array lives on (``array.device.id``, or the pointer's attributes)."""
        device = getattr(array, "device", None)
        if device is not None and hasattr(device, "id"):
            return int(device.id)
        interface = getattr(array, "__cuda_array_interface__", None)
        if interface is None or not interface["data"][0]:
            return None
        attributes = self.xp.cuda.runtime.pointerGetAttributes(interface["data"][0])
        return int(attributes.device)

    def device_arch(self) -> int | None:
        """Compute capability of the current device as an int (90 for sm_90)."""
        if self.arch is not None or self.emulated:
            return self.arch
        return int(self.xp.cuda.Device().compute_capability)

    def free_bytes(self) -> int:
        """Device memory a new allocation can get: the driver's free figure plus
        what CuPy's pool holds unused (``emulated_free_bytes`` under emulation)."""
        if self.emulated:
            return int(self.emulated_free_bytes)
        free, _ = self.xp.cuda.runtime.memGetInfo()
        pool = self.xp.get_default_memory_pool()
        return int(free) + int(pool.free_bytes())

    def stream_capturing(self) -> bool:
        """True while the current stream records a CUDA graph (no tuning then:
        timing and synchronising are not allowed inside a capture)."""
        if self.emulated:
            return bool(self.emulated_capturing)
        stream = self.xp.cuda.get_current_stream()
        is_capturing = getattr(stream, "is_capturing", None)
        return bool(is_capturing()) if is_capturing is not None else False

    # ------------------------------------------------------------ kernels
    def kernel(self, filename: str, name: str):
        """The compiled kernel ``name`` (a name expression) of ``raw_kernels/filename``.

        The first request compiles the whole file with every instantiation it
        declares (``// csc-instantiate:`` lines), once per device.

        Raises
        ------
        KernelUnavailableError
            When the file declares a ``csc-min-arch`` above the device's.
        """
        key = (filename, name, self.device_id())
        found = self._kernels.get(key)
        if found is not None:
            return found
        required = min_arch(kernel_source(filename))
        arch = self.device_arch()
        if required is not None and arch is not None and arch < required:
            raise KernelUnavailableError(filename, required, arch)
        with self._lock:
            module_key = (filename, self.device_id())
            module = self._modules.get(module_key)
            if module is None:
                module = self._compile(filename)
                self._modules[module_key] = module
            if self.emulated:
                found = module.get_function(name)
            else:
                raw = module.get_function(name)
                mangled = module.module.mapping[name]
                found = _CheckedKernel(self, name, raw, params_from_mangled(mangled),
                                       param_names(kernel_source(filename), name))
            self._kernels[key] = found
        return found

    def _compile(self, filename):
        from .._emulate.nvrtc_check import cuda_include_dirs, parse_instantiations

        source = kernel_source(filename)
        names = tuple(parse_instantiations(source))
        if self.emulated:
            from .._emulate import EmulatedModule

            return EmulatedModule(source, options=NVRTC_OPTIONS, name_expressions=names,
                                  include_dirs=(kernel_dir(),))
        includes = tuple("-I" + path for path in (kernel_dir(), *cuda_include_dirs()))
        return self.xp.RawModule(code=nvrtc_source(filename), options=NVRTC_OPTIONS + includes,
                                 name_expressions=names)

    @staticmethod
    def _check_grid(name, grid, block):
        for axis, (extent, limit) in enumerate(zip(grid, MAX_GRID)):
            if extent > limit:
                raise ValueError(f"{name}: grid dimension {'xyz'[axis]} = {extent} exceeds "
                                 f"CUDA's limit of {limit} (grid {tuple(grid)}, block "
                                 f"{tuple(block)})")

    def launch_1d(self, filename: str, name: str, n_items: int, args, threads: int = 256):
        """Launch a grid-stride kernel over ``n_items`` work items."""
        if n_items <= 0:
            return
        blocks = max(1, min(self.max_blocks, (int(n_items) + threads - 1) // threads))
        self.kernel(filename, name)((blocks,), (threads,), tuple(args))

    def launch(self, filename: str, name: str, grid, block, args, shared_mem: int = 0):
        """Launch with an explicit grid and block (checked against CUDA's limits)."""
        grid = tuple(int(g) for g in grid)
        block = tuple(int(b) for b in block)
        if any(g == 0 for g in grid):
            return
        self._check_grid(name, grid, block)
        self.kernel(filename, name)(grid, block, tuple(args), shared_mem=shared_mem)

    # ------------------------------------------------------------ transfers
    def to_host(self, array) -> np.ndarray:
        """A NumPy copy of a device array: one host synchronisation, counted in
        ``host_reads`` (under emulation too, where it is a copy)."""
        self.host_reads += 1
        if self.emulated:
            return np.array(array)
        return self.xp.asnumpy(array)

    def to_device(self, array):
        """A C-contiguous device copy of a host array (a C-contiguous NumPy array
        under emulation)."""
        array = np.ascontiguousarray(array)
        return array.copy() if self.emulated else self.xp.ascontiguousarray(
            self.xp.asarray(array))


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
