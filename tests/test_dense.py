"""Tests of cusparseconv.dense against loop oracles written here.

The scatter oracle writes one row at a time into a zero array; the gather
oracle reads one row at a time; the from_dense oracle walks every site of the
dense array in C order with ``numpy.ndindex``.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cusparseconv.dense as dense_module
from conftest import match_rows, random_coords, to_numpy
from cusparseconv.dense import (
    MAX_DENSE_ELEMENTS,
    from_dense,
    gather_from_dense,
    scatter_to_dense,
    to_dense,
)
from cusparseconv.tensor import SparseTensor

# ---------------------------------------------------------------------------
# oracles
# ---------------------------------------------------------------------------


def default_box(coords):
    """Per-axis (origin, spatial_shape) of the tightest box, by Python loops."""
    ndim = coords.shape[1] - 1
    rows = coords.tolist()
    if not rows:
        return [0] * ndim, [0] * ndim
    origin = [min(row[1 + d] for row in rows) for d in range(ndim)]
    shape = [max(row[1 + d] for row in rows) - origin[d] + 1 for d in range(ndim)]
    return origin, shape


def scatter_oracle(coords, feats, origin, spatial_shape, batch_size, channels_last=False):
    channels = feats.shape[1]
    out = np.zeros((batch_size, channels) + tuple(spatial_shape), dtype=feats.dtype)
    for row, (batch, *position) in enumerate(coords.tolist()):
        index = tuple(p - o for p, o in zip(position, origin))
        for c in range(channels):
            out[(batch, c) + index] = feats[row, c]
    return np.moveaxis(out, 1, -1).copy() if channels_last else out


def gather_oracle(dense, coords, origin, channels_last=False):
    if channels_last:
        dense = np.moveaxis(dense, -1, 1)
    out = np.zeros((coords.shape[0], dense.shape[1]), dtype=dense.dtype)
    for row, (batch, *position) in enumerate(coords.tolist()):
        index = tuple(p - o for p, o in zip(position, origin))
        for c in range(dense.shape[1]):
            out[row, c] = dense[(batch, c) + index]
    return out


def from_dense_oracle(dense, origin, channels_last=False, mask=None):
    if channels_last:
        dense = np.moveaxis(dense, -1, 1)
    sites = (dense.shape[0],) + dense.shape[2:]
    rows, feats = [], []
    for site in np.ndindex(*sites):  # C order: sorted by (batch, x1, ..., xD)
        values = dense[(site[0], slice(None)) + site[1:]]
        keep = bool(mask[site]) if mask is not None else any(v != 0 for v in values.tolist())
        if keep:
            rows.append([site[0]] + [s + o for s, o in zip(site[1:], origin)])
            feats.append(values.copy())
    ndim = len(sites) - 1
    coords = np.array(rows, dtype=np.int64).reshape(len(rows), 1 + ndim)
    feats = np.array(feats, dtype=dense.dtype).reshape(len(rows), dense.shape[1])
    return coords, feats


def sparse_input(rng, n, ndim, channels=3, n_batch=2, low=-4, high=4, dtype=np.float64):
    n = min(n, n_batch * (high - low) ** ndim // 2)  # small D: fewer rows
    coords = random_coords(rng, n, ndim=ndim, n_batch=n_batch, low=low, high=high)
    feats = rng.standard_normal((n, channels)).astype(dtype)
    feats[feats == 0] = 1.0  # a zero row would vanish in from_dense
    return coords, feats


def test_oracles_self_check():
    coords = np.array([[1, 2, -1], [0, 0, 0]], dtype=np.int32)
    feats = np.array([[1.0, 2.0], [3.0, 4.0]])
    origin, shape = default_box(coords)
    assert origin == [0, -1] and shape == [3, 2]
    dense = scatter_oracle(coords, feats, origin, shape, 2)
    assert dense.shape == (2, 2, 3, 2)
    assert dense[1, 0, 2, 0] == 1.0 and dense[0, 1, 0, 1] == 4.0 and dense.sum() == 10.0
    back, back_feats = from_dense_oracle(dense, origin)
    np.testing.assert_array_equal(back, coords[::-1])
    np.testing.assert_array_equal(back_feats, feats[::-1])
    np.testing.assert_array_equal(gather_oracle(dense, coords, origin), feats)


# ---------------------------------------------------------------------------
# scatter_to_dense / to_dense
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_scatter_matches_oracle(xp, rng, ndim, channels_last):
    coords, feats = sparse_input(rng, 40, ndim)
    dense, origin = scatter_to_dense(xp.asarray(coords), xp.asarray(feats),
                                     channels_last=channels_last)
    ref_origin, ref_shape = default_box(coords)
    ref = scatter_oracle(coords, feats, ref_origin, ref_shape, 2, channels_last)
    np.testing.assert_array_equal(to_numpy(origin), ref_origin)
    assert to_numpy(origin).dtype == np.int64
    assert dense.dtype == feats.dtype
    np.testing.assert_array_equal(to_numpy(dense), ref)
    assert ref_origin[0] < 0 or ndim == 1, "the test should exercise negative coordinates"


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_scatter_explicit_box_and_batch_size(rng, ndim, channels_last):
    coords, feats = sparse_input(rng, 30, ndim, low=-3, high=3)
    origin = [-5] * ndim
    spatial_shape = [9 + d for d in range(ndim)]
    dense, got_origin = scatter_to_dense(coords, feats, spatial_shape=spatial_shape,
                                         origin=origin, batch_size=4,
                                         channels_last=channels_last)
    ref = scatter_oracle(coords, feats, origin, spatial_shape, 4, channels_last)
    np.testing.assert_array_equal(got_origin, origin)
    np.testing.assert_array_equal(dense, ref)


def test_scatter_origin_only_and_shape_only(rng):
    coords, feats = sparse_input(rng, 25, 3, low=-2, high=5)
    low, shape = default_box(coords)
    # origin alone: the box reaches to the maximum coordinate.
    dense, origin = scatter_to_dense(coords, feats, origin=[-4, -3, -2])
    ref_shape = [size + first - o for size, first, o in zip(shape, low, [-4, -3, -2])]
    np.testing.assert_array_equal(
        dense, scatter_oracle(coords, feats, [-4, -3, -2], ref_shape, 2))
    # spatial_shape alone: the box starts at the minimum coordinate.
    dense, origin = scatter_to_dense(coords, feats, spatial_shape=[10, 10, 10])
    np.testing.assert_array_equal(origin, low)
    np.testing.assert_array_equal(dense, scatter_oracle(coords, feats, low, [10] * 3, 2))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_to_dense_of_sparse_tensor(rng, dtype, channels_last):
    coords, feats = sparse_input(rng, 50, 3, channels=4, dtype=dtype)
    x = SparseTensor(coords, feats, stride=2)
    dense, origin = to_dense(x, channels_last=channels_last)
    ref_origin, ref_shape = default_box(coords)
    np.testing.assert_array_equal(origin, ref_origin)
    assert dense.dtype == dtype
    np.testing.assert_array_equal(
        dense, scatter_oracle(coords, feats, ref_origin, ref_shape, 2, channels_last))
    dense, origin = to_dense(x, spatial_shape=[12] * 3, origin=[-6] * 3, batch_size=3)
    assert dense.shape == (3, 4, 12, 12, 12)
    np.testing.assert_array_equal(
        dense, scatter_oracle(coords, feats, [-6] * 3, [12] * 3, 3))


def test_channels_last_is_a_transpose(rng):
    coords, feats = sparse_input(rng, 30, 3)
    first, _ = scatter_to_dense(coords, feats)
    last, _ = scatter_to_dense(coords, feats, channels_last=True)
    np.testing.assert_array_equal(np.moveaxis(first, 1, -1), last)
    assert first.flags.c_contiguous and last.flags.c_contiguous


def test_inputs_not_modified(rng):
    coords, feats = sparse_input(rng, 30, 3)
    saved = coords.copy(), feats.copy()
    dense, origin = scatter_to_dense(coords, feats)
    gather_from_dense(dense, coords, origin)
    from_dense(dense, origin=origin)
    np.testing.assert_array_equal(coords, saved[0])
    np.testing.assert_array_equal(feats, saved[1])


# ---------------------------------------------------------------------------
# from_dense / gather_from_dense
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_from_dense_matches_oracle(rng, ndim, channels_last):
    spatial = (5, 4, 3, 3)[:ndim]
    shape = (2, *spatial, 3) if channels_last else (2, 3, *spatial)
    dense = rng.standard_normal(shape)
    dense[rng.random(shape) < 0.7] = 0.0  # some sites keep only a few channels
    origin = [-2, 7, 0, -1][:ndim]
    x = from_dense(dense, channels_last=channels_last, origin=origin)
    ref_coords, ref_feats = from_dense_oracle(dense, origin, channels_last)
    assert isinstance(x, SparseTensor)
    assert x.coords.dtype == np.int32 and x.feats.dtype == dense.dtype
    assert x.stride == (1,) * ndim
    np.testing.assert_array_equal(x.coords, ref_coords)  # sorted (batch, x1..xD)
    np.testing.assert_array_equal(x.feats, ref_feats)


def test_from_dense_default_origin_stride_and_nan(rng):
    dense = np.zeros((1, 2, 3, 3, 3), dtype=np.float32)
    dense[0, 1, 2, 0, 1] = np.nan
    dense[0, 0, 0, 2, 2] = -1.0
    x = from_dense(dense, stride=[2, 2, 4])
    np.testing.assert_array_equal(x.coords, [[0, 0, 2, 2], [0, 2, 0, 1]])
    np.testing.assert_array_equal(x.feats, [[-1.0, 0.0], [0.0, np.nan]])
    assert x.stride == (2, 2, 4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_from_dense_mask(rng, channels_last):
    shape = (2, 4, 5, 2) if channels_last else (2, 2, 4, 5)
    dense = rng.standard_normal(shape)
    dense[0] = 0.0
    mask = rng.random((2, 4, 5)) < 0.4
    mask[0, 1, 1] = True  # a masked site whose features are all zero
    x = from_dense(dense, channels_last=channels_last, origin=[1, -1], mask=mask)
    ref_coords, ref_feats = from_dense_oracle(dense, [1, -1], channels_last, mask=mask)
    np.testing.assert_array_equal(x.coords, ref_coords)
    np.testing.assert_array_equal(x.feats, ref_feats)
    assert [0, 2, 0] in x.coords.tolist()


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip(rng, ndim, channels_last, dtype):
    coords, feats = sparse_input(rng, 40, ndim, channels=2, n_batch=3, dtype=dtype)
    x = SparseTensor(coords, feats, stride=2)
    dense, origin = to_dense(x, channels_last=channels_last)
    y = from_dense(dense, channels_last=channels_last, origin=origin, stride=x.stride)
    perm = match_rows(y.coords, x.coords)
    np.testing.assert_array_equal(y.feats[perm], x.feats)
    assert y.feats.dtype == dtype and y.stride == x.stride
    rows = [tuple(r) for r in y.coords.tolist()]
    assert rows == sorted(rows)


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gather_matches_oracle(xp, rng, ndim, channels_last):
    spatial = (5, 4, 3, 3)[:ndim]
    shape = (2, *spatial, 3) if channels_last else (2, 3, *spatial)
    dense = rng.standard_normal(shape)
    origin = [-3, 2, 0, -1][:ndim]
    coords = random_coords(rng, min(20, 2 * 3**ndim), ndim=ndim, n_batch=2, low=0, high=3)
    coords[:, 1:] += np.array(origin, dtype=np.int32)
    got = gather_from_dense(xp.asarray(dense), xp.asarray(coords), origin,
                            channels_last=channels_last)
    np.testing.assert_array_equal(to_numpy(got),
                                  gather_oracle(dense, coords, origin, channels_last))


def test_gather_inverts_scatter_and_is_its_adjoint(rng):
    coords, feats = sparse_input(rng, 60, 3, channels=4)
    dense, origin = scatter_to_dense(coords, feats)
    np.testing.assert_array_equal(gather_from_dense(dense, coords, origin), feats)
    # <scatter(f), g> == <f, gather(g)> for any dense g.
    g = rng.standard_normal(dense.shape)
    np.testing.assert_allclose(
        np.vdot(dense, g), np.vdot(feats, gather_from_dense(g, coords, origin)), rtol=1e-12)


def test_integer_dense_gather_and_scatter():
    coords = np.array([[0, 1], [0, 3]], dtype=np.int32)
    labels = np.array([[7], [9]], dtype=np.int64)
    dense, origin = scatter_to_dense(coords, labels)
    assert dense.dtype == np.int64
    np.testing.assert_array_equal(dense, [[[7, 0, 9]]])
    np.testing.assert_array_equal(gather_from_dense(dense, coords, origin), labels)


# ---------------------------------------------------------------------------
# empty inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_empty(ndim):
    coords = np.zeros((0, 1 + ndim), dtype=np.int32)
    feats = np.zeros((0, 3), dtype=np.float32)
    dense, origin = scatter_to_dense(coords, feats)
    assert dense.shape == (0, 3) + (0,) * ndim and dense.dtype == np.float32
    np.testing.assert_array_equal(origin, [0] * ndim)
    x = SparseTensor(coords, feats)
    dense, origin = to_dense(x, spatial_shape=[2] * ndim, batch_size=2, channels_last=True)
    assert dense.shape == (2,) + (2,) * ndim + (3,) and not dense.any()
    y = from_dense(dense, channels_last=True, origin=[-1] * ndim)
    assert y.coords.shape == (0, 1 + ndim) and y.coords.dtype == np.int32
    assert y.feats.shape == (0, 3) and y.feats.dtype == np.float32
    assert gather_from_dense(dense, coords, origin, channels_last=True).shape == (0, 3)


# ---------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------

COORDS = np.array([[0, 0, 0], [1, 2, -1]], dtype=np.int32)
FEATS = np.ones((2, 3))


def test_error_outside_box():
    with pytest.raises(ValueError, match=r"outside the dense box \[origin, origin \+ "
                                         r"spatial_shape\) on spatial axis 1.*\[-1, 0\]"):
        scatter_to_dense(COORDS, FEATS, origin=[0, 0])
    with pytest.raises(ValueError, match=r"spatial_shape is \[3, 1\]"):
        scatter_to_dense(COORDS, FEATS, spatial_shape=[3, 1])
    with pytest.raises(ValueError, match=r"origin is \[1, -1\]"):
        scatter_to_dense(COORDS, FEATS, origin=[1, -1], spatial_shape=[5, 5])


def test_error_dense_too_large(monkeypatch):
    with pytest.raises(ValueError, match=r"4294967296 elements.*MAX_DENSE_ELEMENTS = "
                                         r"2147483648.*crop"):
        scatter_to_dense(COORDS[:1], FEATS[:1, :1], spatial_shape=[2**16, 2**16])
    monkeypatch.setattr(dense_module, "MAX_DENSE_ELEMENTS", 2 * 3 * 3 * 2)
    dense, _ = scatter_to_dense(COORDS, FEATS)  # exactly at the cap: allowed
    assert dense.size == 36
    with pytest.raises(ValueError, match=r"would have 54 elements.*MAX_DENSE_ELEMENTS = 36"):
        scatter_to_dense(COORDS, FEATS, batch_size=3)
    assert MAX_DENSE_ELEMENTS == 2**31


def test_error_coords():
    with pytest.raises(ValueError, match=r"coords must have shape \(N, 1 \+ D\) with D in "
                                         r"1\.\.4 .*got \(2, 7\)"):
        scatter_to_dense(np.zeros((2, 7), dtype=np.int32), FEATS)
    with pytest.raises(TypeError, match=r"coords must be an integer array .*got dtype float64"):
        scatter_to_dense(COORDS.astype(float), FEATS)
    with pytest.raises(ValueError, match=r"coords column 0 is the batch index and must be "
                                         r">= 0"):
        scatter_to_dense(np.array([[-1, 0, 0]]), FEATS[:1])
    with pytest.raises(ValueError, match=r"coords must have unique rows, got 1 duplicated"):
        scatter_to_dense(np.array([[0, 1, 1], [0, 0, 0], [0, 1, 1]]), np.ones((3, 1)))


def test_error_feats():
    with pytest.raises(ValueError, match=r"feats must have shape \(N, C\) with N = 2.*\(3, 3\)"):
        scatter_to_dense(COORDS, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"feats must have shape \(N, C\)"):
        scatter_to_dense(COORDS, np.ones(2))


def test_error_origin_and_spatial_shape_arguments():
    with pytest.raises(ValueError, match=r"origin must be an int or have D = 2 entries .*got "
                                         r"3 entries"):
        scatter_to_dense(COORDS, FEATS, origin=[0, 0, 0])
    with pytest.raises(TypeError, match=r"origin must be an int or a sequence of D = 2 ints"):
        scatter_to_dense(COORDS, FEATS, origin=[0.5, 0.0])
    with pytest.raises(ValueError, match=r"spatial_shape must be >= 0 on every axis"):
        scatter_to_dense(COORDS, FEATS, spatial_shape=[3, -1])
    with pytest.raises(ValueError, match=r"spatial_shape must be an int or have D = 2 entries"):
        scatter_to_dense(COORDS, FEATS, spatial_shape=[3])


def test_error_batch_size():
    with pytest.raises(ValueError, match=r"batch index must be below batch_size = 1, got "
                                         r"maximum 1"):
        scatter_to_dense(COORDS, FEATS, batch_size=1)
    with pytest.raises(TypeError, match=r"batch_size must be an int"):
        scatter_to_dense(COORDS, FEATS, batch_size=2.0)
    with pytest.raises(ValueError, match=r"batch_size must be non-negative"):
        scatter_to_dense(COORDS[:0], FEATS[:0], batch_size=-1)


def test_error_channels_last():
    with pytest.raises(TypeError, match=r"channels_last must be a bool"):
        scatter_to_dense(COORDS, FEATS, channels_last="yes")


def test_error_to_dense_needs_sparse_tensor():
    with pytest.raises(TypeError, match=r"x must be a SparseTensor.*scatter_to_dense"):
        to_dense(COORDS)


def test_error_from_dense():
    with pytest.raises(ValueError, match=r"dense must have shape \(B, C, \*spatial\) with "
                                         r"1\.\.4 spatial axes, got \(2, 3\)"):
        from_dense(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dense must have shape \(B, \*spatial, C\)"):
        from_dense(np.ones((1,) * 7), channels_last=True)
    with pytest.raises(ValueError, match=r"mask must have shape \(B, \*spatial\) = "
                                         r"\(1, 4, 4\).*\(1, 2, 4, 4\)"):
        from_dense(np.ones((1, 2, 4, 4)), mask=np.ones((1, 2, 4, 4), dtype=bool))
    with pytest.raises(TypeError, match=r"mask must be a bool array"):
        from_dense(np.ones((1, 2, 4, 4)), mask=np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match=r"origin must be an int or have D = 2 entries"):
        from_dense(np.ones((1, 2, 4, 4)), origin=[0])
    with pytest.raises(ValueError, match=r"origin .* do not fit in int32"):
        from_dense(np.ones((1, 2, 4, 4)), origin=[2**31 - 2, 0])


def test_error_gather():
    dense = np.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"coords must have 1 \+ D = 3 columns.*got 4"):
        gather_from_dense(dense, np.zeros((1, 4), dtype=np.int32), [0, 0])
    with pytest.raises(ValueError, match=r"coords batch index must be below the batch size 2"):
        gather_from_dense(dense, np.array([[2, 0, 0]]), [0, 0])
    with pytest.raises(ValueError, match=r"coords lie outside the dense box.*spatial axis 0.*"
                                         r"origin is \[1, 0\]"):
        gather_from_dense(dense, np.array([[0, 0, 0]]), [1, 0])
    with pytest.raises(ValueError, match=r"coords lie outside the dense box.*spatial axis 1"):
        gather_from_dense(dense, np.array([[0, 0, 4]]), [0, 0])
    with pytest.raises(ValueError, match=r"origin must be an int or have D = 2 entries"):
        gather_from_dense(dense, COORDS, [0])


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@st.composite
def sparse_sets(draw):
    ndim = draw(st.integers(1, 4))
    cells = st.tuples(st.integers(0, 2), *[st.integers(-3, 3) for _ in range(ndim)])
    rows = draw(st.lists(cells, min_size=0, max_size=25, unique=True))
    coords = np.array(rows, dtype=np.int32).reshape(len(rows), 1 + ndim)
    channels = draw(st.integers(1, 3))
    values = draw(st.lists(st.integers(1, 9), min_size=len(rows) * channels,
                           max_size=len(rows) * channels))
    feats = np.array(values, dtype=np.float64).reshape(len(rows), channels)
    return coords, feats


@settings(max_examples=60, deadline=None)
@given(sparse_sets(), st.booleans())
def test_property_round_trip(data, channels_last):
    coords, feats = data
    dense, origin = scatter_to_dense(coords, feats, channels_last=channels_last)
    ref_origin, ref_shape = default_box(coords)
    batch_size = int(coords[:, 0].max()) + 1 if len(coords) else 0
    np.testing.assert_array_equal(
        dense, scatter_oracle(coords, feats, ref_origin, ref_shape, batch_size, channels_last))
    y = from_dense(dense, channels_last=channels_last, origin=origin)
    perm = match_rows(y.coords, coords)
    np.testing.assert_array_equal(y.feats[perm], feats)
    np.testing.assert_array_equal(
        gather_from_dense(dense, coords, origin, channels_last=channels_last), feats)


# ---------------------------------------------------------------------------
# occupancy mask: a lossless round trip with all-zero rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_to_dense_mask_gives_every_row_back(rng, channels_last):
    coords = random_coords(rng, 40, 3, n_batch=2, low=-4, high=4)
    feats = rng.standard_normal((40, 2))
    feats[:10] = 0                                  # rows a ReLU zeroed
    x = SparseTensor(coords, feats)
    dense, origin, mask = to_dense(x, channels_last=channels_last, return_mask=True)
    expected = np.zeros(mask.shape, dtype=bool)
    for b, *site in coords.tolist():
        expected[(b,) + tuple(int(v - o) for v, o in zip(site, origin))] = True
    assert mask.dtype == np.bool_ and np.array_equal(mask, expected)
    lossy = from_dense(dense, channels_last=channels_last, origin=origin)
    again = from_dense(dense, channels_last=channels_last, origin=origin, mask=mask)
    assert len(lossy) == 30 and len(again) == 40
    order = np.lexsort(coords.T[::-1])
    assert np.array_equal(again.coords, coords[order])
    assert np.array_equal(again.feats, feats[order])
    with pytest.raises(TypeError, match="return_mask must be a bool"):
        to_dense(x, return_mask="yes")


def test_to_dense_mask_counts_against_the_size_limit(monkeypatch):
    coords = np.array([[0, 0, 0, 0], [0, 9, 9, 9]], dtype=np.int32)
    feats = np.ones((2, 1))
    monkeypatch.setattr(dense_module, "MAX_DENSE_ELEMENTS", 1500)
    assert to_dense(SparseTensor(coords, feats))[0].size == 1000
    with pytest.raises(ValueError, match=r"2 channels \(mask included\)"):
        to_dense(SparseTensor(coords, feats), return_mask=True)
