"""Invalid input gives ValueError or TypeError naming the argument.

A check may fire when the SparseTensor is built or when the op runs; the
tests accept either by running construction and use inside one ``raises``.
"""

import numpy as np
import pytest

import oracle
from conftest import assert_close, random_coords, random_feats, random_weight, to_numpy

ERRORS = (ValueError, TypeError)


def good_inputs(rng, n=20, ndim=3, channels=4):
    return random_coords(rng, n, ndim), random_feats(rng, n, channels)


def build_and_conv(csc, coords, feats, weight=None, **kwargs):
    x = csc.SparseTensor(coords, feats)
    if weight is None:
        weight = np.zeros((27, np.shape(feats)[1], 2), dtype=np.float64)
    return csc.sparse_conv(x, weight, **kwargs)


# ---------------------------------------------------------------------------
# coords
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_integer_coords(csc, rng, dtype):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="coords"):
        build_and_conv(csc, coords.astype(dtype), feats)


def test_bool_coords(csc, rng):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="coords"):
        build_and_conv(csc, coords != 0, feats)


def test_one_dimensional_coords(csc, rng):
    with pytest.raises(ERRORS, match="coords"):
        csc.SparseTensor(np.arange(10, dtype=np.int32), random_feats(rng, 10, 2))


@pytest.mark.parametrize("n_columns", [1, 6, 7])
def test_spatial_dimension_out_of_range(csc, rng, n_columns):
    coords = np.arange(5 * n_columns, dtype=np.int32).reshape(5, n_columns)
    with pytest.raises(ERRORS, match="coords"):
        csc.SparseTensor(coords, random_feats(rng, 5, 2))


def test_duplicate_coords(csc, rng):
    coords, feats = good_inputs(rng)
    coords[7] = coords[3]
    with pytest.raises(ERRORS, match="coords") as info:
        build_and_conv(csc, coords, feats)
    assert "duplicate" in str(info.value).lower()


def test_duplicate_coords_in_build_kernel_map(csc, rng):
    coords, _ = good_inputs(rng)
    coords[7] = coords[3]
    offsets = oracle.kernel_offsets_oracle(3)
    with pytest.raises(ERRORS, match="coords") as info:
        csc.build_kernel_map(coords, coords, offsets)
    assert "duplicate" in str(info.value).lower()


def test_negative_batch_index(csc, rng):
    coords, feats = good_inputs(rng)
    coords[5, 0] = -1
    with pytest.raises(ERRORS, match="coords"):
        build_and_conv(csc, coords, feats)


@pytest.mark.parametrize("value", [2**20, -(2**20), 2**31 - 1])
def test_coordinates_outside_packable_range(csc, rng, value):
    coords, feats = good_inputs(rng)
    coords[4, 2] = value
    with pytest.raises(ERRORS, match="range"):
        build_and_conv(csc, coords, feats)


@pytest.mark.parametrize("value", [2**14, -(2**14), -(2**15), 2**15 - 1])
def test_coordinates_inside_packable_range_work(csc, rng, value):
    """D = 3 coordinates in [-2**15, 2**15) must work and give right values."""
    base = np.array([0, value, -value // 2, 3], dtype=np.int64)
    rows = [base + np.array([0, 0, 0, 0]), base + np.array([0, 0, 1, 0]),
            base + np.array([0, 0, 0, -1]), base + np.array([1, 0, 0, 0])]
    coords = np.array(rows, dtype=np.int32)
    feats = random_feats(rng, 4, 3)
    weight = random_weight(rng, (27, 3, 2))
    y = build_and_conv(csc, coords, feats, weight)
    ref = oracle.conv_oracle(coords, feats, weight, oracle.kernel_offsets_oracle(3), 1, coords)
    assert_close(y.feats, ref, 1e-10)


# ---------------------------------------------------------------------------
# feats
# ---------------------------------------------------------------------------


def test_feats_rows_mismatch(csc, rng):
    coords, _ = good_inputs(rng)
    with pytest.raises(ERRORS, match="feats"):
        build_and_conv(csc, coords, random_feats(rng, 19, 4))


def test_feats_not_two_dimensional(csc, rng):
    coords, _ = good_inputs(rng)
    with pytest.raises(ERRORS, match="feats"):
        build_and_conv(csc, coords, rng.standard_normal(20))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex128, np.bool_])
def test_unsupported_feats_dtype(csc, rng, dtype):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="feats"):
        build_and_conv(csc, coords, feats.astype(dtype))


@pytest.mark.parametrize("dtype", [np.int64, np.complex128])
def test_unsupported_feats_dtype_low_level(csc, rng, dtype):
    coords, feats = good_inputs(rng)
    kmap = csc.build_kernel_map(coords, coords, oracle.kernel_offsets_oracle(3))
    with pytest.raises(ERRORS, match="feats"):
        csc.conv_forward(feats.astype(dtype), random_weight(rng, (27, 4, 2)), kmap)


# ---------------------------------------------------------------------------
# weight
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((26, 4, 2), {}),                      # K does not match 3x3x3
        ((27, 5, 2), {}),                      # C_in does not match
        ((8, 4, 2), {}),                       # K of a 2x2x2 kernel with kernel_size 3
        ((27, 4), {}),                         # depthwise form without groups
        ((27, 4, 2), {"groups": 2}),           # standard form with groups
        ((27, 2, 2, 1), {"groups": 4}),        # G of the weight != groups
        ((27, 2, 3, 1), {"groups": 2}),        # C_in / G does not match
        ((27, 3), {"groups": 4}),              # depthwise with C != C_in
        ((27, 4, 2, 1, 1), {}),                # 5-D
        ((27,), {}),                           # 1-D
    ],
)
def test_weight_shape_mismatch(csc, rng, shape, kwargs):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="weight"):
        build_and_conv(csc, coords, feats, random_weight(rng, shape), **kwargs)


def test_weight_shape_mismatch_with_offsets(csc, rng):
    coords, feats = good_inputs(rng)
    offsets = np.array([[0, 0, 0], [1, 0, 0]], dtype=np.int32)
    with pytest.raises(ERRORS, match="weight"):
        build_and_conv(csc, coords, feats, random_weight(rng, (3, 4, 2)), offsets=offsets)


def test_weight_shape_mismatch_low_level(csc, rng):
    coords, feats = good_inputs(rng)
    kmap = csc.build_kernel_map(coords, coords, oracle.kernel_offsets_oracle(3))
    with pytest.raises(ERRORS, match="weight"):
        csc.conv_forward(feats, random_weight(rng, (26, 4, 2)), kmap)
    with pytest.raises(ERRORS, match="weight"):
        csc.conv_forward(feats, random_weight(rng, (27, 3, 2)), kmap)


# ---------------------------------------------------------------------------
# geometry arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [0, -1, (2, 0, 2), (1, -2, 1)])
def test_bad_stride(csc, rng, stride):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="stride"):
        build_and_conv(csc, coords, feats, stride=stride)
    with pytest.raises(ERRORS, match="stride"):
        csc.sparse_pool(csc.SparseTensor(coords, feats), 2, stride)


@pytest.mark.parametrize("kernel_size", [0, -3, (3, 0, 3)])
def test_bad_kernel_size(csc, rng, kernel_size):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="kernel_size"):
        build_and_conv(csc, coords, feats, kernel_size=kernel_size)
    with pytest.raises(ERRORS, match="kernel_size"):
        csc.sparse_pool(csc.SparseTensor(coords, feats), kernel_size, 1)
    with pytest.raises(ERRORS, match="kernel_size"):
        csc.kernel_offsets(kernel_size, ndim=3)


def test_transposed_strided_without_output_coords(csc, rng):
    coords, feats = good_inputs(rng)
    x = csc.SparseTensor(coords, feats, stride=2)  # fresh tensor: nothing cached
    with pytest.raises(ERRORS, match="out_coords"):
        csc.sparse_conv(x, random_weight(rng, (8, 4, 2)), 2, stride=2, transposed=True)


def test_transposed_with_stride_not_in_cache(csc, rng):
    coords, feats = good_inputs(rng, n=60)
    x = csc.SparseTensor(coords, feats)
    y = csc.sparse_conv(x, random_weight(rng, (8, 4, 4)), 2, stride=2)
    with pytest.raises(ERRORS, match="out_coords"):
        csc.sparse_conv(y, random_weight(rng, (27, 4, 2)), 3, stride=3, transposed=True)


def test_transposed_stride1_needs_no_output_coords(csc, rng):
    coords, feats = good_inputs(rng)
    y = build_and_conv(csc, coords, feats, transposed=True)
    np.testing.assert_array_equal(to_numpy(y.coords), coords)


# ---------------------------------------------------------------------------
# pooling modes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["median", "mean", "MAX", ""])
def test_bad_pool_mode(csc, rng, mode):
    coords, feats = good_inputs(rng)
    x = csc.SparseTensor(coords, feats)
    with pytest.raises(ERRORS, match="mode"):
        csc.sparse_pool(x, 2, 2, mode=mode)


def test_bad_pool_mode_low_level(csc, rng):
    coords, feats = good_inputs(rng)
    kmap = csc.build_kernel_map(coords, coords, oracle.kernel_offsets_oracle(3))
    with pytest.raises(ERRORS, match="mode"):
        csc.pool_forward(feats, kmap, "median")
    with pytest.raises(ERRORS, match="mode"):
        csc.pool_backward(feats, feats, kmap, "median")


@pytest.mark.parametrize("mode", ["avg", "min", "median"])
def test_bad_global_pool_mode(csc, rng, mode):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="mode"):
        csc.global_pool(csc.SparseTensor(coords, feats), mode=mode)


# ---------------------------------------------------------------------------
# explicit offsets and output coordinates (STYLE: errors name the argument)
# ---------------------------------------------------------------------------


def test_offsets_wrong_dimension(csc, rng):
    coords, feats = good_inputs(rng)
    offsets = np.zeros((3, 2), dtype=np.int32)
    with pytest.raises(ERRORS, match="offsets"):
        build_and_conv(csc, coords, feats, random_weight(rng, (3, 4, 2)), offsets=offsets)


def test_out_coords_wrong_dimension(csc, rng):
    coords, feats = good_inputs(rng)
    with pytest.raises(ERRORS, match="out_coords"):
        build_and_conv(csc, coords, feats, out_coords=coords[:, :3].copy())


def test_out_coords_duplicates(csc, rng):
    coords, feats = good_inputs(rng)
    out = np.concatenate([coords[:5], coords[:1]])
    with pytest.raises(ERRORS, match="coords"):
        build_and_conv(csc, coords, feats, out_coords=out)


# ---------------------------------------------------------------------------
# one dtype rule for every entry point (issue #16, item 7): nothing is cast
# ---------------------------------------------------------------------------


def test_weight_dtype_must_match_feats(csc, rng):
    coords, feats = good_inputs(rng)
    x = csc.SparseTensor(coords, feats.astype(np.float32))
    with pytest.raises(TypeError, match="weight has dtype float64 but feats has float32"):
        csc.sparse_conv(x, random_weight(rng, (27, 4, 2)))
    with pytest.raises(TypeError, match="bias has dtype float64 but feats has float32"):
        csc.sparse_conv(x, random_weight(rng, (27, 4, 2), np.float32), bias=np.zeros(2))
    kmap = csc.layer_kernel_map(x)[0]
    with pytest.raises(TypeError, match="weight has dtype float16 but grad_out has float32"):
        csc.conv_input_grad(np.ones((20, 2), np.float32),
                            random_weight(rng, (27, 4, 2), np.float16), kmap)
    with pytest.raises(TypeError, match="grad_out has dtype float64 but feats has float32"):
        csc.conv_weight_grad(x.feats, np.ones((20, 2)), kmap)
    with pytest.raises(TypeError, match="grad_out has dtype float64 but feats has float32"):
        csc.pool_backward(np.ones((20, 4)), x.feats, kmap, "max")
    with pytest.raises(TypeError, match="grad_out has dtype float64"):
        csc.global_pool_backward(np.ones((2, 4)), x, "max")
    y = csc.sparse_conv(x, random_weight(rng, (27, 4, 2)).astype(np.float32))  # cast: fine
    assert y.feats.dtype == np.float32


# ---------------------------------------------------------------------------
# (N, 3) coordinates without a batch column (issue #16, item 4)
# ---------------------------------------------------------------------------


def xyz_scan(rng, n=500):
    """Voxelized (x, y, z) rows of a scan with no batch column: x spans 0..2000."""
    rows = np.unique(rng.integers(0, 2000, size=(n, 3)), axis=0)
    return rows.astype(np.int32)


def test_ndim_argument_names_a_missing_batch_column(csc, rng):
    rows = xyz_scan(rng)
    with pytest.raises(ValueError, match=r"\(N, 4\) for ndim=3.*prepend one"):
        csc.SparseTensor(rows, np.ones((len(rows), 1)), ndim=3)
    with pytest.raises(ValueError, match=r"ndim=3.*prepend one"):
        csc.build_kernel_map(rows, rows, csc.kernel_offsets(3), ndim=3)
    fixed = np.hstack([np.zeros((len(rows), 1), np.int32), rows])
    assert csc.SparseTensor(fixed, np.ones((len(rows), 1)), ndim=3).ndim == 3
    with pytest.raises(ValueError, match="ndim"):
        csc.SparseTensor(fixed, np.ones((len(rows), 1)), ndim=5)


def test_xyz_rows_read_as_two_dimensional_warn(csc, rng):
    rows = xyz_scan(rng)
    with pytest.warns(UserWarning, match="without a batch column"):
        csc.SparseTensor(rows, np.ones((len(rows), 1)))
    with pytest.warns(UserWarning, match="without a batch column"):
        csc.build_kernel_map(rows, rows, csc.kernel_offsets(3, ndim=2))


def test_legitimate_two_dimensional_batches_do_not_warn(csc, rng):
    import warnings

    pixels = random_coords(rng, 300, 2, n_batch=64, low=-50, high=50)   # 64 images
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        csc.SparseTensor(pixels, np.ones((300, 1)))
        rows = xyz_scan(rng)
        csc.SparseTensor(rows, np.ones((len(rows), 1)), ndim=2)         # confirmed 2-D


def test_negative_batch_column_mentions_the_missing_batch_column(csc, rng):
    rows = xyz_scan(rng) - 1000
    with pytest.raises(ValueError, match="batch index.*prepend one"):
        csc.SparseTensor(rows, np.ones((len(rows), 1)))


def test_three_dimensional_weight_on_two_dimensional_rows_says_why(csc, rng):
    rows = np.unique(rng.integers(0, 50, size=(100, 3)), axis=0).astype(np.int32)
    x = csc.SparseTensor(rows, np.ones((len(rows), 2)))
    with pytest.raises(ValueError, match=r"\(9, 2, C_out\).*D = 2.*27 offsets.*prepend one"):
        csc.sparse_conv(x, np.ones((27, 2, 4)))
