"""Python's switch interval while a call of ours runs: short.

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

So while a call of ours runs (the public functions that make many NumPy calls,
``SparseTensor`` construction, the coordinate cache's operations and the CPU
backend's operations; on the GPU too, where the arrays are CuPy's), the
interval is at most :data:`SHORT_INTERVAL_S` (20 microseconds): a thread
waiting for the GIL asks for it after that, not after 5 ms. Beside the same
busy thread: 3.6x, 3.9x, 2.6x and 1.7x (52 -> 190, 88 -> 345, 26 -> 69 and
18 -> 31 ms). What remains is the wake-up of the waiting thread at each
hand-over (tens of microseconds on this VM) and the busy thread's share of
the cores. The other side of it: while our calls run, a busy thread of yours
gets the GIL back in slices of 20 microseconds instead of 5 ms, so it gets
less done than beside calls that leave the interval alone (measured by the
same benchmark part: ``thread_share``). Without such a thread nothing
changes: our threads hold the GIL for microseconds between calls, so no wait
reaches the interval.

The calls in progress, in all threads, are kept as a set of tokens: the first
call to start lowers the interval, and when the last one ends, the interval
the process had is put back, to the microsecond (CPython keeps whole
microseconds), unless something changed it meanwhile; an interval already at
most :data:`SHORT_INTERVAL_S` is left as it is. While calls overlap (a server
calling us from several threads) it stays short throughout, and turning the
setting on or off takes effect when no call is in progress. A call whose own
bookkeeping an asynchronous exception cuts short (Ctrl-C landing exactly
there) drops out of the set with its frame; the interval it left short is put
back at the end of the next call, or at once by
``set_short_switch_interval(False)``. In the child of a ``fork``, where only
the forking thread exists, the parent's own interval is put back. Results
never depend on any of this. :func:`set_short_switch_interval`
(``cusparseconv.config``) turns it off.

The interval is process-wide: while our calls run, other threads of yours that
compete for the GIL also switch every 20 microseconds.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import weakref

__all__ = ["SHORT_INTERVAL_S", "short_switch_interval", "set_short_switch_interval",
           "is_short_switch_interval", "calls_in_progress"]

#: The longest switch interval (seconds) while a call of ours runs (beside a busy
#: thread on the 2-core VM, surface-50k forward and backward at one thread: 100 us leave
#: 4.4-7.2x, 50 us 4.6-6.1x, 20 us 3.8-5.2x, 10 us 3.4-4.7x, 5 us 3.6-4.3x; below ~20 us
#: the waiting thread's wake-up, not the interval, is what it waits for).
SHORT_INTERVAL_S = 2e-5

_state = {"enabled": True, "saved_us": None}
# the calls of ours in progress, one token each (weakly held: the token of a call whose
# bookkeeping an asynchronous exception cut short, e.g. Ctrl-C, dies with the call's
# frame instead of keeping the interval short for good)
_calls = weakref.WeakSet()
# re-entrant: a finalizer or signal handler run while this thread holds the lock may
# call one of our functions
_lock = threading.RLock()


class _Call:
    __slots__ = ("__weakref__",)


def _microseconds(seconds: float) -> int:
    """The interval as CPython keeps it: whole microseconds."""
    return int(round(seconds * 1e6))


def _set_microseconds(us: int) -> None:
    # CPython stores int(1e6 * x) microseconds: half a microsecond more makes the
    # truncation land on ``us`` exactly (a plain round trip loses 1 us for some values)
    sys.setswitchinterval((us + 0.5) * 1e-6)


_SHORT_US = _microseconds(SHORT_INTERVAL_S)


def _lowered_by_us() -> bool:
    """Is the interval the one we set, with the process's own value still kept?"""
    return _state["saved_us"] is not None and _microseconds(sys.getswitchinterval()) == _SHORT_US


def _put_back() -> None:
    if _lowered_by_us():   # only what we changed, and only if no one changed it since
        _set_microseconds(_state["saved_us"])
    _state["saved_us"] = None


def _after_fork_in_child() -> None:
    """Only the forking thread is left in the child: no other thread's call of ours
    runs there, so the parent's own interval is put back (a call the forking thread
    itself was in shortens it again at the next call)."""
    global _lock, _calls
    _lock = threading.RLock()
    _calls = weakref.WeakSet()
    _put_back()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_short_switch_interval(enabled: bool = True) -> None:
    """Whether calls of ours shorten Python's switch interval while they run
    (default: yes; process-wide). See :mod:`cusparseconv._switch` for why. Turned off
    while no call of ours runs, the process's own interval is put back at once."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    with _lock:
        _state["enabled"] = enabled
        if not enabled and not _calls:
            _put_back()


def is_short_switch_interval() -> bool:
    """Whether calls of ours shorten the switch interval
    (:func:`set_short_switch_interval`)."""
    return _state["enabled"]


def calls_in_progress() -> int:
    """Calls of ours running now, in all threads (the interval is short while any is)."""
    return len(_calls)


def _enter(call: _Call) -> None:
    with _lock:
        if not _calls and _state["enabled"] and not _lowered_by_us():
            # (when _lowered_by_us(): a lowering of ours still in place, left by a call
            # whose bookkeeping an asynchronous exception cut short; this call's end
            # puts it back)
            current = _microseconds(sys.getswitchinterval())
            if current > _SHORT_US:
                _state["saved_us"] = current
                _set_microseconds(_SHORT_US)
        _calls.add(call)


def _exit(call: _Call) -> None:
    with _lock:
        _calls.discard(call)
        if not _calls:
            _put_back()


def short_switch_interval(function):
    """``function`` run with the switch interval at most :data:`SHORT_INTERVAL_S`."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        call = _Call()
        try:
            _enter(call)
            return function(*args, **kwargs)
        finally:
            _exit(call)

    return run
