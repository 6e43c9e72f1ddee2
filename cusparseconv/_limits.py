"""The memory limit: sizes are estimated before anything big is allocated.

Some inputs make the library create far more data than they hold: a
generative convolution multiplies the rows by up to |K|, a kernel map holds up
to |K| pairs per row, and a kernel size of 1000 means 10^9 offsets. Before such
an allocation the library estimates its size from numbers it already knows
(exact where they are known, upper bounds otherwise) and raises
:class:`MemoryLimitError` (a ``ValueError``) when the estimate is above the
limit, so a small mistake fails in microseconds with a message instead of
exhausting the machine's memory.

=================================  ===============================================
what                               estimate (bytes)
=================================  ===============================================
kernel offsets                     |K| * D * 20 (int64 grid, int32 result)
generative output set              N * |K| * (25 + 4 * (1 + D)): candidate keys,
                                   sort, unique keys and rows (at most N * |K| rows)
kernel map                         |K| * min(N_in, N_out) * 32 (pair table, its
                                   reverse, build copies); on the GPU backend also
                                   (N_in + N_out) * |K| * 12 (neighbour tables)
output features of a product       N_out * C_out * 8 at most (accumulator + result)
=================================  ===============================================

A generative layer checks its output set and its kernel map together. The
limit is process-wide: :func:`set_memory_limit` / :func:`get_memory_limit`.
"""

from __future__ import annotations

import threading

#: Default limit: 2 GiB per estimated allocation (see the module docstring).
DEFAULT_MEMORY_LIMIT = 2 << 30
#: Most rows a coordinate set of a kernel map may have (rows are int32 in the map).
MAX_ROWS = 2**31 - 1

_limit = {"bytes": DEFAULT_MEMORY_LIMIT}
_lock = threading.Lock()


class MemoryLimitError(ValueError):
    """An operation would allocate more than :func:`get_memory_limit` bytes."""


def set_memory_limit(n_bytes) -> int:
    """Set the most memory one estimated allocation may take; return the old limit.

    Parameters
    ----------
    n_bytes : int or None
        Bytes (> 0); ``None`` restores the default (2 GiB).
    """
    if n_bytes is None:
        n_bytes = DEFAULT_MEMORY_LIMIT
    if not isinstance(n_bytes, int) or isinstance(n_bytes, bool) or n_bytes <= 0:
        raise ValueError(f"n_bytes must be a positive int (bytes) or None, got {n_bytes!r}")
    with _lock:
        old = _limit["bytes"]
        _limit["bytes"] = n_bytes
    return old


def get_memory_limit() -> int:
    """The current limit in bytes (default 2 GiB)."""
    return _limit["bytes"]


def format_bytes(n_bytes: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; powers of 1024 up to TiB."""
    value = float(n_bytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover


def check_memory(n_bytes: float, what: str, fix: str) -> None:
    """Raise :class:`MemoryLimitError` when ``n_bytes`` exceeds the limit.

    Parameters
    ----------
    n_bytes : number
        The estimate.
    what : str
        What would be allocated, with its counts (starts the message).
    fix : str
        How to avoid it, besides raising the limit.
    """
    limit = _limit["bytes"]
    if n_bytes > limit:
        raise MemoryLimitError(
            f"{what}: about {format_bytes(n_bytes)}, above the memory limit of "
            f"{format_bytes(limit)}; {fix}, or raise the limit with "
            f"cusparseconv.set_memory_limit(n_bytes) if the machine has the memory")


def offsets_bytes(kernel_volume: int, ndim: int) -> int:
    """Estimate for building a box kernel's offsets."""
    return kernel_volume * ndim * 20


def expansion_bytes(n_rows: int, kernel_volume: int, ndim: int) -> int:
    """Estimate for a generative output set of ``n_rows`` inputs and |K| offsets."""
    return n_rows * kernel_volume * (25 + 4 * (1 + ndim))


def kernel_map_bytes(n_in: int, n_out: int, kernel_volume: int, device: bool) -> int:
    """Estimate for a kernel map between sets of ``n_in`` and ``n_out`` rows."""
    estimate = kernel_volume * min(n_in, n_out) * 32
    if device:
        estimate += (n_in + n_out) * kernel_volume * 12
    return estimate


def check_kernel_map_size(n_in: int, n_out: int, kernel_volume: int, backend) -> None:
    """Raise before a kernel map is built when it may exceed the memory limit
    (``backend``: the one that will build it; its neighbour tables count too) or
    when a set has too many rows for the map's int32 row indices."""
    largest = max(n_in, n_out)
    if largest > MAX_ROWS:
        raise ValueError(f"a coordinate set of {largest:,} rows is more than a kernel map's "
                         f"int32 row indices hold ({MAX_ROWS:,}); split the batch")
    estimate = kernel_map_bytes(n_in, n_out, kernel_volume, backend.neighbour_tables)
    check_memory(estimate,
                 f"a kernel map between {n_in:,} input and {n_out:,} output rows with "
                 f"{kernel_volume:,} offsets may hold up to "
                 f"{kernel_volume * min(n_in, n_out):,} pairs",
                 "use a smaller kernel or fewer rows")
