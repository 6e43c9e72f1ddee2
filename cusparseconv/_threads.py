"""Thread control for the CPU backend.

The CPU products split their work into chunks of output rows (or offsets)
whose results land in disjoint places, so running them on several threads
never changes a single bit of the result. NumPy's indexing and BLAS release
the GIL. When ``threadpoolctl`` is installed (``pip install
cusparseconv[threads]``; the test extra has it), BLAS is pinned to one thread
inside every chunk and the chunks run on ``get_num_threads()`` workers, so the
result is bit-identical at any thread count. Without it, chunks run one after
another and BLAS uses its own threads (deterministic for a fixed BLAS thread
count, but a BLAS product split differently may round differently).
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
    if _threadpoolctl is None:
        # BLAS keeps its own threads; our blocks run one after another.
        for item in items:
            function(item)
        return
    threads = _state["threads"]
    with _lock:
        if _state["controller"] is None:
            _state["controller"] = _threadpoolctl.ThreadpoolController()
        if threads > 1 and _state["executor"] is None:
            _state["executor"] = ThreadPoolExecutor(threads, thread_name_prefix="cusparseconv")
        executor, controller = _state["executor"], _state["controller"]
    # BLAS is pinned to one thread inside every block, whatever the worker count:
    # a BLAS product split over threads may sum in another order.
    with controller.limit(limits=1, user_api="blas"):
        if threads == 1 or len(items) < 2:
            for item in items:
                function(item)
        else:
            for future in [executor.submit(function, item) for item in items]:
                future.result()
