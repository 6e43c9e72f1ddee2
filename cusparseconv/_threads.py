"""Thread control for the CPU backend.

The CPU products split their work into chunks of output rows (or offsets)
whose results land in disjoint places, so running them on several threads
never changes a single bit of the result. NumPy's indexing and BLAS release
the GIL; when ``threadpoolctl`` is installed, BLAS is pinned to one thread per
worker while the chunks run concurrently (without it, chunks run one after
another and BLAS uses its own threads).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

try:  # optional: `pip install cusparseconv[threads]`
    import threadpoolctl as _threadpoolctl
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _threadpoolctl = None


def _default_threads() -> int:
    value = os.environ.get("CUSPARSECONV_NUM_THREADS")
    if value:
        try:
            count = int(value)
        except ValueError:
            raise ValueError(
                f"CUSPARSECONV_NUM_THREADS must be a positive integer, got {value!r}"
            ) from None
        if count < 1:
            raise ValueError(f"CUSPARSECONV_NUM_THREADS must be >= 1, got {count}")
        return count
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


_state = {"threads": _default_threads(), "executor": None, "controller": None}
_lock = threading.Lock()


def set_num_threads(n: int) -> None:
    """Set how many threads the CPU backend uses (results do not depend on it)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    with _lock:
        if _state["executor"] is not None:
            _state["executor"].shutdown(wait=True)
        _state["executor"] = None
        _state["threads"] = n


def get_num_threads() -> int:
    """Number of threads the CPU backend uses."""
    return _state["threads"]


def parallel_for(function, items) -> None:
    """Call ``function(item)`` for every item, on the worker threads when useful.

    ``function`` must write its results to places no other item writes, so the
    outcome is independent of scheduling.
    """
    items = list(items)
    threads = _state["threads"]
    if threads == 1 or len(items) < 2 or _threadpoolctl is None:
        for item in items:
            function(item)
        return
    with _lock:
        if _state["executor"] is None:
            _state["executor"] = ThreadPoolExecutor(threads, thread_name_prefix="cusparseconv")
        if _state["controller"] is None:
            _state["controller"] = _threadpoolctl.ThreadpoolController()
        executor, controller = _state["executor"], _state["controller"]
    with controller.limit(limits=1, user_api="blas"):
        for future in [executor.submit(function, item) for item in items]:
            future.result()
