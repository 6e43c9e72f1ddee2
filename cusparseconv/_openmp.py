"""Idle OpenMP threads of the calling thread, sent to sleep before our workers run.

A library in the process built on GNU OpenMP (``libgomp``: PyTorch's Linux
wheels, MKL in GNU threading mode, spconv's CPU kernels) runs a parallel
operation on a team of threads; when it ends, the team's threads wait for the
next one by spinning (libgomp's default, without ``OMP_WAIT_POLICY``: about
300,000 spins, 3 ms or more), and only then sleep. A CPU product of ours that
starts in that window shares the cores with the spinning threads: measured
on a 2-core VM with torch at two threads, each torch operation left about
7 ms of spinning CPU time behind it, and a stride-2 forward (table-5mm,
C = 32) started right after a ``torch.relu`` took 7.1-7.2 ms instead of
4.8-4.9 ms.

Before one of our calls runs on several threads, :func:`release_idle_threads`
calls ``omp_pause_resource_all(omp_pause_soft)`` (OpenMP 5.0) of every GNU
OpenMP runtime loaded in the process. In libgomp this ends the idle threads of
the *calling thread's own* team pool, and does nothing when called inside a
parallel region or when the pool is empty. Threads other user threads started
are not touched. The caller's next OpenMP parallel region starts its threads
anew (one thread creation per thread, tens of microseconds; no difference
measured on a 2-core VM, where a ``torch.relu`` on 140,000 x 32 took 1.84 ms
without and 1.81 ms with the pause before it). Results never change, only
which threads exist. ``release_openmp_threads(False)`` turns it off.

Only while the machine has a core for each runnable thread (``/proc/loadavg``:
runnable threads, this one included, at most the CPUs this process may use):
on a busy machine a thread made anew waits long before it first runs, so
torch's next operation waits for its new team (measured on the 2-core VM with
two busy processes: a ``torch.relu`` after a pause 9.4 ms against 8.0 ms, and
a training loop of our layers and torch's, with the pause made whatever the
load, 1.1-2.2x slower per step under one or two busy processes; with this
check, 0.85-1.06 under one busy process and no pause at all under two).

Never in the child of a ``fork``: libgomp keeps the parent's pool there,
whose threads do not exist in the child, and pausing it would wait for them
forever (a worker process forked by a parent that ran torch operations, e.g. a
DataLoader worker, leaves its OpenMP threads as they are).

Only libgomp is paused: LLVM's and Intel's runtimes (``libomp``,
``libiomp5``) pause every thread of the runtime, including teams other threads
are running, so they are left alone. The loaded runtimes are found with
threadpoolctl (the optional ``threads`` extra, without which our products
run on one thread and never need this); the search is repeated when the
number of imported modules changes (a framework imported after our first call
is found on the next one).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

try:  # optional: `pip install cusparseconv[threads]`
    import threadpoolctl as _threadpoolctl
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _threadpoolctl = None

__all__ = ["release_idle_threads", "release_openmp_threads", "is_release_openmp_threads",
           "usable_cpus",
           "paused_runtimes"]

#: ``omp_pause_soft`` of the OpenMP 5.0 ``omp_pause_resource_t`` enumeration.
OMP_PAUSE_SOFT = 1

_state = {"enabled": True, "forked": False, "modules": -1, "pauses": (), "paths": (),
          "cpus": 1}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _state.update(forked=True, pauses=(), paths=(), modules=-1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def release_openmp_threads(enabled: bool = True) -> None:
    """Whether our multi-threaded CPU calls first end the caller's idle GNU OpenMP
    threads (default: yes; process-wide). See the module docstring for why."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    _state["enabled"] = enabled


def is_release_openmp_threads() -> bool:
    """Whether :func:`release_idle_threads` pauses anything (:func:`release_openmp_threads`)."""
    return _state["enabled"]


def _is_gnu_openmp(path: str) -> bool:
    return os.path.basename(path).startswith("libgomp")


def _scan() -> tuple[tuple, tuple]:
    """The ``omp_pause_resource_all`` functions of the loaded GNU OpenMP runtimes, and
    their files."""
    if _threadpoolctl is None:
        return (), ()
    try:
        controllers = _threadpoolctl.ThreadpoolController().select(
            user_api="openmp").lib_controllers
    except Exception:  # noqa: BLE001 - a scan that fails leaves the threads as they are
        return (), ()
    pauses, paths = [], []
    for controller in controllers:
        path = controller.info().get("filepath") or ""
        if not _is_gnu_openmp(path):
            continue
        try:  # already loaded: RTLD_NOLOAD hands back the same library, loads nothing
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            pause = library.omp_pause_resource_all
        except (OSError, AttributeError):  # older than OpenMP 5.0 (GCC < 9): no pause
            continue
        pause.argtypes = [ctypes.c_int]
        pause.restype = ctypes.c_int
        pauses.append(pause)
        paths.append(path)
    return tuple(pauses), tuple(paths)


def _pauses() -> tuple:
    if _state["forked"]:
        return ()
    modules = len(sys.modules)
    if modules != _state["modules"]:
        with _lock:
            if modules != _state["modules"]:
                pauses, paths = _scan()
                _state.update(pauses=pauses, paths=paths, modules=modules)
    return _state["pauses"]


def paused_runtimes() -> tuple[str, ...]:
    """Files of the OpenMP runtimes :func:`release_idle_threads` pauses (now loaded)."""
    _pauses()
    return _state["paths"]


def release_idle_threads() -> None:
    """End the idle threads of the calling thread's GNU OpenMP team pools (if enabled).

    Called by :func:`cusparseconv._threads.parallel_for` before it hands items
    to its workers, on the thread that called us (never on our workers).
    """
    if not _state["enabled"]:
        return
    pauses = _pauses()
    if pauses and _cores_to_spare():
        for pause in pauses:
            pause(OMP_PAUSE_SOFT)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; the CPU count elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _runnable_threads() -> int | None:
    """Threads runnable on the machine now, this one included (``/proc/loadavg``'s
    fourth field), or None where unknown."""
    try:
        descriptor = os.open("/proc/loadavg", os.O_RDONLY)
        try:
            text = os.read(descriptor, 256)
        finally:
            os.close(descriptor)
        return int(text.split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _cores_to_spare() -> bool:
    """No more runnable threads than CPUs: the spinning threads are what stands between
    our workers and the cores (on a busy machine a thread made anew waits long before
    it first runs, and torch's next operation would wait for it)."""
    runnable = _runnable_threads()
    return runnable is None or runnable <= _state["cpus"]


_state["cpus"] = usable_cpus()
