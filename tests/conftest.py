"""Shared fixtures and helpers for the cusparseconv test suite.

The helpers here know nothing about the library's internals: they make random
coordinate sets, match two coordinate sets row by row, and compare arrays with
a tolerance scaled to the reference. The library itself is handed to tests
through the session-scoped ``csc`` fixture so that the oracle self-checks
still run (and pass) while the package is missing or broken.

Backends: the one device list of the suite is ``BACKENDS``. A test that takes
the ``backend`` fixture (or ``xp``, the array module of that backend) runs
once per backend: ``cpu``; ``cuda-emulated`` (the GPU backend's own code with
its kernels run by the host emulator, on NumPy arrays); ``cuda`` (CuPy arrays
on a device; marked ``gpu``, skipped without one). The fixture routes NumPy
arrays to its backend for the test's duration, so a test written against the
public API needs nothing else. ``@pytest.mark.backends("cpu", ...)`` restricts
a test to some of them (e.g. a slow check run on a subset under emulation).
"""

import contextlib
import importlib
import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Property tests draw the same examples on every run (CI included): a fixed
# seed per test, no example database. HYPOTHESIS_PROFILE=explore draws fresh
# random examples for a fuzzing session on a workstation.
settings.register_profile("cusparseconv", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", parent=settings.get_profile("cusparseconv"),
                          derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cusparseconv"))

# ---------------------------------------------------------------------------
# library and array-module fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def csc():
    """The ``cusparseconv`` package (the test fails if it cannot be imported)."""
    try:
        return importlib.import_module("cusparseconv")
    except Exception as exc:  # pragma: no cover - only while the package is missing
        pytest.fail(f"cannot import cusparseconv: {type(exc).__name__}: {exc}")


def _cupy_or_skip():
    try:
        import cupy  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        pytest.skip("CuPy is not installed")
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:  # pragma: no cover
            pytest.skip("no CUDA device")
    except Exception as error:  # pragma: no cover - CUDARuntimeError without a driver
        pytest.skip(f"no CUDA device ({type(error).__name__})")
    return cupy


#: Every backend, in the order tests run on them.
BACKENDS = ("cpu", "cuda-emulated", "cuda")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backends(*names): run a test taking `backend` or `xp` on these backends "
                   "only (default: all of BACKENDS)")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    names = marker.args if marker is not None else BACKENDS
    unknown = set(names) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; expected some of {BACKENDS}")
    metafunc.parametrize(
        "backend", [pytest.param(name, marks=pytest.mark.gpu) if name == "cuda" else name
                    for name in names], indirect=True)


class BackendCase:
    """One backend as a test sees it.

    Attributes
    ----------
    name : str
        "cpu", "cuda-emulated" or "cuda".
    backend : cusparseconv.backends.protocol.Backend
    xp : module
        The array module of its arrays (numpy, or cupy for "cuda").
    """

    def __init__(self, name):
        from cusparseconv.backends import get_backend

        self.name = name
        self.xp = _cupy_or_skip() if name == "cuda" else np
        self.backend = get_backend(name)

    def __repr__(self):
        return f"<backend {self.name}>"

    @property
    def emulated(self) -> bool:
        return self.name == "cuda-emulated"

    def put(self, array):
        """``array`` on this backend's device (``None`` stays ``None``)."""
        return None if array is None else self.xp.asarray(array)

    def get(self, array):
        """A NumPy copy of an array of this backend."""
        return to_numpy(array)

    def supports(self, dtype) -> bool:
        """CuPy carries bfloat16 only from v14 with ml_dtypes installed."""
        if self.name != "cuda" or np.dtype(dtype).name != "bfloat16":
            return True
        try:
            self.xp.zeros(1, dtype=dtype)
        except Exception:
            return False
        return True

    def kmap(self, in_coords, out_coords, offsets, stride, transposed, same_set=False):
        """The backend's own kernel map of two host coordinate arrays."""
        in_dev = self.put(in_coords)
        out_dev = in_dev if same_set else self.put(out_coords)
        return self.backend.build_kernel_map(in_dev, out_dev, np.asarray(offsets, np.int32),
                                             tuple(stride), transposed, same_set=same_set)


@pytest.fixture
def backend(request, monkeypatch):
    """The backend a test runs on (parametrised by ``pytest_generate_tests``); NumPy
    arrays run on it for the duration of the test. Emulated launches run in the
    cooperative mode (deterministic and fast) unless CUSPARSECONV_EMULATOR_MODE says
    otherwise."""
    from cusparseconv.backends import use_backend

    case = BackendCase(request.param)
    if case.emulated and "CUSPARSECONV_EMULATOR_MODE" not in os.environ:
        monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "cooperative")
    route = use_backend(case.name) if case.name != "cuda" else contextlib.nullcontext()
    with route:
        yield case


@pytest.fixture
def xp(backend):
    """The array module a test runs on: that of its backend (numpy, or cupy)."""
    return backend.xp


def to_numpy(a):
    """A NumPy copy of a NumPy or CuPy array (``None`` stays ``None``)."""
    if a is None:
        return None
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        return a.get()
    return np.asarray(a)


# ---------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------

SEED = 20261125


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the fixed suite seed and the test's id (without
    its backend), so every test sees its own reproducible stream, the same on every
    backend."""
    callspec = getattr(request.node, "callspec", None)
    params = {k: v for k, v in (callspec.params if callspec else {}).items()
              if k != "backend"}
    key = f"{request.node.path.name}::{request.node.originalname}{sorted(params.items())!r}"
    return np.random.default_rng([SEED, zlib.crc32(key.encode())])


#: Random coordinate sets of the oracle suites per D: (rows, low, high).
GEOMETRY = {1: (30, -20, 20), 2: (80, -6, 6), 3: (120, -4, 4), 4: (100, -3, 3)}
#: Smaller sets for the gradient suite (finite differences run many products).
GRAD_GEOMETRY = {1: (30, -20, 20), 2: (80, -6, 6), 3: (60, -3, 3), 4: (60, -2, 2)}



def run_in_forked_child(target, hang_message, timeout=60):
    """``target(queue)`` in a child made by ``fork``; what it put in the queue.

    Fails the test with ``hang_message`` if the child is still running after
    ``timeout`` seconds (it is killed), and if it exits with an error.
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=target, args=(queue,))
    child.start()
    child.join(timeout=timeout)
    if child.is_alive():
        child.kill()
        pytest.fail(hang_message)
    assert child.exitcode == 0
    return queue.get(timeout=5)


def random_coords(rng, n, ndim=3, n_batch=2, low=-6, high=6, shuffle=True):
    """``n`` unique rows ``[b, x_1..x_D]`` (int32, shape (n, 1 + ndim)).

    Batch indices lie in ``[0, n_batch)``, coordinates in ``[low, high)``
    (negative values included by default). Rows are in random order, or
    sorted lexicographically with ``shuffle=False``.
    """
    n_cells = n_batch * (high - low) ** ndim
    if n > n_cells:
        raise ValueError(f"cannot draw {n} unique rows from {n_cells} cells")
    if n == 0:
        return np.zeros((0, 1 + ndim), dtype=np.int32)
    flat = rng.choice(n_cells, size=n, replace=False)
    shape = (n_batch,) + (high - low,) * ndim
    if not shuffle:
        flat = np.sort(flat)
    idx = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
    idx[:, 1:] += low
    return idx.astype(np.int32)


def random_feats(rng, n, channels, dtype=np.float64):
    """Standard normal features of shape (n, channels), drawn in float64 and
    cast to ``dtype``."""
    return rng.standard_normal((n, channels)).astype(dtype)


def random_weight(rng, shape, dtype=np.float64):
    """Normal weights scaled by 1/sqrt(fan-in) so outputs stay of order one."""
    fan = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    w = rng.standard_normal(shape) / np.sqrt(max(fan, 1))
    return w.astype(dtype)


# ---------------------------------------------------------------------------
# comparing results independent of row order
# ---------------------------------------------------------------------------


def row_keys(coords):
    """Rows of an integer (N, M) array as a list of tuples of Python ints."""
    coords = to_numpy(coords)
    return [tuple(int(v) for v in row) for row in coords]


def match_rows(coords_got, coords_ref):
    """Permutation ``perm`` with ``coords_got[perm] == coords_ref``.

    Fails the test (with a readable diff) if the two arrays do not hold the
    same set of unique rows.
    """
    got = row_keys(coords_got)
    ref = row_keys(coords_ref)
    assert len(set(got)) == len(got), "library output has duplicate coordinate rows"
    assert len(set(ref)) == len(ref), "reference has duplicate coordinate rows"
    got_set, ref_set = set(got), set(ref)
    if got_set != ref_set:
        missing = sorted(ref_set - got_set)[:5]
        extra = sorted(got_set - ref_set)[:5]
        pytest.fail(
            f"coordinate sets differ: {len(got)} rows vs {len(ref)} expected; "
            f"missing e.g. {missing}, unexpected e.g. {extra}"
        )
    where = {key: i for i, key in enumerate(got)}
    return np.array([where[key] for key in ref], dtype=np.int64)


def scaled_tol(ref, rtol):
    """Absolute tolerance ``rtol * max(1, max|ref|)`` for a comparison with
    ``rtol``: cancellation makes a pure relative test meaningless near 0."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return rtol * max(1.0, scale)


def assert_close(got, ref, rtol, err_msg=""):
    """``got`` (any array module / dtype) equals the float64 ``ref`` up to
    ``rtol`` relative and ``rtol * max(1, max|ref|)`` absolute."""
    got = to_numpy(got).astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != expected {ref.shape} {err_msg}"
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=scaled_tol(ref, rtol), err_msg=err_msg)


def assert_same_rows(tensor_coords, tensor_feats, ref_coords, ref_feats, rtol, err_msg=""):
    """Compare a (coords, feats) pair with a reference pair ignoring row order."""
    perm = match_rows(tensor_coords, ref_coords)
    feats = to_numpy(tensor_feats)
    assert feats.shape[0] == len(perm), f"feats has {feats.shape[0]} rows, coords {len(perm)}"
    assert_close(feats[perm], ref_feats, rtol, err_msg=err_msg)


RTOL = {"float64": 1e-10, "float32": 1e-4, "float16": 2e-2, "bfloat16": 3e-2}


def rtol_for(dtype):
    """The comparison tolerance of the suite for a feature dtype."""
    return RTOL[np.dtype(dtype).name]


def bfloat16():
    """The ml_dtypes bfloat16 dtype (the test is skipped without ml_dtypes)."""
    return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)


#: The feature dtypes of the suite, by name ("bfloat16" through ``bfloat16()``).
DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")


def dtype_named(name):
    return bfloat16() if name == "bfloat16" else np.dtype(name)


def kmap_case(rng, case, geometry, ndim=3):
    """(in_coords, out_coords, offsets, stride, transposed) of one regime.

    ``geometry[ndim]`` is (number of points, low, high) of the random coordinates.
    """
    import oracle

    n, low, high = geometry[ndim]
    coords = random_coords(rng, n, ndim, 2, low, high)
    offsets = oracle.kernel_offsets_oracle(3, 1, ndim)
    if case == "submanifold":
        return coords, coords, offsets, 1, False
    if case == "strided":
        offsets = oracle.kernel_offsets_oracle(2, 1, ndim)
        return coords, oracle.downsample_coords_oracle(coords, 2), offsets, 2, False
    if case == "strided_per_axis":
        stride = tuple([2, 1, 3, 1][:ndim])
        return coords, oracle.downsample_coords_oracle(coords, stride), offsets, stride, False
    if case == "generative":
        return coords, oracle.generative_coords_oracle(coords, offsets), offsets, 1, False
    if case == "generative_strided":
        return (coords, oracle.generative_coords_oracle(coords, offsets, 2), offsets, 2,
                False)
    if case == "transposed":
        return coords, coords, offsets, 1, True
    if case == "transposed_strided":
        return oracle.downsample_coords_oracle(coords, 2), coords, offsets, 2, True
    if case == "transposed_generative":
        out = oracle.transposed_generative_coords_oracle(coords, offsets, 2)
        return coords, out, offsets, 2, True
    if case == "explicit":
        return coords, random_coords(rng, n, ndim, 2, low, high), offsets, 1, False
    if case == "dilated":
        offsets = oracle.kernel_offsets_oracle(3, tuple([1, 2, 1, 2][:ndim]), ndim)
        return coords, coords, offsets, 1, False
    if case == "even":
        offsets = oracle.kernel_offsets_oracle(tuple([2, 3, 4, 2][:ndim]), 1, ndim)
        return coords, coords, offsets, 1, False
    if case == "arbitrary":
        offsets = np.unique(rng.integers(-2, 3, size=(7, ndim)), axis=0).astype(np.int32)
        return coords, oracle.downsample_coords_oracle(coords, 2), offsets, 2, False
    raise ValueError(case)


@pytest.fixture
def cooperative(monkeypatch):
    """The host emulator in cooperative mode (a block's threads interleaved at every
    barrier); kernel test modules take it for every test with
    ``pytestmark = pytest.mark.usefixtures("cooperative")``."""
    monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "cooperative")


@pytest.fixture(scope="module")
def launcher():
    """One emulated launcher per test module (kernels compiled once per module)."""
    from cusparseconv.backends._launch import emulated_launcher
    return emulated_launcher()
