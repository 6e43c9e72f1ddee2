"""Argument validation shared by the public functions.

Every check raises ``TypeError`` or ``ValueError`` whose message names the
argument, states what was expected and shows what was given, so that a user
can fix the call without reading the library's source.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

#: Feature dtypes the products accept (bfloat16 through ml_dtypes or DLPack).
FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


def per_axis(value, ndim: int, name: str, minimum: int | None = 1,
             maximum: int | None = None) -> tuple[int, ...]:
    """Expand an int or a length-``ndim`` sequence of ints to a tuple.

    Parameters
    ----------
    value : int or sequence of int
        The user's argument.
    ndim : int
        Number of spatial axes D.
    name : str
        Argument name used in error messages.
    minimum : int or None
        Smallest allowed value (inclusive); None for no bound.
    maximum : int or None
        Largest allowed value (inclusive); None for no bound.
    """
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        values = (int(value),) * ndim
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise TypeError(
                f"{name} must be an int or a sequence of {ndim} ints, got {value!r}"
            ) from None
        if len(values) != ndim or not all(
            isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)
            for v in values
        ):
            raise ValueError(
                f"{name} must be an int or a sequence of {ndim} ints (one per spatial "
                f"axis), got {value!r}"
            )
        values = tuple(int(v) for v in values)
    if minimum is not None and any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum} on every axis, got {value!r}")
    if maximum is not None and any(v > maximum for v in values):
        raise ValueError(f"{name} must be <= {maximum} on every axis, got {value!r}")
    return values


#: Largest stride (and tensor stride factor) on any axis: stride * coordinate
#: stays exact in int64 and the GPU kernels take int32 strides.
MAX_STRIDE = 2**31 - 1


def native(array):
    """``array`` in native byte order (a converted copy for ``>f8``-style NumPy arrays).

    Every public entry point normalises its arrays with this, so the backends
    only ever see native byte order.
    """
    dtype = getattr(array, "dtype", None)
    if dtype is not None and not dtype.isnative and isinstance(array, np.ndarray):
        return array.astype(dtype.newbyteorder("="))
    return array


def check_same_dtype(reference, reference_name: str, **others) -> None:
    """Raise TypeError when an array in ``others`` has another dtype than ``reference``.

    The rule of every entry point (as in PyTorch): features, weight, bias and
    gradients share one dtype; nothing is cast implicitly.
    """
    for name, value in others.items():
        if value is not None and value.dtype != reference.dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but {reference_name} has {reference.dtype}; "
                f"cast one of them (e.g. {name}.astype({reference_name}.dtype)): the "
                f"products never cast implicitly")


_ADD_BATCH = ("if these rows are (x, y, z, ...) without a batch column, prepend one: "
              "numpy.hstack([numpy.zeros((len(coords), 1), numpy.int32), coords])")


def check_coords(coords, name: str = "coords", xp=np, ndim: int | None = None):
    """Validate a coordinate array and return it as int32 of shape (N, 1 + D).

    Integer arrays of any width and byte order are accepted and converted to
    native int32 when their values fit; float, bool and other dtypes are
    refused. With ``ndim``, the array must have exactly ``1 + ndim`` columns.
    """
    if not hasattr(coords, "dtype") or not hasattr(coords, "shape"):
        coords = np.asarray(coords)
    if coords.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer array (int32 preferred), got dtype {coords.dtype}"
        )
    if ndim is not None:
        if not isinstance(ndim, (int, np.integer)) or not 1 <= ndim <= 4:
            raise ValueError(f"ndim must be an int in 1..4, got {ndim!r}")
        if coords.ndim != 2 or coords.shape[1] != 1 + ndim:
            hint = ""
            if coords.ndim == 2 and coords.shape[1] == ndim:
                hint = f"; {_ADD_BATCH}"
            raise ValueError(
                f"{name} must have shape (N, 1 + D) = (N, {1 + ndim}) for ndim={ndim} "
                f"(column 0 is the batch index), got {tuple(coords.shape)}{hint}")
    if coords.ndim != 2 or not 2 <= coords.shape[1] <= 5:
        raise ValueError(
            f"{name} must have shape (N, 1 + D) with D in 1..4 (column 0 is the batch "
            f"index), got {tuple(coords.shape)}"
        )
    if coords.dtype != np.int32:
        if coords.shape[0]:
            low, high = int(coords.min()), int(coords.max())
            if low < -(2**31) or high >= 2**31:
                raise ValueError(
                    f"{name} values must fit in int32, got range [{low}, {high}]"
                )
        coords = coords.astype(np.int32)
    if coords.shape[0] and int(coords[:, 0].min()) < 0:
        raise ValueError(
            f"{name} column 0 is the batch index and must be >= 0, "
            f"got minimum {int(coords[:, 0].min())}; {_ADD_BATCH}"
        )
    return coords


#: A column 0 reaching this value with D = 2 is more likely an x axis than a
#: batch index (see :func:`warn_if_batch_looks_spatial`).
SUSPICIOUS_BATCH = 1024


def warn_if_batch_looks_spatial(coords, name: str = "coords") -> None:
    """Warn when (N, 3) coordinates look like (x, y, z) without a batch column.

    Three columns are read as (batch, x, y): D = 2. A column 0 reaching
    ``SUSPICIOUS_BATCH`` (1024 batch items) is far more often an x axis; an
    explicit ``ndim=2`` confirms 2-D data and skips this check.
    """
    if coords.shape[1] != 3 or coords.shape[0] == 0:
        return
    high = int(coords[:, 0].max())
    if high >= SUSPICIOUS_BATCH:
        warnings.warn(
            f"{name} has 3 columns, read as (batch, x, y) with D = 2, and column 0 "
            f"reaches {high} ({high + 1} batch items?); {_ADD_BATCH}. Pass ndim=2 to "
            f"confirm 2-D coordinates and silence this warning",
            UserWarning, stacklevel=3)


def check_feats(feats, n_rows: int, name: str = "feats"):
    """Validate a feature array of shape (N, C) with a supported float dtype."""
    if not hasattr(feats, "dtype") or not hasattr(feats, "shape"):
        feats = np.asarray(feats)
    feats = native(feats)
    if feats.dtype.name not in FLOAT_DTYPE_NAMES:
        raise TypeError(
            f"{name} must have a floating dtype in {FLOAT_DTYPE_NAMES}, got {feats.dtype}"
        )
    if feats.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C), got {tuple(feats.shape)}")
    if feats.shape[0] != n_rows:
        raise ValueError(
            f"{name} must have one row per coordinate row: expected {n_rows} rows, "
            f"got {feats.shape[0]}"
        )
    return feats


def check_finite(array, name: str) -> None:
    """Raise ValueError if ``array`` holds NaN or Inf (opt-in check)."""
    from ._arrays import array_module

    xp = array_module(array)
    if array.size and not bool(xp.isfinite(array).all()):
        n_bad = int((~xp.isfinite(array)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or Inf values")
