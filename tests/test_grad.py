"""Gradients of the convolution and of pooling.

``conv_input_grad`` and ``conv_weight_grad`` are checked three ways for every
regime (kernel-map geometry) and weight variant: the adjoint identities

    <conv_forward(x, W), g> == <x, conv_input_grad(g, W)> == <W, conv_weight_grad(x, g)>,

central finite differences in float64, and the pair-table oracle. Pooling
backward is checked against finite differences (no ties for max) and against
the tie rule of the contract (ties go to the first active offset).

Every test runs on each backend of ``conftest.BACKENDS``. Under the emulated
GPU backend the finite differences (many forward products each) run on a
representative subset, ``EMULATED_FD_CASES``: each weight variant and six of
the twelve kernel-map geometries; the adjoint and oracle checks cover every
geometry and variant there.
"""

import numpy as np
import pytest

import oracle
from conftest import GRAD_GEOMETRY, assert_close
from conftest import kmap_case as _kmap_case
from conftest import random_coords, random_feats, random_weight, to_numpy

VARIANTS = ["standard", "groups", "depthwise", "depthwise4d"]

KMAP_CASES = ["submanifold", "strided", "strided_per_axis", "generative",
              "generative_strided", "transposed", "transposed_strided",
              "transposed_generative", "explicit", "dilated", "even", "arbitrary"]


def make_weight(rng, variant, n_k, dtype=np.float64):
    """(weight, groups, C_in, C_out)."""
    if variant == "standard":
        return random_weight(rng, (n_k, 3, 4), dtype), 1, 3, 4
    if variant == "groups":
        return random_weight(rng, (n_k, 3, 2, 1), dtype), 3, 6, 3
    if variant == "depthwise":
        return random_weight(rng, (n_k, 4), dtype), 4, 4, 4
    if variant == "depthwise4d":
        return random_weight(rng, (n_k, 4, 1, 1), dtype), 4, 4, 4
    raise ValueError(variant)


def kmap_case(rng, case, ndim=3):
    return _kmap_case(rng, case, GRAD_GEOMETRY, ndim)


def build(csc, xp, in_coords, out_coords, offsets, stride, transposed):
    return csc.build_kernel_map(xp.asarray(in_coords), xp.asarray(out_coords),
                                xp.asarray(offsets), stride=stride, transposed=transposed)


def weight_grad_as(dw, weight):
    """The library's weight gradient in the shape of ``weight``.

    The contract says "same shape as weight", but ``conv_weight_grad`` never
    sees the weight: for depthwise (groups == C_in == C_out) both (K, C) and
    (K, C, 1, 1) are accepted here.
    """
    dw = to_numpy(dw)
    if dw.shape != weight.shape and dw.size == weight.size and {dw.ndim, weight.ndim} == {2, 4}:
        dw = dw.reshape(weight.shape)
    assert dw.shape == weight.shape, f"weight grad shape {dw.shape}, weight {weight.shape}"
    return dw


def forward_np(csc, xp, feats, weight, kmap, groups):
    return to_numpy(csc.conv_forward(xp.asarray(feats), xp.asarray(weight), kmap,
                                     groups=groups)).astype(np.float64)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", KMAP_CASES)
def test_conv_grads_adjoint_and_oracle(csc, xp, rng, case, variant):
    in_coords, out_coords, offsets, stride, transposed = kmap_case(rng, case)
    weight, groups, c_in, c_out = make_weight(rng, variant, len(offsets))
    x = random_feats(rng, len(in_coords), c_in)
    g = random_feats(rng, len(out_coords), c_out)
    kmap = build(csc, xp, in_coords, out_coords, offsets, stride, transposed)
    y = forward_np(csc, xp, x, weight, kmap, groups)
    dx = to_numpy(csc.conv_input_grad(xp.asarray(g), xp.asarray(weight), kmap, groups=groups))
    dw = weight_grad_as(csc.conv_weight_grad(xp.asarray(x), xp.asarray(g), kmap,
                                             groups=groups), weight)
    assert dx.shape == x.shape
    lhs = np.vdot(y, g)
    assert np.isclose(lhs, np.vdot(x, dx), rtol=1e-10, atol=1e-10)
    assert np.isclose(lhs, np.vdot(weight, dw), rtol=1e-10, atol=1e-10)
    pairs = oracle.kernel_map_oracle(in_coords, out_coords, offsets, stride, transposed)
    assert_close(dx, oracle.conv_input_grad_oracle(g, weight, pairs, len(in_coords), groups),
                 1e-10)
    # the oracle's weight gradient lives in the 4-D / 2-D shape of the weight
    assert_close(dw, oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape, groups), 1e-10)


EMULATED_FD_CASES = [("submanifold", "groups"), ("strided", "depthwise"),
                     ("transposed_generative", "standard"), ("generative", "depthwise4d"),
                     ("explicit", "standard"), ("transposed_strided", "groups")]


@pytest.mark.backends("cpu", "cuda")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", KMAP_CASES)
def test_conv_grads_finite_differences(csc, xp, rng, case, variant):
    check_finite_differences(csc, xp, rng, case, variant)


@pytest.mark.backends("cuda-emulated")
@pytest.mark.parametrize("case, variant", EMULATED_FD_CASES)
def test_conv_grads_finite_differences_emulated(csc, xp, rng, case, variant):
    check_finite_differences(csc, xp, rng, case, variant)


def check_finite_differences(csc, xp, rng, case, variant):
    in_coords, out_coords, offsets, stride, transposed = kmap_case(rng, case)
    weight, groups, c_in, c_out = make_weight(rng, variant, len(offsets))
    x = random_feats(rng, len(in_coords), c_in)
    g = random_feats(rng, len(out_coords), c_out)
    kmap = build(csc, xp, in_coords, out_coords, offsets, stride, transposed)

    def loss(feats, w):
        return float(np.vdot(forward_np(csc, xp, feats, w, kmap, groups), g))

    dx = to_numpy(csc.conv_input_grad(xp.asarray(g), xp.asarray(weight), kmap, groups=groups))
    dw = weight_grad_as(csc.conv_weight_grad(xp.asarray(x), xp.asarray(g), kmap,
                                             groups=groups), weight)
    h = 1e-3  # the loss is linear in each argument: central differences are exact
    # directional derivatives
    for _ in range(2):
        d = rng.standard_normal(x.shape)
        fd = (loss(x + h * d, weight) - loss(x - h * d, weight)) / (2 * h)
        assert np.isclose(fd, np.vdot(dx, d), rtol=1e-8, atol=1e-8)
        e = rng.standard_normal(weight.shape)
        fd = (loss(x, weight + h * e) - loss(x, weight - h * e)) / (2 * h)
        assert np.isclose(fd, np.vdot(dw, e), rtol=1e-8, atol=1e-8)
    # a few single entries
    for _ in range(3):
        i, c = rng.integers(len(x)), rng.integers(c_in)
        d = np.zeros_like(x)
        d[i, c] = 1.0
        fd = (loss(x + h * d, weight) - loss(x - h * d, weight)) / (2 * h)
        assert np.isclose(fd, dx[i, c], rtol=1e-8, atol=1e-8)
        flat = rng.integers(weight.size)
        e = np.zeros(weight.size)
        e[flat] = 1.0
        e = e.reshape(weight.shape)
        fd = (loss(x, weight + h * e) - loss(x, weight - h * e)) / (2 * h)
        assert np.isclose(fd, dw.reshape(-1)[flat], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("case", ["submanifold", "strided", "transposed_generative"])
@pytest.mark.parametrize("ndim", [1, 2, 4])
def test_conv_grads_ndim(csc, xp, rng, ndim, case):
    in_coords, out_coords, offsets, stride, transposed = kmap_case(rng, case, ndim)
    weight, groups, c_in, c_out = make_weight(rng, "standard", len(offsets))
    x = random_feats(rng, len(in_coords), c_in)
    g = random_feats(rng, len(out_coords), c_out)
    kmap = build(csc, xp, in_coords, out_coords, offsets, stride, transposed)
    pairs = oracle.kernel_map_oracle(in_coords, out_coords, offsets, stride, transposed)
    dx = csc.conv_input_grad(xp.asarray(g), xp.asarray(weight), kmap)
    dw = csc.conv_weight_grad(xp.asarray(x), xp.asarray(g), kmap)
    assert_close(dx, oracle.conv_input_grad_oracle(g, weight, pairs, len(in_coords)), 1e-10)
    assert_close(dw, oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape), 1e-10)


@pytest.mark.parametrize("variant", ["standard", "groups", "depthwise"])
def test_conv_grads_float32(csc, xp, rng, variant):
    in_coords, out_coords, offsets, stride, transposed = kmap_case(rng, "submanifold")
    weight, groups, c_in, c_out = make_weight(rng, variant, len(offsets), np.float32)
    x = random_feats(rng, len(in_coords), c_in, np.float32)
    g = random_feats(rng, len(out_coords), c_out, np.float32)
    kmap = build(csc, xp, in_coords, out_coords, offsets, stride, transposed)
    pairs = oracle.kernel_map_oracle(in_coords, out_coords, offsets, stride, transposed)
    dx = to_numpy(csc.conv_input_grad(xp.asarray(g), xp.asarray(weight), kmap, groups=groups))
    dw = weight_grad_as(csc.conv_weight_grad(xp.asarray(x), xp.asarray(g), kmap,
                                             groups=groups), weight)
    assert dx.dtype == np.float32 and dw.dtype == np.float32
    assert_close(dx, oracle.conv_input_grad_oracle(g, weight, pairs, len(x), groups), 1e-4)
    assert_close(dw, oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape, groups), 1e-4)


@pytest.mark.parametrize("n_in, n_out", [(0, 0), (0, 5), (5, 0), (1, 1)])
def test_conv_grads_empty(csc, xp, rng, n_in, n_out):
    in_coords = random_coords(rng, n_in, 3, 1, 0, 3)
    out_coords = random_coords(rng, n_out, 3, 1, 10, 13)  # far away: no pairs
    offsets = oracle.kernel_offsets_oracle(3)
    weight = random_weight(rng, (27, 3, 2))
    kmap = build(csc, xp, in_coords, out_coords, offsets, 1, False)
    x = random_feats(rng, n_in, 3)
    g = random_feats(rng, n_out, 2)
    y = to_numpy(csc.conv_forward(xp.asarray(x), xp.asarray(weight), kmap))
    dx = to_numpy(csc.conv_input_grad(xp.asarray(g), xp.asarray(weight), kmap))
    dw = to_numpy(csc.conv_weight_grad(xp.asarray(x), xp.asarray(g), kmap))
    assert y.shape == (n_out, 2) and not np.any(y)
    assert dx.shape == (n_in, 3) and not np.any(dx)
    assert dw.shape == (27, 3, 2) and not np.any(dw)


# ---------------------------------------------------------------------------
# pooling backward
# ---------------------------------------------------------------------------

POOL_CASES = {"k3s1": (3, 1), "k2s2": (2, 2), "k3s2": (3, 2), "per_axis": ((2, 1, 4), (2, 1, 3))}


def pool_case(rng, case, n=60):
    kernel_size, stride = POOL_CASES[case]
    coords = random_coords(rng, n, 3, 2, -3, 3)
    offsets = oracle.kernel_offsets_oracle(kernel_size)
    s = oracle.as_tuple(stride, 3)
    out = coords if s == (1, 1, 1) else oracle.downsample_coords_oracle(coords, s)
    return coords, out, offsets, s


@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool_backward_finite_differences(csc, xp, rng, case, mode):
    coords, out, offsets, stride = pool_case(rng, case)
    # distinct values, well separated, so max has no ties and a step of 1e-6
    # cannot change the argmax
    x = rng.permutation(len(coords) * 3).reshape(len(coords), 3) * 0.01 + 0.001
    g = random_feats(rng, len(out), 3)
    kmap = build(csc, xp, coords, out, offsets, stride, False)

    def loss(feats):
        y = to_numpy(csc.pool_forward(xp.asarray(feats), kmap, mode)).astype(np.float64)
        return float(np.vdot(y, g))

    dx = to_numpy(csc.pool_backward(xp.asarray(g), xp.asarray(x), kmap, mode))
    assert dx.shape == x.shape
    h = 1e-6
    for _ in range(3):
        d = rng.standard_normal(x.shape)
        fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
        assert np.isclose(fd, np.vdot(dx, d), rtol=1e-6, atol=1e-6)
    for i in range(min(len(x), 20)):
        for c in range(3):
            d = np.zeros_like(x)
            d[i, c] = 1.0
            fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
            assert np.isclose(fd, dx[i, c], rtol=1e-6, atol=1e-6), (i, c)
    ref = oracle.pool_backward_oracle(g, coords, x, offsets, stride, out, mode)
    assert_close(dx, ref, 1e-10)


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool_backward_max_ties_go_to_first_offset(csc, xp, rng, case):
    coords, out, offsets, stride = pool_case(rng, case)
    x = rng.integers(0, 3, size=(len(coords), 4)).astype(np.float64)  # many ties
    g = random_feats(rng, len(out), 4)
    kmap = build(csc, xp, coords, out, offsets, stride, False)
    dx = csc.pool_backward(xp.asarray(g), xp.asarray(x), kmap, "max")
    ref = oracle.pool_backward_oracle(g, coords, x, offsets, stride, out, "max")
    assert_close(dx, ref, 1e-12)


@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
def test_pool_backward_float32(csc, xp, rng, mode):
    coords, out, offsets, stride = pool_case(rng, "k3s2")
    x = (rng.permutation(len(coords) * 3).reshape(len(coords), 3) * 0.01).astype(np.float32)
    g = random_feats(rng, len(out), 3, np.float32)
    kmap = build(csc, xp, coords, out, offsets, stride, False)
    dx = to_numpy(csc.pool_backward(xp.asarray(g), xp.asarray(x), kmap, mode))
    assert dx.dtype == np.float32
    ref = oracle.pool_backward_oracle(g, coords, x, offsets, stride, out, mode)
    assert_close(dx, ref, 1e-4)
