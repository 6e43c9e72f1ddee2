"""Process-wide settings in one module: the Python setter of every setting that a
``CUSPARSECONV_*`` environment variable can also make.

Function arguments come first (``algorithm=`` of the products, ``ndim=``,
...); these settings are for choices that hold for a whole process. The one
table of every variable, when the library reads it and its setter here is in
the README, section "Configuration".
"""

from __future__ import annotations

from pathlib import Path

from ._cachedir import cache_root
from ._limits import get_memory_limit, set_memory_limit
from ._openmp import is_release_openmp_threads, release_openmp_threads
from ._switch import is_short_switch_interval, set_short_switch_interval
from ._threads import get_num_threads, set_num_threads
from .backends import BACKEND_NAMES, use_backend
from .tuning import (
    is_autotune,
    is_deterministic,
    is_tf32_allowed,
    set_allow_tf32,
    set_autotune,
    set_deterministic,
)

__all__ = [
    "set_num_threads", "get_num_threads",
    "release_openmp_threads", "is_release_openmp_threads",
    "set_short_switch_interval", "is_short_switch_interval",
    "set_memory_limit", "get_memory_limit",
    "use_backend", "BACKEND_NAMES",
    "set_deterministic", "is_deterministic", "set_autotune", "is_autotune",
    "set_allow_tf32", "is_tf32_allowed",
    "use_torch_allocator",
    "cache_dir",
]


def cache_dir() -> Path:
    """The persistent cache directory (tuning results, emulator builds):
    ``$CUSPARSECONV_CACHE_DIR`` or ``~/.cache/cusparseconv``, read at each call. It is
    used only when it belongs to the current user and no one else can write it."""
    return cache_root()


def use_torch_allocator(enabled: bool = True) -> None:
    """Make CuPy allocate from PyTorch's CUDA caching allocator (process-wide; imports
    torch): :func:`cusparseconv.torch.use_torch_allocator`."""
    from .torch.convert import use_torch_allocator as _use_torch_allocator

    _use_torch_allocator(enabled)
