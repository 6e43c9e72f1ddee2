"""Argument validation shared by the public functions.

Every check raises ``TypeError`` or ``ValueError`` whose message names the
argument, states what was expected and shows what was given, so that a user
can fix the call without reading the library's source.
"""

from __future__ import annotations

import numbers

import numpy as np

#: Feature dtypes the products accept (bfloat16 through ml_dtypes or DLPack).
FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


def per_axis(value, ndim: int, name: str, minimum: int | None = 1) -> tuple[int, ...]:
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
    return values


def check_coords(coords, name: str = "coords", xp=np):
    """Validate a coordinate array and return it as int32 of shape (N, 1 + D).

    Integer arrays of any width are accepted and converted to int32 when their
    values fit; float, bool and other dtypes are refused.
    """
    if not hasattr(coords, "dtype") or not hasattr(coords, "shape"):
        coords = np.asarray(coords)
    if coords.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be an integer array (int32 preferred), got dtype {coords.dtype}"
        )
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
            f"got minimum {int(coords[:, 0].min())}"
        )
    return coords


def check_feats(feats, n_rows: int, name: str = "feats"):
    """Validate a feature array of shape (N, C) with a supported float dtype."""
    if not hasattr(feats, "dtype") or not hasattr(feats, "shape"):
        feats = np.asarray(feats)
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
