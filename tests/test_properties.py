"""Property-based tests: random coordinate sets (empty, one point, several
batch items, negative coordinates) through stride 1, strided and
transposed-generative convolutions, pooling and kernel maps, against the
oracle, on every backend of ``conftest.BACKENDS``."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracle
from conftest import assert_same_rows, to_numpy

# The backend fixture only selects the backend (no per-example state): sharing it
# between examples is what is wanted.
SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@st.composite
def sparse_inputs(draw, max_points=40, max_ndim=3):
    """(coords (N, 1 + D) int32, feats (N, C) float64, rng) with unique rows."""
    ndim = draw(st.integers(1, max_ndim))
    row = st.tuples(st.integers(0, 2), *[st.integers(-6, 6) for _ in range(ndim)])
    rows = draw(st.lists(row, min_size=0, max_size=max_points, unique=True))
    coords = np.array(rows, dtype=np.int32).reshape(-1, 1 + ndim)
    channels = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    feats = rng.standard_normal((len(coords), channels))
    return coords, feats, rng


def per_axis(draw, ndim, low, high):
    """An int or a per-axis tuple of ints in [low, high]."""
    if draw(st.booleans()):
        return draw(st.integers(low, high))
    return tuple(draw(st.integers(low, high)) for _ in range(ndim))


@SETTINGS
@given(data=sparse_inputs(), extra=st.data())
def test_stride1_conv_matches_oracle(csc, backend, data, extra):
    coords, feats, rng = data
    ndim = coords.shape[1] - 1
    kernel_size = per_axis(extra.draw, ndim, 1, 4)
    dilation = per_axis(extra.draw, ndim, 1, 2)
    transposed = extra.draw(st.booleans())
    offsets = oracle.kernel_offsets_oracle(kernel_size, dilation, ndim)
    weight = rng.standard_normal((len(offsets), feats.shape[1], 2))
    x = csc.SparseTensor(backend.put(coords), backend.put(feats))
    y = csc.sparse_conv(x, backend.put(weight), kernel_size, dilation=dilation,
                        transposed=transposed)
    np.testing.assert_array_equal(to_numpy(y.coords), coords)
    ref = oracle.conv_oracle(coords, feats, weight, offsets, 1, coords, transposed=transposed)
    assert_same_rows(y.coords, y.feats, coords, ref, 1e-10)


@SETTINGS
@given(data=sparse_inputs(), extra=st.data())
def test_strided_conv_matches_oracle(csc, backend, data, extra):
    coords, feats, rng = data
    ndim = coords.shape[1] - 1
    stride = per_axis(extra.draw, ndim, 1, 3)
    kernel_size = per_axis(extra.draw, ndim, 1, 3)
    offsets = oracle.kernel_offsets_oracle(kernel_size, 1, ndim)
    weight = rng.standard_normal((len(offsets), feats.shape[1], 2))
    x = csc.SparseTensor(backend.put(coords), backend.put(feats))
    y = csc.sparse_conv(x, backend.put(weight), kernel_size, stride=stride)
    s = oracle.as_tuple(stride, ndim)
    out_ref = coords if s == (1,) * ndim else oracle.downsample_coords_oracle(coords, s)
    np.testing.assert_array_equal(to_numpy(y.coords), out_ref)
    ref = oracle.conv_oracle(coords, feats, weight, offsets, s, out_ref)
    assert_same_rows(y.coords, y.feats, out_ref, ref, 1e-10)
    assert tuple(y.stride) == s


@SETTINGS
@given(data=sparse_inputs(max_points=25), extra=st.data())
def test_transposed_generative_matches_oracle(csc, backend, data, extra):
    coords, feats, rng = data
    ndim = coords.shape[1] - 1
    stride = per_axis(extra.draw, ndim, 1, 3)
    kernel_size = per_axis(extra.draw, ndim, 1, 3)
    offsets = oracle.kernel_offsets_oracle(kernel_size, 1, ndim)
    weight = rng.standard_normal((len(offsets), feats.shape[1], 2))
    s = oracle.as_tuple(stride, ndim)
    x = csc.SparseTensor(backend.put(coords), backend.put(feats),
                         stride=tuple(3 * v for v in s))
    y = csc.sparse_conv(x, backend.put(weight), kernel_size, stride=stride, transposed=True,
                        generative=True)
    out_ref = oracle.transposed_generative_coords_oracle(coords, offsets, s)
    ref = oracle.conv_oracle(coords, feats, weight, offsets, s, out_ref, transposed=True)
    assert_same_rows(y.coords, y.feats, out_ref, ref, 1e-10)
    assert tuple(y.stride) == (3,) * ndim


@SETTINGS
@given(data=sparse_inputs(max_points=25), extra=st.data())
def test_generative_matches_oracle(csc, backend, data, extra):
    coords, feats, rng = data
    ndim = coords.shape[1] - 1
    stride = per_axis(extra.draw, ndim, 1, 2)
    kernel_size = per_axis(extra.draw, ndim, 1, 3)
    offsets = oracle.kernel_offsets_oracle(kernel_size, 1, ndim)
    weight = rng.standard_normal((len(offsets), feats.shape[1], 2))
    s = oracle.as_tuple(stride, ndim)
    x = csc.SparseTensor(backend.put(coords), backend.put(feats))
    y = csc.sparse_conv(x, backend.put(weight), kernel_size, stride=stride, generative=True)
    out_ref = oracle.generative_coords_oracle(coords, offsets, s)
    ref = oracle.conv_oracle(coords, feats, weight, offsets, s, out_ref)
    assert_same_rows(y.coords, y.feats, out_ref, ref, 1e-10)


@SETTINGS
@given(data=sparse_inputs(), extra=st.data())
def test_down_then_transposed_up_restores_rows(csc, backend, data, extra):
    coords, feats, rng = data
    ndim = coords.shape[1] - 1
    stride = per_axis(extra.draw, ndim, 1, 3)
    s = oracle.as_tuple(stride, ndim)
    weight = rng.standard_normal((2 ** ndim, feats.shape[1], 2))
    x = csc.SparseTensor(backend.put(coords), backend.put(feats))
    down = csc.sparse_conv(x, backend.put(weight), 2, stride=stride)
    up_weight = rng.standard_normal((2 ** ndim, 2, 3))
    up = csc.sparse_conv(down, backend.put(up_weight), 2, stride=stride, transposed=True)
    np.testing.assert_array_equal(to_numpy(up.coords), coords)
    ref = oracle.conv_oracle(to_numpy(down.coords), to_numpy(down.feats), up_weight,
                             oracle.kernel_offsets_oracle(2, 1, ndim), s, coords,
                             transposed=True)
    assert_same_rows(up.coords, up.feats, coords, ref, 1e-10)


@SETTINGS
@given(data=sparse_inputs(), extra=st.data())
def test_pool_matches_oracle(csc, backend, data, extra):
    coords, feats, _ = data
    ndim = coords.shape[1] - 1
    stride = extra.draw(st.integers(1, 3))
    kernel_size = stride + extra.draw(st.integers(0, 1)) if stride > 1 else 3
    if kernel_size % 2 == 1 and stride > 1:
        kernel_size += 1  # even kernels cover [s*u, s*u + k): no empty window
    mode = extra.draw(st.sampled_from(["max", "avg", "sum"]))
    x = csc.SparseTensor(backend.put(coords), backend.put(feats))
    y = csc.sparse_pool(x, kernel_size, stride, mode=mode)
    offsets = oracle.kernel_offsets_oracle(kernel_size, 1, ndim)
    out_ref = coords if stride == 1 else oracle.downsample_coords_oracle(coords, stride)
    np.testing.assert_array_equal(to_numpy(y.coords), out_ref)
    ref = oracle.pool_oracle(coords, feats, offsets, stride, out_ref, mode)
    assert_same_rows(y.coords, y.feats, out_ref, ref, 1e-10)


@SETTINGS
@given(data=sparse_inputs(), out=sparse_inputs(), extra=st.data())
def test_kernel_map_pairs_match_oracle(csc, backend, data, out, extra):
    in_coords, _, rng = data
    ndim = in_coords.shape[1] - 1
    out_coords = out[0]
    if out_coords.shape[1] != in_coords.shape[1]:
        out_coords = in_coords[rng.permutation(len(in_coords))[: len(in_coords) // 2]]
    n_k = extra.draw(st.integers(1, 6))
    offsets = np.unique(rng.integers(-2, 3, size=(n_k, ndim)), axis=0).astype(np.int32)
    stride = extra.draw(st.integers(1, 2))
    transposed = extra.draw(st.booleans())
    kmap = csc.build_kernel_map(backend.put(in_coords), backend.put(out_coords), offsets,
                                stride=stride, transposed=transposed)
    ref = oracle.kernel_map_oracle(in_coords, out_coords, offsets, stride, transposed)
    pair_offsets = to_numpy(kmap.pair_offsets)
    in_rows, out_rows = to_numpy(kmap.in_rows), to_numpy(kmap.out_rows)
    assert pair_offsets.shape == (len(offsets) + 1,)
    for k in range(len(offsets)):
        sl = slice(int(pair_offsets[k]), int(pair_offsets[k + 1]))
        got = list(zip(in_rows[sl].tolist(), out_rows[sl].tolist()))
        assert len(got) == len(set(got)) and set(got) == ref[k]
