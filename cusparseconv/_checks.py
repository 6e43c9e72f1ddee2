"""Argument validation shared by the public functions.

Every check raises ``TypeError`` or ``ValueError`` whose message names the
argument, states what was expected and shows what was given, so that a user
can fix the call without reading the library's source.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from ._arrays import array_module
from ._dtypes import FLOAT_DTYPE_NAMES


def _is_number(value, kind) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind is int:
        return isinstance(value, (numbers.Integral, np.integer))
    return isinstance(value, (numbers.Real, np.integer, np.floating))


def per_axis(value, ndim: int, name: str, minimum=1, maximum=None, kind=int) -> tuple:
    """Expand a number or a length-``ndim`` sequence to a tuple of ``ndim`` numbers.

    The one parser of per-axis arguments (stride, kernel size, dilation, dense
    origins and shapes, voxel sizes).

    Parameters
    ----------
    value : number, sequence, or NumPy / CuPy array of shape () or (ndim,)
        The user's argument.
    ndim : int
        Number of spatial axes D.
    name : str
        Argument name used in error messages.
    minimum, maximum : number or None
        Bounds (inclusive) every entry must respect; None for no bound.
    kind : int or float
        ``int``: integer entries (bool refused), returned as Python ints;
        ``float``: real entries, returned as Python floats.

    Raises
    ------
    TypeError
        An entry that is not a number of that kind.
    ValueError
        A sequence of the wrong length, or an entry outside the bounds.
    """
    noun, plural = ("an int", "ints") if kind is int else ("a number", "numbers")
    if hasattr(value, "get") and not isinstance(value, np.ndarray):
        value = value.get()                               # a CuPy array: its host copy
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim else value.item()
    if _is_number(value, kind):
        values = (kind(value),) * ndim
    else:
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name} must be {noun} or a sequence of D = {ndim} {plural}, "
                            f"got {value!r}")
        try:
            values = tuple(value)
        except TypeError:
            raise TypeError(f"{name} must be {noun} or a sequence of D = {ndim} {plural}, "
                            f"got {value!r}") from None
        if len(values) != ndim:
            raise ValueError(f"{name} must be {noun} or have D = {ndim} entries (one per "
                             f"spatial axis), got {len(values)} entries: {value!r}")
        if not all(_is_number(v, kind) for v in values):
            raise TypeError(f"{name} must be {noun} or a sequence of D = {ndim} {plural}, "
                            f"got {value!r}")
        values = tuple(kind(v) for v in values)
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
    xp = array_module(array)
    if array.size and not bool(xp.isfinite(array).all()):
        n_bad = int((~xp.isfinite(array)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or Inf values")


def check_float_array(value, name: str):
    """An array (NumPy for anything else) of a dtype in FLOAT_DTYPE_NAMES, native order."""
    if not hasattr(value, "dtype"):
        value = np.asarray(value)
    value = native(value)
    if value.dtype.name not in FLOAT_DTYPE_NAMES:
        raise TypeError(f"{name} must be a floating array ({', '.join(FLOAT_DTYPE_NAMES)}), "
                        f"got dtype {value.dtype}")
    return value


def check_out(out, shape, dtype, **inputs):
    """Validate an ``out=`` array for a result of ``shape`` and ``dtype``.

    The result is written into ``out`` (not into a copy), so it must be a
    C-contiguous, writeable array of exactly that shape and dtype, sharing no
    memory with the inputs (``inputs``: name -> array or None). Returns ``out``.
    """
    if out is None:
        return None
    if not hasattr(out, "dtype") or not hasattr(out, "shape") or not hasattr(out, "flags"):
        raise TypeError(f"out must be a NumPy or CuPy array, got {type(out).__name__}")
    shape = tuple(int(n) for n in shape)
    if tuple(out.shape) != shape or out.dtype != np.dtype(dtype):
        raise ValueError(f"out must have shape {shape} and dtype {np.dtype(dtype)} (the "
                         f"result's), got shape {tuple(out.shape)} and dtype {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (the result is written into it in place); "
                         "pass numpy.ascontiguousarray(out) or a new array")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError("out is read-only")
    xp = array_module(out)
    for name, array in inputs.items():
        if array is None or array_module(array) is not xp:   # another device: refused later
            continue
        if bool(xp.may_share_memory(out, array)):
            raise ValueError(f"out shares memory with {name}; the result would overwrite "
                             f"its own input: pass a separate array")
    return out
