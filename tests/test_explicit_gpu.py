"""The grouped explicit algorithm (backends/_explicit.py, raw_kernels/explicit.cu) under emulation.

Oracle: per-pair products in float64 written here from the CPU kernel map's
pair table (``kmap.pairs``), on the inputs as the kernels see them. Covered:
the grouping of offsets by pair count and its padding-waste bound (random
counts, real maps), the forward product with the atomic and the deterministic
scatter for every dtype, grouped convolutions, bias, the input gradient on the
reverse map, the weight gradient, empty maps, bit-identical deterministic
runs, the workspace figure against padding every offset to the largest count.
Small inputs, cooperative emulation.
"""

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv.backends import _explicit as ex

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
# relative to the largest reference entry: 16-bit products are rounded once before
# the float32 scatter (as cuBLAS returns them), then the sum is rounded again
TOLERANCE = {np.dtype(np.float16): 4e-3, BF16: 3e-2, np.dtype(np.float32): 1e-5,
             np.dtype(np.float64): 1e-12}


# every test here runs the emulator in cooperative mode (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("cooperative")


def cloud(seed, n=160, extent=7):
    rng = np.random.default_rng(seed)
    coords = np.unique(np.hstack([rng.integers(0, 2, (n, 1)), rng.integers(0, extent, (n, 3))]),
                       axis=0).astype(np.int32)
    return rng, coords[rng.permutation(len(coords))]


def device_pairs(kmap):
    """The map's pair table as the GPU backend holds it, plus the output-major
    position table (built here from the pair table)."""
    position = np.full((kmap.n_out, kmap.kernel_volume), -1, dtype=np.int32)
    for k in range(kmap.kernel_volume):
        _, out_rows = kmap.pairs(k)
        position[out_rows, k] = np.arange(out_rows.shape[0])
    return (kmap.in_rows.astype(np.int32), kmap.out_rows.astype(np.int32), kmap.pair_offsets,
            kmap.pair_offsets.copy()), position


def pair_oracle(kmap, src, weight, groups=1, bias=None):
    src = np.asarray(src).astype(np.float64)
    weight = np.asarray(weight).astype(np.float64)
    weight4 = weight if groups > 1 else weight[:, None]
    g_in, g_out = weight4.shape[2:]
    out = np.zeros((kmap.n_out, groups * g_out))
    for k in range(kmap.kernel_volume):
        in_rows, out_rows = kmap.pairs(k)
        for g in range(groups):
            np.add.at(out, (out_rows[:, None], g * g_out + np.arange(g_out)),
                      src[in_rows, g * g_in:(g + 1) * g_in] @ weight4[k, g])
    if bias is not None:
        out += np.asarray(bias).astype(np.float64)
    return out


def assert_close(got, ref, dtype):
    assert np.dtype(got.dtype) == np.dtype(dtype)
    scale = max(np.abs(ref).max(initial=0.0), 1.0)
    np.testing.assert_allclose(np.asarray(got).astype(np.float64), ref, rtol=0,
                               atol=TOLERANCE[np.dtype(dtype)] * scale)


# ---------------------------------------------------------------------------
# grouping by pair count
# ---------------------------------------------------------------------------

def check_groups(counts, max_waste):
    groups = ex.group_offsets(counts, max_waste)
    covered = np.concatenate([g.offsets for g in groups]) if groups else np.zeros(0, int)
    assert sorted(covered.tolist()) == np.flatnonzero(np.asarray(counts) > 0).tolist()
    for g in groups:
        assert g.padded_rows == max(counts[k] for k in g.offsets)
        assert g.pair_rows == sum(counts[k] for k in g.offsets)
        assert g.gathered_rows - g.pair_rows <= max_waste * g.gathered_rows + 1e-9
    assert ex.padding_waste(groups) <= max_waste + 1e-12
    return groups


@pytest.mark.parametrize("max_waste", [0.0, 0.1, 0.25, 0.5])
def test_grouping_bounds_the_padding(max_waste):
    rng = np.random.default_rng(int(max_waste * 100))
    for _ in range(50):
        size = int(rng.integers(1, 130))
        counts = rng.integers(0, 1000, size) * (rng.random(size) < 0.8)
        check_groups(counts.tolist(), max_waste)


def test_grouping_of_a_real_map_gathers_far_less_than_padding_to_the_largest_count():
    _, coords = cloud(1, 3000, 16)
    counts = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3)).pair_counts()
    groups = check_groups(counts, ex.DEFAULT_MAX_WASTE)
    assert len(groups) < 27
    padded_to_largest = 27 * counts.max()
    gathered = sum(g.gathered_rows for g in groups)
    assert gathered <= counts.sum() / (1 - ex.DEFAULT_MAX_WASTE)
    assert gathered < 0.7 * padded_to_largest
    assert ex.workspace_bytes(counts, 64, 64, np.float16) == gathered * 128 * 2


def test_grouping_special_cases():
    assert ex.group_offsets([0, 0, 0]) == ()
    (group,) = ex.group_offsets([5, 5, 0, 5], 0.0)
    assert group.offsets.tolist() == [0, 1, 3] and group.padded_rows == 5
    assert [g.offsets.tolist() for g in ex.group_offsets([4, 10, 9, 1], 0.0)] == [[1], [2],
                                                                                 [0], [3]]
    with pytest.raises(ValueError, match=r"max_waste must lie in \[0, 1\)"):
        ex.group_offsets([1, 2], 1.0)
    with pytest.raises(ValueError, match="pair_counts must be"):
        ex.group_offsets([[1, 2]])


# ---------------------------------------------------------------------------
# forward / input gradient
# ---------------------------------------------------------------------------

DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "sorted"])
@pytest.mark.parametrize("dtype", DTYPES, ids=[d.name for d in DTYPES])
def test_forward_matches_the_pair_oracle(launcher, dtype, deterministic):
    rng, coords = cloud(2)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    pairs, position = device_pairs(kmap)
    src = rng.standard_normal((kmap.n_in, 8)).astype(dtype)
    weight = (rng.standard_normal((27, 8, 5)) * 0.3).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    out = ex.product(launcher, src, weight, *pairs, kmap.n_out, bias=bias,
                     position=position if deterministic else None)
    assert_close(out, pair_oracle(kmap, src, weight, bias=bias), dtype)


def test_deterministic_scatter_is_bit_identical_and_grouping_only_rounds(launcher):
    rng, coords = cloud(3)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    pairs, position = device_pairs(kmap)
    src = rng.standard_normal((kmap.n_in, 16)).astype(np.float32)
    weight = rng.standard_normal((27, 16, 8)).astype(np.float32)
    first = ex.product(launcher, src, weight, *pairs, kmap.n_out, position=position)
    again = ex.product(launcher, src, weight, *pairs, kmap.n_out, position=position)
    np.testing.assert_array_equal(first.view(np.uint32), again.view(np.uint32))
    exact = ex.product(launcher, src, weight, *pairs, kmap.n_out, position=position,
                       max_waste=0.0)
    loose = ex.product(launcher, src, weight, *pairs, kmap.n_out, position=position,
                       max_waste=0.9)
    for out in (exact, loose):
        assert_close(out, pair_oracle(kmap, src, weight), np.float32)


def test_grouped_convolution_and_input_gradient(launcher):
    rng, coords = cloud(4, 220, 8)
    out_coords = np.unique(np.hstack([coords[:, :1], coords[:, 1:] // 2]), axis=0)
    kmap = csc.build_kernel_map(coords, out_coords.astype(np.int32), csc.kernel_offsets(3),
                                stride=2)
    pairs, position = device_pairs(kmap)
    src = rng.standard_normal((kmap.n_in, 6)).astype(np.float16)
    weight = (rng.standard_normal((27, 2, 3, 4)) * 0.3).astype(np.float16)
    out = ex.product(launcher, src, weight, *pairs, kmap.n_out, groups=2, position=position)
    assert_close(out, pair_oracle(kmap, src, weight, groups=2), np.float16)
    # input gradient: the product on the reverse map with the weights transposed
    reverse = csc.reverse_kernel_map(kmap)
    reverse_pairs, reverse_position = device_pairs(reverse)
    grad_out = rng.standard_normal((kmap.n_out, 8)).astype(np.float16)
    weight_t = np.ascontiguousarray(weight.transpose(0, 1, 3, 2))
    grad_in = ex.product(launcher, grad_out, weight_t, *reverse_pairs, kmap.n_in, groups=2)
    assert_close(grad_in, pair_oracle(reverse, grad_out, weight_t, groups=2), np.float16)


def test_empty_map(launcher):
    rng, coords = cloud(5, 30)
    far = coords + np.array([0, 50, 50, 50], np.int32)
    kmap = csc.build_kernel_map(coords, far, csc.kernel_offsets(3))
    assert kmap.n_pairs == 0
    pairs, position = device_pairs(kmap)
    src = rng.standard_normal((kmap.n_in, 4)).astype(np.float16)
    weight = rng.standard_normal((27, 4, 3)).astype(np.float16)
    bias = np.arange(3, dtype=np.float16)
    for pos in (None, position):
        out = ex.product(launcher, src, weight, *pairs, kmap.n_out, bias=bias, position=pos)
        np.testing.assert_array_equal(out, np.broadcast_to(bias, (kmap.n_out, 3)))
    grad = ex.weight_grad(launcher, src, np.ones((kmap.n_out, 3), np.float16), *pairs)
    assert grad.shape == (27, 4, 3) and not grad.any()


def test_argument_errors(launcher):
    rng, coords = cloud(6, 30)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    pairs, _ = device_pairs(kmap)
    src = rng.standard_normal((kmap.n_in, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="weight must be float32 of shape"):
        ex.product(launcher, src, np.ones((27, 5, 3), np.float32), *pairs, kmap.n_out)
    with pytest.raises(ValueError, match="in_rows must be int32"):
        ex.product(launcher, src, np.ones((27, 4, 3), np.float32), pairs[0].astype(np.int64),
                   *pairs[1:], kmap.n_out)
    with pytest.raises(TypeError, match="the explicit algorithm takes"):
        ex.product(launcher, src.astype(np.int32), np.ones((27, 4, 3), np.int32), *pairs,
                   kmap.n_out)


def test_tf32_follows_cupys_switch():
    """float32 products use CuPy's 2-D path (TF32) only when CuPy's compute type says so."""
    class Linalg:
        COMPUTE_TYPE_TF32, COMPUTE_TYPE_DEFAULT = 7, 1

        def __init__(self, value):
            self.value = value

        def get_compute_type(self, dtype):
            assert np.dtype(dtype) == np.float32
            return self.value

    class FakeCupy:
        def __init__(self, value):
            self._core = type("core", (), {"_routines_linalg": Linalg(value)})()

    assert ex._cupy_uses_tf32(FakeCupy(7)) and not ex._cupy_uses_tf32(FakeCupy(1))
    assert not ex._cupy_uses_tf32(np)


# ---------------------------------------------------------------------------
# weight gradient
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,groups", [(np.dtype(np.float32), 1), (np.dtype(np.float64), 1),
                                          (np.dtype(np.float16), 1), (BF16, 2)],
                         ids=["float32", "float64", "float16", "bfloat16-grouped"])
def test_weight_grad_matches_the_pair_oracle(launcher, dtype, groups):
    rng, coords = cloud(7)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    pairs, _ = device_pairs(kmap)
    feats = rng.standard_normal((kmap.n_in, 6)).astype(dtype)
    grad_out = rng.standard_normal((kmap.n_out, 4)).astype(dtype)
    got = ex.weight_grad(launcher, feats, grad_out, *pairs, groups=groups)
    f64, g64 = feats.astype(np.float64), grad_out.astype(np.float64)
    expected = np.zeros((27, groups, 6 // groups, 4 // groups))
    for k in range(27):
        in_rows, out_rows = kmap.pairs(k)
        for g in range(groups):
            expected[k, g] = (f64[in_rows, g * (6 // groups):(g + 1) * (6 // groups)].T
                              @ g64[out_rows, g * (4 // groups):(g + 1) * (4 // groups)])
    if groups == 1:
        expected = expected[:, 0]
    assert got.shape == expected.shape
    assert_close(got, expected, dtype)
