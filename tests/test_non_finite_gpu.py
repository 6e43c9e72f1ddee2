"""Non-finite weights and features through the tiled GPU products (issue 14 item 5).

The tiled kernels (``mask_gemm`` SIMT and WMMA, ``tc_implicit_gemm``) run a tile
over the union of its rows' offsets and zero-fill the rows that lack an offset;
a row without a pair at offset k must still not see ``0 * W[k]`` when ``W[k]``
holds inf or NaN. Results must have the non-finite pattern of a pair-by-pair
product and its values (within rounding) elsewhere.

Oracle: the pair-by-pair product in float64, written here from the kernel
map's pair table (``kmap.pairs``), on the 16-bit inputs as the kernels see them.
Inputs are small (one to three tiles), kernels run under the host emulator in
cooperative mode.
"""

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv.backends import _tensor_core as tc
from cusparseconv.backends import use_backend
from cusparseconv.backends._launch import emulated_launcher

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
TOLERANCE = {np.dtype(np.float16): 3e-3, BF16: 2e-2, np.dtype(np.float32): 2e-3,
             np.dtype(np.float64): 1e-12}


# every test here runs the emulator in cooperative mode (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("cooperative")


def sparse_cloud(seed, n=90, extent=6):
    """A sparse set: most rows lack most offsets, so every tile zero-fills slots."""
    rng = np.random.default_rng(seed)
    coords = np.unique(np.hstack([rng.integers(0, 2, (n, 1)), rng.integers(0, extent, (n, 3))]),
                       axis=0).astype(np.int32)
    return rng, coords[rng.permutation(len(coords))]


def pair_product(kmap, src, weight, groups=1, bias=None):
    """out[o] = bias + sum over pairs (i, o) of offset k of src[i] @ W[k], in float64."""
    src = np.asarray(src).astype(np.float64)
    weight = np.asarray(weight).astype(np.float64)
    if groups == 1:
        weight = weight[:, None]
    g_in, g_out = weight.shape[2], weight.shape[3]
    out = np.zeros((kmap.n_out, groups * g_out))
    with np.errstate(invalid="ignore", over="ignore"):
        for k in range(kmap.kernel_volume):
            in_rows, out_rows = kmap.pairs(k)
            for g in range(groups):
                part = src[in_rows, g * g_in:(g + 1) * g_in] @ weight[k, g]
                np.add.at(out, (out_rows[:, None], g * g_out + np.arange(g_out)[None, :]), part)
        if bias is not None:
            out += np.asarray(bias).astype(np.float64)
    return out


def assert_same_non_finite(got, ref, dtype):
    got = np.asarray(got).astype(np.float64)
    assert got.shape == ref.shape
    for name, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        bad = test(got) != test(ref)
        assert not bad.any(), (f"{name} pattern differs at {np.argwhere(bad)[:5].tolist()}: "
                               f"got {got[bad][:5]}, expected {ref[bad][:5]}")
    finite = np.isfinite(ref)
    scale = max(np.abs(ref[finite]).max(initial=0.0), 1.0)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=0,
                               atol=TOLERANCE[np.dtype(dtype)] * scale)


def poison(weight):
    """inf and NaN in offsets that most rows lack; the centre offset stays finite."""
    weight = weight.copy()
    weight[0, 1, 0] = np.inf        # offset (-1, -1, -1), input channel 1 -> output column 0
    weight[26, 0, 1] = -np.inf
    weight[5, 0, 0] = np.nan
    return weight


# ---------------------------------------------------------------------------
# tensor-core implicit GEMM (backends/_tensor_core.py)
# ---------------------------------------------------------------------------

TC_CASES = [(np.dtype(np.float16), 16, 16, "m64n32s4"), (np.dtype(np.float16), 24, 40, None),
            (BF16, 5, 3, None), (np.dtype(np.float32), 8, 8, "m128n64s3")]


@pytest.mark.parametrize("dtype,c_src,c_dst,variant", TC_CASES,
                         ids=[f"{d.name}-{a}-{b}-{v}" for d, a, b, v in TC_CASES])
def test_tensor_core_gemm_non_finite_weights(dtype, c_src, c_dst, variant):
    rng, coords = sparse_cloud(c_src)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    launcher = emulated_launcher()
    src = rng.standard_normal((kmap.n_in, c_src)).astype(dtype)
    weight = poison(rng.standard_normal((27, c_src, c_dst)) * 0.3).astype(dtype)
    bias = rng.standard_normal(c_dst).astype(dtype)
    mask, neighbour = csc.pair_mask(kmap)
    order = tc.row_order_by_mask(launcher, mask)
    out = tc.implicit_gemm(launcher, src, weight, neighbour, mask, bias, order, variant=variant,
                           allow_tf32=True)
    ref = pair_product(kmap, src, weight, bias=bias)
    assert np.isfinite(ref).any() and not np.isfinite(ref).all()
    assert_same_non_finite(out, ref, dtype)


def test_tensor_core_input_gradient_non_finite_weights():
    rng, coords = sparse_cloud(3, n=120, extent=8)
    out_coords = np.unique(np.hstack([coords[:, :1], coords[:, 1:] // 2]), axis=0)
    kmap = csc.build_kernel_map(coords, out_coords.astype(np.int32), csc.kernel_offsets(3),
                                stride=2)
    launcher = emulated_launcher()
    grad_out = rng.standard_normal((kmap.n_out, 16)).astype(np.float16)
    weight = poison(rng.standard_normal((27, 8, 16)) * 0.3).astype(np.float16)
    weight[3, 2, 7] = np.inf
    reverse = csc.reverse_kernel_map(kmap)
    weight_t = np.ascontiguousarray(weight.transpose(0, 2, 1))
    mask, neighbour = csc.pair_mask(reverse)
    grad_in = tc.implicit_gemm(launcher, grad_out, weight_t, neighbour, mask,
                               row_order=tc.row_order_by_mask(launcher, mask))
    assert_same_non_finite(grad_in, pair_product(reverse, grad_out, weight_t), np.float16)


def test_tensor_core_non_finite_features_reach_only_their_pairs():
    rng, coords = sparse_cloud(4)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    launcher = emulated_launcher()
    src = rng.standard_normal((kmap.n_in, 16)).astype(np.float16)
    src[0, 3], src[1, :] = np.nan, np.inf
    weight = (rng.standard_normal((27, 16, 16)) * 0.3).astype(np.float16)
    mask, neighbour = csc.pair_mask(kmap)
    out = tc.implicit_gemm(launcher, src, weight, neighbour, mask)
    assert_same_non_finite(out, pair_product(kmap, src, weight), np.float16)


def test_tensor_core_finite_results_do_not_change_with_a_poisoned_column():
    """Columns whose weights are finite keep the fast path's exact bits."""
    rng, coords = sparse_cloud(5)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    launcher = emulated_launcher()
    src = rng.standard_normal((kmap.n_in, 16)).astype(np.float16)
    weight = (rng.standard_normal((27, 16, 16)) * 0.3).astype(np.float16)
    mask, neighbour = csc.pair_mask(kmap)
    clean = tc.implicit_gemm(launcher, src, weight, neighbour, mask)
    weight[0, :, 0] = np.inf
    out = tc.implicit_gemm(launcher, src, weight, neighbour, mask)
    np.testing.assert_array_equal(out[:, 1:].view(np.uint16), clean[:, 1:].view(np.uint16))
    assert_same_non_finite(out, pair_product(kmap, src, weight), np.float16)


# ---------------------------------------------------------------------------
# mask_gemm (SIMT for 32/64-bit, WMMA for 16-bit) through the public API
# ---------------------------------------------------------------------------

MASK_DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]


@pytest.mark.parametrize("dtype", MASK_DTYPES, ids=[d.name for d in MASK_DTYPES])
def test_mask_gemm_non_finite_weights(dtype):
    rng, coords = sparse_cloud(int(dtype.itemsize))
    offsets = csc.kernel_offsets(3)
    feats = rng.standard_normal((len(coords), 4)).astype(dtype)
    grad_out = rng.standard_normal((len(coords), 3)).astype(dtype)
    weight = poison(rng.standard_normal((27, 4, 3)) * 0.3).astype(dtype)
    with use_backend("cuda-emulated"), np.errstate(invalid="ignore"):
        kmap = csc.build_kernel_map(coords, coords, offsets)
        out = csc.conv_forward(feats, weight, kmap, algorithm="mask")
        grad_in = csc.conv_input_grad(grad_out, weight, kmap, algorithm="mask")
    kmap_cpu = csc.build_kernel_map(coords, coords, offsets)
    ref = pair_product(kmap_cpu, feats, weight)
    assert np.isfinite(ref).any() and not np.isfinite(ref).all()
    assert_same_non_finite(out, ref, dtype)
    weight_t = np.ascontiguousarray(weight.transpose(0, 2, 1))
    assert_same_non_finite(grad_in, pair_product(csc.reverse_kernel_map(kmap_cpu), grad_out, weight_t), dtype)


def test_mask_gemm_grouped_non_finite_weights():
    rng, coords = sparse_cloud(11)
    offsets = csc.kernel_offsets(3)
    feats = rng.standard_normal((len(coords), 4)).astype(np.float32)
    weight = (rng.standard_normal((27, 2, 2, 3)) * 0.3).astype(np.float32)
    weight[0, 1, 0, 2] = np.inf     # group 1 only: group 0's columns stay finite
    bias = rng.standard_normal(6).astype(np.float32)
    with use_backend("cuda-emulated"), np.errstate(invalid="ignore"):
        kmap = csc.build_kernel_map(coords, coords, offsets)
        out = csc.conv_forward(feats, weight, kmap, groups=2, bias=bias, algorithm="mask")
    ref = pair_product(csc.build_kernel_map(coords, coords, offsets), feats, weight, 2, bias)
    assert_same_non_finite(out, ref, np.float32)
