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

How the work is shared: the calling thread and ``get_num_threads() - 1``
pool workers take the items of a call one at a time from a shared counter
(workers block on a queue while idle: nothing spins). The calling thread
starts on the first item at once, so a call never waits for a worker to wake
up, and on a busy machine the threads that get a core take the items of
those that do not.

Thread count: :func:`set_num_threads`, else ``CUSPARSECONV_NUM_THREADS``, else
the cores this process may run on. When the caller is a framework with its
own thread pool (the PyTorch adapter passes ``torch.get_num_threads()``
through :func:`framework_threads`) and the count was not set by either of the
first two, calls made inside it use the framework's count, so that its
threads and ours do not oversubscribe the cores.

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

from ._openmp import release_idle_threads, usable_cpus

try:  # optional: `pip install cusparseconv[threads]`
    import threadpoolctl as _threadpoolctl
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _threadpoolctl = None


def _env_threads() -> int | None:
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
    return None


def _default_threads() -> int:
    count = _env_threads()
    return count if count is not None else usable_cpus()


class _Pool:
    """A worker pool and the number of calls using it (retired pools shut down
    when their last call ends)."""

    __slots__ = ("executor", "workers", "users", "retired")

    def __init__(self, workers: int):
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="cusparseconv")
        self.workers = workers
        self.users = 0
        self.retired = False


_state = {
    "threads": _default_threads(),
    "explicit": _env_threads() is not None,  # set by the user (call or variable)
    "pool": None,            # _Pool of workers (threads - 1 or more), built on first use
    "controller": None,      # threadpoolctl's controllers of the BLAS libraries (first use)
    "blas_users": 0,         # running calls that need BLAS pinned to one thread
    "blas_limiter": None,    # the limiter that pinned it (restores the previous count)
}
_lock = threading.Lock()
_worker = threading.local()  # .active: inside our items; .hint: a framework's thread count


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


def set_num_threads(n: int | None) -> None:
    """Set how many threads the CPU backend uses (results do not depend on it).

    Parameters
    ----------
    n : int or None
        Threads (>= 1); this count then wins over a framework's
        (:func:`framework_threads`). None goes back to the default: the value of
        ``CUSPARSECONV_NUM_THREADS`` if set, else the CPUs this process may use,
        and calls through a framework's adapter follow the framework's count
        again.

    Safe while other threads compute: their calls finish on the pool they
    started with; the next calls use the new count.
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int or None (the default), got {n!r}")
    with _lock:
        _retire_pool_locked()
        if n is None:
            _state["threads"] = _default_threads()
            _state["explicit"] = _env_threads() is not None
        else:
            _state["threads"] = n
            _state["explicit"] = True


def _retire_pool_locked() -> None:
    old = _state["pool"]
    _state["pool"] = None
    if old is not None:
        old.retired = True
        if old.users == 0:
            old.executor.shutdown(wait=False)


def get_num_threads() -> int:
    """Number of threads the CPU backend uses (in this thread, see
    :func:`framework_threads`)."""
    return _threads_now()


def _threads_now() -> int:
    hint = getattr(_worker, "hint", None)
    if hint is not None and not _state["explicit"]:
        return hint
    return _state["threads"]


@contextlib.contextmanager
def framework_threads(n: int):
    """Calls from this thread inside the block use ``n`` threads, the size of the
    calling framework's own pool (e.g. ``torch.get_num_threads()``), unless the
    count was set with :func:`set_num_threads` or ``CUSPARSECONV_NUM_THREADS``.

    Parameters
    ----------
    n : int
        The framework's thread count (>= 1).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    previous = getattr(_worker, "hint", None)
    _worker.hint = n
    try:
        yield
    finally:
        _worker.hint = previous


class _BlasPin:
    """The BLAS libraries pinned to one thread; :meth:`restore_original_limits` puts
    back the counts they had. Talks to threadpoolctl's per-library controllers
    directly: ``ThreadpoolController.limit`` re-reads every library's state first
    (about 40 us against 15 us a call with torch loaded, and a pin is taken per
    product call: it showed on small layers)."""

    __slots__ = ("saved",)

    def __init__(self, libraries):
        self.saved = [(library, library.get_num_threads()) for library in libraries]
        for library, _ in self.saved:
            library.set_num_threads(1)

    def restore_original_limits(self) -> None:
        for library, count in self.saved:
            library.set_num_threads(count)


def _pin_blas_locked() -> None:
    if _state["controller"] is None:
        controller = _threadpoolctl.ThreadpoolController()
        _state["controller"] = controller.select(user_api="blas").lib_controllers
    if _state["blas_users"] == 0:
        # BLAS is pinned to one thread inside every block, whatever the worker
        # count: a BLAS product split over threads may sum in another order.
        _state["blas_limiter"] = _BlasPin(_state["controller"])
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
    threads = _threads_now()
    with _lock:
        pool = _state["pool"]
        if threads > 1 and (pool is None or pool.workers < threads - 1):
            _retire_pool_locked()
            pool = _state["pool"] = _Pool(threads - 1)
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


class _Items:
    """The items of one call, handed out one at a time to whichever thread asks."""

    __slots__ = ("function", "items", "next", "lock", "error")

    def __init__(self, function, items):
        self.function, self.items = function, items
        self.next = 0
        self.lock = threading.Lock()
        self.error = None

    def drain(self) -> None:
        """Run items until none is left (or one failed); mark the thread as ours."""
        was_active = getattr(_worker, "active", False)
        _worker.active = True
        try:
            while True:
                with self.lock:
                    index = self.next
                    if index >= len(self.items) or self.error is not None:
                        return
                    self.next = index + 1
                try:
                    self.function(self.items[index])
                except BaseException as error:  # noqa: BLE001 - re-raised by the caller
                    with self.lock:
                        if self.error is None:
                            self.error = error
                    return
        finally:
            _worker.active = was_active


def parallel_for(function, items) -> None:
    """Call ``function(item)`` for every item, on the calling thread and the workers.

    ``function`` must write its results to places no other item writes, so the
    outcome is independent of scheduling. Called from inside an item (nested
    use), the items run on that thread. The first exception raised by an item
    is raised here once every thread has stopped (no item keeps writing after
    the call returns).
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
            release_idle_threads()   # a framework's spinning OpenMP threads: see _openmp
            work = _Items(function, items)
            helpers = [pool.executor.submit(work.drain)
                       for _ in range(min(threads, len(items)) - 1)]
            work.drain()
            wait(helpers)  # all of them, even after a failure: none writes after we return
            for helper in helpers:
                helper.result()
            if work.error is not None:
                raise work.error
    finally:
        _release(pool)
