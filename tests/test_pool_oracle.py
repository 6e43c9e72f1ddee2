"""Sparse pooling, global pooling and nearest upsampling against the oracle."""

import numpy as np
import pytest

import oracle
from conftest import (
    GEOMETRY,
    assert_close,
    assert_same_rows,
    random_coords,
    random_feats,
    random_weight,
    rtol_for,
    to_numpy,
)

MODES = ["max", "avg", "sum"]

# (kernel_size, stride) pairs whose windows always contain the point they
# come from (no output without an active offset)
POOL_SHAPES = {
    "k3s1": (3, 1),
    "k2s1": (2, 1),
    "k2s2": (2, 2),
    "k3s2": (3, 2),
    "per_axis": ((2, 1, 5), (2, 1, 3)),
    "k4s3": (4, 3),
}


def tensor(csc, xp, coords, feats, stride=1):
    return csc.SparseTensor(xp.asarray(coords), xp.asarray(feats), stride=stride)


def per_axis_for(value, ndim):
    if np.ndim(value) == 0:
        return value
    return tuple(list(value)[:ndim]) if ndim <= len(value) else tuple(value) + (1,) * (
        ndim - len(value))


# ---------------------------------------------------------------------------
# the oracle checks itself
# ---------------------------------------------------------------------------


def test_oracle_pool_sum_is_depthwise_conv_with_ones(rng):
    coords = random_coords(rng, 120, 3, 2, -4, 4)
    feats = random_feats(rng, 120, 4)
    offsets = oracle.kernel_offsets_oracle(3)
    out = oracle.downsample_coords_oracle(coords, 2)
    ref = oracle.conv_oracle(coords, feats, np.ones((27, 4)), offsets, 2, out, groups=4)
    got = oracle.pool_oracle(coords, feats, offsets, 2, out, "sum")
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    count = oracle.conv_oracle(coords, np.ones((120, 1)), np.ones((27, 1, 1)), offsets, 2, out)
    avg = oracle.pool_oracle(coords, feats, offsets, 2, out, "avg")
    np.testing.assert_allclose(avg * count, ref, rtol=1e-12, atol=1e-12)


def test_oracle_pool_by_hand():
    coords = np.array([[0, 0], [0, 1], [0, 3], [1, 1]], dtype=np.int32)
    feats = np.array([[1.0, -1.0], [4.0, 2.0], [-2.0, 5.0], [7.0, 7.0]])
    offsets = oracle.kernel_offsets_oracle(2, ndim=1)
    out = oracle.downsample_coords_oracle(coords, 2)
    assert out.tolist() == [[0, 0], [0, 1], [1, 0]]
    mx = oracle.pool_oracle(coords, feats, offsets, 2, out, "max")
    assert mx.tolist() == [[4, 2], [-2, 5], [7, 7]]
    avg = oracle.pool_oracle(coords, feats, offsets, 2, out, "avg")
    assert avg.tolist() == [[2.5, 0.5], [-2, 5], [7, 7]]
    gc, gf = oracle.global_pool_oracle(coords, feats, "mean")
    assert gc.tolist() == [[0, 0], [1, 0]]
    np.testing.assert_allclose(gf, [[1.0, 2.0], [7.0, 7.0]])


# ---------------------------------------------------------------------------
# sparse_pool
# ---------------------------------------------------------------------------


def run_pool(csc, xp, rng, ndim, shape, mode, dtype=np.float64, n_batch=2):
    n, low, high = GEOMETRY[ndim]
    kernel_size, stride = POOL_SHAPES[shape]
    kernel_size, stride = per_axis_for(kernel_size, ndim), per_axis_for(stride, ndim)
    coords = random_coords(rng, n, ndim, n_batch, low, high)
    feats = random_feats(rng, n, 5, dtype)
    x = tensor(csc, xp, coords, feats)
    y = csc.sparse_pool(x, kernel_size, stride, mode=mode)
    offsets = oracle.kernel_offsets_oracle(kernel_size, 1, ndim)
    s = oracle.as_tuple(stride, ndim)
    if all(v == 1 for v in s):
        out_ref = coords
    else:
        out_ref = oracle.downsample_coords_oracle(coords, s)
    np.testing.assert_array_equal(to_numpy(y.coords), out_ref)
    ref = oracle.pool_oracle(coords, feats, offsets, s, out_ref, mode)
    assert_same_rows(y.coords, y.feats, out_ref, ref, rtol_for(dtype), err_msg=mode)
    assert tuple(y.stride) == s
    return x, y


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", sorted(POOL_SHAPES))
def test_sparse_pool(csc, xp, rng, shape, mode):
    run_pool(csc, xp, rng, 3, shape, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", ["k3s1", "k2s2", "per_axis"])
@pytest.mark.parametrize("ndim", [1, 2, 4])
def test_sparse_pool_ndim(csc, xp, rng, ndim, shape, mode):
    run_pool(csc, xp, rng, ndim, shape, mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", ["k3s1", "k2s2"])
def test_sparse_pool_low_precision(csc, xp, rng, shape, mode, dtype):
    _, y = run_pool(csc, xp, rng, 3, shape, mode, dtype)
    assert to_numpy(y.feats).dtype == np.dtype(dtype)


def test_sparse_pool_keeps_input_stride(csc, xp, rng):
    coords = random_coords(rng, 60, 3)
    x = tensor(csc, xp, coords, random_feats(rng, 60, 2), stride=(2, 4, 1))
    y = csc.sparse_pool(x, 2, (2, 1, 2), mode="max")
    assert tuple(y.stride) == (4, 4, 2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_pool_empty_and_one_point(csc, xp, rng, n, stride, mode):
    coords = np.array([[3, -5, 0, 7]], dtype=np.int32)[:n]
    feats = random_feats(rng, n, 3)
    y = csc.sparse_pool(tensor(csc, xp, coords, feats), 3, stride, mode=mode)
    out_ref = coords if stride == 1 else oracle.downsample_coords_oracle(coords, stride)
    assert to_numpy(y.coords).shape == (n, 4)
    np.testing.assert_array_equal(to_numpy(y.coords), out_ref)
    assert to_numpy(y.feats).shape == (n, 3)
    assert_close(y.feats, feats, 1e-12)


# ---------------------------------------------------------------------------
# low level pool_forward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ["submanifold", "strided", "explicit"])
def test_pool_forward_low_level(csc, xp, rng, case, mode):
    coords = random_coords(rng, 120, 3, 2, -4, 4)
    feats = random_feats(rng, 120, 4)
    offsets = oracle.kernel_offsets_oracle(3)
    stride = 1
    if case == "submanifold":
        out = coords
    elif case == "strided":
        stride, out = 2, oracle.downsample_coords_oracle(coords, 2)
    else:
        # every explicit output is one of the inputs, so every window is active
        out = coords[rng.permutation(120)[:70]]
    kmap = csc.build_kernel_map(xp.asarray(coords), xp.asarray(out), xp.asarray(offsets),
                                stride=stride)
    got = csc.pool_forward(xp.asarray(feats), kmap, mode)
    ref = oracle.pool_oracle(coords, feats, offsets, stride, out, mode)
    assert_close(got, ref, 1e-10)


# ---------------------------------------------------------------------------
# global pooling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["mean", "max", "sum"])
@pytest.mark.parametrize("ndim", [1, 3, 4])
def test_global_pool(csc, xp, rng, ndim, mode, dtype):
    n, low, high = GEOMETRY[ndim]
    coords = random_coords(rng, n, ndim, 6, low, high)
    # drop batch items 1 and 4 entirely: only the items present get a row
    coords = coords[(coords[:, 0] != 1) & (coords[:, 0] != 4)]
    feats = random_feats(rng, len(coords), 3, dtype)
    y = csc.global_pool(tensor(csc, xp, coords, feats), mode=mode)
    ref_coords, ref = oracle.global_pool_oracle(coords, feats, mode)
    np.testing.assert_array_equal(to_numpy(y.coords), ref_coords)
    assert_close(y.feats, ref, rtol_for(dtype))


def test_global_pool_default_mode_is_mean(csc, xp, rng):
    coords = random_coords(rng, 50, 3, 3)
    feats = random_feats(rng, 50, 2)
    y = csc.global_pool(tensor(csc, xp, coords, feats))
    assert_close(y.feats, oracle.global_pool_oracle(coords, feats, "mean")[1], 1e-10)


@pytest.mark.parametrize("mode", ["mean", "max", "sum"])
def test_global_pool_empty_and_one_point(csc, xp, rng, mode):
    empty = np.zeros((0, 4), dtype=np.int32)
    y = csc.global_pool(tensor(csc, xp, empty, np.zeros((0, 3))), mode=mode)
    assert to_numpy(y.coords).shape == (0, 4) and to_numpy(y.feats).shape == (0, 3)
    point = np.array([[2, -1, 5, 9]], dtype=np.int32)
    feats = random_feats(rng, 1, 3)
    y = csc.global_pool(tensor(csc, xp, point, feats), mode=mode)
    np.testing.assert_array_equal(to_numpy(y.coords), [[2, 0, 0, 0]])
    assert_close(y.feats, feats, 1e-12)


# ---------------------------------------------------------------------------
# nearest upsampling and the coordinate cache of pooling outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [2, (2, 1, 3)])
@pytest.mark.parametrize("down", ["pool", "conv"])
def test_upsample_nearest(csc, xp, rng, stride, down):
    coords = random_coords(rng, 150, 3, 2, -6, 6)
    x = tensor(csc, xp, coords, random_feats(rng, 150, 3))
    if down == "pool":
        kernel = stride if np.ndim(stride) == 0 else (2, 1, 4)
        coarse = csc.sparse_pool(x, kernel, stride, mode="max")
    else:
        coarse = csc.sparse_conv(x, xp.asarray(random_weight(rng, (27, 3, 4))), 3,
                                 stride=stride)
    up = csc.upsample_nearest(coarse, stride)
    np.testing.assert_array_equal(to_numpy(up.coords), coords)
    ref = oracle.upsample_nearest_oracle(coords, to_numpy(coarse.coords),
                                         to_numpy(coarse.feats), stride)
    assert_close(up.feats, ref, 0.0)
    assert tuple(up.stride) == (1, 1, 1)


def test_upsample_nearest_two_levels(csc, xp, rng):
    coords = random_coords(rng, 200, 2, 3, -10, 10)
    x = tensor(csc, xp, coords, random_feats(rng, 200, 2))
    x1 = csc.sparse_pool(x, 2, 2, mode="avg")
    x2 = csc.sparse_pool(x1, 2, 2, mode="avg")
    u1 = csc.upsample_nearest(x2, 2)
    np.testing.assert_array_equal(to_numpy(u1.coords), to_numpy(x1.coords))
    u0 = csc.upsample_nearest(u1, 2)
    np.testing.assert_array_equal(to_numpy(u0.coords), coords)
    ref = oracle.upsample_nearest_oracle(coords, oracle.downsample_coords_oracle(coords, 4),
                                         to_numpy(x2.feats), 4)
    assert_close(u0.feats, ref, 0.0)


def test_transposed_conv_after_pool_uses_cache(csc, xp, rng):
    coords = random_coords(rng, 150, 3, 2, -6, 6)
    x = tensor(csc, xp, coords, random_feats(rng, 150, 3))
    coarse = csc.sparse_pool(x, 2, 2, mode="max")
    w = random_weight(rng, (8, 3, 2))
    up = csc.sparse_conv(coarse, xp.asarray(w), 2, stride=2, transposed=True)
    np.testing.assert_array_equal(to_numpy(up.coords), coords)
    ref = oracle.conv_oracle(to_numpy(coarse.coords), to_numpy(coarse.feats), w,
                             oracle.kernel_offsets_oracle(2), 2, coords, transposed=True)
    assert_close(up.feats, ref, 1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_sparse_pool_negative_features(csc, xp, rng, mode):
    """All features negative: a max initialised at 0 would be visible."""
    coords = random_coords(rng, 120, 3, 2, -4, 4)
    feats = -np.abs(random_feats(rng, 120, 3)) - 1.0
    y = csc.sparse_pool(tensor(csc, xp, coords, feats), 3, 2, mode=mode)
    out_ref = oracle.downsample_coords_oracle(coords, 2)
    ref = oracle.pool_oracle(coords, feats, oracle.kernel_offsets_oracle(3), 2, out_ref, mode)
    assert_same_rows(y.coords, y.feats, out_ref, ref, 1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_sparse_pool_window_without_active_offset_is_zero(csc, xp, rng, mode):
    """kernel 1, stride 2: an output whose only fine points are odd has no
    active offset. docs/SPEC.md is silent; the contract resolved here (and in the
    library's docstring) is 0 for every mode, with a zero gradient."""
    coords = np.array([[0, 1, 1], [0, 3, 0], [0, 2, 2], [1, -1, 5]], dtype=np.int32)
    feats = -np.abs(random_feats(rng, 4, 2)) - 1.0
    y = csc.sparse_pool(tensor(csc, xp, coords, feats), 1, 2, mode=mode)
    out_ref = oracle.downsample_coords_oracle(coords, 2)
    ref = oracle.pool_oracle(coords, feats, oracle.kernel_offsets_oracle(1, 1, 2), 2, out_ref,
                             mode)
    assert np.count_nonzero(np.all(ref == 0, axis=1)) == 3  # (0,0,0), (0,1,0), (1,-1,2)
    np.testing.assert_array_equal(to_numpy(y.coords), out_ref)
    assert_close(y.feats, ref, 1e-12)
    kmap = csc.build_kernel_map(xp.asarray(coords), xp.asarray(out_ref),
                                xp.asarray(oracle.kernel_offsets_oracle(1, 1, 2)), stride=2)
    g = random_feats(rng, len(out_ref), 2)
    dx = csc.pool_backward(xp.asarray(g), xp.asarray(feats), kmap, mode)
    ref_dx = oracle.pool_backward_oracle(g, coords, feats, oracle.kernel_offsets_oracle(1, 1, 2),
                                         2, out_ref, mode)
    assert_close(dx, ref_dx, 1e-12)
