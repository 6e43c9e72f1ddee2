"""Tensor-core products (backends/_tensor_core.py) under the host emulator.

Oracle: gather-multiply per pair of a kernel map built by the CPU backend,
written here in float64 from the map's pair table. Inputs are small (a few
tiles per launch); the emulator runs in cooperative mode (deterministic,
about 10x faster than OS threads), with one test in threads mode.

Covered: float16, bfloat16 and float32 (TF32) products; channel counts that
take the 16-byte path, the scalar fallback and tiny ones; partial row and
column tiles; |K| = 27 and |K| > 32 (multi-word masks); empty maps; the row
order; every tile shape; bit-identical results run to run (and across row
orders and tile shapes); the weight gradient's chunk split; the depthwise
weight gradient and segment reduction with their chunk splits.
"""

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv.backends import _tensor_core as tc

ml_dtypes = pytest.importorskip("ml_dtypes")

FLOAT16, BFLOAT16, FLOAT32 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(
    np.float32)
# relative to the largest reference entry: output rounding plus accumulation
TOLERANCE = {FLOAT16: 2e-3, BFLOAT16: 1.5e-2, FLOAT32: 2e-3}


# every test here runs the emulator in cooperative mode (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("cooperative")


def cloud(rng, n, extent=8, ndim=3):
    coords = rng.integers(0, extent, size=(n, ndim))
    batch = rng.integers(0, 2, size=(n, 1))
    return np.unique(np.hstack([batch, coords]), axis=0).astype(np.int32)


def submanifold_map(rng, n=150, kernel_size=3, ndim=3, extent=8):
    coords = cloud(rng, n, extent, ndim)
    coords = coords[rng.permutation(coords.shape[0])]  # rows not in raster order
    return csc.build_kernel_map(coords, coords, csc.kernel_offsets(kernel_size, 1, ndim))


def strided_map(rng, n=200):
    coords = cloud(rng, n, 10)
    out = np.unique(np.hstack([coords[:, :1], coords[:, 1:] // 2]), axis=0).astype(np.int32)
    return csc.build_kernel_map(coords, out, csc.kernel_offsets(3, 1, 3), stride=2)


def forward_oracle(kmap, src, weight, bias=None):
    out = np.zeros((kmap.n_out, weight.shape[2]))
    for k in range(kmap.kernel_volume):
        in_rows, out_rows = kmap.pairs(k)
        np.add.at(out, out_rows, src[in_rows].astype(np.float64) @ weight[k].astype(np.float64))
    if bias is not None:
        out += bias.astype(np.float64)
    return out


def weight_grad_oracle(kmap, feats, grad_out):
    out = np.zeros((kmap.kernel_volume, feats.shape[1], grad_out.shape[1]))
    for k in range(kmap.kernel_volume):
        in_rows, out_rows = kmap.pairs(k)
        out[k] = feats[in_rows].astype(np.float64).T @ grad_out[out_rows].astype(np.float64)
    return out


def assert_close(got, ref, dtype):
    got = np.asarray(got).astype(np.float64)
    scale = max(np.abs(ref).max(), 1.0) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=0, atol=TOLERANCE[np.dtype(dtype)] * scale)


def data(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def run_forward(launcher, kmap, src, weight, bias=None, ordered=True, **kwargs):
    mask, neighbour = csc.pair_mask(kmap)
    order = tc.row_order_by_mask(launcher, mask) if ordered else None
    return tc.implicit_gemm(launcher, src, weight, neighbour, mask, bias, order,
                            allow_tf32=True, **kwargs)


# ---------------------------------------------------------------------------
# forward and input gradient
# ---------------------------------------------------------------------------

FORWARD_CASES = [  # (dtype, C_src, C_dst): 16-byte path, narrow tile, scalar fallback, tiny
    (FLOAT16, 32, 64), (FLOAT16, 16, 24), (FLOAT16, 40, 8), (FLOAT16, 13, 7), (FLOAT16, 3, 1),
    (BFLOAT16, 32, 64), (BFLOAT16, 24, 40), (BFLOAT16, 5, 12),
    (FLOAT32, 32, 64), (FLOAT32, 12, 20), (FLOAT32, 7, 9),
]


@pytest.mark.parametrize("dtype,c_src,c_dst", FORWARD_CASES,
                         ids=[f"{d.name}-{a}-{b}" for d, a, b in FORWARD_CASES])
def test_forward_matches_pair_oracle(launcher, dtype, c_src, c_dst):
    rng = np.random.default_rng(c_src * 100 + c_dst)
    kmap = submanifold_map(rng)
    src = data(rng, (kmap.n_in, c_src), dtype)
    weight = data(rng, (kmap.kernel_volume, c_src, c_dst), dtype, 0.3)
    bias = data(rng, (c_dst,), dtype)
    out = run_forward(launcher, kmap, src, weight, bias)
    assert out.dtype == dtype and out.shape == (kmap.n_out, c_dst)
    assert_close(out, forward_oracle(kmap, src, weight, bias), dtype)


@pytest.mark.parametrize("variant", sorted(tc.VARIANTS) + [tc.SCALAR_VARIANT.name])
def test_every_tile_shape_gives_the_same_bits(launcher, variant):
    """Partial row and column tiles (89 rows, C_dst = 72), strided map, no bias.

    A row's sum runs over the same (offset, channel chunk) steps in the same order
    whatever the tile shape or row order (inactive offsets add exact zeros), so every
    shape and order must agree bit for bit, and with the oracle."""
    rng = np.random.default_rng(7)
    kmap = strided_map(rng)
    src = data(rng, (kmap.n_in, 48), FLOAT16)
    weight = data(rng, (kmap.kernel_volume, 48, 72), FLOAT16, 0.3)
    reference = run_forward(launcher, kmap, src, weight, ordered=False, variant="m64n64s4")
    assert_close(reference, forward_oracle(kmap, src, weight), FLOAT16)
    out = run_forward(launcher, kmap, src, weight, variant=variant)
    np.testing.assert_array_equal(out.view(np.uint16), reference.view(np.uint16))


def test_bit_identical_run_to_run(launcher):
    rng = np.random.default_rng(8)
    kmap = submanifold_map(rng, 200)
    src = data(rng, (kmap.n_in, 32), BFLOAT16)
    weight = data(rng, (kmap.kernel_volume, 32, 32), BFLOAT16, 0.3)
    first = run_forward(launcher, kmap, src, weight)
    for _ in range(2):
        np.testing.assert_array_equal(run_forward(launcher, kmap, src, weight).view(np.uint16),
                                      first.view(np.uint16))


@pytest.mark.parametrize("kernel_size,ndim", [(5, 3), (7, 2)], ids=["K125", "K49"])
def test_forward_more_than_32_offsets(launcher, kernel_size, ndim):
    rng = np.random.default_rng(kernel_size)
    kmap = submanifold_map(rng, 120, kernel_size, ndim, extent=9)
    assert csc.pair_mask(kmap)[0].shape[1] > 1
    src = data(rng, (kmap.n_in, 16), FLOAT16)
    weight = data(rng, (kmap.kernel_volume, 16, 16), FLOAT16, 0.2)
    assert_close(run_forward(launcher, kmap, src, weight), forward_oracle(kmap, src, weight),
                 FLOAT16)


def test_input_gradient_on_the_reverse_table(launcher):
    rng = np.random.default_rng(9)
    kmap = strided_map(rng)
    grad_out = data(rng, (kmap.n_out, 24), FLOAT16)
    weight = data(rng, (kmap.kernel_volume, 16, 24), FLOAT16, 0.3)
    reverse = csc.reverse_kernel_map(kmap)
    weight_t = np.ascontiguousarray(weight.transpose(0, 2, 1))
    grad_in = run_forward(launcher, reverse, grad_out, weight_t)
    expected = np.zeros((kmap.n_in, 16))
    for k in range(kmap.kernel_volume):
        in_rows, out_rows = kmap.pairs(k)
        np.add.at(expected, in_rows,
                  grad_out[out_rows].astype(np.float64) @ weight[k].T.astype(np.float64))
    assert_close(grad_in, expected, FLOAT16)


def test_empty_maps(launcher):
    rng = np.random.default_rng(10)
    far = cloud(rng, 40) + np.array([0, 100, 100, 100], np.int32)
    kmap = csc.build_kernel_map(cloud(rng, 40), far, csc.kernel_offsets(3, 1, 3))
    assert kmap.n_pairs == 0
    src = data(rng, (kmap.n_in, 16), FLOAT16)
    weight = data(rng, (27, 16, 8), FLOAT16)
    bias = data(rng, (8,), FLOAT16)
    out = run_forward(launcher, kmap, src, weight, bias)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, out.shape))
    mask = np.zeros((0, 1), np.uint32)
    neighbour = np.zeros((0, 27), np.int32)
    assert tc.implicit_gemm(launcher, src, weight, neighbour, mask).shape == (0, 8)


def test_threads_mode(launcher, monkeypatch):
    monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "threads")
    rng = np.random.default_rng(11)
    kmap = submanifold_map(rng, 40, extent=4)
    src = data(rng, (kmap.n_in, 16), FLOAT16)
    weight = data(rng, (27, 16, 16), FLOAT16, 0.3)
    assert_close(run_forward(launcher, kmap, src, weight, variant="m64n32s4"),
                 forward_oracle(kmap, src, weight), FLOAT16)


def test_forward_errors(launcher):
    rng = np.random.default_rng(12)
    kmap = submanifold_map(rng, 30, extent=4)
    mask, neighbour = csc.pair_mask(kmap)
    src32 = data(rng, (kmap.n_in, 8), np.float32)
    w32 = data(rng, (27, 8, 8), np.float32)
    with pytest.raises(ValueError, match="allow_tf32=True"):
        tc.implicit_gemm(launcher, src32, w32, neighbour, mask)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        tc.implicit_gemm(launcher, src32.astype(np.float64), w32.astype(np.float64),
                         neighbour, mask)
    src, weight = src32.astype(np.float16), w32.astype(np.float16)
    with pytest.raises(ValueError, match=r"weight must have shape \(K=27, C_src=8"):
        tc.implicit_gemm(launcher, src, weight[:, :4], neighbour, mask)
    with pytest.raises(ValueError, match="variant must be one of"):
        tc.implicit_gemm(launcher, src, weight, neighbour, mask, variant="m256n8s2")
    with pytest.raises(ValueError, match="copies 16-byte chunks"):
        tc.implicit_gemm(launcher, src[:, :7].copy(), weight[:, :7].copy(), neighbour, mask,
                         variant="m64n64s4")
    with pytest.raises(TypeError, match="neighbour must be int32"):
        tc.implicit_gemm(launcher, src, weight, neighbour.astype(np.int64), mask)
    with pytest.raises(ValueError, match="row_order must have shape"):
        tc.implicit_gemm(launcher, src, weight, neighbour, mask,
                         row_order=np.zeros(3, np.int32))


def test_variants_for_and_default():
    assert tc.variants_for(FLOAT16, 13, 16) == [tc.SCALAR_VARIANT.name]
    assert set(tc.variants_for(FLOAT16, 64, 64)) == set(tc.VARIANTS)
    assert tc.variants_for(FLOAT32, 16, 32)[0] == "m64n32s4"
    assert tc.default_variant(10**6, 64, 64, FLOAT16) == "m128n64s3"
    assert tc.default_variant(1000, 64, 64, FLOAT16) == "m64n64s4"
    assert tc.default_variant(1000, 7, 64, FLOAT16) == tc.SCALAR_VARIANT.name


# ---------------------------------------------------------------------------
# row order by pair mask
# ---------------------------------------------------------------------------

def _brute_tile_steps(mask, order, tile_rows):
    rows = mask[order] if order is not None else mask
    total = 0
    for start in range(0, rows.shape[0], tile_rows):
        union = set()
        for row in rows[start:start + tile_rows]:
            union |= {w * 32 + b for w in range(row.shape[0]) for b in range(32)
                      if row[w] >> np.uint32(b) & np.uint32(1)}
        total += len(union)
    return total


def test_row_order_groups_equal_masks(launcher):
    rng = np.random.default_rng(13)
    kmap = strided_map(rng, 400)
    mask, _ = csc.pair_mask(kmap)
    order = tc.row_order_by_mask(launcher, mask)
    assert order.dtype == np.int32 and sorted(order.tolist()) == list(range(kmap.n_out))
    keys = [tuple(row) for row in mask[order]]
    assert keys == sorted(keys)
    for key in set(keys):  # stable: equal masks keep their original order
        rows = order[[i for i, k in enumerate(keys) if k == key]]
        assert (np.diff(rows) > 0).all()
    for tile_rows in (16, 64):
        assert tc.tile_offset_steps(mask, order, tile_rows) == _brute_tile_steps(
            mask, order, tile_rows)
        assert tc.tile_offset_steps(mask, None, tile_rows) == _brute_tile_steps(
            mask, None, tile_rows)
    # on a sparse strided map the order shrinks the tiles' unions (the GEMM's steps)
    assert tc.tile_offset_steps(mask, order, 16) < tc.tile_offset_steps(mask, None, 16)


def test_row_order_multiword(launcher):
    mask = np.array([[3, 1, 0], [1, 0, 5], [3, 0, 0], [1, 0, 5], [0, 0, 0]], np.uint32)
    order = tc.row_order_by_mask(launcher, mask)
    assert order.tolist() == [4, 1, 3, 2, 0]


# ---------------------------------------------------------------------------
# weight gradient
# ---------------------------------------------------------------------------

WGRAD_CASES = [(FLOAT16, 32, 64, None), (FLOAT16, 16, 24, 256), (FLOAT16, 13, 7, None),
               (BFLOAT16, 72, 80, 256), (BFLOAT16, 3, 5, None), (FLOAT32, 16, 32, 256),
               (FLOAT32, 6, 10, None)]


@pytest.mark.parametrize("dtype,c_in,c_out,chunk", WGRAD_CASES,
                         ids=[f"{d.name}-{a}-{b}-{c}" for d, a, b, c in WGRAD_CASES])
def test_weight_grad_matches_pair_oracle(launcher, dtype, c_in, c_out, chunk):
    rng = np.random.default_rng(c_in * 7 + c_out)
    kmap = submanifold_map(rng, 220)
    feats = data(rng, (kmap.n_in, c_in), dtype)
    grad_out = data(rng, (kmap.n_out, c_out), dtype)
    got = tc.weight_grad(launcher, feats, grad_out, kmap.in_rows.astype(np.int32),
                         kmap.out_rows.astype(np.int32), kmap.pair_offsets, allow_tf32=True,
                         chunk_pairs=chunk)
    assert got.dtype == dtype and got.shape == (27, c_in, c_out)
    assert_close(got, weight_grad_oracle(kmap, feats, grad_out), dtype)


def test_weight_grad_chunks_and_determinism(launcher):
    rng = np.random.default_rng(14)
    kmap = submanifold_map(rng, 1200, extent=9)
    assert kmap.pair_counts().min() > 256
    feats = data(rng, (kmap.n_in, 8), FLOAT16)
    grad_out = data(rng, (kmap.n_out, 8), FLOAT16)
    args = (launcher, feats, grad_out, kmap.in_rows.astype(np.int32),
            kmap.out_rows.astype(np.int32), kmap.pair_offsets)
    chunk_pairs, begin, end, start = tc.wgrad_chunking(kmap.pair_offsets, 8, 8, 256)
    assert (np.diff(start) > 1).any()  # offsets split over several chunks
    assert ((end - begin) <= 256).all() and (end > begin).all()
    assert (end - begin).sum() == kmap.n_pairs
    first = tc.weight_grad(*args, chunk_pairs=256)
    assert_close(first, weight_grad_oracle(kmap, feats, grad_out), FLOAT16)
    np.testing.assert_array_equal(tc.weight_grad(*args, chunk_pairs=256).view(np.uint16),
                                  first.view(np.uint16))


def test_weight_grad_empty_map(launcher):
    got = tc.weight_grad(launcher, np.ones((4, 8), np.float16), np.ones((3, 8), np.float16),
                         np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(28, np.int64))
    assert got.shape == (27, 8, 8) and not got.any()


# ---------------------------------------------------------------------------
# depthwise weight gradient, segment reduction
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,channels,chunk", [(np.float32, 40, 256), (np.float64, 5, None),
                                                  (np.float16, 33, 512), (BFLOAT16, 8, 256)])
def test_depthwise_weight_grad(launcher, dtype, channels, chunk):
    rng = np.random.default_rng(channels)
    kmap = submanifold_map(rng, 3000, extent=12)
    feats = data(rng, (kmap.n_in, channels), dtype)
    grad_out = data(rng, (kmap.n_out, channels), dtype)
    got = tc.depthwise_weight_grad(launcher, feats, grad_out, kmap.in_rows.astype(np.int32),
                                   kmap.out_rows.astype(np.int32), kmap.pair_offsets,
                                   chunk_pairs=chunk)
    expected = np.zeros((27, channels))
    for k in range(27):
        in_rows, out_rows = kmap.pairs(k)
        expected[k] = (feats[in_rows].astype(np.float64)
                       * grad_out[out_rows].astype(np.float64)).sum(axis=0)
    assert got.dtype == dtype
    rtol = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}.get(np.dtype(dtype), 1e-2)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_segment_reduce(launcher, mode, dtype):
    rng = np.random.default_rng(15)
    n, channels, n_segments = 1500, 37, 4
    segment_ids = rng.choice([0, 1, 3], size=n, p=[0.7, 0.2, 0.1])   # segment 2 empty
    feats = data(rng, (n, channels), dtype)
    got = tc.segment_reduce(launcher, feats, segment_ids, n_segments, mode, chunk_rows=256)
    expected = np.zeros((n_segments, channels))
    for s in (0, 1, 3):
        rows = feats[segment_ids == s].astype(np.float64)
        expected[s] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0)}[mode]
    assert got.dtype == dtype
    rtol = 1e-2 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


def test_segment_max_propagates_nan(launcher):
    feats = np.arange(2000 * 3, dtype=np.float32).reshape(2000, 3)
    feats[1500, 1] = np.nan      # in the last of several chunks of segment 0
    feats[1999, 2] = np.nan      # segment 1's only chunk
    segment_ids = np.r_[np.zeros(1800, int), np.ones(200, int)]
    got = tc.segment_reduce(launcher, feats, segment_ids, 2, "max", chunk_rows=256)
    assert np.isnan(got[0, 1]) and np.isnan(got[1, 2])
    assert got[0, 0] == feats[1799, 0] and got[1, 0] == feats[1999, 0]
    with pytest.raises(ValueError, match=r"segment_ids must lie in \[0, n_segments=2\)"):
        tc.segment_reduce(launcher, feats, segment_ids + 1, 2, "sum")
