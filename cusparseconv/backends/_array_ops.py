"""The backend operations written once against an array module ``xp``.

Coordinate-set operations, consecutive-run reductions and dense-grid scatter
and gather need nothing but array routines that NumPy and CuPy share, so both
backends inherit them from :class:`ArrayOps` (``self.xp`` is NumPy for the CPU
backend and the emulated GPU backend, CuPy on a device). A backend overrides
one where it has a better way (the GPU backend looks keys up in its hash
tables).
"""

from __future__ import annotations

import numpy as np

from .. import coords as _coords

__all__ = ["ArrayOps", "reduce_runs"]

_RUN_UFUNCS = {"sum": "add", "max": "maximum", "min": "minimum"}


def reduce_runs(xp, values, starts, mode: str):
    """sum / max / min of the consecutive runs ``values[starts[i]:starts[i + 1]]``
    along axis 0 (the last run ends at the end of ``values``).

    Parameters
    ----------
    xp : module
        numpy or cupy (CuPy 13+ has ``ufunc.reduceat``).
    values : ndarray, shape (N,) or (N, C)
    starts : ndarray of int, shape (M,)
        Strictly increasing, ``starts[0] == 0`` (no empty run).
    mode : {"sum", "max", "min"}

    Returns
    -------
    ndarray, shape (M,) or (M, C), the dtype of ``values``.
    """
    return getattr(xp, _RUN_UFUNCS[mode]).reduceat(values, starts, axis=0)


class ArrayOps:
    """Operations of :class:`cusparseconv.backends.protocol.Backend` that only need
    ``self.xp``."""

    xp = np

    # ------------------------------------------------------------ coordinate sets
    def downsample(self, coords, stride):
        return _coords.downsample(coords, tuple(stride))

    def expand(self, coords, offsets, scale, name: str = "coords"):
        return _coords.expand(coords, offsets, tuple(scale), name)

    def batch_segments(self, coords):
        batches, segment = self.xp.unique(coords[:, 0], return_inverse=True)
        return batches, segment.reshape(-1)

    def lookup(self, keys, query_keys):
        return keys.rank_of(query_keys)

    # ------------------------------------------------------------ reductions
    def reduce_runs(self, values, starts, mode: str):
        return reduce_runs(self.xp, values, starts, mode)

    # ------------------------------------------------------------ dense grids
    def scatter_to_grid(self, values, sites, grid_shape, channels_last: bool):
        xp = self.xp
        grid_shape = tuple(int(n) for n in grid_shape)
        n_items, n_sites, channels = grid_shape[0], 1, values.shape[1]
        for size in grid_shape[1:]:
            n_sites *= size
        if channels_last:
            grid = xp.zeros(grid_shape + (channels,), dtype=values.dtype)
            grid.reshape(n_items * n_sites, channels)[sites] = values
            return grid
        grid = xp.zeros(grid_shape[:1] + (channels,) + grid_shape[1:], dtype=values.dtype)
        item, site = xp.divmod(sites, max(n_sites, 1))
        # Advanced indices split by a slice: the indexed result is (N, C).
        grid.reshape(n_items, channels, n_sites)[item, :, site] = values
        return grid

    def gather_from_grid(self, grid, sites, channels_last: bool):
        # index the caller's grid as it is laid out (no copy of a strided grid)
        channels_at_end = grid if channels_last else self.xp.moveaxis(grid, 1, -1)
        shape = channels_at_end.shape[:-1]
        index = (self.xp.unravel_index(sites, shape) if sites.shape[0]
                 else (sites,) * len(shape))
        return channels_at_end[index]
