"""Tests of cusparseconv.voxelize against a brute-force dict oracle.

The oracle walks the points one by one in Python, computes each point's cell
with ``math.floor`` on Python floats (float64, the same arithmetic the library
documents), groups the points in a dict and reduces every group with plain
Python. Inputs are small (at most a few hundred points).
"""

import collections
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import to_numpy
from cusparseconv.voxelize import REDUCTIONS, devoxelize, voxelize

FLOAT_REDUCTIONS = ("mean", "max", "min", "sum", "first")

# ---------------------------------------------------------------------------
# oracle
# ---------------------------------------------------------------------------


def _per_axis(value, ndim):
    if np.ndim(value) == 0:
        return [float(value)] * ndim
    return [float(v) for v in value]


def voxelize_oracle(points, voxel_size, feats=None, reduce="mean", batch_index=None,
                    origin=None):
    """(coords, voxel_feats, point_to_voxel) computed point by point.

    voxel_feats is a float64 array for float reductions of float feats, else an
    array of Python ints / the feats dtype; None when feats is None.
    """
    points = np.asarray(points)
    n_points, ndim = points.shape
    size = _per_axis(voxel_size, ndim)
    shift = _per_axis(0.0 if origin is None else origin, ndim)
    groups = {}
    for i in range(n_points):
        batch = 0 if batch_index is None else int(batch_index[i])
        cell = tuple(
            math.floor((float(points[i, d]) - shift[d]) / size[d]) for d in range(ndim)
        )
        groups.setdefault((batch,) + cell, []).append(i)
    keys = sorted(groups)
    coords = np.array(keys, dtype=np.int64).reshape(len(keys), 1 + ndim)
    row_of = {key: row for row, key in enumerate(keys)}
    point_to_voxel = np.zeros(n_points, dtype=np.int64)
    for key, members in groups.items():
        for i in members:
            point_to_voxel[i] = row_of[key]
    if feats is None:
        return coords, None, point_to_voxel

    feats = np.asarray(feats)
    flat = feats.reshape(n_points, int(np.prod(feats.shape[1:])))
    out = []
    for key in keys:
        members = groups[key]
        row = []
        for c in range(flat.shape[1]):
            values = [flat[i, c].item() for i in members]
            if reduce == "mean":
                row.append(math.fsum(values) / len(values))
            elif reduce == "sum":
                row.append(math.fsum(values) if isinstance(values[0], float) else sum(values))
            elif reduce == "max":
                row.append(max(values))
            elif reduce == "min":
                row.append(min(values))
            elif reduce == "first":
                row.append(flat[min(members), c].item())
            elif reduce == "mode":
                counts = collections.Counter(values)
                row.append(max(counts, key=lambda label: (counts[label], -label)))
        out.append(row)
    out = np.array(out, dtype=np.float64 if reduce == "mean" else None)
    out = out.reshape((len(keys),) + feats.shape[1:])
    return coords, out, point_to_voxel


def random_points(rng, n, ndim, low=-3.0, high=3.0, dtype=np.float64):
    return rng.uniform(low, high, size=(n, ndim)).astype(dtype)


def check_against_oracle(xp, points, voxel_size, feats=None, reduce="mean",
                         batch_index=None, origin=None, rtol=1e-12):
    to_xp = (lambda a: None if a is None else xp.asarray(a))
    coords, voxel_feats, point_to_voxel = voxelize(
        to_xp(points), voxel_size, feats=to_xp(feats), reduce=reduce,
        batch_index=to_xp(batch_index), origin=origin,
    )
    ref_coords, ref_feats, ref_map = voxelize_oracle(
        points, voxel_size, feats, reduce, batch_index, origin
    )
    coords, voxel_feats, point_to_voxel = map(to_numpy, (coords, voxel_feats, point_to_voxel))
    assert coords.dtype == np.int32
    assert point_to_voxel.dtype == np.int64
    np.testing.assert_array_equal(coords, ref_coords)
    np.testing.assert_array_equal(point_to_voxel, ref_map)
    if feats is None:
        assert voxel_feats is None
    else:
        assert voxel_feats.shape == ref_feats.shape
        if reduce in ("max", "min", "first", "mode"):
            np.testing.assert_array_equal(voxel_feats, ref_feats.astype(voxel_feats.dtype))
        else:
            np.testing.assert_allclose(
                voxel_feats.astype(np.float64), ref_feats, rtol=rtol, atol=rtol
            )
    return coords, voxel_feats, point_to_voxel


# ---------------------------------------------------------------------------
# the oracle on its own
# ---------------------------------------------------------------------------


def test_oracle_self_check():
    points = np.array([[0.1, -0.1], [0.4, -0.4], [1.2, 0.3], [0.0, 0.0]])
    feats = np.array([[1.0], [3.0], [5.0], [7.0]])
    coords, out, p2v = voxelize_oracle(points, 0.5, feats, "mean")
    np.testing.assert_array_equal(coords, [[0, 0, -1], [0, 0, 0], [0, 2, 0]])
    np.testing.assert_array_equal(p2v, [0, 0, 2, 1])
    np.testing.assert_array_equal(out, [[2.0], [7.0], [5.0]])
    _, labels, _ = voxelize_oracle(points, 0.5, np.array([4, 2, 1, 1]), "mode")
    np.testing.assert_array_equal(labels, [2, 1, 1])  # tie 4 vs 2 -> 2


# ---------------------------------------------------------------------------
# agreement with the oracle
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("reduce", FLOAT_REDUCTIONS)
def test_matches_oracle(xp, rng, ndim, reduce):
    n = 150
    points = random_points(rng, n, ndim)
    voxel_size = rng.uniform(0.4, 1.5, size=ndim)
    feats = rng.standard_normal((n, 3))
    batch_index = rng.integers(0, 3, size=n)
    origin = rng.uniform(-1, 1, size=ndim)
    coords, _, _ = check_against_oracle(
        xp, points, voxel_size, feats, reduce, batch_index, origin
    )
    assert (coords[:, 1:] < 0).any(), "the test should exercise negative coordinates"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("reduce", FLOAT_REDUCTIONS)
def test_feats_dtype_kept(xp, rng, dtype, reduce):
    n = 100
    points = random_points(rng, n, 3, dtype=dtype)
    feats = rng.standard_normal((n, 2)).astype(dtype)
    rtol = {np.float16: 1e-3, np.float32: 1e-6, np.float64: 1e-12}[dtype]
    _, voxel_feats, _ = check_against_oracle(
        xp, points, 0.75, feats, reduce, rtol=rtol
    )
    assert voxel_feats.dtype == dtype


def test_scalar_and_per_axis_voxel_size_agree(rng):
    points = random_points(rng, 80, 3)
    a = voxelize(points, 0.5)
    b = voxelize(points, [0.5, 0.5, 0.5])
    c = voxelize(points, np.full(3, 0.5))
    for left, right in ((a, b), (a, c)):
        np.testing.assert_array_equal(left[0], right[0])
        np.testing.assert_array_equal(left[2], right[2])


def test_per_axis_voxel_size_and_origin(xp):
    points = np.array([[0.9, 0.9], [1.1, 0.9], [-0.1, -2.3], [2.3, 3.7]])
    coords, _, p2v = check_against_oracle(xp, points, [1.0, 2.0], origin=[0.05, -0.1])
    np.testing.assert_array_equal(coords, [[0, -1, -2], [0, 0, 0], [0, 1, 0], [0, 2, 1]])
    np.testing.assert_array_equal(p2v, [1, 2, 0, 3])


def test_boundaries_and_negative_zero():
    points = np.array([[-0.5], [-0.0], [0.0], [0.5], [-1e-12], [0.4999999]])
    coords, _, p2v = voxelize(points, 0.5)
    np.testing.assert_array_equal(coords[:, 1], [-1, 0, 1])
    np.testing.assert_array_equal(p2v, [0, 1, 1, 2, 0, 1])


def test_rows_sorted_unique_and_consistent(rng):
    n = 300
    points = random_points(rng, n, 3, -5, 5)
    batch_index = rng.integers(0, 4, size=n)
    coords, _, p2v = voxelize(points, [0.7, 1.3, 0.9], batch_index=batch_index)
    keys = [tuple(row) for row in coords.tolist()]
    assert keys == sorted(set(keys))
    cells = np.floor(points / np.array([0.7, 1.3, 0.9]))
    np.testing.assert_array_equal(coords[p2v, 1:], cells)
    np.testing.assert_array_equal(coords[p2v, 0], batch_index)


def test_batch_items_never_share_a_voxel():
    points = np.zeros((4, 3))
    coords, _, p2v = voxelize(points, 1.0, batch_index=np.array([3, 0, 3, 1]))
    np.testing.assert_array_equal(coords, [[0, 0, 0, 0], [1, 0, 0, 0], [3, 0, 0, 0]])
    np.testing.assert_array_equal(p2v, [2, 0, 2, 1])


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_larger_input_matches_unique_rows(rng, ndim):
    # An independent check on more points: numpy.unique over the rows.
    n = 20000
    points = random_points(rng, n, ndim, -20, 20).astype(np.float32)
    batch_index = rng.integers(0, 5, size=n)
    coords, _, p2v = voxelize(points, 0.8, batch_index=batch_index)
    rows = np.concatenate(
        [batch_index[:, None], np.floor(points.astype(np.float64) / 0.8)], axis=1
    ).astype(np.int64)
    ref_coords, ref_inverse = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(coords, ref_coords)
    np.testing.assert_array_equal(p2v, ref_inverse.reshape(-1))


def test_wide_ranges_use_row_sort_fallback(xp):
    # Four axes spanning ~2**32 each do not fit one int64 key.
    points = np.array([
        [2.0e9, -2.0e9, 2.0e9, -2.0e9],
        [-2.0e9, 2.0e9, -2.0e9, 2.0e9],
        [2.0e9, -2.0e9, 2.0e9, -2.0e9],
        [-2.0e9, 2.0e9, -2.0e9, 1.0],
        [5.5, 6.5, -7.5, 8.5],
    ])
    feats = np.arange(10.0).reshape(5, 2)
    for reduce in FLOAT_REDUCTIONS:
        check_against_oracle(xp, points, 1.0, feats, reduce, batch_index=[0, 7, 0, 7, 2**31 - 1])


def test_key_packing_at_int64_limit(xp):
    # batch range 2**31 times coordinate range 2**32 is exactly 2**63 keys.
    points = np.array([[2.0**31 - 1], [-(2.0**31)], [0.5], [2.0**31 - 1]])
    check_against_oracle(xp, points, 1.0, np.arange(4.0), "sum",
                         batch_index=[2**31 - 1, 0, 2**31 - 1, 2**31 - 1])


def test_int32_limits():
    ok = np.array([[2.0**31 - 1], [-(2.0**31)]])
    coords, _, _ = voxelize(ok, 1.0)
    np.testing.assert_array_equal(coords[:, 1], [-(2**31), 2**31 - 1])
    with pytest.raises(ValueError, match=r"points / voxel_size .*int32"):
        voxelize(np.array([[2.0**31]]), 1.0)
    with pytest.raises(ValueError, match=r"voxel_size"):
        voxelize(np.array([[1.0, -1e6]]), 1e-4)


# ---------------------------------------------------------------------------
# integer feats and labels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["first", "max", "min", "mode"])
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_labels_keep_dtype(xp, rng, reduce, dtype):
    n = 200
    points = random_points(rng, n, 2)
    labels = rng.integers(0, 4, size=n).astype(dtype)
    _, out, _ = check_against_oracle(xp, points, 1.0, labels, reduce)
    assert out.dtype == dtype and out.ndim == 1


def test_mode_per_channel_and_ties(xp):
    points = np.array([[0.1], [0.2], [0.3], [0.4], [1.5], [1.6], [2.5]])
    labels = np.array([[5, 1], [3, 1], [5, 2], [3, 2], [9, 0], [-4, 0], [7, 7]])
    _, out, _ = check_against_oracle(xp, points, 1.0, labels, "mode")
    # voxel 0: 5 and 3 twice each -> 3; 1 and 2 twice each -> 1.
    np.testing.assert_array_equal(out, [[3, 1], [-4, 0], [7, 7]])


def test_mode_matches_oracle_many_labels(xp, rng):
    n = 400
    points = random_points(rng, n, 3)
    labels = rng.integers(-3, 6, size=(n, 2))
    check_against_oracle(xp, points, 1.5, labels, "mode", batch_index=rng.integers(0, 2, n))


def test_bool_feats_mode_max_min(rng):
    points = random_points(rng, 60, 2)
    flags = rng.random(60) < 0.3
    for reduce in ("mode", "max", "min", "first"):
        _, out, _ = voxelize(points, 1.0, feats=flags, reduce=reduce)
        _, ref, _ = voxelize_oracle(points, 1.0, flags, reduce)
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, ref.astype(bool))


def test_integer_sum_and_mean_widen(rng):
    points = random_points(rng, 100, 2)
    labels = rng.integers(0, 250, size=(100, 2)).astype(np.uint8)
    signed = labels.astype(np.int16)
    _, sums, _ = voxelize(points, 1.5, feats=labels, reduce="sum")
    _, ssums, _ = voxelize(points, 1.5, feats=signed, reduce="sum")
    _, means, _ = voxelize(points, 1.5, feats=signed, reduce="mean")
    _, ref_sums, _ = voxelize_oracle(points, 1.5, labels, "sum")
    _, ref_means, _ = voxelize_oracle(points, 1.5, signed, "mean")
    assert sums.dtype == np.uint64 and ssums.dtype == np.int64 and means.dtype == np.float64
    np.testing.assert_array_equal(sums, ref_sums)
    np.testing.assert_array_equal(ssums, ref_sums)
    np.testing.assert_allclose(means, ref_means, rtol=1e-12)


def test_one_dimensional_feats(rng):
    points = random_points(rng, 50, 3)
    values = rng.standard_normal(50)
    for reduce in FLOAT_REDUCTIONS:
        _, out, _ = voxelize(points, 1.0, feats=values, reduce=reduce)
        _, ref, _ = voxelize_oracle(points, 1.0, values, reduce)
        assert out.ndim == 1
        np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_zero_channels(rng):
    points = random_points(rng, 20, 2)
    coords, out, _ = voxelize(points, 1.0, feats=np.zeros((20, 0), np.float32))
    assert out.shape == (coords.shape[0], 0) and out.dtype == np.float32


# ---------------------------------------------------------------------------
# empty and tiny inputs, round trip, inputs untouched
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("reduce", REDUCTIONS)
def test_empty_points(ndim, reduce):
    points = np.zeros((0, ndim), dtype=np.float32)
    dtype = np.int32 if reduce == "mode" else np.float32
    feats = np.zeros((0, 5), dtype=dtype)
    coords, out, p2v = voxelize(points, 0.1, feats=feats, reduce=reduce, batch_index=[])
    assert coords.shape == (0, 1 + ndim) and coords.dtype == np.int32
    assert p2v.shape == (0,) and p2v.dtype == np.int64
    assert out.shape == (0, 5) and out.dtype == dtype
    coords, out, p2v = voxelize(points, 0.1)
    assert out is None and coords.shape == (0, 1 + ndim)
    assert devoxelize(np.zeros((0, 5)), p2v).shape == (0, 5)


def test_empty_integer_sum_mean_dtypes():
    labels = np.zeros((0,), dtype=np.int16)
    _, out, _ = voxelize(np.zeros((0, 3)), 1.0, feats=labels, reduce="sum")
    assert out.dtype == np.int64 and out.shape == (0,)
    _, out, _ = voxelize(np.zeros((0, 3)), 1.0, feats=labels, reduce="mean")
    assert out.dtype == np.float64


@pytest.mark.parametrize("reduce", FLOAT_REDUCTIONS)
def test_one_point(reduce):
    coords, out, p2v = voxelize(
        np.array([[-1.5, 2.5, 0.0]], dtype=np.float32), [1.0, 2.0, 0.5],
        feats=np.array([[1.5, -2.0]], dtype=np.float32), reduce=reduce, batch_index=[4],
    )
    np.testing.assert_array_equal(coords, [[4, -2, 1, 0]])
    np.testing.assert_array_equal(out, [[1.5, -2.0]])
    np.testing.assert_array_equal(p2v, [0])


def test_devoxelize_round_trip(xp, rng):
    n = 200
    points = random_points(rng, n, 3)
    feats = rng.standard_normal((n, 4))
    coords, voxel_feats, p2v = voxelize(xp.asarray(points), 0.9, feats=xp.asarray(feats))
    back = to_numpy(devoxelize(voxel_feats, p2v))
    _, ref_feats, ref_map = voxelize_oracle(points, 0.9, feats, "mean")
    np.testing.assert_allclose(back, ref_feats[ref_map], rtol=1e-12)
    # Every point reads its own voxel: the voxel coordinates come back exactly.
    cells = to_numpy(devoxelize(coords, p2v))
    np.testing.assert_array_equal(cells[:, 1:], np.floor(points / 0.9))
    # 1-D voxel features give 1-D point features.
    assert devoxelize(np.arange(len(coords)), p2v).shape == (n,)


def test_inputs_not_modified(rng):
    points = random_points(rng, 50, 3)
    feats = rng.standard_normal((50, 2))
    batch_index = rng.integers(0, 2, 50)
    copies = [a.copy() for a in (points, feats, batch_index)]
    for reduce in FLOAT_REDUCTIONS:
        voxelize(points, 0.5, feats=feats, reduce=reduce, batch_index=batch_index)
    for original, copy in zip((points, feats, batch_index), copies):
        np.testing.assert_array_equal(original, copy)


def test_accepts_lists():
    coords, out, p2v = voxelize([[0.5, 0.5], [0.6, 0.7]], 1, feats=[1.0, 3.0])
    np.testing.assert_array_equal(coords, [[0, 0, 0]])
    np.testing.assert_array_equal(out, [2.0])


# ---------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10,), (10, 0), (10, 5), (2, 3, 3)])
def test_error_points_shape(shape):
    with pytest.raises(ValueError, match=r"points must have shape \(N, D\) with D in 1\.\.4"):
        voxelize(np.zeros(shape), 1.0)


def test_error_points_shape_shows_given():
    with pytest.raises(ValueError, match=r"got \(100, 7\)"):
        voxelize(np.zeros((100, 7)), 1.0)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex128, object])
def test_error_points_dtype(dtype):
    with pytest.raises(TypeError, match=r"points must be a floating-point array"):
        voxelize(np.zeros((3, 3), dtype=dtype), 1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_points_not_finite(bad):
    points = np.zeros((5, 3))
    points[3, 1] = bad
    with pytest.raises(ValueError, match=r"points must be finite.*row 3"):
        voxelize(points, 1.0)


@pytest.mark.parametrize("voxel_size", [0.0, -1.0, [1.0, 0.0, 1.0], np.inf, np.nan])
def test_error_voxel_size_not_positive(voxel_size):
    with pytest.raises(ValueError, match=r"voxel_size must be positive"):
        voxelize(np.zeros((3, 3)), voxel_size)


@pytest.mark.parametrize("voxel_size", [[1.0, 1.0], [1.0] * 4, [[1.0, 1.0, 1.0]]])
def test_error_voxel_size_length(voxel_size):
    with pytest.raises(ValueError, match=r"voxel_size must be a number or have D = 3 entries"):
        voxelize(np.zeros((3, 3)), voxel_size)


def test_error_voxel_size_type():
    with pytest.raises(TypeError, match=r"voxel_size must be a number"):
        voxelize(np.zeros((3, 3)), "big")


def test_error_origin():
    with pytest.raises(ValueError, match=r"origin must be a number or have D = 3"):
        voxelize(np.zeros((3, 3)), 1.0, origin=[0.0, 0.0])
    with pytest.raises(ValueError, match=r"origin must be finite"):
        voxelize(np.zeros((3, 3)), 1.0, origin=[0.0, np.nan, 0.0])


def test_error_feats_rows():
    with pytest.raises(ValueError, match=r"feats must have N = 4 rows.*got 3 rows"):
        voxelize(np.zeros((4, 3)), 1.0, feats=np.zeros((3, 2)))


def test_error_feats_ndim():
    with pytest.raises(ValueError, match=r"feats must have shape \(N,\) or \(N, C\)"):
        voxelize(np.zeros((4, 3)), 1.0, feats=np.zeros((4, 2, 2)))


def test_error_feats_dtype():
    with pytest.raises(TypeError, match=r"feats must have a floating-point, integer or bool"):
        voxelize(np.zeros((4, 3)), 1.0, feats=np.zeros((4, 2), dtype=np.complex64))


def test_error_mode_on_float_feats():
    with pytest.raises(TypeError, match=r"reduce='mode' needs integer or bool feats"):
        voxelize(np.zeros((4, 3)), 1.0, feats=np.zeros((4, 2)), reduce="mode")


@pytest.mark.parametrize("reduce", ["median", "MEAN", None, 3])
def test_error_unknown_reduce(reduce):
    with pytest.raises(ValueError, match=r"reduce must be one of 'mean', 'max', 'min', "
                                         r"'sum', 'first', 'mode', got"):
        voxelize(np.zeros((4, 3)), 1.0, feats=np.zeros(4), reduce=reduce)


def test_error_batch_index_shape():
    with pytest.raises(ValueError, match=r"batch_index must have shape \(N,\) = \(4,\).*\(3,\)"):
        voxelize(np.zeros((4, 3)), 1.0, batch_index=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"batch_index must have shape"):
        voxelize(np.zeros((4, 3)), 1.0, batch_index=np.zeros((4, 1), dtype=np.int64))


def test_error_batch_index_negative():
    with pytest.raises(ValueError, match=r"batch_index must be non-negative, got minimum -2 "
                                         r"\(first at row 1\)"):
        voxelize(np.zeros((4, 3)), 1.0, batch_index=np.array([0, -2, 1, -1]))


def test_error_batch_index_dtype_and_range():
    with pytest.raises(TypeError, match=r"batch_index must be an integer array"):
        voxelize(np.zeros((2, 3)), 1.0, batch_index=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"batch_index must fit in int32"):
        voxelize(np.zeros((2, 3)), 1.0, batch_index=np.array([0, 2**31]))


def test_error_devoxelize():
    p2v = np.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"point_to_voxel must lie in \[0, M\) with M = 1"):
        devoxelize(np.zeros((1, 2)), p2v)
    with pytest.raises(ValueError, match=r"point_to_voxel must lie in .*\[-1, 1\]"):
        devoxelize(np.zeros((2, 2)), np.array([-1, 1]))
    with pytest.raises(ValueError, match=r"voxel_feats must have shape \(M, C\) or \(M,\)"):
        devoxelize(np.zeros((2, 2, 2)), p2v)
    with pytest.raises(ValueError, match=r"point_to_voxel must have shape \(N,\)"):
        devoxelize(np.zeros((2, 2)), p2v[:, None])
    with pytest.raises(TypeError, match=r"point_to_voxel must be an integer array"):
        devoxelize(np.zeros((2, 2)), p2v.astype(float))


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@st.composite
def point_sets(draw):
    ndim = draw(st.integers(1, 4))
    n = draw(st.integers(0, 40))
    # Multiples of 1/8 in a small box: many exact ties on voxel boundaries.
    ticks = draw(st.lists(st.integers(-24, 24), min_size=n * ndim, max_size=n * ndim))
    points = np.array(ticks, dtype=np.float64).reshape(n, ndim) / 8.0
    voxel_size = [draw(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.3])) for _ in range(ndim)]
    batch_index = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
                           dtype=np.int64)
    labels = np.array(draw(st.lists(st.integers(-2, 2), min_size=n, max_size=n)),
                      dtype=np.int64)
    return points, voxel_size, batch_index, labels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(point_sets(), st.sampled_from(REDUCTIONS))
def test_property_matches_oracle(data, reduce):
    points, voxel_size, batch_index, labels = data
    feats = labels if reduce == "mode" else labels.astype(np.float64) * 0.5 + points.sum(1)
    check_against_oracle(np, points, voxel_size, feats, reduce, batch_index)


@settings(max_examples=40, deadline=None)
@given(point_sets(), st.floats(-10, 10), st.sampled_from([0.3, 1.0, 2.0]))
def test_property_first_is_inverse_of_devoxelize(data, shift, voxel_size):
    # Reducing with "first" and sending back gives, for the first point of each
    # voxel, its own features; and every point lies inside its voxel.
    points, _, batch_index, _ = data
    ndim = points.shape[1]
    index = np.arange(len(points), dtype=np.float64)
    coords, first, p2v = voxelize(points, voxel_size, feats=index, reduce="first",
                                  batch_index=batch_index, origin=[shift] * ndim)
    back = devoxelize(first, p2v)
    for i in range(len(points)):
        assert back[i] <= i
        assert p2v[int(back[i])] == p2v[i]
        low = coords[p2v[i], 1:] * voxel_size + shift
        assert np.all(low <= points[i] + 1e-9) and np.all(points[i] < low + voxel_size + 1e-9)
