"""Voxelization: from points in continuous space to unique integer voxels and back.

``voxelize`` maps every point to the voxel that contains it,

    cell_d(p) = floor((p_d - origin_d) / voxel_size_d),    d = 1..D,

keeps one row per distinct (batch, cell) pair and reduces the features of the
points that share a voxel (mean, max, min, sum, first or mode).  ``devoxelize``
sends voxel features back to the points (each point reads its own voxel).

All work is vectorised: the voxel rows are packed into one int64 key per point
(:func:`cusparseconv.coords.mixed_radix_keys` over the per-column ranges),
sorted once, and every reduction is a reduction over consecutive runs of the
sorted order, run by the backend of the arrays
(:meth:`~cusparseconv.backends.protocol.Backend.reduce_runs`). The rest is
written against the backend's array module ``xp``.
"""

import math

import numpy as np

from ._arrays import array_module
from ._checks import native, per_axis
from ._dtypes import FLOAT_DTYPE_NAMES
from ._switch import short_switch_interval
from .backends import backend_for
from .coords import mixed_radix_keys

__all__ = ["voxelize", "devoxelize", "REDUCTIONS"]

#: Valid values of the ``reduce`` argument of :func:`voxelize`.
REDUCTIONS = ("mean", "max", "min", "sum", "first", "mode")

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1
_INT64_KEY_LIMIT = 2**63  # packed keys must lie in [0, 2**63)


def _is_float_dtype(dtype):
    # ml_dtypes.bfloat16 is not a numpy.floating subtype but is a float format.
    return dtype.name in FLOAT_DTYPE_NAMES or np.issubdtype(dtype, np.floating)


def _is_int_dtype(dtype):
    return np.issubdtype(dtype, np.integer) or dtype == np.bool_


def _per_axis(name, value, ndim, xp):
    """A number or a length-``ndim`` sequence as a float64 (ndim,) array."""
    return xp.asarray(per_axis(value, ndim, name, minimum=None, kind=float), dtype=xp.float64)


def _check_points(points, xp):
    points = xp.asarray(points)
    if points.ndim != 2 or not 1 <= points.shape[1] <= 4:
        raise ValueError(
            f"points must have shape (N, D) with D in 1..4, got {tuple(points.shape)}"
        )
    if not _is_float_dtype(points.dtype):
        raise TypeError(
            f"points must be a floating-point array, got dtype {points.dtype}; "
            "cast integer positions with points.astype(numpy.float64)"
        )
    finite = xp.isfinite(points).all(axis=1)
    if not bool(finite.all()):
        bad_rows = xp.flatnonzero(~finite)
        raise ValueError(
            f"points must be finite, got NaN or Inf in {int(bad_rows.size)} rows "
            f"(first at row {int(bad_rows[0])})"
        )
    return points


def _check_feats(feats, n_points, reduce, xp):
    if feats is None:
        return None
    feats = xp.asarray(feats)
    if feats.ndim not in (1, 2):
        raise ValueError(
            f"feats must have shape (N,) or (N, C), got {tuple(feats.shape)}"
        )
    if feats.shape[0] != n_points:
        raise ValueError(
            f"feats must have N = {n_points} rows (one per point), got "
            f"{feats.shape[0]} rows (shape {tuple(feats.shape)})"
        )
    is_float = _is_float_dtype(feats.dtype)
    if not (is_float or _is_int_dtype(feats.dtype)):
        raise TypeError(
            f"feats must have a floating-point, integer or bool dtype, got {feats.dtype}"
        )
    if reduce == "mode" and is_float:
        raise TypeError(
            f"reduce='mode' needs integer or bool feats (labels), got dtype {feats.dtype}; "
            "use 'mean', 'max', 'min', 'sum' or 'first' for floating-point feats"
        )
    return feats


def _check_batch_index(batch_index, n_points, xp):
    if batch_index is None:
        return xp.zeros((n_points,), dtype=xp.int64)
    batch_index = xp.asarray(batch_index)
    if batch_index.shape != (n_points,):
        raise ValueError(
            f"batch_index must have shape (N,) = ({n_points},) (one id per point), "
            f"got {tuple(batch_index.shape)}"
        )
    if n_points == 0 and batch_index.dtype == xp.float64:
        # xp.asarray([]) is float64; an empty list is a valid empty batch_index.
        batch_index = batch_index.astype(xp.int64)
    if not np.issubdtype(batch_index.dtype, np.integer):
        raise TypeError(
            f"batch_index must be an integer array, got dtype {batch_index.dtype}"
        )
    if n_points:
        low, high = int(batch_index.min()), int(batch_index.max())
        if low < 0:
            raise ValueError(
                f"batch_index must be non-negative, got minimum {low} "
                f"(first at row {int(xp.flatnonzero(batch_index < 0)[0])})"
            )
        if high > _INT32_MAX:
            raise ValueError(
                f"batch_index must fit in int32 (at most {_INT32_MAX}), got maximum {high}"
            )
    return batch_index.astype(xp.int64, copy=False)


def _sort_rows(batch, cells, xp):
    """Group equal (batch, cell) rows.

    Parameters
    ----------
    batch : int64 array, shape (N,)
    cells : float64 array, shape (N, D)
        Integer-valued voxel coordinates, already checked to fit in int32.

    Returns
    -------
    order : int64 array, shape (N,)
        Permutation that sorts the rows lexicographically by (batch, x1..xD).
    starts : int64 array, shape (M,)
        Positions in ``order`` where a new voxel begins.
    voxel_of_sorted : int64 array, shape (N,)
        Voxel index of ``order[j]``.
    """
    n_points, ndim = cells.shape
    columns = [batch] + [cells[:, axis] for axis in range(ndim)]
    lows = [int(column.min()) for column in columns]
    ranges = [int(column.max()) - low + 1 for column, low in zip(columns, lows)]
    if math.prod(ranges) <= _INT64_KEY_LIMIT:
        # Mixed-radix keys: column 0 is the most significant digit, so the
        # numeric order of the keys is the lexicographic order of the rows.
        key = mixed_radix_keys([(column - low).astype(xp.int64)
                                for column, low in zip(columns, lows)], ranges)
        # The sort need not be stable: equal keys are equal rows, and "first"
        # takes the smallest point index of each voxel explicitly.
        order = xp.argsort(key)
        sorted_key = key[order]
        is_start = xp.empty((n_points,), dtype=bool)
        is_start[0] = True
        xp.not_equal(sorted_key[1:], sorted_key[:-1], out=is_start[1:])
    else:
        # The ranges do not fit one int64 key: sort the rows column by column.
        # lexsort takes its primary key last.
        order = xp.lexsort(tuple(columns[::-1]))
        rows = xp.stack([column[order].astype(xp.int64) for column in columns], axis=1)
        is_start = xp.empty((n_points,), dtype=bool)
        is_start[0] = True
        xp.any(rows[1:] != rows[:-1], axis=1, out=is_start[1:])
    starts = xp.flatnonzero(is_start)
    voxel_of_sorted = xp.cumsum(is_start, dtype=xp.int64) - 1
    return order, starts, voxel_of_sorted


def _segment_mode(sorted_labels, voxel_of_sorted, n_voxels, xp):
    """Majority label of each voxel, ties broken towards the smallest label.

    sorted_labels : integer array, shape (N,), in voxel order.
    voxel_of_sorted : int64 array, shape (N,), non-decreasing voxel ids.
    Returns an array of shape (n_voxels,) with the dtype of ``sorted_labels``.
    """
    n_points = sorted_labels.shape[0]
    by_label = xp.lexsort((sorted_labels, voxel_of_sorted))  # (voxel, label)
    voxels = voxel_of_sorted[by_label]
    labels = sorted_labels[by_label]
    run_start = xp.empty((n_points,), dtype=bool)
    run_start[0] = True
    run_start[1:] = (voxels[1:] != voxels[:-1]) | (labels[1:] != labels[:-1])
    run_starts = xp.flatnonzero(run_start)
    run_lengths = xp.diff(xp.append(run_starts, n_points))
    run_voxels = voxels[run_starts]
    run_labels = labels[run_starts]
    # Runs are ordered by (voxel, label); a stable sort by (voxel, -length)
    # puts the longest run first and keeps the smaller label first on ties.
    by_length = xp.lexsort((-run_lengths, run_voxels))
    best_runs = by_length[xp.searchsorted(run_voxels[by_length], xp.arange(n_voxels))]
    return run_labels[best_runs]


def _reduced_dtype(dtype, reduce, xp):
    """dtype of the voxel features for feats of ``dtype`` reduced by ``reduce``."""
    if _is_float_dtype(dtype) or reduce not in ("sum", "mean"):
        return dtype
    if reduce == "mean":
        return xp.dtype(xp.float64)
    if np.issubdtype(dtype, np.unsignedinteger):
        return xp.dtype(xp.uint64)
    return xp.dtype(xp.int64)


def _reduce_feats(feats, order, starts, voxel_of_sorted, first_point, reduce, backend):
    xp = backend.xp
    n_points = feats.shape[0]
    n_voxels = starts.shape[0]
    if reduce == "first":
        return feats[first_point]
    if reduce == "mode":
        sorted_feats = feats[order]
        if feats.ndim == 1:
            return _segment_mode(sorted_feats, voxel_of_sorted, n_voxels, xp)
        out = xp.empty((n_voxels, feats.shape[1]), dtype=feats.dtype)
        for channel in range(feats.shape[1]):  # a loop over channels, not points
            out[:, channel] = _segment_mode(
                sorted_feats[:, channel], voxel_of_sorted, n_voxels, xp
            )
        return out
    if reduce in ("max", "min"):
        return backend.reduce_runs(feats[order], starts, reduce)
    # sum and mean accumulate in 64 bits, then cast to the output dtype.
    out_dtype = _reduced_dtype(feats.dtype, reduce, xp)
    if _is_float_dtype(feats.dtype):
        acc_dtype = xp.float64
    else:
        acc_dtype = _reduced_dtype(feats.dtype, "sum", xp)
    sums = backend.reduce_runs(feats[order].astype(acc_dtype), starts, "sum")
    if reduce == "sum":
        return sums.astype(out_dtype, copy=False)
    counts = xp.diff(xp.append(starts, n_points)).astype(xp.float64)
    if feats.ndim == 2:
        counts = counts[:, None]
    return (sums.astype(xp.float64, copy=False) / counts).astype(out_dtype, copy=False)


@short_switch_interval
def voxelize(points, voxel_size, feats=None, reduce="mean", batch_index=None, origin=None):
    """Group points into voxels of an integer grid and reduce their features.

    Point ``i`` lies in the voxel
    ``(batch_index[i], floor((points[i] - origin) / voxel_size))``; the result
    has one row per distinct voxel.

    Parameters
    ----------
    points : floating-point array, shape (N, D), D in 1..4
        Point positions (float16/32/64). Must be finite. Cell coordinates are
        computed in float64.
    voxel_size : float or sequence of D floats
        Edge length of a voxel, per axis or for all axes; must be positive.
    feats : array, shape (N, C) or (N,), optional
        Per-point features: floating-point, integer or bool.
    reduce : {"mean", "max", "min", "sum", "first", "mode"}, default "mean"
        How the features of the points in one voxel are combined:

        - "mean", "sum": accumulated in 64 bits; floating-point feats keep
          their dtype, integer/bool feats give float64 means and int64
          (uint64 for unsigned) sums;
        - "max", "min": elementwise, dtype kept (NaN propagates);
        - "first": the features of the lowest-index point in the voxel;
        - "mode": per channel, the most frequent value in the voxel, ties
          going to the smallest value; integer/bool feats (labels) only.
    batch_index : integer array, shape (N,), optional
        Non-negative batch id of every point (default: all 0). Points of
        different batch items never share a voxel.
    origin : float or sequence of D floats, optional
        Subtracted from the points before dividing by ``voxel_size``
        (default 0).

    Returns
    -------
    coords : int32 array, shape (M, 1 + D)
        Unique voxels, column 0 the batch index, sorted lexicographically by
        (batch, x1, ..., xD).
    voxel_feats : array, shape (M, C) or (M,), or None
        Reduced features (None when ``feats`` is None).
    point_to_voxel : int64 array, shape (N,)
        ``coords[point_to_voxel[i]]`` is the voxel of point ``i``.

    Raises
    ------
    TypeError
        If points are not floating-point, feats or batch_index have a wrong
        dtype, or reduce="mode" is asked for floating-point feats.
    ValueError
        If an argument has the wrong shape, points are not finite,
        ``voxel_size`` is not positive, a cell coordinate does not fit in
        int32, ``batch_index`` is negative, or ``reduce`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.array([[0.1, 0.2], [0.4, 0.3], [1.5, -0.2]])
    >>> coords, feats, point_to_voxel = voxelize(points, 0.5, feats=points[:, :1])
    >>> coords
    array([[ 0,  0,  0],
           [ 0,  3, -1]], dtype=int32)
    >>> point_to_voxel
    array([0, 0, 1])
    """
    xp = array_module(points, feats, batch_index)
    # native byte order on entry: results are native whatever came in
    points, feats, batch_index = (native(a) for a in (points, feats, batch_index))
    if not isinstance(reduce, str) or reduce not in REDUCTIONS:
        raise ValueError(
            f"reduce must be one of {', '.join(repr(r) for r in REDUCTIONS)}, got {reduce!r}"
        )
    points = _check_points(points, xp)
    n_points, ndim = points.shape
    scale = _per_axis("voxel_size", voxel_size, ndim, xp)
    if not bool(xp.all(scale > 0)) or not bool(xp.all(xp.isfinite(scale))):
        raise ValueError(
            f"voxel_size must be positive and finite, got {scale.tolist()}"
        )
    if origin is None:
        shift = xp.zeros((ndim,), dtype=xp.float64)
    else:
        shift = _per_axis("origin", origin, ndim, xp)
        if not bool(xp.all(xp.isfinite(shift))):
            raise ValueError(f"origin must be finite, got {shift.tolist()}")
    feats = _check_feats(feats, n_points, reduce, xp)
    batch = _check_batch_index(batch_index, n_points, xp)

    if n_points == 0:
        coords = xp.zeros((0, 1 + ndim), dtype=xp.int32)
        point_to_voxel = xp.zeros((0,), dtype=xp.int64)
        voxel_feats = None
        if feats is not None:
            voxel_feats = xp.zeros(
                (0,) + tuple(feats.shape[1:]), dtype=_reduced_dtype(feats.dtype, reduce, xp)
            )
        return coords, voxel_feats, point_to_voxel

    # float32 - float64 promotes to float64, so the cells are computed in float64.
    cells = points - shift
    cells /= scale
    xp.floor(cells, out=cells)
    low, high = float(cells.min()), float(cells.max())
    if low < _INT32_MIN or high > _INT32_MAX:
        raise ValueError(
            "points / voxel_size give voxel coordinates outside the int32 range "
            f"[{_INT32_MIN}, {_INT32_MAX}]: got [{low:.0f}, {high:.0f}]; use a larger "
            "voxel_size or an origin closer to the points"
        )

    backend = backend_for(cells, batch)
    order, starts, voxel_of_sorted = _sort_rows(batch, cells, xp)
    point_to_voxel = xp.empty((n_points,), dtype=xp.int64)
    point_to_voxel[order] = voxel_of_sorted
    # The lowest point index of each voxel (the sort is not stable).
    first_point = backend.reduce_runs(order, starts, "min")

    coords = xp.empty((starts.shape[0], 1 + ndim), dtype=xp.int32)
    coords[:, 0] = batch[first_point]
    coords[:, 1:] = cells[first_point]

    voxel_feats = None
    if feats is not None:
        voxel_feats = _reduce_feats(
            feats, order, starts, voxel_of_sorted, first_point, reduce, backend
        )
    return coords, voxel_feats, point_to_voxel


@short_switch_interval
def devoxelize(voxel_feats, point_to_voxel):
    """Send voxel features back to the points: ``voxel_feats[point_to_voxel]``.

    Every point reads the features of the voxel that contains it (nearest
    voxel, no interpolation).

    Parameters
    ----------
    voxel_feats : array, shape (M, C) or (M,)
        Features of the voxels, in the row order of the ``coords`` returned by
        :func:`voxelize` (or of any tensor derived from them with the same rows).
    point_to_voxel : integer array, shape (N,)
        Voxel row of every point, values in [0, M), as returned by
        :func:`voxelize`.

    Returns
    -------
    point_feats : array, shape (N, C) or (N,)
        Same dtype as ``voxel_feats``.

    Raises
    ------
    TypeError
        If ``point_to_voxel`` is not an integer array.
    ValueError
        If a shape is wrong or an entry of ``point_to_voxel`` is outside [0, M).
    """
    xp = array_module(voxel_feats, point_to_voxel)
    voxel_feats = native(xp.asarray(voxel_feats))
    point_to_voxel = native(xp.asarray(point_to_voxel))
    if voxel_feats.ndim not in (1, 2):
        raise ValueError(
            f"voxel_feats must have shape (M, C) or (M,), got {tuple(voxel_feats.shape)}"
        )
    if point_to_voxel.ndim != 1:
        raise ValueError(
            f"point_to_voxel must have shape (N,), got {tuple(point_to_voxel.shape)}"
        )
    if point_to_voxel.size == 0 and point_to_voxel.dtype == xp.float64:
        point_to_voxel = point_to_voxel.astype(xp.int64)  # xp.asarray([])
    if not np.issubdtype(point_to_voxel.dtype, np.integer):
        raise TypeError(
            f"point_to_voxel must be an integer array, got dtype {point_to_voxel.dtype}"
        )
    n_voxels = voxel_feats.shape[0]
    if point_to_voxel.size:
        low, high = int(point_to_voxel.min()), int(point_to_voxel.max())
        if low < 0 or high >= n_voxels:
            raise ValueError(
                f"point_to_voxel must lie in [0, M) with M = {n_voxels} rows of "
                f"voxel_feats, got values in [{low}, {high}]"
            )
    return voxel_feats[point_to_voxel]
