"""Conversion between sparse tensors and dense grids.

A sparse tensor (batch + D integer coordinates per row, features per row) is
the set of non-zero sites of a dense array of shape (B, C, *spatial)
(channels first, like PyTorch's NCDHW) or (B, *spatial, C) (channels last).
The dense box starts at an integer ``origin`` (D,) so that negative
coordinates work:

    dense[b, :, x1 - origin_1, ..., xD - origin_D] = feats[row]
    for every row (b, x1, ..., xD) of coords.

``to_dense`` / ``scatter_to_dense`` build the dense array, ``from_dense``
keeps the non-zero (or masked) sites, ``gather_from_dense`` reads a dense
array at given coordinates (the adjoint of the scatter). The scatter and the
gather run on the backend of the arrays
(:meth:`~cusparseconv.backends.protocol.Backend.scatter_to_grid`,
:meth:`~cusparseconv.backends.protocol.Backend.gather_from_grid`).
"""

import math

import numpy as np

from ._arrays import array_module, to_host
from ._checks import check_coords, per_axis
from ._switch import short_switch_interval
from .backends import backend_for
from .coords import mixed_radix_keys
from .tensor import SparseTensor

__all__ = [
    "to_dense",
    "scatter_to_dense",
    "from_dense",
    "gather_from_dense",
    "MAX_DENSE_ELEMENTS",
]

#: Largest dense array (B * C * prod(spatial_shape) elements) that
#: ``to_dense`` / ``scatter_to_dense`` will allocate. Larger requests raise
#: ValueError: crop with ``origin``/``spatial_shape`` or pool the tensor first.
MAX_DENSE_ELEMENTS = 2**31

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def _check_int_vector(name, value, ndim, allow_negative=True):
    """A scalar or length-``ndim`` sequence of integers, as an int64 (ndim,) array."""
    return np.asarray(per_axis(value, ndim, name, minimum=None if allow_negative else 0),
                      dtype=np.int64).reshape(ndim)


def _check_inside_box(low, high, origin, spatial_shape):
    """Raise ValueError unless the per-axis coordinate span [low, high] (D,) lies in
    the dense box [origin, origin + spatial_shape)."""
    outside = (low < origin) | (high >= origin + spatial_shape)
    if outside.any():
        axis = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"coords lie outside the dense box [origin, origin + spatial_shape) on "
            f"spatial axis {axis}: coordinates span [{low[axis]}, {high[axis]}], "
            f"origin is {origin.tolist()}, spatial_shape is {np.asarray(spatial_shape).tolist()}"
        )


def _check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_channels_last(channels_last):
    return _check_flag(channels_last, "channels_last")


@short_switch_interval
def scatter_to_dense(coords, feats, spatial_shape=None, origin=None, batch_size=None,
                     channels_last=False, return_mask=False):
    """Scatter sparse rows into a zero-filled dense array.

    ``dense[b, :, x - origin] = feats[row]`` for every row ``(b, *x)`` of
    ``coords`` (channels first), or ``dense[b, x - origin, :]`` with
    ``channels_last``; every other entry is zero.

    Parameters
    ----------
    coords : integer array, shape (N, 1 + D), D in 1..4
        Unique rows; column 0 is the (non-negative) batch index.
    feats : array, shape (N, C)
        Features of the rows; the dense array has their dtype.
    spatial_shape : sequence of D non-negative ints, optional
        Size of the dense box per spatial axis. Default: ``max - origin + 1``
        of the coordinates (0 on every axis when there are no rows).
    origin : sequence of D ints, optional
        Coordinate of dense index 0 on each axis. Default: the per-axis minimum
        coordinate (0 when there are no rows), so negative coordinates work.
    batch_size : int, optional
        Number of batch items B. Default: ``max(coords[:, 0]) + 1`` (0 when
        there are no rows).
    channels_last : bool, default False
        Return (B, *spatial, C) instead of (B, C, *spatial).
    return_mask : bool, default False
        Also return the occupancy mask: True at the sites of the rows. Pass
        it to :func:`from_dense` as ``mask=`` to get every row back, rows
        whose features are all zero included.

    Returns
    -------
    dense : array, shape (B, C, *spatial_shape) or (B, *spatial_shape, C)
        Same dtype and array module as ``feats``.
    origin : int64 array, shape (D,)
        The origin used (pass it to :func:`gather_from_dense` or
        :func:`from_dense` to get the same coordinates back).
    mask : bool array, shape (B, *spatial_shape)
        Only with ``return_mask``.

    Raises
    ------
    TypeError
        If coords, origin or spatial_shape are not integers.
    ValueError
        If a shape is wrong, rows are duplicated, a coordinate lies outside
        ``[origin, origin + spatial_shape)``, a batch index is negative or
        not below ``batch_size``, or the dense array would have more than
        ``MAX_DENSE_ELEMENTS`` elements (the mask counts as one channel).
    """
    xp = array_module(coords, feats)
    coords = check_coords(xp.asarray(coords), "coords")
    channels_last = _check_channels_last(channels_last)
    return_mask = _check_flag(return_mask, "return_mask")
    n_rows, ndim = coords.shape[0], coords.shape[1] - 1
    feats = xp.asarray(feats)
    backend = backend_for(coords, feats)
    if feats.ndim != 2 or feats.shape[0] != n_rows:
        raise ValueError(
            f"feats must have shape (N, C) with N = {n_rows} (the rows of coords), "
            f"got {tuple(feats.shape)}"
        )
    n_channels = feats.shape[1]
    if n_rows:
        low = to_host(coords[:, 1:].min(axis=0)).astype(np.int64)
        high = to_host(coords[:, 1:].max(axis=0)).astype(np.int64)
        max_batch = int(coords[:, 0].max())
    else:
        low = high = np.zeros((ndim,), dtype=np.int64)
        max_batch = -1

    origin = low if origin is None else _check_int_vector("origin", origin, ndim)
    if spatial_shape is None:
        spatial_shape = np.maximum(high - origin + 1, 0) if n_rows else np.zeros_like(origin)
    else:
        spatial_shape = _check_int_vector("spatial_shape", spatial_shape, ndim,
                                          allow_negative=False)
    if n_rows:
        _check_inside_box(low, high, origin, spatial_shape)

    if batch_size is None:
        batch_size = max_batch + 1
    else:
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(
            batch_size, (int, np.integer)
        ):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
        batch_size = int(batch_size)
        if batch_size < 0:
            raise ValueError(f"batch_size must be non-negative, got {batch_size}")
        if max_batch >= batch_size:
            raise ValueError(
                f"coords batch index must be below batch_size = {batch_size}, got "
                f"maximum {max_batch}"
            )

    spatial = tuple(int(size) for size in spatial_shape)
    n_sites = math.prod(spatial)
    n_elements = batch_size * (n_channels + return_mask) * n_sites
    if n_elements > MAX_DENSE_ELEMENTS:
        raise ValueError(
            f"the dense array would have {n_elements} elements (batch_size {batch_size} "
            f"x {n_channels + return_mask} channels{' (mask included)' if return_mask else ''}"
            f" x spatial_shape {list(spatial)}), above "
            f"MAX_DENSE_ELEMENTS = {MAX_DENSE_ELEMENTS}; pass a smaller spatial_shape/"
            "origin to crop, or pool the tensor to a coarser stride first"
        )

    # Flat site index b * prod(spatial) + (x - origin) in C order.
    site = mixed_radix_keys(
        [coords[:, 0]] + [coords[:, 1 + axis].astype(xp.int64) - int(origin[axis])
                          for axis in range(ndim)], (batch_size,) + spatial)
    if n_rows > 1:
        sorted_site = xp.sort(site)
        n_duplicates = int(xp.count_nonzero(sorted_site[1:] == sorted_site[:-1]))
        if n_duplicates:
            raise ValueError(
                f"coords must have unique rows, got {n_duplicates} duplicated rows"
            )

    dense = backend.scatter_to_grid(feats, site, (batch_size,) + spatial, channels_last)
    if not return_mask:
        return dense, xp.asarray(origin)
    occupied = backend.scatter_to_grid(xp.ones((n_rows, 1), dtype=xp.bool_), site,
                                       (batch_size,) + spatial, True)
    return dense, xp.asarray(origin), occupied.reshape((batch_size,) + spatial)


@short_switch_interval
def to_dense(x, spatial_shape=None, origin=None, channels_last=False, batch_size=None,
             return_mask=False):
    """Dense array of a sparse tensor.

    Equivalent to ``scatter_to_dense(x.coords, x.feats, ...)``; see that
    function for the parameters. The coordinates are used as stored (in units
    of the tensor stride ``x.stride``).

    A tensor of an adapter (``cusparseconv.torch.SparseTensor``) defines
    ``__cusparseconv_dense__`` and gets its framework's differentiable
    version, with the same arguments and results as framework tensors.

    Parameters
    ----------
    x : SparseTensor
        ``x.coords`` int32 (N, 1 + D), ``x.feats`` (N, C).
    spatial_shape, origin, channels_last, batch_size, return_mask
        As in :func:`scatter_to_dense`.

    Returns
    -------
    dense : array, shape (B, C, *spatial_shape) or (B, *spatial_shape, C)
    origin : int64 array, shape (D,)
    mask : bool array, shape (B, *spatial_shape)
        Only with ``return_mask``: the sites of the rows (``from_dense(dense,
        origin=origin, mask=mask)`` gives every row back).

    Examples
    --------
    >>> import numpy as np
    >>> from cusparseconv.tensor import SparseTensor
    >>> x = SparseTensor(np.array([[0, -1], [0, 1]], dtype=np.int32),
    ...                  np.array([[1.0], [2.0]]))
    >>> dense, origin = to_dense(x)
    >>> dense
    array([[[1., 0., 2.]]])
    >>> origin
    array([-1])
    """
    adapter_dense = getattr(type(x), "__cusparseconv_dense__", None)
    if adapter_dense is not None:
        return adapter_dense(x, spatial_shape=spatial_shape, origin=origin,
                             channels_last=channels_last, batch_size=batch_size,
                             return_mask=return_mask)
    if not (hasattr(x, "coords") and hasattr(x, "feats")):
        raise TypeError(
            f"x must be a SparseTensor (with .coords and .feats), got "
            f"{type(x).__name__}; use scatter_to_dense for plain arrays"
        )
    return scatter_to_dense(
        x.coords, x.feats, spatial_shape=spatial_shape, origin=origin,
        batch_size=batch_size, channels_last=channels_last, return_mask=return_mask,
    )


def _check_dense(dense, channels_last, xp):
    dense = xp.asarray(dense)
    if not 3 <= dense.ndim <= 6:
        layout = "(B, *spatial, C)" if channels_last else "(B, C, *spatial)"
        raise ValueError(
            f"dense must have shape {layout} with 1..4 spatial axes, got "
            f"{tuple(dense.shape)}"
        )
    return dense


@short_switch_interval
def from_dense(dense, channels_last=False, origin=None, stride=1, mask=None):
    """Sparse tensor of the non-zero sites of a dense array.

    A site ``(b, *x)`` is kept when any of its channels is non-zero (NaN counts
    as non-zero), or, when ``mask`` is given, where ``mask[b, *x]`` is True.

    Parameters
    ----------
    dense : array, shape (B, C, *spatial) or (B, *spatial, C), 1..4 spatial axes
    channels_last : bool, default False
        Layout of ``dense``.
    origin : sequence of D ints, optional
        Coordinate of dense index 0 on each axis (default 0); the coordinates
        are ``index + origin``.
    stride : int or sequence of D ints, default 1
        Tensor stride of the result.
    mask : bool array, shape (B, *spatial), optional
        Sites to keep, instead of the non-zero test. Without it a row whose
        features are all zero (after a ReLU, say) is dropped; with the mask
        of ``to_dense(x, return_mask=True)`` every row of ``x`` comes back
        (in sorted order).

    Returns
    -------
    SparseTensor
        ``coords`` int32 (N, 1 + D), rows sorted lexicographically by
        (batch, x1, ..., xD); ``feats`` (N, C) with the dtype of ``dense``.

    Raises
    ------
    TypeError
        If ``mask`` is not boolean or ``origin`` is not integer.
    ValueError
        If a shape is wrong or a coordinate does not fit in int32.
    """
    coords, feats = _dense_to_rows(dense, channels_last, origin, mask)
    return SparseTensor(coords, feats, stride=stride)


def _dense_to_rows(dense, channels_last, origin, mask):
    """The (coords, feats) arrays behind :func:`from_dense`."""
    xp = array_module(dense, mask)
    channels_last = _check_channels_last(channels_last)
    dense = _check_dense(dense, channels_last, xp)
    ndim = dense.ndim - 2
    if channels_last:
        spatial = tuple(dense.shape[1:-1])
        channels_at_end = dense
    else:
        spatial = tuple(dense.shape[2:])
        channels_at_end = xp.moveaxis(dense, 1, -1)
    origin = (
        np.zeros((ndim,), dtype=np.int64)
        if origin is None
        else _check_int_vector("origin", origin, ndim)
    )
    site_shape = (dense.shape[0],) + spatial
    if mask is None:
        mask = xp.any(channels_at_end != 0, axis=-1)
    else:
        mask = xp.asarray(mask)
        if mask.shape != site_shape:
            raise ValueError(
                f"mask must have shape (B, *spatial) = {site_shape} to match dense "
                f"{tuple(dense.shape)}, got {tuple(mask.shape)}"
            )
        if mask.dtype != xp.bool_:
            raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}")
    # nonzero returns the indices in C order: sorted by (batch, x1, ..., xD).
    indices = xp.nonzero(mask)
    feats = channels_at_end[indices]
    high = origin + np.asarray(spatial, dtype=np.int64) - 1
    if (spatial and min(spatial) > 0 and
            (origin.min() < _INT32_MIN or high.max() > _INT32_MAX)):
        raise ValueError(
            f"origin {origin.tolist()} + the spatial shape {list(spatial)} of dense give "
            "coordinates that do not fit in int32"
        )
    coords = xp.empty((indices[0].shape[0], 1 + ndim), dtype=xp.int32)
    coords[:, 0] = indices[0]
    for axis in range(ndim):
        coords[:, 1 + axis] = indices[1 + axis] + int(origin[axis])
    return coords, feats


@short_switch_interval
def gather_from_dense(dense, coords, origin, channels_last=False):
    """Read a dense array at sparse coordinates.

    ``out[row] = dense[b, :, x - origin]`` for every row ``(b, *x)`` of
    ``coords`` (the adjoint of :func:`scatter_to_dense`).

    Parameters
    ----------
    dense : array, shape (B, C, *spatial) or (B, *spatial, C), 1..4 spatial axes
    coords : integer array, shape (N, 1 + D)
        Rows to read; column 0 is the batch index.
    origin : sequence of D ints
        Coordinate of dense index 0 on each axis (as returned by
        :func:`to_dense`).
    channels_last : bool, default False
        Layout of ``dense``.

    Returns
    -------
    feats : array, shape (N, C)
        Same dtype as ``dense``.

    Raises
    ------
    ValueError
        If a shape is wrong or a row of ``coords`` lies outside the dense box.
    """
    xp = array_module(dense, coords)
    channels_last = _check_channels_last(channels_last)
    dense = _check_dense(dense, channels_last, xp)
    coords = check_coords(xp.asarray(coords), "coords")
    backend = backend_for(dense, coords)
    ndim = dense.ndim - 2
    if coords.shape[1] - 1 != ndim:
        raise ValueError(
            f"coords must have 1 + D = {1 + ndim} columns to match the {ndim} spatial "
            f"axes of dense {tuple(dense.shape)}, got {coords.shape[1]}"
        )
    origin = _check_int_vector("origin", origin, ndim)
    spatial = tuple(dense.shape[1:-1]) if channels_last else tuple(dense.shape[2:])
    if coords.shape[0]:
        low = to_host(coords.min(axis=0)).astype(np.int64)
        high = to_host(coords.max(axis=0)).astype(np.int64)
        if high[0] >= dense.shape[0]:
            raise ValueError(
                f"coords batch index must be below the batch size {dense.shape[0]} of "
                f"dense, got maximum {high[0]}"
            )
        _check_inside_box(low[1:], high[1:], origin, np.asarray(spatial, dtype=np.int64))
    site = mixed_radix_keys(
        [coords[:, 0]] + [coords[:, 1 + axis].astype(xp.int64) - int(origin[axis])
                          for axis in range(ndim)], (dense.shape[0],) + spatial)
    return backend.gather_from_grid(dense, site, channels_last)
