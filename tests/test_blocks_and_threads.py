"""Multi-block products (several blocks of output rows) and thread-count invariance."""

import numpy as np
import pytest

import cusparseconv as csc


def dict_conv(in_coords, out_coords, feats, weight, offsets, stride, transposed):
    """Float64 brute force of docs/SPEC.md section 3 over dictionaries."""
    in_index = {tuple(r): i for i, r in enumerate(in_coords.tolist())}
    out_index = {tuple(r): i for i, r in enumerate(out_coords.tolist())}
    out = np.zeros((len(out_coords), weight.shape[-1]))
    coarse = in_coords if transposed else out_coords
    for c_row, u in enumerate(coarse.tolist()):
        for k, off in enumerate(offsets.tolist()):
            v = (u[0],) + tuple(s * a + o for s, a, o in zip(stride, u[1:], off))
            if transposed:
                if v in out_index:
                    out[out_index[v]] += feats[c_row] @ weight[k]
            elif v in in_index:
                out[c_row] += feats[in_index[v]] @ weight[k]
    return out


@pytest.fixture(scope="module")
def scene():
    """~6000 voxels of two shuffled surfaces: many blocks of 1024 output rows."""
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, 60, size=(2, 5000))
    plane = np.stack([np.zeros_like(u), u, v, (u + v) // 7], axis=1)
    bowl = np.stack([np.ones_like(u), u, v, (u - 30) ** 2 // 40 + (v - 30) ** 2 // 40], axis=1)
    coords = np.unique(np.concatenate([plane, bowl]), axis=0).astype(np.int32)
    return coords[rng.permutation(len(coords))]


@pytest.mark.parametrize("stride,transposed", [(1, False), (2, False), (2, True)])
def test_multi_block_forward_and_gradients(scene, stride, transposed):
    rng = np.random.default_rng(1)
    offsets = csc.kernel_offsets(3)
    if transposed:
        in_coords = np.unique(scene // np.array([1, 2, 2, 2]), axis=0).astype(np.int32)
        out_coords = scene
    else:
        in_coords = scene
        out_coords = scene if stride == 1 else np.unique(
            scene // np.array([1, 2, 2, 2]), axis=0).astype(np.int32)[::-1].copy()
    kmap = csc.build_kernel_map(in_coords, out_coords, offsets, stride, transposed)
    assert kmap.n_out > 1024 or kmap.n_in > 1024
    feats = rng.normal(size=(len(in_coords), 5))
    weight = rng.normal(size=(27, 5, 3))
    out = csc.conv_forward(feats, weight, kmap)
    expected = dict_conv(in_coords, out_coords, feats, weight, offsets, (stride,) * 3, transposed)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    grad_out = rng.normal(size=out.shape)
    grad_in = csc.conv_input_grad(grad_out, weight, kmap)
    grad_weight = csc.conv_weight_grad(feats, grad_out, kmap)
    lhs = np.sum(out * grad_out)
    np.testing.assert_allclose(np.sum(feats * grad_in), lhs, rtol=1e-10)
    np.testing.assert_allclose(np.sum(weight * grad_weight), lhs, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_identical_at_any_thread_count(scene, dtype):
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(len(scene), 32)).astype(dtype)
    weight = rng.normal(size=(27, 32, 32)).astype(dtype)
    grouped = rng.normal(size=(27, 4, 8, 8)).astype(dtype)
    results = []
    before = csc.get_num_threads()
    try:
        for threads in (1, 2, 3):
            csc.set_num_threads(threads)
            x = csc.SparseTensor(scene, feats)
            kmap = csc.layer_kernel_map(x)[0]
            y = csc.sparse_conv(x, weight)
            down = csc.sparse_conv(x, weight[:8], kernel_size=2, stride=2)
            results.append([
                y.feats, down.feats,
                csc.conv_input_grad(y.feats, weight, kmap),
                csc.conv_weight_grad(feats, y.feats, kmap),
                csc.conv_forward(feats, grouped, kmap, groups=4),
                csc.sparse_pool(x, 3, 2, "max").feats,
            ])
    finally:
        csc.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_set_num_threads_validates():
    with pytest.raises(ValueError, match="positive"):
        csc.set_num_threads(0)


@pytest.fixture(scope="module")
def blob():
    """A filled ellipsoid of ~4,500 voxels: almost every 3x3x3 slot holds a pair."""
    grid = np.stack(np.meshgrid(*[np.arange(-12, 12)] * 3, indexing="ij"), -1).reshape(-1, 3)
    inside = grid[(grid ** 2 / np.array([144, 144, 64])).sum(axis=1) < 1]
    coords = np.concatenate([np.zeros((len(inside), 1), np.int64), inside], axis=1)
    return coords.astype(np.int32)[np.random.default_rng(3).permutation(len(inside))]


@pytest.mark.parametrize("algorithm", [None, "dense", "blocked"])
def test_dense_algorithm_matches_the_oracle(blob, algorithm):
    rng = np.random.default_rng(4)
    offsets = csc.kernel_offsets(3)
    kmap = csc.build_kernel_map(blob, blob, offsets)
    assert kmap.n_pairs > 0.6 * kmap.n_out * 27 and kmap.n_out > 1024   # auto -> dense
    feats = rng.normal(size=(len(blob), 6))
    weight = rng.normal(size=(27, 6, 4))
    out = csc.conv_forward(feats, weight, kmap, algorithm=algorithm)
    expected = dict_conv(blob, blob, feats, weight, offsets, (1, 1, 1), False)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    grad_out = rng.normal(size=out.shape)
    grad_in = csc.conv_input_grad(grad_out, weight, kmap, algorithm=algorithm)
    np.testing.assert_allclose(np.sum(feats * grad_in), np.sum(out * grad_out), rtol=1e-10)
    # the weight gradient (dense: the blocks' gathered neighbour tables times dY's rows)
    # against a direct sum over the enumerated pairs
    grad_w = csc.conv_weight_grad(feats, grad_out, kmap, algorithm=algorithm)
    index = {tuple(r): i for i, r in enumerate(blob[:, 1:].tolist())}
    expected_w = np.zeros_like(weight)
    for k, off in enumerate(offsets.tolist()):
        for u, row in enumerate(blob[:, 1:].tolist()):
            i = index.get(tuple(a + b for a, b in zip(row, off)))
            if i is not None:
                expected_w[k] += np.outer(feats[i], grad_out[u])
    np.testing.assert_allclose(grad_w, expected_w, rtol=1e-10, atol=1e-10)


def test_dense_algorithm_is_thread_invariant_and_standard_only(blob):
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(len(blob), 32)).astype(np.float32)
    weight = rng.normal(size=(27, 32, 32)).astype(np.float32)
    kmap = csc.build_kernel_map(blob, blob, csc.kernel_offsets(3))
    before = csc.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            csc.set_num_threads(threads)
            results.append(csc.conv_forward(feats, weight, kmap, algorithm="dense"))
    finally:
        csc.set_num_threads(before)
    assert np.array_equal(results[0], results[1])
    with pytest.raises(ValueError, match="dense"):
        csc.conv_forward(feats, rng.normal(size=(27, 2, 16, 16)).astype(np.float32), kmap,
                         groups=2, algorithm="dense")


def test_dense_weight_gradient_is_thread_invariant_and_standard_only(blob):
    """Its partial sums (runs of blocks) are fixed by the plan, never by the threads."""
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(len(blob), 16)).astype(np.float32)
    grad_out = rng.normal(size=(len(blob), 8)).astype(np.float32)
    kmap = csc.build_kernel_map(blob, blob, csc.kernel_offsets(3))
    before = csc.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            csc.set_num_threads(threads)
            results.append(csc.conv_weight_grad(feats, grad_out, kmap, algorithm="dense"))
    finally:
        csc.set_num_threads(before)
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])
    blocked = csc.conv_weight_grad(feats, grad_out, kmap, algorithm="blocked")
    np.testing.assert_allclose(results[0], blocked, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="dense"):
        csc.conv_weight_grad(feats, grad_out, kmap, groups=2, algorithm="dense")
