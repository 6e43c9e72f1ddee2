"""``conv_backward``: both gradients in one call.

On the CPU the two share one pass when both run blocked (the weight gradient
made from the input gradient's gathered rows). Checked against the pair-table
oracle on every regime and weight variant on every backend, against the two
separate products (input gradient bit for bit, weight gradient up to
rounding), on a layer large enough for several blocks and windows with
unpaired rows, at 1, 2 and 3 threads (bit-identical), with inf / NaN in the
output gradient, and on the paths that fall back to the two products.
"""

import numpy as np
import pytest

import oracle
from conftest import GRAD_GEOMETRY, assert_close, random_coords, random_feats, random_weight
from conftest import kmap_case as _kmap_case

import cusparseconv as csc
from cusparseconv.backends import _cpu_plan, cpu

KMAP_CASES = ["submanifold", "strided", "generative", "generative_strided", "transposed",
              "transposed_strided", "explicit", "dilated", "even", "arbitrary"]


def _weight(rng, variant, n_k, dtype):
    """(weight, groups, C_in, C_out)."""
    if variant == "standard":
        return random_weight(rng, (n_k, 3, 4), dtype), 1, 3, 4
    if variant == "groups":
        return random_weight(rng, (n_k, 3, 2, 1), dtype), 3, 6, 3
    return random_weight(rng, (n_k, 4), dtype), 4, 4, 4     # depthwise


@pytest.mark.parametrize("case", KMAP_CASES)
@pytest.mark.parametrize("variant", ["standard", "groups", "depthwise"])
def test_conv_backward_matches_the_oracle(backend, rng, case, variant):
    xp = backend.xp
    in_coords, out_coords, offsets, stride, transposed = _kmap_case(rng, case, GRAD_GEOMETRY)
    weight, groups, c_in, c_out = _weight(rng, variant, len(offsets), np.float64)
    x = random_feats(rng, len(in_coords), c_in)
    g = random_feats(rng, len(out_coords), c_out)
    kmap = csc.build_kernel_map(xp.asarray(in_coords), xp.asarray(out_coords),
                                xp.asarray(offsets), stride=stride, transposed=transposed)
    dx, dw = csc.conv_backward(xp.asarray(x), xp.asarray(g), xp.asarray(weight), kmap,
                               groups)
    pairs = oracle.kernel_map_oracle(in_coords, out_coords, offsets, stride, transposed)
    assert dx.shape == (len(in_coords), c_in) and dw.shape == weight.shape
    assert_close(dx, oracle.conv_input_grad_oracle(g, weight, pairs, len(x), groups), 1e-10)
    assert_close(dw, oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape, groups), 1e-10)
    # the same as the two products (the input gradient to the bit)
    separate_dx = csc.conv_input_grad(xp.asarray(g), xp.asarray(weight), kmap, groups)
    separate_dw = csc.conv_weight_grad(xp.asarray(x), xp.asarray(g), kmap, groups,
                                       weight.shape)
    np.testing.assert_array_equal(backend.get(dx), backend.get(separate_dx))
    assert_close(dw, backend.get(separate_dw), 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_conv_backward_low_precision_dtypes(backend, rng, dtype):
    xp = backend.xp
    in_coords, out_coords, offsets, stride, transposed = _kmap_case(rng, "submanifold",
                                                                    GRAD_GEOMETRY)
    weight = random_weight(rng, (len(offsets), 3, 4), dtype)
    x = random_feats(rng, len(in_coords), 3, dtype)
    g = random_feats(rng, len(out_coords), 4, dtype)
    kmap = csc.build_kernel_map(xp.asarray(in_coords), xp.asarray(out_coords),
                                xp.asarray(offsets), stride=stride, transposed=transposed)
    dx, dw = csc.conv_backward(xp.asarray(x), xp.asarray(g), xp.asarray(weight), kmap)
    assert dx.dtype == dtype and dw.dtype == dtype
    pairs = oracle.kernel_map_oracle(in_coords, out_coords, offsets, stride, transposed)
    tol = 1e-4 if dtype == np.float32 else 2e-2
    assert_close(dx, oracle.conv_input_grad_oracle(g, weight, pairs, len(x)), tol)
    assert_close(dw, oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape), tol)


# --------------------------------------------------------------------------
# the fused pass itself (CPU): several blocks, windows with unpaired rows, threads
# --------------------------------------------------------------------------

def _layer(rng, layer, channels=32):
    """A layer whose input gradient runs blocked (so the fused pass runs) on several
    blocks: ``plane`` (a 3x3x3 layer on a plane with 10 % of its cells missing, sorted
    rows: every offset a window, most with rows that have no pair), ``cube`` (3x3x3 on
    45 % of a cube's cells: gathered rows) or ``down2`` (2x2x2 stride 2: the reverse
    table, gathered rows)."""
    if layer == "plane":
        side = 80
        xy = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"),
                      axis=-1).reshape(-1, 2)
        xy = xy[rng.random(len(xy)) < 0.9]
        coords = np.zeros((len(xy), 4), dtype=np.int32)
        coords[:, 1:3] = xy
    elif layer == "cube":
        coords = random_coords(rng, 5000, 3, 1, -11, 11, shuffle=False)
    else:
        coords = random_coords(rng, 25000, 3, 1, -20, 20)
    if layer == "down2":
        offsets, stride = oracle.kernel_offsets_oracle(2), 2
        out_coords = oracle.downsample_coords_oracle(coords, 2)
    else:
        offsets, stride, out_coords = oracle.kernel_offsets_oracle(3), 1, coords
    kmap = csc.build_kernel_map(coords, out_coords, offsets, stride=stride)
    x = random_feats(rng, len(coords), channels, np.float32)
    g = random_feats(rng, len(out_coords), channels, np.float32)
    weight = random_weight(rng, (len(offsets), channels, channels), np.float32)
    pairs = oracle.kernel_map_oracle(coords, out_coords, offsets, stride, False)
    return kmap, x, g, weight, pairs


def _input_grad_plan(kmap, channels):
    reverse = kmap if _cpu_plan.mirror_of(kmap) is not None else cpu.reverse_map(kmap)
    return _cpu_plan.plan_for(reverse, channels, channels, np.float32)


@pytest.mark.parametrize("layer", ["plane", "cube", "down2"])
def test_fused_pass_on_several_blocks_matches_the_oracle(rng, layer):
    kmap, x, g, weight, pairs = _layer(rng, layer)
    plan = _input_grad_plan(kmap, 32)
    items = [item for block in plan.blocks for item in block.items]
    assert len(plan.blocks) >= 2
    if layer == "plane":   # windows with unpaired rows
        assert any(item[1] and item[3] != item[6] - item[5] for item in items)
    else:                  # gathered rows
        assert any(not item[1] for item in items)
    calls = []
    original = cpu._input_and_weight_grad
    try:
        cpu._input_and_weight_grad = lambda *a, **k: calls.append(1) or original(*a, **k)
        dx, dw = csc.conv_backward(x, g, weight, kmap)
    finally:
        cpu._input_and_weight_grad = original
    assert calls, "the fused pass did not run"
    assert_close(dx, oracle.conv_input_grad_oracle(g, weight, pairs, len(x)), 1e-4)
    assert_close(dw, oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape), 1e-4)
    np.testing.assert_array_equal(dx, csc.conv_input_grad(g, weight, kmap))
    assert_close(dw, csc.conv_weight_grad(x, g, kmap), 1e-5)


@pytest.mark.parametrize("layer", ["plane", "down2"])
def test_fused_pass_is_bit_identical_at_any_thread_count(rng, layer):
    kmap, x, g, weight, _ = _layer(rng, layer)
    before = csc.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            csc.set_num_threads(threads)
            results.append(csc.conv_backward(x, g, weight, kmap))
    finally:
        csc.set_num_threads(before)
    for dx, dw in results[1:]:
        np.testing.assert_array_equal(dx, results[0][0])
        np.testing.assert_array_equal(dw, results[0][1])


def test_fused_pass_keeps_non_finite_values_where_the_products_put_them(rng):
    kmap, x, g, weight, _ = _layer(rng, "plane")
    g = g.copy()
    g[7, 3] = np.nan
    g[100, 0] = np.inf
    dx, dw = csc.conv_backward(x, g, weight, kmap)
    separate_dx = csc.conv_input_grad(g, weight, kmap)
    separate_dw = csc.conv_weight_grad(x, g, kmap)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(separate_dx))
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(separate_dw))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(separate_dw))
    finite = np.isfinite(separate_dw)
    assert_close(dw[finite], separate_dw[finite], 1e-5)


def test_terms_beyond_the_budget_run_the_two_products(rng, monkeypatch):
    kmap, x, g, weight, _ = _layer(rng, "plane")
    monkeypatch.setattr(cpu, "_FUSED_TERM_BYTES", 0)
    monkeypatch.setattr(cpu, "_input_and_weight_grad",
                        lambda *a, **k: pytest.fail("the fused pass ran beyond its budget"))
    dx, dw = csc.conv_backward(x, g, weight, kmap)
    np.testing.assert_array_equal(dx, csc.conv_input_grad(g, weight, kmap))
    np.testing.assert_array_equal(dw, csc.conv_weight_grad(x, g, kmap))


def test_conv_backward_checks_its_arguments(rng):
    kmap, x, g, weight, _ = _layer(rng, "plane")
    with pytest.raises(ValueError, match="grad_out must have 32 columns"):
        csc.conv_backward(x, g[:, :8], weight, kmap)
    with pytest.raises(ValueError, match="grad_out"):
        csc.conv_backward(x, g[:-1], weight, kmap)
    with pytest.raises(ValueError, match="feats"):
        csc.conv_backward(x[:-1], g, weight, kmap)
    with pytest.raises(TypeError, match="dtype"):
        csc.conv_backward(x.astype(np.float64), g, weight, kmap)


@pytest.mark.parametrize("variant", ["standard", "groups"])
@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_conv_backward_writes_into_out(backend, rng, variant, dtype):
    """``out=(grad_in_out, grad_weight_out)``: both results written there and returned
    (an accumulation dtype computed in place, float16 cast into it), equal to the
    results without ``out``."""
    xp = backend.xp
    in_coords, out_coords, offsets, stride, transposed = _kmap_case(rng, "submanifold",
                                                                    GRAD_GEOMETRY)
    weight, groups, c_in, c_out = _weight(rng, variant, len(offsets), dtype)
    x = xp.asarray(random_feats(rng, len(in_coords), c_in, dtype))
    g = xp.asarray(random_feats(rng, len(out_coords), c_out, dtype))
    weight = xp.asarray(weight)
    kmap = csc.build_kernel_map(xp.asarray(in_coords), xp.asarray(out_coords),
                                xp.asarray(offsets), stride=stride, transposed=transposed)
    expected = csc.conv_backward(x, g, weight, kmap, groups)
    out = (xp.full((len(in_coords), c_in), 7, dtype=dtype), xp.full(weight.shape, 7, dtype=dtype))
    got = csc.conv_backward(x, g, weight, kmap, groups, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    np.testing.assert_array_equal(backend.get(got[0]), backend.get(expected[0]))
    np.testing.assert_array_equal(backend.get(got[1]), backend.get(expected[1]))


def test_fused_pass_writes_into_out(rng):
    """The fused pass computes both results in the given arrays (no copy after)."""
    kmap, x, g, weight, pairs = _layer(rng, "cube")
    out = (np.empty_like(x), np.empty_like(weight))
    seen = {}
    original = cpu._input_and_weight_grad

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)
    try:
        cpu._input_and_weight_grad = spy
        dx, dw = csc.conv_backward(x, g, weight, kmap, out=out)
    finally:
        cpu._input_and_weight_grad = original
    assert seen["out"] is out[0] and np.shares_memory(seen["weight_out"], out[1])
    assert dx is out[0] and dw is out[1]
    plain_dx, plain_dw = csc.conv_backward(x, g, weight, kmap)   # bit for bit
    np.testing.assert_array_equal(dx, plain_dx)
    np.testing.assert_array_equal(dw, plain_dw)
    assert_close(dx, oracle.conv_input_grad_oracle(g, weight, pairs, len(x)), 1e-4)
    assert_close(dw, oracle.conv_weight_grad_oracle(x, g, pairs, weight.shape), 1e-4)


def test_conv_backward_out_errors(rng):
    kmap, x, g, weight, _ = _layer(rng, "down2")
    with pytest.raises(TypeError, match="out must be a pair"):
        csc.conv_backward(x, g, weight, kmap, out=np.empty_like(x))
    with pytest.raises(ValueError, match="out must have shape"):
        csc.conv_backward(x, g, weight, kmap, out=(np.empty_like(g), np.empty_like(weight)))
    with pytest.raises(ValueError, match="shares memory with feats"):
        csc.conv_backward(x, g, weight, kmap, out=(x, np.empty_like(weight)))
    both = np.empty(x.size + weight.size, dtype=x.dtype)
    with pytest.raises(ValueError, match="share memory"):
        csc.conv_backward(x, g, weight, kmap, out=(both[:x.size].reshape(x.shape),
                                                   both[:weight.size].reshape(weight.shape)))
