"""Packed keys, downsampling and expansion against direct computation."""

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv.coords import (SortedKeys, batch_limit, coordinate_range, downsample,
                                 expand, pack, unpack)


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_pack_round_trip_and_lexicographic_order(ndim):
    rng = np.random.default_rng(ndim)
    low, high = coordinate_range(ndim)
    coords = rng.integers(low, high, size=(500, 1 + ndim)).astype(np.int32)
    coords[:, 0] = rng.integers(0, batch_limit(ndim), size=500)
    coords[:3, 1:] = [[low] * ndim, [high - 1] * ndim, [0] * ndim]
    keys = pack(coords)
    assert np.array_equal(unpack(keys, ndim), coords)
    lexicographic = np.lexsort(coords.T[::-1])
    assert np.array_equal(np.argsort(keys, kind="stable"), lexicographic)


def test_out_of_range_and_duplicates_are_refused():
    low, high = coordinate_range(3)
    with pytest.raises(ValueError, match="range"):
        pack(np.array([[0, 0, high, 0]], dtype=np.int32))
    with pytest.raises(ValueError, match="batch"):
        pack(np.array([[batch_limit(3), 0, 0, 0]], dtype=np.int32))
    with pytest.raises(ValueError, match="duplicate"):
        SortedKeys(np.array([[0, 1, 2, 3], [0, 5, 5, 5], [0, 1, 2, 3]], dtype=np.int32))


@pytest.mark.parametrize("stride", [(2, 2, 2), (1, 3, 2)])
def test_downsample_is_unique_floor_division(stride):
    rng = np.random.default_rng(1)
    coords = np.unique(rng.integers(-9, 9, size=(300, 4)), axis=0).astype(np.int32)
    coords[:, 0] %= 3
    coords = np.unique(coords, axis=0)
    coarse, keys = downsample(coords, stride)
    expected = {(r[0],) + tuple(int(np.floor(a / s)) for a, s in zip(r[1:], stride))
                for r in coords.tolist()}
    assert {tuple(r) for r in coarse.tolist()} == expected
    assert len(coarse) == len(expected)
    assert np.array_equal(keys, pack(coarse)) and np.all(np.diff(keys) > 0)


def _cross_offsets():
    """The centre and its six face neighbours: not a box (one step)."""
    eye = np.eye(3, dtype=np.int32)
    return np.concatenate([np.zeros((1, 3), np.int32), eye, -eye])


@pytest.mark.parametrize("offsets,scale", [
    (csc.kernel_offsets(3, 2, 3), (2, 1, 3)),    # a dilated box: one step per axis
    (-csc.kernel_offsets(3), (1, 1, 1)),         # a generative layer's output set
    (csc.kernel_offsets(5), (1, 1, 1)),
    (csc.kernel_offsets(2), (2, 2, 2)),          # two values per axis: one step
    (_cross_offsets(), (1, 1, 1)),               # not a box: one step
    (csc.kernel_offsets(3)[::-1].copy(), (1, 2, 1)),
])
def test_expand_matches_set_union(offsets, scale):
    rng = np.random.default_rng(2)
    coords = np.unique(rng.integers(-5, 5, size=(80, 4)), axis=0).astype(np.int32)
    coords[:, 0] = rng.integers(0, 3, size=len(coords))
    coords = np.unique(coords, axis=0)
    out, keys = expand(coords, offsets, scale)
    expected = {(r[0],) + tuple(s * a + o for s, a, o in zip(scale, r[1:], off))
                for r in coords.tolist() for off in offsets.tolist()}
    assert {tuple(r) for r in out.tolist()} == expected and len(out) == len(expected)
    assert out.dtype == np.int32 and out.flags.c_contiguous
    assert np.array_equal(keys, pack(out)) and np.all(np.diff(keys) > 0)


def test_expand_refuses_outputs_outside_the_packable_range():
    low, high = coordinate_range(3)
    offsets = csc.kernel_offsets(3, 2, 3)
    with pytest.raises(ValueError, match="range"):
        expand(np.array([[0, high - 1, 0, 0]], dtype=np.int32), offsets, (1, 1, 1))
    with pytest.raises(ValueError, match="range"):
        expand(np.array([[0, 0, low + 1, 0]], dtype=np.int32), offsets, (1, 1, 1))
    edge = np.array([[1, high - 3, low + 2, 0]], dtype=np.int32)   # reaches both ends
    out, _ = expand(edge, csc.kernel_offsets(3, 2), (1, 1, 1))
    assert out[:, 1].max() == high - 1 and out[:, 2].min() == low and len(out) == 27


def test_kernel_offsets_order_and_centring():
    k3 = csc.kernel_offsets(3)
    assert k3.shape == (27, 3) and k3.dtype == np.int32
    assert k3[0].tolist() == [-1, -1, -1] and k3[13].tolist() == [0, 0, 0]
    assert k3[1].tolist() == [-1, -1, 0]  # last axis fastest
    k2 = csc.kernel_offsets(2)
    assert {tuple(r) for r in k2.tolist()} == {(a, b, c) for a in (0, 1) for b in (0, 1)
                                              for c in (0, 1)}
    mixed = csc.kernel_offsets((3, 2, 1), (2, 1, 1))
    assert mixed.tolist() == [[-2, 0, 0], [-2, 1, 0], [0, 0, 0], [0, 1, 0], [2, 0, 0],
                              [2, 1, 0]]
    assert csc.kernel_offsets(4, 1, 1).ravel().tolist() == [0, 1, 2, 3]  # even: c = 0
    with pytest.raises(ValueError, match="kernel_size"):
        csc.kernel_offsets(0)
    with pytest.raises(ValueError, match="dilation"):
        csc.kernel_offsets(3, (1, 2))


def test_column_bounds_match_reductions_along_the_rows():
    """Per-column bounds (one strided reduction per column) against NumPy's axis-0
    reductions, on a narrow C-ordered array, a column slice of it and negative values."""
    from cusparseconv.coords import column_bounds
    rng = np.random.default_rng(5)
    coords = rng.integers(-70000, 70000, size=(1001, 4)).astype(np.int32)
    for view in (coords, coords[:, 1:], coords[::3, 2:], coords[:1]):
        low, high = column_bounds(view)
        assert low.dtype == high.dtype == np.int64
        assert np.array_equal(low, view.min(axis=0)) and np.array_equal(high, view.max(axis=0))
