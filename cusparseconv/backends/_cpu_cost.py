"""Cost model of the CPU products, calibrated on the machine that runs them.

The CPU products are built from four kinds of NumPy/SciPy calls, and the
time of each grows linearly with the rows it touches:

=============  ===========================================  =======================
name           call                                         cost
=============  ===========================================  =======================
``gemm``       ``rows (n, C_in) @ W (C_in, C_out)``         ``call + n * gemm_row``
``take``       ``src.take(rows, axis=0)`` of n rows, before  ``n * take_row``
               their product (what it adds to the product
               of as many consecutive rows)
``reduce``     ``csr (m, P) @ products (P, C)``, one entry   ``nnz * reduce_entry``
               per pair
``dense``      one output row of the dense product:         ``dense_row``
               |K| row gathers and a row of ``(n, |K| C_in)
               @ (|K| C_in, C_out)``
=============  ===========================================  =======================

:func:`costs` measures them once per process and shape (a few milliseconds:
small products of the shape in question, the fastest of several runs, so
that a busy moment of a shared machine does not skew them) and the plans
(:mod:`cusparseconv.backends._cpu_plan`) compare the predicted times of
their choices: per block of output rows and offset, a gather of the paired
input rows or a product over the whole window of input rows they span; per
product, the blocked or the dense algorithm.

The constants only decide *how* a product runs, never what it computes: every
choice sums the same terms in the same order per output row except the dense
product (one long dot product per output row), which is only chosen when it
is predicted clearly faster (:data:`DENSE_MARGIN`).
"""

from __future__ import annotations

import threading
import time

import numpy as np

__all__ = ["Costs", "costs", "DENSE_MARGIN"]

#: The dense product is chosen only when predicted this much faster than the blocked one.
DENSE_MARGIN = 0.85
_ROWS = 2048          # rows of the calibration products (about one block's item)
_REPEATS = 7
_TABLE_ROWS = 65536   # source rows of the gathers (beyond L2 at C >= 16, like real inputs)

_memo: dict = {}
_lock = threading.Lock()


class Costs:
    """Measured seconds of the product's building blocks for one shape.

    Attributes
    ----------
    gemm_call : float
        Fixed seconds per ``matmul`` call (Python and BLAS entry).
    gemm_row : float
        Seconds per row of ``(n, c_in) @ (c_in, c_out)``.
    take_row : float
        Seconds per row gathered from a ``c_in``-wide table.
    reduce_entry : float
        Seconds per pair of the sparse reduction into ``c_out``-wide rows.
    dense_row : float
        Seconds per output row of the dense product with ``kernel_volume`` slots.
    """

    __slots__ = ("gemm_call", "gemm_row", "take_row", "reduce_entry", "dense_row")

    def __init__(self, gemm_call, gemm_row, take_row, reduce_entry, dense_row):
        self.gemm_call = gemm_call
        self.gemm_row = gemm_row
        self.take_row = take_row
        self.reduce_entry = reduce_entry
        self.dense_row = dense_row

    def __repr__(self) -> str:
        return ("Costs(" + ", ".join(f"{name}={getattr(self, name) * 1e9:.1f} ns"
                                     for name in self.__slots__) + ")")


def _fastest_of_each(functions: dict, rounds: int = _REPEATS) -> dict:
    """The fastest run of each function over ``rounds`` rounds that run every function
    once in turn: constants measured side by side see the same phases of a busy
    machine, so their ratios (what the plans compare) stay steady."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _measure(c_in: int, c_out: int, kernel_volume: int, dtype: np.dtype) -> Costs:
    import scipy.sparse

    from .._threads import blas_pinned

    rng = np.random.default_rng(0)
    table = rng.standard_normal((_TABLE_ROWS, c_in)).astype(dtype)
    weight = rng.standard_normal((c_in, c_out)).astype(dtype)
    # the rows a block gathers for one offset: increasing, about half of a range (the
    # pairs of one offset over a block of output rows of a scan)
    rows = np.sort(rng.choice(2 * _ROWS, _ROWS, replace=False))
    gathered = table[:_ROWS].copy()
    out = np.empty((_ROWS, c_out), dtype=dtype)

    # the sum: ~9 entries per row scattered over a block's products
    per_row = 9
    products = rng.standard_normal((_ROWS * per_row, c_out)).astype(dtype)
    indices = rng.permutation(_ROWS * per_row).reshape(_ROWS, per_row)
    indices.sort(axis=1)
    matrix = scipy.sparse.csr_array(
        (np.ones(indices.size, dtype=dtype), indices.ravel().astype(np.int32),
         np.arange(0, indices.size + 1, per_row, dtype=np.int32)),
        shape=(_ROWS, products.shape[0]))

    # the dense product: |K| gathers per row and one (n, |K| c_in) @ (|K| c_in, c_out)
    dense_rows = max(64, min(_ROWS, (1 << 19) // max(kernel_volume * c_in, 1)))
    neighbour = rng.integers(-1, _TABLE_ROWS, (dense_rows, kernel_volume))
    neighbour.sort(axis=0)
    flat_weight = rng.standard_normal((kernel_volume * c_in, c_out)).astype(dtype)
    dense_out = np.empty((dense_rows, c_out), dtype=dtype)

    def dense():
        block = table.take(neighbour, axis=0, mode="wrap")
        block[neighbour < 0] = 0
        np.matmul(block.reshape(dense_rows, -1), flat_weight, out=dense_out)

    # a window: a slice of the table multiplied as it is (a different slice each time, as
    # the blocks of a product are); a gather: the rows taken, then multiplied while hot
    places = iter(range(1 << 62))

    def place() -> int:    # a different part of the table each time, as blocks are
        return (next(places) * 2 * _ROWS) % (_TABLE_ROWS - 2 * _ROWS)

    def window():
        first = place()
        np.matmul(table[first:first + _ROWS], weight, out=out)

    def gather():
        np.matmul(table.take(rows + place(), axis=0), weight, out=out)

    with blas_pinned():   # one BLAS thread, as inside the products
        small = _fastest_of_each(
            {"small": lambda: np.matmul(gathered[:16], weight, out=out[:16])}, 3 * _REPEATS)
        best = _fastest_of_each({
            "window": window,
            "gather": gather,
            "reduce": lambda: matrix @ products,
            "dense": dense,
        }) | small
    gemm_row = max(best["window"] - best["small"], 1e-12) / (_ROWS - 16)
    gemm_call = max(best["small"] - 16 * gemm_row, 0.0)
    # what gathering adds to a product of the same rows (the GEMM packs its rows anyway)
    take_row = max(best["gather"] - best["window"], 0.0) / _ROWS
    return Costs(gemm_call, gemm_row, take_row, best["reduce"] / indices.size,
                 best["dense"] / dense_rows)


#: Largest channel count and kernel volume calibrated as they are: beyond them the
#: constants are measured at these sizes and scaled by the work they stand for (the
#: calibration's arrays would otherwise grow with c_in * c_out and |K| c_in c_out: a
#: grouped layer of 65,536 channels asked for 32 GiB).
_CALIBRATION_MAX_CHANNELS = 256
_CALIBRATION_MAX_KERNEL_VOLUME = 27


def costs(c_in: int, c_out: int, kernel_volume: int, dtype) -> Costs:
    """The measured :class:`Costs` of one shape (memoized for the process).

    Shapes beyond ``_CALIBRATION_MAX_CHANNELS`` channels or
    ``_CALIBRATION_MAX_KERNEL_VOLUME`` offsets are measured at those sizes and
    scaled (per-row GEMM and dense costs by the multiply-adds, gathers by
    ``c_in``, the reduction by ``c_out``), so calibration memory stays bounded
    whatever the layer.

    Parameters
    ----------
    c_in, c_out : int
        Channels of the gathered rows and of the products.
    kernel_volume : int
        |K| (only the dense product depends on it).
    dtype : numpy dtype
        float32 or float64 (the accumulation dtype).
    """
    key = (int(c_in), int(c_out), int(kernel_volume), np.dtype(dtype).str)
    found = _memo.get(key)
    if found is None:
        cal_in = min(key[0], _CALIBRATION_MAX_CHANNELS)
        cal_out = min(key[1], _CALIBRATION_MAX_CHANNELS)
        cal_k = min(key[2], _CALIBRATION_MAX_KERNEL_VOLUME)
        if (cal_in, cal_out, cal_k) == key[:3]:
            measured = _measure(cal_in, cal_out, cal_k, np.dtype(dtype))
        else:
            base = costs(cal_in, cal_out, cal_k, dtype)
            macs = (key[0] / cal_in) * (key[1] / cal_out)
            measured = Costs(base.gemm_call, base.gemm_row * macs,
                             base.take_row * key[0] / cal_in,
                             base.reduce_entry * key[1] / cal_out,
                             base.dense_row * macs * key[2] / cal_k)
        with _lock:
            found = _memo.setdefault(key, measured)
    return found
