"""Host emulation of the CUDA kernels in ``raw_kernels/`` (no GPU needed).

``EmulatedModule`` compiles a kernel source with g++ against ``shim.h`` and
runs launches on the CPU with the interface of ``cupy.RawModule``; see
README.md in this directory for what it does and does not prove.
"""

from .module import (
    MODES,
    SCHEDULES,
    EmulatedFunction,
    EmulatedModule,
    EmulatorCompileError,
    EmulatorLaunchError,
    cache_dir,
    default_include_dirs,
)

__all__ = [
    "EmulatedModule",
    "EmulatedFunction",
    "EmulatorCompileError",
    "EmulatorLaunchError",
    "cache_dir",
    "default_include_dirs",
    "MODES",
    "SCHEDULES",
]
