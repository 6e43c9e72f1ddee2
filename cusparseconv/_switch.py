"""Python's switch interval while a CPU call of ours runs: short.

A CPU product of ours is a few hundred to a few thousand NumPy and SciPy calls
(a gather, one GEMM per block and offset, a sparse sum), each of which hands
the GIL over while it computes and takes it back when it returns. When another
thread of the process runs Python without pause (a loader thread parsing
files, a busy-polling monitor), it takes the GIL at each hand-over and keeps it
until the interpreter asks it to switch: after ``sys.getswitchinterval()``,
5 ms by default. Every call of ours then waits up to 5 ms to go on. Measured on
the 2-core VM (``python -m benchmarks.conditions --parts thread``, 2026-11-29
12:34, a thread running a pure-Python loop beside the layer, our default two
threads): motorcycle-1cm submanifold C = 32, map + forward 53 -> 4,360 ms and
forward + backward 88 -> 5,554 ms (82x and 63x); table-5mm stride-2, 26 -> 1,002
and 17 -> 352 ms (39x, 21x). spconv's layers, whose torch operations hand the
GIL over too, took 6.0x, 14x, 14x and 28x their time.

So while a call of the CPU backend (or a public function of ours that makes
many NumPy calls) runs, the interval is at most :data:`SHORT_INTERVAL_S` (20
microseconds): a thread waiting for the GIL asks for it after that, not after
5 ms. Beside the same busy thread: 3.6x, 3.9x, 2.6x and 1.7x (52 -> 190,
88 -> 345, 26 -> 69 and 18 -> 31 ms). What remains is the wake-up of the
waiting thread at each hand-over (tens of microseconds on this VM) and the
busy thread's share of the cores. Without such a thread nothing changes: our
threads hold the GIL for microseconds between calls, so no wait reaches the
interval. When the last of our calls in progress returns, the interval the
process had is put back, unless something changed it meanwhile; an interval
already at most :data:`SHORT_INTERVAL_S` is left as it is. Results never
depend on it. :func:`set_short_switch_interval` (``cusparseconv.config``)
turns it off.

The interval is process-wide: while our call runs, the other threads' Python
also switches every 20 microseconds when two of them want the GIL. Nested and
concurrent calls (two threads each calling the library) share one count: the
first to start lowers it, the last to end restores it. In the child of a
``fork`` made while a call ran in another thread, the interval of the parent
before that call is put back.
"""

from __future__ import annotations

import functools
import os
import sys
import threading

__all__ = ["SHORT_INTERVAL_S", "short_switch_interval", "set_short_switch_interval",
           "is_short_switch_interval"]

#: The longest switch interval (seconds) while a CPU call of ours runs (beside a busy
#: thread on the 2-core VM, surface-50k forward and backward at one thread: 100 us leave
#: 4.4-7.2x, 50 us 4.6-6.1x, 20 us 3.8-5.2x, 10 us 3.4-4.7x, 5 us 3.6-4.3x; below ~20 us
#: the waiting thread's wake-up, not the interval, is what it waits for).
SHORT_INTERVAL_S = 2e-5

_state = {"enabled": True, "depth": 0, "saved": None, "applied": None}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """The forking thread is the only one left: no call of ours runs in the child."""
    global _lock
    _lock = threading.Lock()
    saved = _state["saved"]
    if saved is not None and sys.getswitchinterval() == _state["applied"]:
        sys.setswitchinterval(saved)
    _state.update(depth=0, saved=None, applied=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_short_switch_interval(enabled: bool = True) -> None:
    """Whether CPU calls of ours shorten Python's switch interval while they run
    (default: yes; process-wide). See :mod:`cusparseconv._switch` for why."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    _state["enabled"] = enabled


def is_short_switch_interval() -> bool:
    """Whether CPU calls of ours shorten the switch interval
    (:func:`set_short_switch_interval`)."""
    return _state["enabled"]


def _enter() -> None:
    with _lock:
        if _state["depth"] == 0:
            current = sys.getswitchinterval()
            if _state["enabled"] and current > SHORT_INTERVAL_S:
                sys.setswitchinterval(SHORT_INTERVAL_S)
                _state.update(saved=current, applied=sys.getswitchinterval())
            else:
                _state.update(saved=None, applied=None)
        _state["depth"] += 1


def _exit() -> None:
    with _lock:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            saved, applied = _state["saved"], _state["applied"]
            _state.update(saved=None, applied=None)
            # put back only what we changed, and only if no one changed it since
            if saved is not None and sys.getswitchinterval() == applied:
                sys.setswitchinterval(saved)


def short_switch_interval(function):
    """``function`` run with the switch interval at most :data:`SHORT_INTERVAL_S`."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        _enter()
        try:
            return function(*args, **kwargs)
        finally:
            _exit()

    return call
