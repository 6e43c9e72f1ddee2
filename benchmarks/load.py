"""Load generator: the "busy machine" condition of the benchmarks, repeatable.

``python -m benchmarks.load --procs 2 --seconds 60`` keeps two processes
busy for a minute; other scripts use :func:`busy` around the runs they time::

    from benchmarks.load import busy
    with busy(2) as load:          # two busy processes until the block ends
        ...                        # timed runs
    print(load.report())           # what the busy processes did (iterations/s)

Each busy process is single-threaded and does what another user's job on a
shared machine does: a loop of small NumPy operations on arrays of about 1 MiB
(float64 sums, products, sorting: memory and arithmetic) with short
pure-Python stretches between them, without sleeping. It never starts
threads of its own (it limits its own BLAS to one thread through
threadpoolctl when that is installed; no environment variable is set), so
``--procs N`` adds exactly N runnable threads to the machine. The processes
are started with ``multiprocessing``'s ``spawn`` method (no state inherited
from the caller), run at normal priority, and are stopped when the block
ends, when the parent exits, or after ``--seconds``.

:func:`busy_python_thread` is the other condition: one thread of the calling
process that runs Python without pause while the block runs (it does not load
the machine so much as hold the GIL; see ``benchmarks/conditions.py``, part
``thread``).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import sys
import threading
import time


def _burn(stop_at: float, counter, parent_pid: int) -> None:
    """Busy loop until ``stop_at`` (time.time()) or the parent is gone; counts iterations."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    import numpy as np

    rng = np.random.default_rng(os.getpid())
    a = rng.standard_normal(131072)            # 1 MiB of float64
    b = rng.standard_normal((256, 256))
    done = 0
    while time.time() < stop_at:
        for _ in range(20):
            a = np.sort(a)[::-1].copy()
            a -= a.sum() / a.size                  # centred and scaled: stays finite
            a /= max(float(np.abs(a).max()), 1e-30)
            b = b @ b
            b /= max(float(np.abs(b).max()), 1e-30)
            total = 0
            for i in range(2000):              # a pure-Python stretch (holds its own GIL)
                total += i * i
        done += 1
        with counter.get_lock():
            counter.value += 1
        if done % 10 == 0 and os.getppid() != parent_pid:
            return                             # the parent died: do not linger


class Busy:
    """Handle of the running busy processes (see :func:`busy`)."""

    def __init__(self, procs: int, seconds: float):
        self.procs = procs
        context = multiprocessing.get_context("spawn")
        self._counter = context.Value("q", 0)
        self._stop_at = time.time() + seconds
        self._started = time.perf_counter()
        self._processes = [context.Process(target=_burn, daemon=True,
                                           args=(self._stop_at, self._counter, os.getpid()))
                           for _ in range(procs)]
        for process in self._processes:
            process.start()
        self._ended = None
        self.iterations = None

    def wait_until_running(self, timeout: float = 30.0) -> None:
        """Return once every process has finished one iteration (imports done)."""
        deadline = time.perf_counter() + timeout
        while self.procs and self._counter.value < self.procs:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the busy processes did not start within {timeout} s")
            time.sleep(0.05)
        self._started = time.perf_counter()
        self._count_at_start = self._counter.value

    def stop(self) -> None:
        if self._ended is not None:
            return
        self._ended = time.perf_counter()
        self.iterations = self._counter.value - getattr(self, "_count_at_start", 0)
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(5)

    def report(self) -> dict:
        """procs, seconds of load, iterations per second per process, load average."""
        end = self._ended or time.perf_counter()
        seconds = end - self._started
        count = self.iterations if self.iterations is not None else self._counter.value
        rate = count / seconds / self.procs if self.procs and seconds > 0 else 0.0
        return {"procs": self.procs, "seconds": seconds,
                "iterations_per_s_per_proc": rate, "loadavg": os.getloadavg()}


@contextlib.contextmanager
def busy(procs: int, seconds: float = 3600.0):
    """Run ``procs`` busy processes while the block runs (``procs`` 0: no load)."""
    if not isinstance(procs, int) or procs < 0:
        raise ValueError(f"procs must be a non-negative int, got {procs!r}")
    load = Busy(procs, seconds)
    try:
        load.wait_until_running()
        yield load
    finally:
        load.stop()


class PythonThread:
    """Handle of a thread of this process running Python without pause (see
    :func:`busy_python_thread`)."""

    def __init__(self):
        self._stop = threading.Event()
        self.iterations = 0
        self._started = self._ended = None
        self._thread = threading.Thread(target=self._spin, name="busy-python", daemon=True)

    def _spin(self) -> None:
        count, stop = 0, self._stop
        while not stop.is_set():
            for i in range(1000):              # pure Python: holds the GIL until asked
                count += i & 1
            self.iterations += 1000
        del count

    def start(self) -> None:
        self._started = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        if self._ended is None:
            self._stop.set()
            self._thread.join()
            self._ended = time.perf_counter()

    def report(self) -> dict:
        """seconds, loop iterations per second (the thread's share of the GIL)."""
        end = self._ended or time.perf_counter()
        seconds = end - self._started if self._started is not None else 0.0
        return {"python_threads": 1, "seconds": seconds,
                "iterations_per_s": self.iterations / seconds if seconds > 0 else 0.0}


@contextlib.contextmanager
def busy_python_thread():
    """Run one thread of this process that executes Python without pause (a loader
    thread parsing, a busy-polling monitor) while the block runs: the condition under
    which each hand-over of the GIL by a NumPy call can cost up to Python's switch
    interval (``cusparseconv._switch``)."""
    thread = PythonThread()
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=2, help="busy processes (default 2)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long (default 60; Ctrl-C stops earlier)")
    args = parser.parse_args(argv)
    with busy(args.procs, args.seconds) as load:
        print(f"{args.procs} busy process(es) for {args.seconds:g} s", flush=True)
        try:
            while time.time() < load._stop_at:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    print(load.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
