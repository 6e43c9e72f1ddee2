"""The CUDA sources of ``raw_kernels/``: where they are, their text, how they compile.

One place for what every consumer of the kernel sources shares: the device
launcher (:mod:`cusparseconv.backends._launch`), the host emulator
(:mod:`cusparseconv._emulate`), the compile check
(:mod:`cusparseconv._emulate.nvrtc_check`, ``python -m cusparseconv check``)
and the compiled-code check (:mod:`cusparseconv._emulate.sass`).

* :func:`kernel_dir` finds the sources: ``raw_kernels/`` of a source checkout
  (run from the tree or an editable install), else the copy installed as
  ``cusparseconv/raw_kernels`` in site-packages.
* :data:`KERNEL_CONSTANTS` holds the tile and block sizes that the launch code
  and the kernels must agree on. They are defined here only: the launch code
  reads them from this dict, and the sources receive them as ``-D`` macros
  through :data:`NVRTC_OPTIONS` (the emulator parses the same options), so a
  source compiled without them fails with ``#error``.
* :func:`nvrtc_source` is the text handed to NVRTC, with a hash of every
  header it includes so that CuPy's kernel cache never serves a stale binary.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache

__all__ = [
    "KERNEL_CONSTANTS",
    "NVRTC_OPTIONS",
    "kernel_dir",
    "kernel_source",
    "min_arch",
    "nvrtc_source",
]

#: Tile and block sizes shared by the launch code and the kernels (``-D`` macros).
KERNEL_CONSTANTS = {
    # implicit_gemm.cu: pairs x output channels per block tile, threads per block
    "CSC_TILE": 64,
    "CSC_THREADS": 256,
    # implicit_gemm.cu (wgrad_splitk): pairs per split-K chunk
    "CSC_CHUNK": 1024,
    # mask_gemm.cu (SIMT): output rows x output channels per block tile, threads per block
    "CSC_MASK_TILE": 64,
    "CSC_MASK_THREADS": 256,
    # csc_mask_wmma.cuh (16-bit tensor cores): tile edge, threads per block
    "CSC_WMMA_TILE": 32,
    "CSC_WMMA_THREADS": 128,
    # pair-mask words a mask-GEMM block holds in shared memory: |K| <= 32 * 16
    "CSC_MAX_MASK_WORDS": 16,
}

#: NVRTC options of every kernel (the include paths are added per call): the C++
#: standard and the constants above. The device launcher, the emulator and the
#: compile checks all use exactly these.
NVRTC_OPTIONS = ("--std=c++17",) + tuple(f"-D{name}={value}"
                                         for name, value in KERNEL_CONSTANTS.items())

_MIN_ARCH = re.compile(r"^\s*//\s*csc-min-arch:\s*sm_(\d+)\s*$", re.M)
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


@lru_cache(maxsize=None)
def kernel_dir() -> str:
    """Directory of the CUDA sources: ``raw_kernels/`` of a source checkout (run from
    the tree or an editable install), else the copy installed as
    ``cusparseconv/raw_kernels``."""
    package = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(package), "raw_kernels")
    if os.path.isfile(os.path.join(checkout, "csc_common.cuh")):
        return checkout
    installed = os.path.join(package, "raw_kernels")
    if os.path.isfile(os.path.join(installed, "csc_common.cuh")):
        return installed
    raise FileNotFoundError(f"CUDA kernel sources not found in {checkout} or {installed}; "
                            f"reinstall cusparseconv")


@lru_cache(maxsize=None)
def kernel_source(filename: str) -> str:
    """Text of one ``raw_kernels`` source file."""
    with open(os.path.join(kernel_dir(), filename), encoding="utf-8") as handle:
        return handle.read()


def min_arch(source: str) -> int | None:
    """The ``// csc-min-arch: sm_XX`` of a source (``XX`` as an int), or None."""
    found = _MIN_ARCH.findall(source)
    return max(int(v) for v in found) if found else None


def _local_headers(source: str, seen: dict) -> None:
    for name in _INCLUDE.findall(source):
        path = os.path.join(kernel_dir(), name)
        if name not in seen and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                seen[name] = handle.read()
            _local_headers(seen[name], seen)


@lru_cache(maxsize=None)
def nvrtc_source(filename: str) -> str:
    """The text handed to NVRTC: the source followed by one comment line holding
    the SHA-256 of every ``raw_kernels`` header it includes (recursively), so
    that editing a header changes CuPy's cache key (line numbers unchanged)."""
    source = kernel_source(filename)
    headers: dict = {}
    _local_headers(source, headers)
    digest = hashlib.sha256()
    for name in sorted(headers):
        digest.update(name.encode() + b"\0" + headers[name].encode() + b"\0")
    return f"{source.rstrip()}\n// csc-headers-sha256: {digest.hexdigest()}\n"
