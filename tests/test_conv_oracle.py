"""Sparse convolution against the brute-force oracle of ``oracle.py``.

The first part checks the oracle itself (dict oracle vs dense grids, transposed
vs adjoint); it needs no library. The rest runs every regime and weight variant
of ``cusparseconv.sparse_conv`` and the low-level kernel-map products and
compares them with the oracle in float64 (rtol 1e-10), float32 (1e-4),
float16 and bfloat16 (loose), on every backend of ``conftest.BACKENDS``
(``cpu``, ``cuda-emulated``, ``cuda``): the GPU backend's code meets the oracle
itself, not only the CPU backend. Every regime x weight variant x dtype runs
on each backend (``test_conv_regime_variant`` in float64,
``test_conv_low_precision`` in the three others).
"""

import itertools

import numpy as np
import pytest

import oracle
from conftest import kmap_case as shared_kmap_case
from conftest import (
    GEOMETRY,
    assert_close,
    assert_same_rows,
    dtype_named,
    random_coords,
    random_feats,
    random_weight,
    rtol_for,
    to_numpy,
)

VARIANTS = ["standard", "groups", "depthwise", "depthwise4d", "bias"]


def make_weight(rng, variant, n_k, dtype=np.float64):
    """(weight, groups, bias, C_in) for a variant; bias is None except 'bias'."""
    if variant in ("standard", "bias"):
        c_in, c_out = 4, 6
        weight = random_weight(rng, (n_k, c_in, c_out), dtype)
        bias = random_feats(rng, 1, c_out, dtype)[0] if variant == "bias" else None
        return weight, 1, bias, c_in
    if variant == "groups":
        groups, c_in, c_out = 2, 4, 6
        weight = random_weight(rng, (n_k, groups, c_in // groups, c_out // groups), dtype)
        return weight, groups, None, c_in
    if variant == "depthwise":
        return random_weight(rng, (n_k, 5), dtype), 5, None, 5
    if variant == "depthwise4d":
        return random_weight(rng, (n_k, 5, 1, 1), dtype), 5, None, 5
    raise ValueError(variant)


def conv_kwargs(groups, bias):
    kwargs = {}
    if groups != 1:
        kwargs["groups"] = groups
    if bias is not None:
        kwargs["bias"] = bias
    return kwargs


def tensor(csc, xp, coords, feats, stride=1):
    return csc.SparseTensor(xp.asarray(coords), xp.asarray(feats), stride=stride)


# ===========================================================================
# part 1: the oracle checks itself (no library needed)
# ===========================================================================


def test_oracle_kernel_offsets_known_values():
    k333 = oracle.kernel_offsets_oracle(3, ndim=3)
    assert k333.shape == (27, 3) and k333.dtype == np.int32
    assert tuple(k333[0]) == (-1, -1, -1) and tuple(k333[26]) == (1, 1, 1)
    assert tuple(k333[13]) == (0, 0, 0)
    assert tuple(k333[1]) == (-1, -1, 0)  # last axis fastest
    assert tuple(k333[9]) == (0, -1, -1)  # first axis slowest
    k222 = oracle.kernel_offsets_oracle(2, ndim=3)
    assert [tuple(r) for r in k222] == [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    k = oracle.kernel_offsets_oracle((3, 2), dilation=(2, 3), ndim=2)
    assert [tuple(r) for r in k] == [(-2, 0), (-2, 3), (0, 0), (0, 3), (2, 0), (2, 3)]
    k = oracle.kernel_offsets_oracle(4, ndim=1)
    assert [tuple(r) for r in k] == [(0,), (1,), (2,), (3,)]
    k = oracle.kernel_offsets_oracle(5, dilation=2, ndim=1)
    assert [tuple(r) for r in k] == [(-4,), (-2,), (0,), (2,), (4,)]


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("variant", ["standard", "groups", "depthwise"])
def test_oracle_dict_matches_dense(rng, ndim, variant):
    n, low, high = GEOMETRY[ndim]
    coords = random_coords(rng, n, ndim, 2, low, high)
    offsets = oracle.kernel_offsets_oracle(3, ndim=ndim)
    weight, groups, _, c_in = make_weight(rng, variant, len(offsets))
    feats = random_feats(rng, n, c_in)
    ref = oracle.conv_dense_oracle(coords, feats, weight, offsets, coords, groups)
    got = oracle.conv_oracle(coords, feats, weight, offsets, 1, coords, groups=groups)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert np.abs(ref).max() > 0


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_oracle_dict_matches_scipy_correlate(rng, ndim, kernel_size):
    n, low, high = GEOMETRY[ndim]
    coords = random_coords(rng, n, ndim, 2, low, high)
    offsets = oracle.kernel_offsets_oracle(kernel_size, ndim=ndim)
    weight = random_weight(rng, (len(offsets), 2, 3))
    feats = random_feats(rng, n, 2)
    ref = oracle.conv_correlate_oracle(coords, feats, weight, kernel_size)
    got = oracle.conv_oracle(coords, feats, weight, offsets, 1, coords)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", ["even", "dilated", "arbitrary", "generative"])
def test_oracle_dict_matches_dense_geometries(rng, geometry):
    ndim = 3
    n, low, high = GEOMETRY[ndim]
    coords = random_coords(rng, n, ndim, 2, low, high)
    if geometry == "even":
        offsets = oracle.kernel_offsets_oracle((2, 3, 4), ndim=ndim)
    elif geometry == "dilated":
        offsets = oracle.kernel_offsets_oracle(3, dilation=(1, 2, 3), ndim=ndim)
    else:
        offsets = np.unique(rng.integers(-2, 3, size=(9, ndim)), axis=0).astype(np.int32)
    out_coords = coords
    if geometry == "generative":
        out_coords = oracle.generative_coords_oracle(coords, offsets, 1)
    weight = random_weight(rng, (len(offsets), 3, 2))
    feats = random_feats(rng, n, 3)
    ref = oracle.conv_dense_oracle(coords, feats, weight, offsets, out_coords)
    got = oracle.conv_oracle(coords, feats, weight, offsets, 1, out_coords)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_oracle_transposed_stride1_is_forward_with_negated_offsets(rng):
    coords = random_coords(rng, 120, 3, 2, -4, 4)
    offsets = oracle.kernel_offsets_oracle(2, ndim=3)
    weight = random_weight(rng, (len(offsets), 3, 2))
    feats = random_feats(rng, 120, 3)
    got = oracle.conv_oracle(coords, feats, weight, offsets, 1, coords, transposed=True)
    ref = oracle.conv_dense_oracle(coords, feats, weight, -offsets, coords)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2, (2, 1, 3)])
@pytest.mark.parametrize("variant", ["standard", "groups", "depthwise"])
def test_oracle_transposed_is_adjoint_of_forward(rng, stride, variant):
    fine = random_coords(rng, 120, 3, 2, -5, 5)
    coarse = oracle.downsample_coords_oracle(fine, stride)
    offsets = oracle.kernel_offsets_oracle(3, ndim=3)
    weight, groups, _, c_in = make_weight(rng, variant, len(offsets))
    c_out = oracle.weight_channels(weight, groups)[1]
    x = random_feats(rng, len(fine), c_in)
    g = random_feats(rng, len(coarse), c_out)
    y = oracle.conv_oracle(fine, x, weight, offsets, stride, coarse, groups=groups)
    # transposed map with the transposed weight, from the coarse to the fine set
    if weight.ndim == 3:
        weight_t = weight.transpose(0, 2, 1)
    elif weight.ndim == 4:
        weight_t = weight.transpose(0, 1, 3, 2)
    else:
        weight_t = weight
    z = oracle.conv_oracle(coarse, g, weight_t, offsets, stride, fine, transposed=True,
                           groups=groups)
    assert np.isclose(np.vdot(y, g), np.vdot(x, z), rtol=1e-12, atol=1e-12)
    assert abs(np.vdot(y, g)) > 1e-6
    # and the pair-table forms agree with the literal formulas
    pairs = oracle.kernel_map_oracle(fine, coarse, offsets, stride)
    y2 = oracle.conv_from_pairs_oracle(x, weight, pairs, len(coarse), groups)
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    dx = oracle.conv_input_grad_oracle(g, weight, pairs, len(fine), groups)
    np.testing.assert_allclose(dx, z, rtol=1e-12, atol=1e-12)
    dw = oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape, groups)
    assert np.isclose(np.vdot(weight, dw), np.vdot(y, g), rtol=1e-12, atol=1e-12)
    pairs_t = oracle.kernel_map_oracle(coarse, fine, offsets, stride, transposed=True)
    assert [{(o, i) for i, o in p} for p in pairs_t] == pairs


def test_oracle_output_coordinate_rules():
    coords = np.array([[0, -3, 4], [0, -4, 5], [1, 3, -1], [0, 2, 2]], dtype=np.int32)
    down = oracle.downsample_coords_oracle(coords, 2)
    assert [tuple(r) for r in down] == [(0, -2, 2), (0, 1, 1), (1, 1, -1)]
    down = oracle.downsample_coords_oracle(coords, (3, 1))
    assert [tuple(r) for r in down] == [(0, -2, 5), (0, -1, 4), (0, 0, 2), (1, 1, -1)]
    offsets = np.array([[0, 0], [1, 0]], dtype=np.int32)
    gen = oracle.generative_coords_oracle(coords[:1], offsets, 1)  # { u - K[k] }
    assert [tuple(r) for r in gen] == [(0, -4, 4), (0, -3, 4)]
    gen = oracle.generative_coords_oracle(coords[:2], offsets, 2)
    assert [tuple(r) for r in gen] == [(0, -3, 2), (0, -2, 2)]
    tgen = oracle.transposed_generative_coords_oracle(coords[:1], offsets, (2, 3))
    assert [tuple(r) for r in tgen] == [(0, -6, 12), (0, -5, 12)]


def test_oracle_generative_set_is_every_reached_coordinate(rng):
    """docs/SPEC.md: the generative outputs are exactly the coordinates w whose forward sum
    y_w = sum_k x_{w + K[k]} has a term; checked by scanning a box around the
    inputs, with an asymmetric kernel (2x2x2) and an arbitrary one."""
    coords = random_coords(rng, 12, 3, 2, -3, 3)
    for offsets in (oracle.kernel_offsets_oracle(2, 1, 3),
                    np.array([[0, 0, 0], [2, -1, 0], [1, 1, 3]], dtype=np.int32)):
        inputs = set(oracle.keys_of(coords))
        box = [range(-7, 7)] * 3
        reached = {(b,) + w for b in (0, 1) for w in itertools.product(*box)
                   if any((b,) + tuple(w[d] + int(off[d]) for d in range(3)) in inputs
                          for off in offsets)}
        got = set(oracle.keys_of(oracle.generative_coords_oracle(coords, offsets)))
        assert got == reached
        pairs = oracle.kernel_map_oracle(coords, oracle.generative_coords_oracle(
            coords, offsets), offsets)
        assert {o for p in pairs for _, o in p} == set(range(len(got)))  # all reached


# ===========================================================================
# part 2: the library
# ===========================================================================


@pytest.mark.parametrize(
    "kernel_size, dilation, ndim",
    [(3, 1, 3), (2, 1, 3), (1, 1, 3), (5, 2, 2), ((3, 2, 1), 1, 3), ((3, 4), (2, 3), 2),
     (3, 1, 1), (4, 1, 1), (3, 1, 4), (2, 3, 4), ((1, 2, 3, 2), (1, 1, 2, 1), 4)],
)
def test_kernel_offsets(csc, kernel_size, dilation, ndim):
    got = csc.kernel_offsets(kernel_size, dilation=dilation, ndim=ndim)
    ref = oracle.kernel_offsets_oracle(kernel_size, dilation, ndim)
    got = to_numpy(got)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)


def test_kernel_offsets_default_ndim(csc):
    np.testing.assert_array_equal(to_numpy(csc.kernel_offsets(3)),
                                  oracle.kernel_offsets_oracle(3, 1, 3))


def test_sparse_tensor_attributes(csc, xp, rng):
    coords = random_coords(rng, 20, 3)
    feats = random_feats(rng, 20, 4)
    x = tensor(csc, xp, coords, feats)
    assert x.ndim == 3
    assert tuple(x.stride) == (1, 1, 1)
    assert to_numpy(x.coords).dtype == np.int32
    np.testing.assert_array_equal(to_numpy(x.coords), coords)
    np.testing.assert_array_equal(to_numpy(x.feats), feats)
    x2 = csc.SparseTensor(xp.asarray(random_coords(rng, 20, 2)), xp.asarray(feats),
                          stride=(2, 4))
    assert x2.ndim == 2 and tuple(x2.stride) == (2, 4)
    # int64 coordinates are accepted and stored as int32
    x3 = csc.SparseTensor(xp.asarray(coords.astype(np.int64)), xp.asarray(feats))
    assert to_numpy(x3.coords).dtype == np.int32


# ---------------------------------------------------------------------------
# regimes
# ---------------------------------------------------------------------------

REGIMES = [
    "submanifold",
    "strided",
    "strided_per_axis",
    "generative",
    "generative_strided",
    "transposed",
    "transposed_cached",
    "transposed_explicit",
    "transposed_generative",
    "explicit",
    "explicit_strided",
]


def run_regime(csc, xp, rng, regime, ndim, weight, groups, bias, c_in, dtype=np.float64,
               kernel_size=3, dilation=1, offsets=None):
    """Run one regime through ``sparse_conv`` and compare with the oracle."""
    n, low, high = GEOMETRY[ndim]
    coords = random_coords(rng, n, ndim, 2, low, high)
    feats = random_feats(rng, n, c_in, dtype)
    if offsets is None:
        offsets_ref = oracle.kernel_offsets_oracle(kernel_size, dilation, ndim)
        geometry = {"kernel_size": kernel_size, "dilation": dilation}
    else:
        offsets_ref = np.asarray(offsets)
        geometry = {"offsets": xp.asarray(offsets)}
    assert len(offsets_ref) == weight.shape[0]
    kwargs = dict(conv_kwargs(groups, None if bias is None else xp.asarray(bias)), **geometry)
    weight_x = xp.asarray(weight)
    stride2 = (2,) * ndim
    per_axis = tuple([2, 1, 3, 2][:ndim])
    in_stride = (1,) * ndim
    exact_order = True
    transposed = False

    if regime == "submanifold":
        x = tensor(csc, xp, coords, feats)
        y = csc.sparse_conv(x, weight_x, **kwargs)
        stride, out_ref, out_stride = 1, coords, in_stride
    elif regime in ("strided", "strided_per_axis"):
        stride = stride2 if regime == "strided" else per_axis
        x = tensor(csc, xp, coords, feats)
        s_arg = 2 if regime == "strided" else per_axis
        y = csc.sparse_conv(x, weight_x, stride=s_arg, **kwargs)
        out_ref = oracle.downsample_coords_oracle(coords, stride)
        out_stride = stride
    elif regime == "generative":
        x = tensor(csc, xp, coords, feats)
        y = csc.sparse_conv(x, weight_x, generative=True, **kwargs)
        stride, out_stride, exact_order = 1, in_stride, False
        out_ref = oracle.generative_coords_oracle(coords, offsets_ref, 1)
    elif regime == "generative_strided":
        x = tensor(csc, xp, coords, feats)
        y = csc.sparse_conv(x, weight_x, stride=2, generative=True, **kwargs)
        stride, out_stride, exact_order = stride2, stride2, False
        out_ref = oracle.generative_coords_oracle(coords, offsets_ref, stride2)
    elif regime == "transposed":
        x = tensor(csc, xp, coords, feats)
        y = csc.sparse_conv(x, weight_x, transposed=True, **kwargs)
        stride, out_ref, out_stride, transposed = 1, coords, in_stride, True
    elif regime == "transposed_cached":
        fine = tensor(csc, xp, coords, random_feats(rng, n, 3, dtype))
        down_w = xp.asarray(random_weight(rng, (2 ** ndim, 3, c_in), dtype))
        x = csc.sparse_conv(fine, down_w, 2, stride=2)
        coarse_ref = oracle.downsample_coords_oracle(coords, 2)
        np.testing.assert_array_equal(to_numpy(x.coords), coarse_ref)
        y = csc.sparse_conv(x, weight_x, stride=2, transposed=True, **kwargs)
        stride, out_ref, out_stride, transposed = stride2, coords, in_stride, True
        coords, feats = coarse_ref, to_numpy(x.feats)
    elif regime == "transposed_explicit":
        fine = coords
        coords = oracle.downsample_coords_oracle(fine, 2)
        feats = random_feats(rng, len(coords), c_in, dtype)
        x = tensor(csc, xp, coords, feats, stride=2)
        y = csc.sparse_conv(x, weight_x, stride=2, transposed=True,
                            out_coords=xp.asarray(fine), **kwargs)
        stride, out_ref, out_stride, transposed = stride2, fine, in_stride, True
    elif regime == "transposed_generative":
        x = tensor(csc, xp, coords, feats, stride=2)
        y = csc.sparse_conv(x, weight_x, stride=2, transposed=True, generative=True, **kwargs)
        stride, out_stride, transposed, exact_order = stride2, in_stride, True, False
        out_ref = oracle.transposed_generative_coords_oracle(coords, offsets_ref, stride2)
    elif regime == "explicit":
        # half of the input sites plus some new ones, in random order
        extra = random_coords(rng, n // 2, ndim, 3, low - 1, high + 1)
        both = np.unique(np.concatenate([coords[: n // 2], extra]), axis=0)
        out_ref = both[rng.permutation(len(both))]
        x = tensor(csc, xp, coords, feats)
        y = csc.sparse_conv(x, weight_x, out_coords=xp.asarray(out_ref), **kwargs)
        stride, out_stride = 1, in_stride
    elif regime == "explicit_strided":
        out_ref = random_coords(rng, n // 3, ndim, 2, low // 2, high // 2)
        x = tensor(csc, xp, coords, feats)
        y = csc.sparse_conv(x, weight_x, stride=2, out_coords=xp.asarray(out_ref), **kwargs)
        stride, out_stride = stride2, stride2
    else:
        raise ValueError(regime)

    y_coords = to_numpy(y.coords)
    assert y_coords.dtype == np.int32
    assert y_coords.shape[1] == 1 + ndim
    if exact_order:
        np.testing.assert_array_equal(y_coords, out_ref, err_msg=f"{regime}: output rows")
    ref = oracle.conv_oracle(coords, feats, weight, offsets_ref, stride, out_ref,
                             transposed=transposed, groups=groups, bias=bias)
    assert_same_rows(y_coords, y.feats, out_ref, ref, rtol_for(dtype), err_msg=regime)
    assert tuple(y.stride) == tuple(out_stride), f"{regime}: tensor stride"
    assert y.ndim == ndim
    return y, ref


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("regime", REGIMES)
def test_conv_regime_variant(csc, xp, rng, regime, variant):
    weight, groups, bias, c_in = make_weight(rng, variant, 27)
    run_regime(csc, xp, rng, regime, 3, weight, groups, bias, c_in)


@pytest.mark.parametrize("ndim", [1, 2, 4])
@pytest.mark.parametrize("regime", REGIMES)
def test_conv_regime_ndim(csc, xp, rng, regime, ndim):
    weight, groups, bias, c_in = make_weight(rng, "standard", 3 ** ndim)
    run_regime(csc, xp, rng, regime, ndim, weight, groups, bias, c_in)


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("regime", REGIMES)
def test_conv_low_precision(csc, backend, xp, rng, regime, variant, dtype_name):
    dtype = dtype_named(dtype_name)
    if not backend.supports(dtype):
        pytest.skip("this CuPy has no bfloat16 arrays (needs CuPy >= 14 and ml_dtypes)")
    weight, groups, bias, c_in = make_weight(rng, variant, 27, dtype)
    run_regime(csc, xp, rng, regime, 3, weight, groups, bias, c_in, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_conv_output_dtype_matches_input(csc, xp, rng, dtype):
    coords = random_coords(rng, 40, 3)
    x = tensor(csc, xp, coords, random_feats(rng, 40, 4, dtype))
    w = xp.asarray(random_weight(rng, (27, 4, 3), dtype))
    assert to_numpy(csc.sparse_conv(x, w).feats).dtype == np.dtype(dtype)
    assert to_numpy(csc.sparse_conv(x, w, stride=2).feats).dtype == np.dtype(dtype)


GEOMETRIES = {
    "even2": dict(kernel_size=2),
    "even4": dict(kernel_size=4),
    "per_axis_size": dict(kernel_size=(3, 2, 1)),
    "per_axis_size_even_odd": dict(kernel_size=(1, 4, 3)),
    "size5": dict(kernel_size=5),
    "dilation2": dict(kernel_size=3, dilation=2),
    "dilation_per_axis": dict(kernel_size=3, dilation=(1, 2, 3)),
    "dilation_even": dict(kernel_size=(2, 3, 2), dilation=(3, 1, 2)),
    "size1": dict(kernel_size=1),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("regime", ["submanifold", "strided_per_axis", "transposed_cached",
                                    "generative", "transposed_generative", "transposed"])
def test_conv_kernel_geometry(csc, xp, rng, geometry, regime):
    params = GEOMETRIES[geometry]
    n_k = len(oracle.kernel_offsets_oracle(params["kernel_size"], params.get("dilation", 1), 3))
    weight, groups, bias, c_in = make_weight(rng, "standard", n_k)
    run_regime(csc, xp, rng, regime, 3, weight, groups, bias, c_in,
               kernel_size=params["kernel_size"], dilation=params.get("dilation", 1))


@pytest.mark.parametrize("regime", ["submanifold", "strided", "generative", "transposed",
                                    "transposed_explicit", "transposed_generative",
                                    "explicit"])
@pytest.mark.parametrize("variant", ["standard", "depthwise", "groups"])
def test_conv_arbitrary_offsets(csc, xp, rng, regime, variant):
    offsets = np.unique(rng.integers(-3, 4, size=(11, 3)), axis=0).astype(np.int32)
    offsets = offsets[rng.permutation(len(offsets))]
    weight, groups, bias, c_in = make_weight(rng, variant, len(offsets))
    run_regime(csc, xp, rng, regime, 3, weight, groups, bias, c_in, offsets=offsets)


def test_offsets_override_kernel_size(csc, xp, rng):
    coords = random_coords(rng, 100, 3)
    feats = random_feats(rng, 100, 3)
    offsets = np.array([[0, 0, 0], [1, 0, 0], [0, -2, 1]], dtype=np.int32)
    weight = random_weight(rng, (3, 3, 2))
    x = tensor(csc, xp, coords, feats)
    y = csc.sparse_conv(x, xp.asarray(weight), kernel_size=5, offsets=xp.asarray(offsets))
    ref = oracle.conv_oracle(coords, feats, weight, offsets, 1, coords)
    assert_close(y.feats, ref, 1e-10)


def test_unet_round_trip_restores_coordinates(csc, xp, rng):
    """Two downsampling levels (one per-axis) then two transposed levels: every
    transposed output has exactly the coordinates (and order) of its level."""
    coords = random_coords(rng, 200, 3, 3, -8, 8)
    x0 = tensor(csc, xp, coords, random_feats(rng, 200, 2))
    w = lambda *shape: xp.asarray(random_weight(rng, shape))  # noqa: E731
    x1 = csc.sparse_conv(x0, w(27, 2, 3), 3, stride=2)
    x1b = csc.sparse_conv(x1, w(27, 3, 3), 3)  # submanifold layer keeps the level
    x2 = csc.sparse_conv(x1b, w(4, 3, 4), (2, 2, 1), stride=(2, 2, 1))
    assert tuple(x2.stride) == (4, 4, 2)
    u1 = csc.sparse_conv(x2, w(8, 4, 3), 2, stride=(2, 2, 1), transposed=True)
    np.testing.assert_array_equal(to_numpy(u1.coords), to_numpy(x1.coords))
    assert tuple(u1.stride) == (2, 2, 2)
    u0 = csc.sparse_conv(u1, w(27, 3, 2), 3, stride=2, transposed=True)
    np.testing.assert_array_equal(to_numpy(u0.coords), coords)
    assert tuple(u0.stride) == (1, 1, 1)
    # the values of the last layer follow the transposed formula
    w_last = random_weight(rng, (8, 3, 2))
    u0b = csc.sparse_conv(u1, xp.asarray(w_last), 2, stride=2, transposed=True)
    ref = oracle.conv_oracle(to_numpy(u1.coords), to_numpy(u1.feats), w_last,
                             oracle.kernel_offsets_oracle(2), 2, coords, transposed=True)
    assert_close(u0b.feats, ref, 1e-10)


def test_transposed_cached_after_down_same_call_pattern(csc, xp, rng):
    """The exact pattern of the contract: y = conv(x, w, 2, stride=2);
    z = conv(y, w2, 2, stride=2, transposed=True) gives z.coords == x.coords."""
    coords = random_coords(rng, 150, 3, 2, -6, 6)
    x = tensor(csc, xp, coords, random_feats(rng, 150, 4))
    y = csc.sparse_conv(x, xp.asarray(random_weight(rng, (8, 4, 5))), 2, stride=2)
    z = csc.sparse_conv(y, xp.asarray(random_weight(rng, (8, 5, 4))), 2, stride=2,
                        transposed=True)
    np.testing.assert_array_equal(to_numpy(z.coords), coords)


# ---------------------------------------------------------------------------
# empty and one-point tensors
# ---------------------------------------------------------------------------

SMALL_REGIMES = ["submanifold", "strided", "generative", "generative_strided",
                 "transposed", "transposed_generative", "transposed_cached", "explicit"]


def small_case(csc, xp, rng, regime, coords, c_in=3, c_out=2):
    ndim = coords.shape[1] - 1
    n = len(coords)
    feats = random_feats(rng, n, c_in)
    offsets = oracle.kernel_offsets_oracle(3, 1, ndim)
    weight = random_weight(rng, (len(offsets), c_in, c_out))
    x = tensor(csc, xp, coords, feats, stride=2 if regime == "transposed_generative" else 1)
    wx = xp.asarray(weight)
    stride, transposed, in_coords, in_feats = 1, False, coords, feats
    if regime == "submanifold":
        y, out_ref = csc.sparse_conv(x, wx), coords
    elif regime == "strided":
        y, stride = csc.sparse_conv(x, wx, stride=2), 2
        out_ref = oracle.downsample_coords_oracle(coords, 2)
    elif regime == "generative":
        y = csc.sparse_conv(x, wx, generative=True)
        out_ref = oracle.generative_coords_oracle(coords, offsets, 1)
    elif regime == "generative_strided":
        y, stride = csc.sparse_conv(x, wx, stride=2, generative=True), 2
        out_ref = oracle.generative_coords_oracle(coords, offsets, 2)
    elif regime == "transposed":
        y, out_ref, transposed = csc.sparse_conv(x, wx, transposed=True), coords, True
    elif regime == "transposed_generative":
        y, stride, transposed = csc.sparse_conv(x, wx, stride=2, transposed=True,
                                                generative=True), 2, True
        out_ref = oracle.transposed_generative_coords_oracle(coords, offsets, 2)
    elif regime == "transposed_cached":
        down = csc.sparse_conv(x, xp.asarray(random_weight(rng, (2 ** ndim, c_in, c_in))), 2,
                               stride=2)
        y = csc.sparse_conv(down, wx, stride=2, transposed=True)
        stride, transposed, out_ref = 2, True, coords
        in_coords, in_feats = to_numpy(down.coords), to_numpy(down.feats)
    elif regime == "explicit":
        out_ref = np.concatenate([coords, coords + np.array([0] + [1] * ndim, np.int32)])
        out_ref = np.unique(out_ref, axis=0)
        y = csc.sparse_conv(x, wx, out_coords=xp.asarray(out_ref))
    ref = oracle.conv_oracle(in_coords, in_feats, weight, offsets, stride, out_ref,
                             transposed=transposed)
    y_coords = to_numpy(y.coords)
    assert y_coords.shape == (len(out_ref), 1 + ndim)
    assert to_numpy(y.feats).shape == (len(out_ref), c_out)
    assert_same_rows(y_coords, y.feats, out_ref, ref, 1e-10, err_msg=regime)


@pytest.mark.parametrize("ndim", [1, 3, 4])
@pytest.mark.parametrize("regime", SMALL_REGIMES)
def test_conv_empty_tensor(csc, xp, rng, regime, ndim):
    small_case(csc, xp, rng, regime, np.zeros((0, 1 + ndim), dtype=np.int32))


@pytest.mark.parametrize("ndim", [1, 3, 4])
@pytest.mark.parametrize("regime", SMALL_REGIMES)
def test_conv_one_point(csc, xp, rng, regime, ndim):
    point = np.array([[1] + [-3, 2, 5, -1][:ndim]], dtype=np.int32)
    small_case(csc, xp, rng, regime, point)


# ---------------------------------------------------------------------------
# low level: kernel maps and the three products on arrays
# ---------------------------------------------------------------------------

KMAP_CASES = ["submanifold", "strided", "strided_per_axis", "generative", "transposed",
              "transposed_strided", "transposed_generative", "explicit"]


def kmap_case(rng, case, ndim=3):
    return shared_kmap_case(rng, case, GEOMETRY, ndim)


def library_pairs(kmap):
    """Per-offset sets of (in_row, out_row) from a KernelMap."""
    in_rows = to_numpy(kmap.in_rows).astype(np.int64)
    out_rows = to_numpy(kmap.out_rows).astype(np.int64)
    pair_offsets = to_numpy(kmap.pair_offsets).astype(np.int64)
    assert in_rows.shape == out_rows.shape and in_rows.ndim == 1
    assert pair_offsets[0] == 0 and pair_offsets[-1] == len(in_rows)
    assert np.all(np.diff(pair_offsets) >= 0)
    pairs = []
    for k in range(len(pair_offsets) - 1):
        sl = slice(pair_offsets[k], pair_offsets[k + 1])
        chunk = list(zip(in_rows[sl].tolist(), out_rows[sl].tolist()))
        assert len(set(chunk)) == len(chunk), f"duplicate pairs for offset {k}"
        pairs.append(set(chunk))
    return pairs


@pytest.mark.parametrize("ndim", [1, 3, 4])
@pytest.mark.parametrize("case", KMAP_CASES)
def test_build_kernel_map(csc, xp, rng, case, ndim):
    in_coords, out_coords, offsets, stride, transposed = kmap_case(rng, case, ndim)
    kmap = csc.build_kernel_map(xp.asarray(in_coords), xp.asarray(out_coords),
                                xp.asarray(offsets), stride=stride, transposed=transposed)
    assert kmap.n_in == len(in_coords) and kmap.n_out == len(out_coords)
    assert to_numpy(kmap.pair_offsets).shape == (len(offsets) + 1,)
    ref = oracle.kernel_map_oracle(in_coords, out_coords, offsets, stride, transposed)
    got = library_pairs(kmap)
    for k in range(len(offsets)):
        assert got[k] == ref[k], f"offset {k} {tuple(offsets[k])}: pairs differ"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", KMAP_CASES)
def test_conv_forward_low_level(csc, xp, rng, case, variant):
    in_coords, out_coords, offsets, stride, transposed = kmap_case(rng, case)
    weight, groups, bias, c_in = make_weight(rng, variant, len(offsets))
    feats = random_feats(rng, len(in_coords), c_in)
    kmap = csc.build_kernel_map(xp.asarray(in_coords), xp.asarray(out_coords),
                                xp.asarray(offsets), stride=stride, transposed=transposed)
    got = csc.conv_forward(xp.asarray(feats), xp.asarray(weight), kmap, groups=groups,
                           bias=None if bias is None else xp.asarray(bias))
    ref = oracle.conv_oracle(in_coords, feats, weight, offsets, stride, out_coords,
                             transposed=transposed, groups=groups, bias=bias)
    assert_close(got, ref, 1e-10)


# ---------------------------------------------------------------------------
# determinism across thread counts
# ---------------------------------------------------------------------------


def test_threads_bit_identical(csc, rng):
    coords = random_coords(rng, 4000, 3, 2, -12, 12)
    feats = random_feats(rng, 4000, 32, np.float32)
    w = random_weight(rng, (27, 32, 32), np.float32)
    w_dw = random_weight(rng, (27, 32), np.float32)
    g = random_feats(rng, 4000, 32, np.float32)
    offsets = oracle.kernel_offsets_oracle(3)
    before = csc.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2):
            csc.set_num_threads(n_threads)
            assert csc.get_num_threads() == n_threads
            x = csc.SparseTensor(coords, feats)
            y = csc.sparse_conv(x, w)
            y2 = csc.sparse_conv(x, w, stride=2)
            y3 = csc.sparse_conv(x, w_dw, groups=32)
            kmap = csc.build_kernel_map(coords, coords, offsets)
            dx = csc.conv_input_grad(g, w, kmap)
            dw = csc.conv_weight_grad(feats, g, kmap)
            pool = csc.sparse_pool(x, 2, 2, mode="avg")
            results.append([to_numpy(a) for a in
                            (y.feats, y2.coords, y2.feats, y3.feats, dx, dw, pool.feats)])
    finally:
        csc.set_num_threads(before)
    for a, b in zip(*results):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b), "results differ between 1 and 2 threads"
    # and they are right
    ref = oracle.conv_from_pairs_oracle(feats[:, :], w, oracle.kernel_map_oracle(
        coords, coords, offsets), len(coords))
    assert_close(results[0][0], ref, 1e-4)


@pytest.mark.parametrize("regime", ["submanifold", "strided", "transposed_generative"])
def test_batch_items_never_interact(csc, xp, rng, regime):
    """Identical spatial coordinates in batch items 0 and 300: each item's
    output equals the convolution of that item alone."""
    spatial = random_coords(rng, 80, 3, 1, -4, 4)[:, 1:]
    coords = np.concatenate([np.insert(spatial, 0, 0, axis=1),
                             np.insert(spatial, 0, 300, axis=1)]).astype(np.int32)
    feats = random_feats(rng, 160, 3)
    weight = random_weight(rng, (27, 3, 2))
    kwargs = {"submanifold": {}, "strided": {"stride": 2},
              "transposed_generative": {"stride": 2, "transposed": True, "generative": True}}
    y = csc.sparse_conv(tensor(csc, xp, coords, feats), xp.asarray(weight), **kwargs[regime])
    y_coords, y_feats = to_numpy(y.coords), to_numpy(y.feats)
    for b, rows in ((0, slice(0, 80)), (300, slice(80, 160))):
        alone = csc.sparse_conv(tensor(csc, xp, coords[rows], feats[rows]), xp.asarray(weight),
                                **kwargs[regime])
        mine = y_coords[:, 0] == b
        assert_same_rows(y_coords[mine], y_feats[mine], to_numpy(alone.coords),
                         to_numpy(alone.feats).astype(np.float64), 1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("transposed", [False, True])
def test_empty_input_explicit_out_coords(csc, xp, rng, variant, transposed):
    """No input rows, explicit output rows: every output row is the bias (or 0)."""
    weight, groups, bias, c_in = make_weight(rng, variant, 27)
    coords = np.zeros((0, 4), dtype=np.int32)
    out = random_coords(rng, 7, 3)
    x = tensor(csc, xp, coords, np.zeros((0, c_in)), stride=2)
    kwargs = conv_kwargs(groups, None if bias is None else xp.asarray(bias))
    y = csc.sparse_conv(x, xp.asarray(weight), stride=2 if transposed else 1,
                        transposed=transposed, out_coords=xp.asarray(out), **kwargs)
    np.testing.assert_array_equal(to_numpy(y.coords), out)
    c_out = oracle.weight_channels(weight, groups)[1]
    ref = np.zeros((7, c_out)) + (0.0 if bias is None else bias)
    assert_close(y.feats, ref, 1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("regime", ["submanifold", "strided", "generative",
                                    "transposed_generative"])
def test_empty_input_variants(csc, xp, rng, variant, regime):
    weight, groups, bias, c_in = make_weight(rng, variant, 27)
    x = tensor(csc, xp, np.zeros((0, 4), dtype=np.int32), np.zeros((0, c_in)))
    kwargs = conv_kwargs(groups, None if bias is None else xp.asarray(bias))
    kwargs.update({"submanifold": {}, "strided": {"stride": 2},
                   "generative": {"generative": True},
                   "transposed_generative": {"stride": 2, "transposed": True,
                                             "generative": True}}[regime])
    y = csc.sparse_conv(x, xp.asarray(weight), **kwargs)
    c_out = oracle.weight_channels(weight, groups)[1]
    assert to_numpy(y.coords).shape == (0, 4)
    assert to_numpy(y.feats).shape == (0, c_out)
