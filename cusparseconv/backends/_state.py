"""Where a backend keeps what it derives from values it does not own.

Kernel maps (:class:`cusparseconv.KernelMap`) and sorted keys
(:class:`cusparseconv.coords.SortedKeys`) are frozen values that any backend
may be handed. What a backend derives from one of them (the reverse table,
the pair mask, block cuts, device copies, a hash table) lives in a
:class:`StateTable` of that backend, keyed weakly by the value: an entry goes
away when its value is freed, and nothing is ever attached to the value
itself. Keys are the values' identities held through weak references, never
``id()`` (which Python reuses for a new object once the old one is freed).

An entry must not hold its own key strongly (it would never be freed). The
one link between two maps, a map and its reverse table, is therefore strong
in one direction only (:class:`MapState`).
"""

from __future__ import annotations

import threading
import weakref

__all__ = ["StateTable", "MapState", "array_nbytes"]


class StateTable:
    """A weak-keyed table: value (kernel map, sorted keys) -> the backend's state for it.

    Parameters
    ----------
    what : str
        What the entries hold (for ``repr``).
    """

    def __init__(self, what: str):
        self._what = what
        self._entries = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        """The state of ``key``, or ``default``."""
        with self._lock:
            return self._entries.get(key, default)

    def get_or_make(self, key, make):
        """The state of ``key``, made by ``make()`` on first use (a value made by two
        threads at once is kept once: the first stored wins)."""
        with self._lock:
            found = self._entries.get(key)
        if found is None:
            made = make()
            with self._lock:
                found = self._entries.setdefault(key, made)
        return found

    def set(self, key, state) -> None:
        with self._lock:
            self._entries[key] = state

    def pop(self, key, default=None):
        with self._lock:
            return self._entries.pop(key, default)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return f"<StateTable of {self._what}: {len(self)} entries>"


def array_nbytes(value) -> int:
    """Bytes of the arrays in ``value`` (an array, or tuples, lists and dicts of them, or
    an object with a ``state_nbytes()`` method)."""
    if isinstance(value, dict):
        return sum(array_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(array_nbytes(v) for v in value)
    if hasattr(value, "dtype") and hasattr(value, "nbytes"):
        return int(value.nbytes)
    state_nbytes = getattr(value, "state_nbytes", None)  # e.g. a CPU product plan
    return int(state_nbytes()) if callable(state_nbytes) else 0


class MapState:
    """A backend's state for one kernel map: derived data by name, and the reverse link.

    ``derived`` maps a name (e.g. ``("chunk_cuts", 4096)``) to what the backend
    computed once for this map. The reverse table is held strongly by the map
    it was made from and weakly the other way round, so neither keeps the
    other alive through the backend's table.
    """

    __slots__ = ("derived", "_reverse", "_reverse_ref", "__weakref__")

    def __init__(self):
        self.derived = {}
        self._reverse = None
        self._reverse_ref = None

    def memo(self, name, make):
        """``derived[name]``, computed by ``make()`` on first use."""
        found = self.derived.get(name)
        if found is None:
            found = self.derived.setdefault(name, make())
        return found

    @property
    def reverse(self):
        """The reverse table if known and alive, else None."""
        if self._reverse is not None:
            return self._reverse
        return self._reverse_ref() if self._reverse_ref is not None else None

    def hold_reverse(self, reverse) -> None:
        """This map made ``reverse``: hold it strongly."""
        self._reverse, self._reverse_ref = reverse, None

    def know_reverse(self, reverse) -> None:
        """``reverse`` made this map (or holds it): refer to it weakly."""
        self._reverse, self._reverse_ref = None, weakref.ref(reverse)

    @property
    def nbytes(self) -> int:
        """Bytes of the derived arrays and of the reverse table this state holds."""
        total = array_nbytes(self.derived)
        if self._reverse is not None:
            total += self._reverse.nbytes
        return total


def link_reverse(table: StateTable, kmap, reverse) -> None:
    """Record in ``table`` that ``reverse`` is the reverse table of ``kmap`` (and vice
    versa): ``kmap``'s state holds it, ``reverse``'s state refers back weakly."""
    table.get_or_make(kmap, MapState).hold_reverse(reverse)
    table.get_or_make(reverse, MapState).know_reverse(kmap)
