"""The host emulator of the CUDA kernels (cusparseconv._emulate).

Every built-in the shim supports is exercised by a kernel of
raw_kernels/emulator_selftest.cu, whose result is compared with NumPy. The
"broken kernel" tests compile deliberately broken copies of a kernel (a
removed __syncthreads, off-by-one bounds) and check that the emulator makes
the damage visible.
"""

from pathlib import Path

import numpy as np
import pytest

emulate = pytest.importorskip("cusparseconv._emulate")
from cusparseconv._emulate import (  # noqa: E402
    EmulatedModule,
    EmulatorCompileError,
    EmulatorLaunchError,
)
from cusparseconv._kernels import NVRTC_OPTIONS  # noqa: E402

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    ml_dtypes = None

SELFTEST = Path(__file__).resolve().parent.parent / "raw_kernels" / "emulator_selftest.cu"
SYNC_LINE = "__syncthreads();  // selftest: tile loaded"
MODES = ["threads", "cooperative"]


def _instantiations(text):
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.strip().startswith("// csc-instantiate:")]


@pytest.fixture(scope="module")
def source():
    return SELFTEST.read_text()


@pytest.fixture(scope="module")
def module(source):
    return EmulatedModule(source, name_expressions=_instantiations(source))


@pytest.fixture(params=MODES)
def kernel(request, module):
    """get(name) -> the kernel in this test's execution mode."""
    def get(name):
        fn = module.get_function(name)
        fn.mode = request.param
        return fn
    yield get
    for fn in module._functions.values():
        fn.mode = None


def _stencil_reference(x):
    padded = np.concatenate([[0], x, [0]]).astype(x.dtype)
    return padded[:-2] + padded[1:-1] + padded[2:]


# ---------------------------------------------------------------------------
# the built-ins, kernel by kernel
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shared_tile_with_barrier(kernel, dtype):
    n = 1000  # leaves a partial last block
    x = np.random.default_rng(0).standard_normal(n).astype(dtype)
    out = np.zeros(n, dtype)
    name = "tile_stencil<float>" if dtype == np.float32 else "tile_stencil<double>"
    kernel(name)(((n + 127) // 128,), (128,), (x, out, np.int32(n)))
    np.testing.assert_allclose(out, _stencil_reference(x), rtol=1e-6)


@pytest.mark.parametrize("name,dtype", [("dyn_reverse<float>", np.float32),
                                        ("dyn_reverse<long long>", np.int64)])
def test_dynamic_shared_memory(kernel, name, dtype):
    n, block = 300, 64
    x = np.arange(n).astype(dtype)
    out = np.zeros(n, dtype)
    kernel(name)((n + block - 1) // block, block, (x, out, np.int32(n)),
                 shared_mem=block * x.itemsize)
    expected = np.concatenate([x[s:s + block][::-1] for s in range(0, n, block)])
    np.testing.assert_array_equal(out, expected)


def test_atomics_every_type(kernel):
    n = 700
    i = np.arange(n)
    v = (i * 7919) % 1000 - 500
    uv = (v + 500).astype(np.uint64)
    wv = uv << np.uint64(33)
    i32 = np.array([0, np.iinfo(np.int32).min, np.iinfo(np.int32).max, 0, 0, -1, -7, 0],
                   np.int32)
    u32 = np.array([0, 0, np.iinfo(np.uint32).max, 0, 0, np.iinfo(np.uint32).max, 0, 10**9],
                   np.uint32)
    u64 = np.array([0, 0, np.iinfo(np.uint64).max, 0, 0, np.iinfo(np.uint64).max, 0],
                   np.uint64)
    f32 = np.zeros(2, np.float32)
    f64 = np.zeros(1, np.float64)
    i64 = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0], np.int64)
    exch_old = np.zeros(n, np.int32)
    bins = np.zeros(13, np.int32)
    kernel("atomics_all")((n + 255) // 256, 256,
                          (np.int32(n), i32, u32, u64, f32, f64, i64, exch_old, bins,
                           np.int32(13)))
    assert i32[0] == v.sum() and i32[7] == -v.sum()
    assert i32[1] == v.max() and i32[2] == v.min() and i32[3] == n
    assert i32[4] == np.bitwise_or.reduce(1 << (i % 31))
    assert i32[5] == np.int32(-1) & ~np.bitwise_or.reduce(1 << (i % 20)).astype(np.int32)
    # atomicExch hands every previous value to exactly one thread
    assert sorted(exch_old.tolist() + [int(i32[6])]) == sorted([-7] + i.tolist())
    assert u32[0] == uv.sum() and u32[1] == uv.max() and u32[2] == uv.min() and u32[3] == n
    assert u32[4] == np.bitwise_or.reduce(np.uint64(1) << (i % 32).astype(np.uint64))
    assert u32[5] == np.uint32(0xFFFFFFFF) & ~np.uint32(
        np.bitwise_or.reduce(1 << (i % 21)))
    assert u32[6] in set(uv.tolist())
    assert u32[7] == np.uint32((10**9 - int(uv.sum())) % 2**32)
    assert u64[0] == wv.sum() and u64[1] == wv.max() and u64[2] == wv.min() and u64[3] == n
    assert u64[4] == np.bitwise_or.reduce(np.uint64(1) << (i % 64).astype(np.uint64))
    assert u64[5] == ~np.bitwise_or.reduce(np.uint64(1) << (i % 40).astype(np.uint64))
    assert u64[6] in set(wv.tolist())
    assert f32[0] == pytest.approx((v * 0.25).sum()) and f32[1] in set(v.astype(float))
    assert f64[0] == pytest.approx((v * 0.125).sum())
    assert i64[0] == v.max() * 1000000007 and i64[1] == v.min() * 1000000007
    assert i64[2] == v.sum()
    np.testing.assert_array_equal(bins, np.bincount((v + 500) % 13, minlength=13))


@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")
def test_atomics_16bit(kernel):
    n, nbins = 600, 8
    h = np.zeros(nbins, np.float16)
    b = np.zeros(nbins, ml_dtypes.bfloat16)
    s = np.array([5], np.uint16)
    kernel("atomics_16bit")(3, 256, (np.int32(n), h, b, np.int32(nbins), s))
    expected = np.bincount(np.arange(n) % nbins, minlength=nbins)
    np.testing.assert_array_equal(h.astype(int), expected)     # 75 per bin: exact in half
    np.testing.assert_array_equal(b.astype(np.float32), expected)  # exact in bfloat16 too
    assert s[0] == 5 + n


def _warp_reference(block, grid):
    nthreads = int(np.prod(block))
    nblocks = int(np.prod(grid))
    rows = []
    for blk in range(nblocks):
        for w0 in range(0, nthreads, 32):
            nl = min(32, nthreads - w0)
            g = blk * nthreads + w0 + np.arange(nl)
            v = g * 10 + 1
            lane = np.arange(nl)
            r = np.zeros((nl, 16), np.int64)
            undefined = np.zeros((nl, 16), bool)
            r[:, 0] = lane
            r[:, 1] = nl
            r[:, 2] = v[(lane * 5 + 3) % nl]
            r[:, 3] = np.where(lane >= 1, v[np.maximum(lane - 1, 0)], v)
            down = lane + 2
            r[:, 4] = np.where(down < nl, v[np.minimum(down, nl - 1)], v)
            undefined[:, 4] = (down >= nl) & (down < 32)
            r[:, 5] = v[lane ^ 1]
            ballot = int(np.sum((v % 3 == 0) * (1 << lane.astype(np.int64))))
            r[:, 6] = np.int32(np.uint32(ballot).view(np.int32))
            r[:, 7] = bin(ballot).count("1")
            r[:, 8] = (ballot & -ballot).bit_length()
            r[:, 9] = int((v % 7 == 0).any())
            r[:, 10] = int((v > 0).all())
            r[:, 11] = v.sum()
            r[:, 12] = v.sum() if nl == 32 else 0
            r[:, 13] = np.float32(v[0] * 0.5).view(np.int32)
            w = (v.astype(np.int64) << 32) | (g + 7)
            src = np.minimum(lane + 1, nl - 1)
            r[:, 14] = np.where(lane + 1 < 32, w[src], w) & 0xFFFFFFFF
            r[:, 14] = r[:, 14].astype(np.uint32).view(np.int32)
            undefined[:, 14] = (lane + 1 >= nl) & (lane + 1 < 32)
            r[:, 15] = np.float32(v[nl - 1] % 1024).view(np.int32)
            rows.append((r, undefined))
    ref = np.concatenate([r for r, _ in rows])
    undef = np.concatenate([u for _, u in rows])
    return ref, undef


@pytest.mark.parametrize("block,grid", [((64,), (2,)), ((24, 3), (2,)), ((8, 2, 3), (1, 2)),
                                        ((40,), (3,))])
def test_warp_intrinsics(kernel, block, grid):
    total = int(np.prod(block)) * int(np.prod(grid))
    out = np.zeros(total * 16, np.int32)
    kernel("warp_ops")(grid, block, (out,))
    ref, undef = _warp_reference(block, grid)
    got = out.reshape(total, 16).astype(np.int64)
    np.testing.assert_array_equal(np.where(undef, 0, got), np.where(undef, 0, ref))


def test_indexing_3d_grid_and_block(kernel):
    grid, block = (3, 2, 2), (4, 3, 2)
    nb, nt = int(np.prod(grid)), int(np.prod(block))
    ids = np.full(nb * nt * 6, -1, np.int32)
    dims = np.zeros(6, np.int32)
    hits = np.zeros(nb * nt, np.int32)
    kernel("index_3d")(grid, block, (ids, dims, hits))
    np.testing.assert_array_equal(hits, 1)
    np.testing.assert_array_equal(dims, grid + block)
    bz, by, bx, tz, ty, tx = np.meshgrid(*[np.arange(d) for d in grid[::-1] + block[::-1]],
                                         indexing="ij")
    expected = np.stack([bx, by, bz, tx, ty, tz], axis=-1).reshape(-1, 6)
    np.testing.assert_array_equal(ids.reshape(-1, 6), expected)


def test_syncthreads_reductions(kernel):
    block, nblocks = 96, 4
    pred = np.zeros(block * nblocks, np.int32)
    pred[:block] = 1                      # block 0: all true
    pred[block + 5] = 1                   # block 1: one true
    pred[3 * block:3 * block + 50] = 7    # block 3: 50 true; block 2: none
    out = np.zeros(nblocks * 3, np.int32)
    kernel("sync_reductions")(nblocks, block, (pred, out))
    np.testing.assert_array_equal(out.reshape(-1, 3),
                                  [[96, 1, 1], [1, 0, 1], [0, 0, 0], [50, 0, 1]])


def test_bit_intrinsics(kernel):
    rng = np.random.default_rng(1)
    n = 100
    x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    y = rng.integers(0, 2**63, n, dtype=np.uint64) << np.uint64(rng.integers(0, 2))
    x[:3] = [0, 1, 0x80000000]
    y[:3] = [0, 1, 1 << 63]
    f = rng.standard_normal(n).astype(np.float32)
    out = np.zeros(n * 8, np.int32)
    kernel("bit_ops")(1, 128, (x, y, f, out, np.int32(n)))
    o = out.reshape(n, 8)

    def ffs(a, bits):
        return np.array([(int(t) & -int(t)).bit_length() for t in a])

    np.testing.assert_array_equal(o[:, 0], [bin(int(t)).count("1") for t in x])
    np.testing.assert_array_equal(o[:, 1], [bin(int(t)).count("1") for t in y])
    np.testing.assert_array_equal(o[:, 2], ffs(x, 32))
    np.testing.assert_array_equal(o[:, 3], ffs(y, 64))
    np.testing.assert_array_equal(o[:, 4], [32 - int(t).bit_length() for t in x])
    np.testing.assert_array_equal(o[:, 5], f.view(np.int32))
    np.testing.assert_array_equal(o[:, 6], x.view(np.int32))
    np.testing.assert_array_equal(o[:, 7], [64 - int(t).bit_length() for t in y])


@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")
def test_16bit_conversions_round_to_nearest_even(kernel):
    rng = np.random.default_rng(2)
    special = np.array([0.0, -0.0, 1.0, 65504.0, 65520.0, 1e6, 6e-8, 3e-8, 1e-10,
                        np.inf, -np.inf, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8,
                        1 + 3 * 2**-8, 3.0e38, 5.96e-8, 2.98e-8], np.float32)
    x = np.concatenate([special, rng.standard_normal(300).astype(np.float32) * 100,
                        (rng.standard_normal(100) * 1e-5).astype(np.float32)])
    n = x.size
    with np.errstate(over="ignore"):
        h = x.astype(np.float16)
        b = x.astype(ml_dtypes.bfloat16)
    hbits, bbits = np.zeros(n, np.uint16), np.zeros(n, np.uint16)
    hf, bf, hsum = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    kernel("convert_16bit")((n + 127) // 128, 128, (x, hbits, bbits, h, b, hf, bf, hsum,
                                                   np.int32(n)))
    np.testing.assert_array_equal(hbits, h.view(np.uint16))
    np.testing.assert_array_equal(bbits, b.view(np.uint16))
    np.testing.assert_array_equal(hf, h.astype(np.float32))
    np.testing.assert_array_equal(bf, b.astype(np.float32))
    with np.errstate(over="ignore", invalid="ignore"):
        expected = ((h + h) * h).astype(np.float32)
    np.testing.assert_array_equal(hsum, expected)


def test_16bit_nan_conversion(module):
    x = np.array([np.nan, -np.nan], np.float32)
    hbits, bbits = np.zeros(2, np.uint16), np.zeros(2, np.uint16)
    z16 = np.zeros(2, np.float16)
    zf = np.zeros(2, np.float32)
    module.get_function("convert_16bit")(1, 32, (x, hbits, bbits, z16, z16.view(np.uint16),
                                                 zf, zf.copy(), zf.copy(), np.int32(2)))
    assert np.isnan(hbits.view(np.float16)).all()
    assert ((bbits & 0x7F80) == 0x7F80).all() and (bbits & 0x7F).all()


WMMA_CASES = [("__half", (1, 1, 1)), ("__half", (0, 1, 0)), ("__half", (1, 0, 1)),
              ("__half", (0, 0, 0)), ("__nv_bfloat16", (1, 1, 1)), ("__nv_bfloat16", (0, 0, 1))]


@pytest.mark.parametrize("dtype_name,layouts", WMMA_CASES)
def test_wmma_gemm(module, kernel, dtype_name, layouts):
    name = f"wmma_gemm<{dtype_name}, {layouts[0]}, {layouts[1]}, {layouts[2]}>"
    if dtype_name == "__nv_bfloat16" and ml_dtypes is None:
        pytest.skip("ml_dtypes is not installed")
    np_dtype = np.float16 if dtype_name == "__half" else ml_dtypes.bfloat16
    a_row, b_row, c_row = layouts
    m, n, k = 32, 48, 48
    rng = np.random.default_rng(3)
    a = rng.standard_normal((m, k)).astype(np_dtype)
    b = rng.standard_normal((k, n)).astype(np_dtype)
    c = rng.standard_normal((m, n)).astype(np.float32)
    alpha = np.float32(0.5)
    a_mem = a if a_row else np.ascontiguousarray(a.T)
    b_mem = b if b_row else np.ascontiguousarray(b.T)
    c_mem = c if c_row else np.ascontiguousarray(c.T)
    d_mem = np.zeros_like(c_mem)
    tiles = (m // 16) * (n // 16)           # 6 tiles, 4 warps per block: one idle warp pair
    kernel(name)((tiles + 3) // 4, 128, (a_mem, b_mem, c_mem, d_mem, np.int32(m), np.int32(n),
                                         np.int32(k), alpha))
    d = d_mem if c_row else d_mem.T
    expected = alpha * (a.astype(np.float64) @ b.astype(np.float64)) + c
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-4)


def test_barrier_rounds(kernel):
    block, nblocks, rounds = 64, 3, 5
    data = np.random.default_rng(4).standard_normal(block * nblocks).astype(np.float32)
    expected = data.reshape(nblocks, block).astype(np.float64)
    for _ in range(rounds):
        expected = expected + np.roll(expected, -1, axis=1)
    out = data.copy()
    kernel("barrier_rounds")(nblocks, block, (out, np.int32(rounds)))
    np.testing.assert_allclose(out.reshape(nblocks, block), expected, rtol=1e-5, atol=1e-5)
    kernel("noop")((2, 2), (3, 3), ())


# ---------------------------------------------------------------------------
# broken kernels must fail
# ---------------------------------------------------------------------------

def _broken_stencil(source, old, new):
    assert old in source, "the selftest kernel changed: update the broken-kernel test"
    broken = source.replace(old, new)
    return EmulatedModule(broken, name_expressions=["tile_stencil<float>"])


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle"])
def test_missing_syncthreads_is_exposed(source, schedule):
    n = 1000
    x = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    good = EmulatedModule(source, name_expressions=["tile_stencil<float>"],
                          mode="cooperative", schedule=schedule)
    out = np.zeros(n, np.float32)
    good.get_function("tile_stencil<float>")(8, 128, (x, out, np.int32(n)))
    np.testing.assert_allclose(out, _stencil_reference(x), rtol=1e-6)

    broken = _broken_stencil(source, SYNC_LINE, "/* __syncthreads removed */")
    fn = broken.get_function("tile_stencil<float>")
    fn.mode, fn.schedule = "cooperative", schedule
    out = np.zeros(n, np.float32)
    fn(8, 128, (x, out, np.int32(n)))
    wrong = ~np.isclose(out, _stencil_reference(x), rtol=1e-6)
    assert wrong.sum() > 100, "a missing __syncthreads went unnoticed"


def test_missing_syncthreads_is_exposed_in_threads_mode(source):
    """With OS threads the race is real; over a few launches it shows up."""
    n = 4096
    x = np.random.default_rng(6).standard_normal(n).astype(np.float32)
    broken = _broken_stencil(source, SYNC_LINE, "/* __syncthreads removed */")
    fn = broken.get_function("tile_stencil<float>")
    fn.mode = "threads"
    ref = _stencil_reference(x)
    wrong = 0
    for _ in range(5):
        out = np.zeros(n, np.float32)
        fn(n // 256, 256, (x, out, np.int32(n)))
        wrong += int((~np.isclose(out, ref, rtol=1e-6)).sum())
        if wrong:
            break
    assert wrong > 0


def test_off_by_one_write_is_caught(source):
    broken = _broken_stencil(source, "if (i < n) out[i]", "if (i <= n) out[i]")
    x = np.ones(1000, np.float32)
    out = np.zeros(1000, np.float32)
    with pytest.raises(EmulatorLaunchError, match="out-of-bounds write to argument 1"):
        broken.get_function("tile_stencil<float>")(8, 128, (x, out, np.int32(1000)))


def test_off_by_one_read_gives_wrong_result(source):
    broken = _broken_stencil(source, "tile[t + 1] = i < n ? in[i]", "tile[t + 1] = i <= n ? in[i]")
    n = 1000  # thread 1000 loads in[n]: 0xff bytes from the redzone, a NaN
    x = np.ones(n, np.float32)
    out = np.zeros(n, np.float32)
    broken.get_function("tile_stencil<float>")(8, 128, (x, out, np.int32(n)))
    assert np.isnan(out[n - 1]) and np.allclose(out[:-1], _stencil_reference(x)[:-1])


def test_uninitialised_shared_memory_reads_poison(source):
    """Shared memory starts as 0xff bytes in every block, not as the last block's data."""
    broken = _broken_stencil(source, "if (t == 0) tile[0] =", "if (false) tile[0] =")
    x = np.ones(256, np.float32)
    out = np.zeros(256, np.float32)
    broken.get_function("tile_stencil<float>")(2, 128, (x, out, np.int32(256)))
    assert np.isnan(out[[0, 128]]).all() and not np.isnan(out[1:128]).any()


# ---------------------------------------------------------------------------
# errors: arguments, launch configuration, assert, deadlock, compile errors
# ---------------------------------------------------------------------------

def test_argument_checks(module):
    fn = module.get_function("tile_stencil<float>")
    x = np.zeros(16, np.float32)
    with pytest.raises(TypeError, match=r"tile_stencil<float>: expects 3 arguments, got 2"):
        fn(1, 16, (x, x))
    with pytest.raises(TypeError, match=r"parameter 2 .*Python int.*np\.int32"):
        fn(1, 16, (x, x, 16))
    with pytest.raises(TypeError, match=r"parameter 2 is a 4-byte signed integer, got int64"):
        fn(1, 16, (x, x, np.int64(16)))
    with pytest.raises(TypeError, match=r"parameter 2 is a 4-byte signed integer, got float32"):
        fn(1, 16, (x, x, np.float32(16)))
    with pytest.raises(TypeError, match=r"parameter 0 is a pointer to 4-byte floating, "
                                        r"got an array of float64"):
        fn(1, 16, (x.astype(np.float64), x, np.int32(16)))
    with pytest.raises(TypeError, match=r"parameter 1 is a pointer.*got a scalar"):
        fn(1, 16, (x, np.float32(1), np.int32(16)))
    with pytest.raises(ValueError, match=r"argument 0 must be C-contiguous"):
        fn(1, 8, (np.zeros(32, np.float32)[::2], x, np.int32(8)))
    with pytest.raises(ValueError, match=r"invalid launch configuration"):
        fn(0, 16, (x, x, np.int32(16)))
    with pytest.raises(ValueError, match=r"invalid launch configuration"):
        fn(1, 2048, (x, x, np.int32(16)))
    with pytest.raises(ValueError, match=r"shared_mem"):
        fn(1, 16, (x, x, np.int32(16)), shared_mem=64 * 1024)
    with pytest.raises(KeyError, match=r"tile_stencil<int>"):
        module.get_function("tile_stencil<int>")


def test_unsigned_scalar_and_signedness(module):
    # a uint32 scalar is accepted for an int parameter of the same size
    fn = module.get_function("tile_stencil<float>")
    x = np.arange(16, dtype=np.float32)
    out = np.zeros(16, np.float32)
    fn(1, 16, (x, out, np.uint32(16)))
    np.testing.assert_allclose(out, _stencil_reference(x))


ASSERT_SOURCE = r"""
#include "csc_common.cuh"
extern "C" __global__ void checked(const int* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) CSC_ASSERT(x[i] >= 0);
}
extern "C" __global__ void deadlock(int* out) {
    // lane 0 waits at __syncthreads while its warp waits for it in a shuffle
    if (threadIdx.x == 0) { __syncthreads(); return; }
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
    __syncthreads();
}
"""


@pytest.mark.parametrize("mode", MODES)
def test_failed_assert_raises(mode):
    m = EmulatedModule(ASSERT_SOURCE, name_expressions=["checked"], mode=mode)
    x = np.zeros(100, np.int32)
    m.get_function("checked")(4, 32, (x, np.int32(100)))
    x[77] = -1
    with pytest.raises(EmulatorLaunchError, match=r"assertion .*x\[i\] >= 0.* thread \(13,0,0\)"):
        m.get_function("checked")(4, 32, (x, np.int32(100)))


@pytest.mark.parametrize("mode", MODES)
def test_deadlock_is_reported(mode):
    m = EmulatedModule(ASSERT_SOURCE, name_expressions=["deadlock"], mode=mode)
    with pytest.raises(EmulatorLaunchError, match="deadlock"):
        m.get_function("deadlock")(1, 32, (np.zeros(32, np.int32),))


def test_plain_kernel_names_and_options():
    src = r"""
    #include "csc_common.cuh"
    extern "C" __global__ void fill(float* out, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) out[i] = FILL_VALUE;
    }
    """
    m = EmulatedModule(src, options=("--std=c++17", "-DFILL_VALUE=2.5f", "-arch=sm_90"))
    out = np.zeros(10, np.float32)
    m.get_function("fill")(1, 32, (out, np.int32(10)))
    np.testing.assert_array_equal(out, 2.5)


def test_compile_error_is_reported():
    with pytest.raises(EmulatorCompileError, match="no_such_function"):
        EmulatedModule('#include "csc_common.cuh"\n__global__ void k() { no_such_function(); }',
                       name_expressions=["k"])


def test_in_place_argument_passed_twice(module):
    # the same array as input and output (overlapping redzone copies are merged)
    fn = module.get_function("dyn_reverse<float>")
    x = np.arange(64, dtype=np.float32)
    fn(1, 64, (x, x, np.int32(64)), shared_mem=256)
    np.testing.assert_array_equal(x, np.arange(64)[::-1])


def test_cache_reuses_the_shared_object(source, tmp_path, monkeypatch):
    monkeypatch.setenv("CUSPARSECONV_CACHE_DIR", str(tmp_path))
    from cusparseconv._emulate import module as module_impl
    monkeypatch.setattr(module_impl, "_LIBS", {})
    EmulatedModule(source, name_expressions=["noop"])
    built = sorted((tmp_path / "emulator").glob("*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(module_impl, "_LIBS", {})
    EmulatedModule(source, name_expressions=["noop"])
    assert built[0].stat().st_mtime_ns == mtime
    EmulatedModule(source, name_expressions=["noop", "barrier_rounds"])
    assert len(list((tmp_path / "emulator").glob("*.so"))) == 2


# ---------------------------------------------------------------------------
# every kernel source of the package compiles in emulation
# ---------------------------------------------------------------------------

KERNEL_SOURCES = sorted(SELFTEST.parent.glob("*.cu"))


@pytest.mark.parametrize("path", KERNEL_SOURCES, ids=[p.name for p in KERNEL_SOURCES])
def test_kernel_source_compiles_in_emulation(path):
    """With the launcher's options: they define the tile constants the sources use."""
    text = path.read_text()
    names = _instantiations(text)
    m = EmulatedModule(path=str(path), name_expressions=names, options=NVRTC_OPTIONS)
    for name in names:
        fn = m.get_function(name)
        assert fn.params is not None
