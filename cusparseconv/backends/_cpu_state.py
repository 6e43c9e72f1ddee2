"""The CPU backend's per-map state: one weak-keyed table shared by its modules.

:mod:`.cpu` (reverse tables, block cuts, the pair mask) and :mod:`._cpu_plan`
(product plans, the offset mirror of a symmetric submanifold map) keep what
they derive from a :class:`cusparseconv.KernelMap` here, under distinct
names in the map's :class:`._state.MapState`, never on the map itself.
"""

from __future__ import annotations

from ._state import MapState, StateTable

__all__ = ["MAPS", "state_of"]

#: kernel map -> :class:`MapState` (weak keys: an entry goes with its map).
MAPS = StateTable("CPU kernel-map state")


def state_of(kmap) -> MapState:
    """The CPU backend's state for ``kmap`` (made empty on first use)."""
    return MAPS.get_or_make(kmap, MapState)
