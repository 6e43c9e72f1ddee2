"""Allocations a small input can blow up are estimated first (issue #14, item 10).

The bomb tests prove the error comes *before* the allocation: in a subprocess
whose address space is capped a little above what it already uses (so the old
code would die with MemoryError instead of our message), and in process with
``tracemalloc`` (NumPy reports its buffers to it) under a lowered limit.
"""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import cusparseconv as csc
import oracle
from conftest import assert_same_rows, random_coords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def memory_limit():
    """Restore the process-wide limit after the test."""
    before = csc.get_memory_limit()
    yield
    csc.set_memory_limit(before)


def test_limit_setter_and_default(memory_limit):
    assert csc.get_memory_limit() == 2 << 30
    assert csc.set_memory_limit(1 << 20) == 2 << 30
    assert csc.get_memory_limit() == 1 << 20
    csc.set_memory_limit(None)
    assert csc.get_memory_limit() == 2 << 30
    for bad in (0, -5, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="n_bytes"):
            csc.set_memory_limit(bad)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc are Linux")
def test_bombs_fail_before_allocating_under_an_address_space_cap():
    """The issue's cases with the default limit: 100k scattered points through a
    generative 7^3 convolution (34M candidate rows) and kernel_size=1000."""
    script = textwrap.dedent("""
        import resource
        import numpy as np
        import cusparseconv as csc

        rng = np.random.default_rng(0)
        flat = rng.choice(4000 ** 3, size=100_000, replace=False)
        coords = np.zeros((100_000, 4), np.int32)
        coords[:, 1:] = np.stack(np.unravel_index(flat, (4000,) * 3), 1) - 2000
        x = csc.SparseTensor(coords, np.ones((100_000, 2), np.float32))
        csc.sparse_conv(x, np.ones((27, 2, 2), np.float32))   # workers and BLAS started
        pages = int(open("/proc/self/statm").read().split()[0])
        used = pages * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (384 << 20), resource.RLIM_INFINITY))

        def attempt(name, call):
            try:
                call()
                print(name, "ALLOCATED")
            except MemoryError as error:
                print(name, "MemoryError" if type(error) is MemoryError else "OTHER", error)
            except ValueError as error:
                print(name, "LIMIT", str(error).replace("\\n", " "))

        attempt("generative", lambda: csc.sparse_conv(
            x, np.ones((343, 2, 2), np.float32), kernel_size=7, generative=True))
        attempt("kernel_size", lambda: csc.sparse_conv(
            x, np.ones((27, 2, 2), np.float32), kernel_size=1000))
        attempt("pool", lambda: csc.sparse_pool(x, kernel_size=1000))
        attempt("offsets", lambda: csc.kernel_offsets(1000))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUSPARSECONV_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["generative"].startswith("LIMIT"), lines
    assert "34,300,000 output rows" in lines["generative"]
    assert "set_memory_limit" in lines["generative"] and "GiB" in lines["generative"]
    assert lines["kernel_size"].startswith("LIMIT") and "weight" in lines["kernel_size"]
    assert "1000000000" in lines["kernel_size"].replace(",", "")
    assert lines["pool"].startswith("LIMIT") and "1,000,000,000 offsets" in lines["pool"]
    assert lines["offsets"].startswith("LIMIT")


def _peak_during(call):
    """Peak traced bytes allocated while ``call`` runs (and what it raised)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    try:
        call()
        raised = None
    except Exception as error:  # noqa: BLE001 - returned to the test
        raised = error
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    return peak, raised


@pytest.mark.parametrize("regime", ["generative", "transposed_generative"])
def test_generative_estimate_comes_before_the_allocation(memory_limit, regime):
    rng = np.random.default_rng(1)
    coords = random_coords(rng, 2000, 3, 1, -300, 300)
    x = csc.SparseTensor(coords, np.ones((2000, 1)), stride=2)
    weight = np.ones((343, 1, 1))
    csc.set_memory_limit(8 << 20)      # the layer needs ~50 MiB at most
    kwargs = {"generative": True, "kernel_size": 7}
    if regime == "transposed_generative":
        kwargs.update(stride=2, transposed=True)
    peak, raised = _peak_during(lambda: csc.sparse_conv(x, weight, **kwargs))
    assert isinstance(raised, csc.MemoryLimitError), raised
    assert "686,000" in str(raised)
    assert peak < 1 << 20              # nothing of the layer's size was allocated
    csc.set_memory_limit(256 << 20)    # with room, the same layer runs
    csc.sparse_conv(x, weight, **kwargs)


def test_kernel_map_estimate_comes_before_the_allocation(memory_limit):
    rng = np.random.default_rng(2)
    coords = random_coords(rng, 3000, 3, 1, -20, 20)
    csc.set_memory_limit(4 << 20)      # 3000 rows x 343 offsets x 32 bytes = 31 MiB
    peak, raised = _peak_during(lambda: csc.build_kernel_map(coords, coords,
                                                             csc.kernel_offsets(7)))
    assert isinstance(raised, csc.MemoryLimitError) and "1,029,000 pairs" in str(raised)
    assert peak < 1 << 20
    x = csc.SparseTensor(coords, np.ones((3000, 1)))
    with pytest.raises(csc.MemoryLimitError, match="kernel map"):
        csc.sparse_conv(x, np.ones((343, 1, 1)), kernel_size=7)


def test_output_features_are_checked(memory_limit):
    coords = np.zeros((1000, 4), np.int32)
    coords[:, 1] = np.arange(1000)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(1))
    csc.set_memory_limit(1 << 20)
    with pytest.raises(csc.MemoryLimitError, match="1,000 rows x 1,000 channels"):
        csc.conv_forward(np.ones((1000, 1), np.float32), np.ones((1, 1, 1000), np.float32),
                         kmap)


def test_realistic_generative_layer_fits_the_default_limit(rng):
    """A 3x3x3 generative layer on a scattered 20k-voxel set: far below 2 GiB."""
    coords = random_coords(rng, 20_000, 3, 2, -200, 200)
    x = csc.SparseTensor(coords, np.ones((20_000, 1), np.float32))
    y = csc.sparse_conv(x, np.ones((27, 1, 1), np.float32), generative=True)
    assert len(y) > len(x)


def test_limit_leaves_results_unchanged_below_it(memory_limit, rng):
    coords = random_coords(rng, 40, 3, 2, -4, 4)
    feats = rng.standard_normal((40, 2))
    weight = rng.standard_normal((27, 2, 2))
    csc.set_memory_limit(1 << 20)
    y = csc.sparse_conv(csc.SparseTensor(coords, feats), weight, generative=True)
    offsets = oracle.kernel_offsets_oracle(3)
    out = oracle.generative_coords_oracle(coords, offsets)
    assert_same_rows(y.coords, y.feats, out,
                     oracle.conv_oracle(coords, feats, weight, offsets, 1, out), 1e-10)
