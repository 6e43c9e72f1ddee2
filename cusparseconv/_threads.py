"""Thread control for the CPU backend.

The CPU products split their work into chunks of output rows (or offsets)
whose results land in disjoint places, so running them on several threads
never changes a single bit of the result. NumPy's indexing and BLAS release
the GIL. When ``threadpoolctl`` is installed (``pip install
cusparseconv[threads]``; the test extra has it), BLAS is pinned to one thread
while chunks run and the chunks run on ``get_num_threads()`` workers, so the
result is bit-identical at any thread count. Without it, chunks run one after
another and BLAS uses its own threads (deterministic for a fixed BLAS thread
count, but a BLAS product split differently may round differently).

Concurrency and processes:

* Any number of threads may call the library at once, and
  :func:`set_num_threads` may run while they do: calls already running finish
  on the workers they started with, later calls use the new count.
* BLAS's thread count is process-wide. It is set to one when the first of
  several overlapping calls starts and restored to its previous value when the
  last one ends (never left at one after concurrent calls).
* After ``fork`` (multiprocessing's default start method on Linux, PyTorch
  DataLoader workers) the child starts with no worker pool and builds its own
  on first use: the parent's worker threads do not exist in the child.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

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


class _Pool:
    """A worker pool and the number of calls using it (retired pools shut down
    when their last call ends)."""

    __slots__ = ("executor", "users", "retired")

    def __init__(self, threads: int):
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="cusparseconv")
        self.users = 0
        self.retired = False


_state = {
    "threads": _default_threads(),
    "pool": None,            # _Pool for the current thread count (> 1), built on first use
    "controller": None,      # threadpoolctl.ThreadpoolController, built on first use
    "blas_users": 0,         # running calls that need BLAS pinned to one thread
    "blas_limiter": None,    # the limiter that pinned it (restores the previous count)
}
_lock = threading.Lock()
_worker = threading.local()  # .active is True on our worker threads


def _after_fork_in_child() -> None:
    """The child of a fork has only the forking thread: forget the parent's pool
    (its workers do not exist here) and any lock state another thread held."""
    global _lock
    _lock = threading.Lock()
    limiter = _state["blas_limiter"]
    _state.update(pool=None, blas_users=0, blas_limiter=None)
    if limiter is not None:  # a call was running in another thread of the parent
        try:
            limiter.restore_original_limits()
        except Exception:  # pragma: no cover - BLAS state after fork is best effort
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n: int) -> None:
    """Set how many threads the CPU backend uses (results do not depend on it).

    Safe while other threads compute: their calls finish on the pool they
    started with; the next calls use ``n`` workers.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    with _lock:
        old = _state["pool"]
        _state["pool"] = None
        _state["threads"] = n
        if old is not None:
            old.retired = True
            if old.users == 0:
                old.executor.shutdown(wait=False)


def get_num_threads() -> int:
    """Number of threads the CPU backend uses."""
    return _state["threads"]


def _pin_blas_locked() -> None:
    if _state["controller"] is None:
        _state["controller"] = _threadpoolctl.ThreadpoolController()
    if _state["blas_users"] == 0:
        # BLAS is pinned to one thread inside every block, whatever the worker
        # count: a BLAS product split over threads may sum in another order.
        _state["blas_limiter"] = _state["controller"].limit(limits=1, user_api="blas")
    _state["blas_users"] += 1


def _unpin_blas_locked() -> None:
    _state["blas_users"] -= 1
    if _state["blas_users"] == 0 and _state["blas_limiter"] is not None:
        _state["blas_limiter"].restore_original_limits()
        _state["blas_limiter"] = None


@contextlib.contextmanager
def blas_pinned():
    """BLAS pinned to one thread while the block runs, as inside :func:`parallel_for`
    (no-op without threadpoolctl and on our worker threads, which already hold the pin)."""
    if _threadpoolctl is None or getattr(_worker, "active", False):
        yield
        return
    with _lock:
        _pin_blas_locked()
    try:
        yield
    finally:
        with _lock:
            _unpin_blas_locked()


def _acquire():
    """Register one running call: (pool or None, threads); pins BLAS if needed."""
    with _lock:
        threads = _state["threads"]
        pool = _state["pool"]
        if threads > 1 and pool is None:
            pool = _state["pool"] = _Pool(threads)
        if pool is not None:
            pool.users += 1
        _pin_blas_locked()
    return pool, threads


def _release(pool) -> None:
    with _lock:
        _unpin_blas_locked()
        if pool is not None:
            pool.users -= 1
            if pool.retired and pool.users == 0:
                pool.executor.shutdown(wait=False)


def _run_marked(function, item):
    _worker.active = True
    try:
        function(item)
    finally:
        _worker.active = False


def parallel_for(function, items) -> None:
    """Call ``function(item)`` for every item, on the worker threads when useful.

    ``function`` must write its results to places no other item writes, so the
    outcome is independent of scheduling. Called from one of the workers
    (nested use), the items run on that worker.
    """
    items = list(items)
    if _threadpoolctl is None or getattr(_worker, "active", False):
        # No threadpoolctl: BLAS keeps its own threads and our blocks run one after
        # another. Nested: the outer call already holds the workers and the BLAS pin.
        for item in items:
            function(item)
        return
    pool, threads = _acquire()
    try:
        if pool is None or threads == 1 or len(items) < 2:
            for item in items:
                function(item)
        else:
            futures = [pool.executor.submit(_run_marked, function, item) for item in items]
            wait(futures)  # all of them, even when one fails: none keeps writing after we return
            for future in futures:
                future.result()
    finally:
        _release(pool)
