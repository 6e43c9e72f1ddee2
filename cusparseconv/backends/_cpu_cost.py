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

__all__ = ["Costs", "costs", "DENSE_MARGIN", "dense_chunk_rows"]

#: The dense product is chosen only when predicted this much faster than the blocked one.
DENSE_MARGIN = 0.85
_ROWS = 2048          # rows of the calibration products (about one block's item)
_REPEATS = 7
_TABLE_BYTES = 8 << 20  # source table of the gathers: beyond L2, like real inputs
#: Bytes of gathered rows one GEMM of the dense product takes (the gather stays in L2 until
#: it is multiplied), at least _MIN_DENSE_CHUNK rows (shorter GEMMs repack W too often).
#: frog-4x (76 % of slots paired), C = 32, one thread: 34-36 ms in chunks of 64-256 rows vs
#: 46 ms for whole 1,024-row blocks with the missing slots zeroed after the gather.
_DENSE_CHUNK_BYTES = 512 << 10
_MIN_DENSE_CHUNK = 64


def dense_chunk_rows(kernel_volume: int, c_in: int, itemsize: int) -> int:
    """Output rows per GEMM of the dense product: about ``_DENSE_CHUNK_BYTES`` gathered."""
    return max(_MIN_DENSE_CHUNK, _DENSE_CHUNK_BYTES // max(kernel_volume * c_in * itemsize, 1))

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
    # random numbers drawn in the dtype itself (float64 draws cast down took ~1 s a shape at
    # C = 256); a table of _TABLE_BYTES, at least four blocks' rows
    table_rows = max(4 * _ROWS, _TABLE_BYTES // (c_in * dtype.itemsize))
    table = rng.random((table_rows, c_in), dtype=dtype)
    weight = rng.random((c_in, c_out), dtype=dtype)
    # the rows a block gathers for one offset: increasing, about half of a range (the
    # pairs of one offset over a block of output rows of a scan)
    rows = np.sort(rng.choice(2 * _ROWS, _ROWS, replace=False))
    gathered = table[:_ROWS].copy()
    out = np.empty((_ROWS, c_out), dtype=dtype)

    # the sum: ~9 entries per row scattered over a block's products
    per_row = 9
    products = rng.random((_ROWS * per_row, c_out), dtype=dtype)
    indices = rng.permutation(_ROWS * per_row).reshape(_ROWS, per_row)
    indices.sort(axis=1)
    matrix = scipy.sparse.csr_array(
        (np.ones(indices.size, dtype=dtype), indices.ravel().astype(np.int32),
         np.arange(0, indices.size + 1, per_row, dtype=np.int32)),
        shape=(_ROWS, products.shape[0]))

    # the dense product as cpu.dense_product runs it: per chunk of output rows, |K| rows
    # gathered per row through the neighbour table (increasing per offset, a third of the
    # slots missing: they read the zero row at the end) and one (n, |K| c_in) @ (|K| c_in,
    # c_out)
    dense_rows = dense_chunk_rows(kernel_volume, c_in, dtype.itemsize)
    neighbour = np.stack([np.sort(rng.choice(2 * dense_rows, dense_rows, replace=False))
                          + rng.integers(0, table_rows - 2 * dense_rows - 1)
                          for _ in range(kernel_volume)], axis=1)
    neighbour[rng.random(neighbour.shape) < 1 / 3] = table_rows - 1
    table[-1] = 0
    flat_weight = rng.random((kernel_volume * c_in, c_out), dtype=dtype)
    dense_out = np.empty((dense_rows, c_out), dtype=dtype)

    def dense():
        block = table.take(neighbour, axis=0)
        np.matmul(block.reshape(dense_rows, -1), flat_weight, out=dense_out)

    # a window: a slice of the table multiplied as it is (a different slice each time, as
    # the blocks of a product are); a gather: the rows taken, then multiplied while hot
    places = iter(range(1 << 62))

    def place() -> int:    # a different part of the table each time, as blocks are
        return (next(places) * 2 * _ROWS) % (table_rows - 2 * _ROWS)

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


#: Largest channel count calibrated as it is, and largest |K| * c_in of the dense
#: calibration: wider shapes are measured at these sizes and the per-row costs scaled
#: by the channels (a grouped layer of 65,536 channels must not allocate a 65,536^2
#: calibration weight; the calibration's arrays stay under ~60 MB).
_MAX_CHANNELS = 512
_MAX_DENSE_DEPTH = 8192


def costs(c_in: int, c_out: int, kernel_volume: int, dtype) -> Costs:
    """The measured :class:`Costs` of one shape (memoized for the process).

    Shapes wider than ``_MAX_CHANNELS`` channels (or a dense depth |K| c_in above
    ``_MAX_DENSE_DEPTH``) are measured at those bounds and scaled linearly: a GEMM
    row by c_in c_out, a gathered row by c_in, a sum entry by c_out, a dense row by
    |K| c_in c_out.

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
        m_in, m_out = min(key[0], _MAX_CHANNELS), min(key[1], _MAX_CHANNELS)
        m_volume = max(1, min(key[2], _MAX_DENSE_DEPTH // max(m_in, 1)))
        bounded = (m_in, m_out, m_volume, key[3])
        measured = _memo.get(bounded)
        if measured is None:
            measured = _measure(m_in, m_out, m_volume, np.dtype(dtype))
            with _lock:
                measured = _memo.setdefault(bounded, measured)
        if bounded != key:
            in_scale, out_scale = key[0] / max(m_in, 1), key[1] / max(m_out, 1)
            measured = Costs(measured.gemm_call, measured.gemm_row * in_scale * out_scale,
                             measured.take_row * in_scale, measured.reduce_entry * out_scale,
                             measured.dense_row * in_scale * out_scale * key[2] / m_volume)
        with _lock:
            found = _memo.setdefault(key, measured)
    return found
