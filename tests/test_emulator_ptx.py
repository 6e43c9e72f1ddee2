"""The emulator's sm_80 instructions (raw_kernels/csc_mma.cuh, run by raw_kernels/ptx_selftest.cu).

Every fragment layout is checked element by element against the PTX ISA's
tables, written out below independently of the emulator (in the ISA's own
terms: groupID, threadID_in_group and the per-element conditions of "Matrix
Fragments for mma.m16n8k16 with floating point type", "... for mma.m16n8k8"
and "ldmatrix"). Probes use matrices whose entries encode their position, so a
wrong layout shows which element went where. The cp.async tests check the
commit/wait-group semantics and that a pipelined GEMM with a missing
cp.async.wait_group, a wrong wait count or a missing barrier fails.
"""

from pathlib import Path

import numpy as np
import pytest

from cusparseconv._emulate import EmulatedModule, EmulatorLaunchError

ml_dtypes = pytest.importorskip("ml_dtypes")

SOURCE_PATH = Path(__file__).resolve().parent.parent / "raw_kernels" / "ptx_selftest.cu"
WAIT_LINE = "csc_cp_async_wait<CSC_PG_STAGES - 2>();  // selftest: wait"
BARRIER_LINE = "__syncthreads();  // selftest: barrier"
POISON = 0xFFFFFFFF


# ---------------------------------------------------------------------------
# the PTX ISA's tables (independent of cusparseconv/_emulate/shim.h)
# ---------------------------------------------------------------------------

def _group(lane):
    return lane >> 2, lane % 4   # groupID, threadID_in_group


def isa_m16n8k16_a(i, lane):
    """(row, col) of a_i, i in 0..7, 16-bit A (16 x 16)."""
    group, tig = _group(lane)
    row = group if (0 <= i < 2 or 4 <= i < 6) else group + 8
    col = tig * 2 + (i & 0x1) if i < 4 else tig * 2 + (i & 0x1) + 8
    return row, col


def isa_m16n8k16_b(i, lane):
    """(row, col) of b_i, i in 0..3, 16-bit B (16 x 8)."""
    group, tig = _group(lane)
    row = tig * 2 + (i & 0x1) if i < 2 else tig * 2 + (i & 0x1) + 8
    return row, group


def isa_c(i, lane):
    """(row, col) of c_i, i in 0..3, f32 C/D (16 x 8), both shapes."""
    group, tig = _group(lane)
    row = group if i < 2 else group + 8
    return row, tig * 2 + (i & 0x1)


def isa_m16n8k8_tf32_a(i, lane):
    """(row, col) of a_i, i in 0..3, tf32 A (16 x 8)."""
    group, tig = _group(lane)
    row = group if i in (0, 2) else group + 8
    col = tig if i in (0, 1) else tig + 4
    return row, col


def isa_m16n8k8_tf32_b(i, lane):
    """(row, col) of b_i, i in 0..1, tf32 B (8 x 8)."""
    group, tig = _group(lane)
    return (tig if i == 0 else tig + 4), group


def isa_ldmatrix(lane, trans):
    """Elements (row, col) of an 8 x 8 matrix held by `lane` in one register, low half first."""
    if not trans:
        return [(lane // 4, 2 * (lane % 4)), (lane // 4, 2 * (lane % 4) + 1)]
    return [(2 * (lane % 4), lane // 4), (2 * (lane % 4) + 1, lane // 4)]


# ---------------------------------------------------------------------------
# packing registers by those tables
# ---------------------------------------------------------------------------

def _bits16(matrix, dtype):
    return np.asarray(matrix, dtype=dtype).view(np.uint16).astype(np.uint32)


def pack_16bit(matrix, dtype, table, n_elements):
    """(32, n_elements // 2) registers of a 16-bit matrix laid out by `table`."""
    bits = _bits16(matrix, dtype)
    regs = np.zeros((32, n_elements // 2), np.uint32)
    for lane in range(32):
        for i in range(n_elements):
            row, col = table(i, lane)
            regs[lane, i // 2] |= bits[row, col] << (16 * (i % 2))
    return regs


def pack_32bit(matrix, table, n_elements):
    words = np.asarray(matrix, np.float32).view(np.uint32)
    regs = np.zeros((32, n_elements), np.uint32)
    for lane in range(32):
        for i in range(n_elements):
            regs[lane, i] = words[table(i, lane)]
    return regs


def scatter_c(values, table=isa_c):
    """The (16, 8) matrix held by the lanes' four accumulator registers."""
    out = np.full((16, 8), np.nan, np.float32)
    for lane in range(32):
        for i in range(4):
            out[table(i, lane)] = values[lane, i]
    return out


def gather_c(matrix):
    return np.array([[matrix[isa_c(i, lane)] for i in range(4)] for lane in range(32)],
                    np.float32)


@pytest.fixture(scope="module")
def module():
    text = SOURCE_PATH.read_text()
    names = [line.split(":", 1)[1].strip() for line in text.splitlines()
             if line.strip().startswith("// csc-instantiate:")]
    return EmulatedModule(text, name_expressions=names, mode="cooperative")


# ---------------------------------------------------------------------------
# mma.sync
# ---------------------------------------------------------------------------

def _run_mma(module, kind, a_regs, b_regs, c):
    d = np.zeros((32, 4), np.float32)
    module.get_function(f"mma_fragments<{kind}>")(1, 32, (
        np.ascontiguousarray(a_regs, np.uint32), np.ascontiguousarray(b_regs, np.uint32),
        gather_c(c), d))
    return scatter_c(d)


MMA16 = [(0, np.float16), (1, ml_dtypes.bfloat16)]


@pytest.mark.parametrize("kind,dtype", MMA16, ids=["f16", "bf16"])
def test_mma_m16n8k16_layouts_element_by_element(module, kind, dtype):
    # A entries encode their position (exact in both 16-bit types); B selects
    # column n (or n + 8) of A into D[:, n]; C encodes its position too.
    a = (np.arange(256).reshape(16, 16) + 1).astype(np.float32)
    c = np.arange(128).reshape(16, 8).astype(np.float32) * 1000
    for shift in (0, 8):
        b = np.zeros((16, 8), np.float32)
        b[np.arange(8) + shift, np.arange(8)] = 1
        d = _run_mma(module, kind, pack_16bit(a, dtype, isa_m16n8k16_a, 8),
                     pack_16bit(b, dtype, isa_m16n8k16_b, 4), c)
        np.testing.assert_array_equal(d, a[:, shift:shift + 8] + c)
    # A = selection of row r of B into D[r] (r < 16): every B element shows up once
    b = (np.arange(128).reshape(16, 8) + 1).astype(np.float32)
    d = _run_mma(module, kind, pack_16bit(np.eye(16), dtype, isa_m16n8k16_a, 8),
                 pack_16bit(b, dtype, isa_m16n8k16_b, 4), np.zeros((16, 8), np.float32))
    np.testing.assert_array_equal(d, b)


@pytest.mark.parametrize("kind,dtype", MMA16, ids=["f16", "bf16"])
def test_mma_m16n8k16_random_product(module, kind, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(-8, 9, (16, 16)).astype(dtype)
    b = rng.integers(-8, 9, (16, 8)).astype(dtype)
    c = rng.integers(-100, 100, (16, 8)).astype(np.float32)
    d = _run_mma(module, kind, pack_16bit(a, dtype, isa_m16n8k16_a, 8),
                 pack_16bit(b, dtype, isa_m16n8k16_b, 4), c)
    np.testing.assert_array_equal(d, a.astype(np.float32) @ b.astype(np.float32) + c)


def test_mma_m16n8k8_tf32_layouts_element_by_element(module):
    a = (np.arange(128).reshape(16, 8) + 1).astype(np.float32)
    b = np.eye(8, dtype=np.float32)
    c = np.arange(128).reshape(16, 8).astype(np.float32) * 1000
    d = _run_mma(module, 2, pack_32bit(a, isa_m16n8k8_tf32_a, 4),
                 pack_32bit(b, isa_m16n8k8_tf32_b, 2), c)
    np.testing.assert_array_equal(d, a + c)
    b = (np.arange(64).reshape(8, 8) + 1).astype(np.float32)
    a = np.zeros((16, 8), np.float32)
    a[np.arange(8), np.arange(8)] = 1
    a[np.arange(8) + 8, np.arange(8)] = 2
    d = _run_mma(module, 2, pack_32bit(a, isa_m16n8k8_tf32_a, 4),
                 pack_32bit(b, isa_m16n8k8_tf32_b, 2), np.zeros((16, 8), np.float32))
    np.testing.assert_array_equal(d, np.vstack([b, 2 * b]))


def test_mma_tf32_ignores_the_low_mantissa_bits(module):
    # The tensor cores read 10 mantissa bits of a .tf32 operand: 1 + 2^-11 counts as 1.
    a = np.zeros((16, 8), np.float32)
    a[0, 0] = 1 + 2.0 ** -11
    b = np.zeros((8, 8), np.float32)
    b[0, 0] = 1
    d = _run_mma(module, 2, pack_32bit(a, isa_m16n8k8_tf32_a, 4),
                 pack_32bit(b, isa_m16n8k8_tf32_b, 2), np.zeros((16, 8), np.float32))
    assert d[0, 0] == 1.0


# ---------------------------------------------------------------------------
# ldmatrix
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [0, 1], ids=["plain", "trans"])
def test_ldmatrix_layouts_element_by_element(module, num, trans):
    src = np.arange(32 * 8, dtype=np.uint16).reshape(32, 8) + 1000   # value encodes position
    rows = np.random.default_rng(num * 2 + trans).permutation(32).astype(np.int32)
    out = np.full((32, 4), 7, np.uint32)
    module.get_function(f"ldmatrix_probe<{num}, {trans}>")(1, 32, (src, rows, out))
    for lane in range(32):
        for j in range(num):
            # matrix j: row r is the shared row whose address lane 8 j + r gave
            expected = 0
            for half, (r, c) in enumerate(isa_ldmatrix(lane, trans)):
                expected |= int(src[rows[8 * j + r], c]) << (16 * half)
            assert int(out[lane, j]) == expected, (lane, j)
        assert (out[lane, num:] == 7).all()


def test_ldmatrix_checks_alignment(module):
    src = np.zeros((32, 8), np.uint16)
    out = np.zeros((32, 4), np.uint32)
    rows = np.arange(32, dtype=np.int32)
    fn = module.get_function("ldmatrix_probe<4, 0>")
    fn(1, 32, (src, rows, out))
    rows[5] = 40  # past the 32-row tile: outside the kernel's shared memory
    with pytest.raises(EmulatorLaunchError, match="outside the block's shared memory"):
        fn(1, 32, (src, rows, out))


# ---------------------------------------------------------------------------
# cp.async: commit / wait groups, zero fill
# ---------------------------------------------------------------------------

def test_cp_async_group_semantics(module):
    src = np.arange(32 * 8, dtype=np.uint32) * 3 + 11
    out = np.zeros(32 * 5 * 12, np.uint32)
    module.get_function("cp_async_probe")(1, 32, (src, out))
    snapshots = out.reshape(32, 5, 12).astype(np.int64)
    for t in range(32):
        s = src[t * 8:t * 8 + 8].astype(np.int64)
        untouched = 0x5A5A5A5A
        before = [POISON, untouched] + [POISON] * 10     # issued, nothing waited for
        after_g0 = [s[0], untouched] + [POISON] * 10     # wait_group 2: group 0 done
        after_g1 = [s[0], untouched, s[2], s[3]] + [POISON] * 8
        after_g2 = [s[0], untouched, s[2], s[3], *s[4:8], 0, 0, 0, 0]  # zero fill landed
        after_all = [s[0], s[1], s[2], s[3], *s[4:8], 0, 0, 0, 0]
        expected = np.array([before, after_g0, after_g1, after_g2, after_all])
        np.testing.assert_array_equal(snapshots[t], expected, err_msg=f"thread {t}")


# ---------------------------------------------------------------------------
# a pipelined tensor-core GEMM, and what breaks it
# ---------------------------------------------------------------------------

def _gemm_case(dtype, m=64, n=64, k=64, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.integers(-4, 5, (m, k)).astype(dtype)
    b = rng.integers(-4, 5, (k, n)).astype(dtype)
    return a, b, a.astype(np.float64) @ b.astype(np.float64)


def _run_gemm(fn, a, b):
    m, k = a.shape
    n = b.shape[1]
    d = np.zeros((m, n), np.float32)
    fn((m // 32, n // 32), 128, (a, b, d, np.int32(m), np.int32(n), np.int32(k)))
    return d


@pytest.mark.parametrize("name,dtype", [("pipelined_gemm<__half>", np.float16),
                                        ("pipelined_gemm<__nv_bfloat16>", ml_dtypes.bfloat16)])
@pytest.mark.parametrize("k", [16, 32, 80])
def test_pipelined_gemm(module, name, dtype, k):
    a, b, expected = _gemm_case(dtype, k=k)
    np.testing.assert_array_equal(_run_gemm(module.get_function(name), a, b), expected)


def test_pipelined_gemm_threads_mode():
    text = SOURCE_PATH.read_text()
    fn = EmulatedModule(text, name_expressions=["pipelined_gemm<__half>"],
                        mode="threads").get_function("pipelined_gemm<__half>")
    a, b, expected = _gemm_case(np.float16, m=32, n=32, k=48)
    np.testing.assert_array_equal(_run_gemm(fn, a, b), expected)


def _broken(old, new, schedule="forward"):
    text = SOURCE_PATH.read_text()
    assert old in text, "the selftest kernel changed: update the broken-kernel test"
    return EmulatedModule(text.replace(old, new), name_expressions=["pipelined_gemm<__half>"],
                          mode="cooperative", schedule=schedule
                          ).get_function("pipelined_gemm<__half>")


@pytest.mark.parametrize("old,new", [
    (WAIT_LINE, "/* cp.async.wait_group removed */"),
    (WAIT_LINE, "csc_cp_async_wait<CSC_PG_STAGES - 1>();  // one group too few waited for"),
    (BARRIER_LINE, "/* __syncthreads removed */"),
], ids=["missing-wait", "wait-count-off-by-one", "missing-barrier"])
@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_broken_pipeline_fails(old, new, schedule):
    a, b, expected = _gemm_case(np.float16)
    d = _run_gemm(_broken(old, new, schedule), a, b)
    wrong = ~np.isclose(d, expected)
    assert wrong.sum() > 100, "a broken cp.async pipeline went unnoticed"
