"""Regression tests of the reliability issue (#14): each test reproduces one
class of silent wrong answer, hang or leak found by fuzzing, against the
oracle where values are involved.

Backends: ``cpu`` and ``cuda-emulated`` (the GPU backend's own code with its
kernels run by the host emulator) for every item whose code differs per
backend; the rest is backend-independent validation.
"""

import os
import threading
import time

import numpy as np
import pytest

import cusparseconv as csc
import oracle
from conftest import (assert_close, assert_same_rows, random_coords, random_feats,
                      run_in_forked_child)

#: Tests taking ``backend`` (conftest's one backend fixture) run on the two backends
#: that take NumPy arrays: these tests hand host buffers (big-endian, read-only, ...).
pytestmark = pytest.mark.backends("cpu", "cuda-emulated")


def small_tensor(rng, n=40, channels=3, dtype=np.float64, span=4):
    coords = random_coords(rng, n, 3, 2, -span, span)
    return csc.SparseTensor(coords, random_feats(rng, n, channels, dtype))


# ---------------------------------------------------------------------------
# 1. explicit coordinates are copied on entry
# ---------------------------------------------------------------------------


def test_out_coords_are_copied_on_entry(rng):
    x = small_tensor(rng)
    weight = rng.standard_normal((27, 3, 2))
    query = np.array([[0, 0, 0, 1], [1, -1, 2, 0]], dtype=np.int32)
    y = csc.sparse_conv(x, weight, out_coords=query)
    expected_feats = y.feats.copy()
    query[:] = [[0, 5, 5, 6], [1, 7, 7, 7]]         # the caller reuses its buffer
    assert y.coords.tolist() == [[0, 0, 0, 1], [1, -1, 2, 0]]
    again = csc.sparse_conv(x, weight, out_coords=np.array([[0, 0, 0, 1], [1, -1, 2, 0]]))
    np.testing.assert_array_equal(again.feats, expected_feats)
    ref = oracle.conv_oracle(x.coords, x.feats, weight, oracle.kernel_offsets_oracle(3), 1,
                             y.coords)
    assert_close(y.feats, ref, 1e-10)


def test_out_coords_are_copied_through_the_torch_adapter(rng):
    torch = pytest.importorskip("torch")
    import cusparseconv.torch as cst

    coords = random_coords(rng, 40, 3, 2, -4, 4)
    feats = torch.from_numpy(random_feats(rng, 40, 3))
    weight = torch.from_numpy(rng.standard_normal((27, 3, 2)))
    query = np.array([[0, 0, 0, 1]], dtype=np.int32)
    out_coords, out = cst.sparse_conv(coords, feats, weight, out_coords=query)
    query[:] = [[0, 5, 5, 6]]
    assert out_coords.tolist() == [[0, 0, 0, 1]]


def test_public_coordinates_cannot_be_made_writable(rng):
    x = small_tensor(rng)
    coords = x.coords
    with pytest.raises(ValueError):
        coords[0, 1] = 99
    with pytest.raises(ValueError):
        coords.flags.writeable = True


# ---------------------------------------------------------------------------
# 3. cache registration under thread contention
# ---------------------------------------------------------------------------


def _yield_after_every_c_call(frame, event, arg):
    """A profile hook that hands the GIL over after every C call (list.append,
    len, ...): check-then-act races between threads show up deterministically."""
    if event == "c_return":
        time.sleep(0)


def test_register_and_maps_are_consistent_under_contention():
    cache = csc.CoordinateCache()
    errors = []
    shared = random_coords(np.random.default_rng(0), 30, 3, 2, -4, 4)

    def work(index):
        try:
            for repeat in range(60):
                rows = np.array([[index, repeat, 0, 0]], dtype=np.int32)
                set_id = cache.register(rows)
                if not np.array_equal(cache.coords(set_id), rows):
                    errors.append(f"thread {index}: the set of another registration")
            x = csc.SparseTensor(shared, np.ones((30, 1)), cache=cache)
            kmap = csc.layer_kernel_map(x)[0]
            if kmap.n_in != 30 or kmap.n_pairs != csc.build_kernel_map(
                    shared, shared, csc.kernel_offsets(3)).n_pairs:
                errors.append(f"thread {index}: a map of another set")
        except Exception as error:  # the assertion below reports it
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    threading.setprofile(_yield_after_every_c_call)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        threading.setprofile(None)
    assert not errors, errors[:5]


# ---------------------------------------------------------------------------
# 4. byte order
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [">f8", ">f4"])
def test_big_endian_inputs_give_native_results(rng, backend, dtype):
    native = np.dtype(dtype).newbyteorder("=")
    coords = random_coords(rng, 50, 3, 2, -4, 4)
    feats = random_feats(rng, 50, 3, native)
    weight = rng.standard_normal((27, 3, 2)).astype(native)
    bias = rng.standard_normal(2).astype(native)
    x_big = csc.SparseTensor(coords.astype(">i4"), feats.astype(dtype))
    y_big = csc.sparse_conv(x_big, weight.astype(dtype), bias=bias.astype(dtype))
    ref = oracle.conv_oracle(coords, feats, weight, oracle.kernel_offsets_oracle(3), 1, coords,
                             bias=bias)
    assert y_big.feats.dtype == native
    assert_close(y_big.feats, ref, 1e-10 if native == np.float64 else 1e-5)
    kmap = csc.layer_kernel_map(x_big)[0]
    grad = random_feats(rng, 50, 2, native)
    pairs = oracle.kernel_map_oracle(coords, coords, oracle.kernel_offsets_oracle(3))
    tol = 1e-10 if native == np.float64 else 1e-5
    assert_close(csc.conv_input_grad(grad.astype(dtype), weight.astype(dtype), kmap),
                 oracle.conv_input_grad_oracle(grad, weight, pairs, 50), tol)
    assert_close(csc.conv_weight_grad(feats.astype(dtype), grad.astype(dtype), kmap),
                 oracle.conv_weight_grad_oracle(feats, grad, pairs, weight.shape), tol)
    bias_grad = csc.conv_bias_grad(grad.astype(dtype))
    assert bias_grad.dtype == native
    np.testing.assert_allclose(bias_grad, grad.astype(np.float64).sum(axis=0), rtol=tol)
    pooled = csc.sparse_pool(x_big, 2, 2, "max")
    out = oracle.downsample_coords_oracle(coords, 2)
    assert_same_rows(pooled.coords, pooled.feats, out,
                     oracle.pool_oracle(coords, feats, oracle.kernel_offsets_oracle(2), 2, out,
                                        "max"), 1e-6)


def test_voxelize_normalises_byte_order(rng):
    points = rng.uniform(0, 2, size=(500, 3))
    feats = rng.uniform(size=(500, 2))
    for reduce in ("mean", "max", "sum"):
        coords, voxel_feats, point_to_voxel = csc.voxelize(points, 0.25, feats=feats,
                                                          reduce=reduce)
        got = csc.voxelize(points.astype(">f8"), 0.25, feats=feats.astype(">f8"),
                           reduce=reduce, batch_index=np.zeros(500, ">i8"))
        np.testing.assert_array_equal(got[0], coords)
        assert got[1].dtype == np.float64 and got[1].dtype.isnative
        np.testing.assert_array_equal(got[1], voxel_feats)
        np.testing.assert_array_equal(got[2], point_to_voxel)
    back = csc.devoxelize(voxel_feats.astype(">f4"), point_to_voxel.astype(">i8"))
    assert back.dtype == np.float32 and back.dtype.isnative


def test_big_endian_float64_accumulates_in_float64(rng):
    """>f8 features were accumulated in float32 on the CPU (dtype == float64 was
    False for them): sums that float32 cannot hold exactly show it."""
    coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1]], dtype=np.int32)
    feats = np.array([[1.0], [1e-9]])
    y = csc.sparse_conv(csc.SparseTensor(coords, feats.astype(">f8")),
                        np.ones((27, 1, 1), dtype=">f8"))
    assert y.feats[0, 0] == 1.0 + 1e-9
    assert csc.conv_bias_grad(feats.astype(">f8"))[0] == 1.0 + 1e-9


# ---------------------------------------------------------------------------
# 5. non-finite weights: the result does not depend on the algorithm
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def filled_ball():
    """A filled ball: > 60 % of the (row, offset) slots hold a pair (auto -> dense)."""
    grid = np.stack(np.meshgrid(*[np.arange(-6, 6)] * 3, indexing="ij"), -1).reshape(-1, 3)
    inside = grid[(grid ** 2).sum(axis=1) < 30]
    coords = np.concatenate([np.zeros((len(inside), 1), np.int64), inside], axis=1)
    return coords.astype(np.int32)


@pytest.mark.parametrize("algorithm", [None, "dense", "blocked"])
def test_non_finite_weights_same_result_on_every_cpu_algorithm(filled_ball, rng, algorithm):
    offsets = csc.kernel_offsets(3)
    kmap = csc.build_kernel_map(filled_ball, filled_ball, offsets)
    assert kmap.n_pairs > 0.6 * kmap.n_out * 27
    feats = rng.standard_normal((len(filled_ball), 4))
    weight = rng.standard_normal((27, 4, 3))
    weight[0, 1, 2] = np.inf           # offset (-1, -1, -1): missing for rows on the surface
    weight[26, 0, 0] = np.nan
    pairs = oracle.kernel_map_oracle(filled_ball, filled_ball, offsets)
    with np.errstate(invalid="ignore"):
        ref = oracle.conv_from_pairs_oracle(feats, weight, pairs, len(filled_ball))
        ref_in = oracle.conv_input_grad_oracle(feats[:, :3], weight, pairs, len(filled_ball))
    with np.errstate(invalid="ignore"):
        out = csc.conv_forward(feats, weight, kmap, algorithm=algorithm)
        grad_in = csc.conv_input_grad(feats[:, :3].copy(), weight, kmap, algorithm=algorithm)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(np.isnan(grad_in), np.isnan(ref_in))


# NumPy's error state is per thread: the worker threads' matmuls warn about inf * 0
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("algorithm", [None, "dense", "blocked"])
def test_non_finite_gradients_same_weight_gradient_on_every_cpu_algorithm(filled_ball, rng,
                                                                          algorithm):
    """A non-finite dY must not reach the offsets a row has no pair for (the dense weight
    gradient would multiply it by a missing slot's zero row): dense falls back to blocked."""
    offsets = csc.kernel_offsets(3)
    kmap = csc.build_kernel_map(filled_ball, filled_ball, offsets)
    feats = rng.standard_normal((len(filled_ball), 4))
    grad_out = rng.standard_normal((len(filled_ball), 3))
    surface = int(np.argmax(np.abs(filled_ball[:, 1:]).sum(axis=1)))  # a corner row
    grad_out[surface, 1] = np.inf
    feats[0, 2] = np.nan
    pairs = oracle.kernel_map_oracle(filled_ball, filled_ball, offsets)
    with np.errstate(invalid="ignore"):
        ref = oracle.conv_weight_grad_oracle(feats, grad_out, pairs, (27, 4, 3))
        grad_w = csc.conv_weight_grad(feats, grad_out, kmap, algorithm=algorithm)
    assert not np.isnan(ref).all()
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(grad_w), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(grad_w[finite], ref[finite], rtol=1e-10, atol=1e-10)


EMULATED_ALGORITHMS = ["explicit", "explicit_sorted", "implicit", "mask"]


@pytest.mark.parametrize("algorithm", EMULATED_ALGORITHMS)
@pytest.mark.backends("cuda-emulated", "cuda")
def test_non_finite_weights_same_result_on_every_gpu_algorithm(rng, backend, algorithm):
    coords = random_coords(rng, 60, 3, 1, -3, 3)
    offsets = csc.kernel_offsets(3)
    feats = rng.standard_normal((60, 2)).astype(np.float32)
    weight = rng.standard_normal((27, 2, 2)).astype(np.float32)
    weight[0, 0, 0] = np.inf
    pairs = oracle.kernel_map_oracle(coords, coords, offsets)
    with np.errstate(invalid="ignore"):
        ref = oracle.conv_from_pairs_oracle(feats, weight, pairs, 60)
    with np.errstate(invalid="ignore"):
        kmap = csc.build_kernel_map(backend.put(coords), backend.put(coords), offsets)
        out = backend.get(csc.conv_forward(backend.put(feats), backend.put(weight), kmap,
                                           algorithm=algorithm))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# 6 and 16. NaN propagates through max pooling, forward and backward
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[1.0, np.nan], [np.nan, 1.0], [np.nan, np.nan],
                                    [-np.inf, np.nan]])
def test_max_pool_propagates_nan_in_any_position(backend, values):
    coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 4, 4, 4]], dtype=np.int32)
    feats = np.array([values + [2.0]]).T.astype(np.float32)
    x = csc.SparseTensor(coords, feats)
    pooled = csc.sparse_pool(x, 2, 2, "max")
    assert np.isnan(pooled.feats[0, 0]) and pooled.feats[1, 0] == 2.0
    kmap = csc.layer_kernel_map(x, 2, 2)[0]
    grad = csc.pool_backward(np.ones((2, 1), np.float32), feats, kmap, "max")
    first_nan = int(np.flatnonzero(np.isnan(values))[0])
    expected = np.zeros((3, 1), np.float32)
    expected[first_nan], expected[2] = 1, 1          # the first NaN (kernel order) wins
    np.testing.assert_array_equal(grad, expected)
    ref = oracle.pool_backward_oracle(np.ones((2, 1)), coords, feats, csc.kernel_offsets(2), 2,
                                      pooled.coords, "max")
    np.testing.assert_array_equal(grad, ref)


def test_global_max_pool_propagates_nan_forward_and_backward(backend):
    coords = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 2, 0, 0]], np.int32)
    feats = np.array([[1.0, 0.0], [np.nan, 5.0], [3.0, 1.0], [np.nan, 2.0]])
    x = csc.SparseTensor(coords, feats)
    pooled = csc.global_pool(x, "max")
    ref_coords, ref = oracle.global_pool_oracle(coords, feats, "max")
    np.testing.assert_array_equal(pooled.coords, ref_coords)
    np.testing.assert_array_equal(pooled.feats, ref)              # NaN in item 0, channel 0
    grad = csc.global_pool_backward(np.array([[10.0, 20.0], [30.0, 40.0]]), x, "max")
    np.testing.assert_array_equal(grad, [[0, 0], [10, 20], [30, 40], [0, 0]])


# ---------------------------------------------------------------------------
# 7. integer overflow: every coordinate computation is bounded, on every backend
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dilation", [2**32, 2**15, (1, 1, 2**31)])
def test_kernel_offsets_beyond_int32_or_range_are_refused(dilation):
    with pytest.raises(ValueError, match="dilation"):
        csc.kernel_offsets(3, dilation)


def test_dilated_box_kernel_is_checked_like_explicit_offsets(rng, backend):
    x = small_tensor(rng)
    with pytest.raises(ValueError, match="offset"):
        csc.sparse_conv(x, np.ones((27, 3, 1)), 3, dilation=2**32)
    with pytest.raises(ValueError, match="offset"):
        csc.sparse_pool(x, 3, 1, dilation=2**32)


@pytest.mark.parametrize("stride", [2**62, 2**31, (1, 2**40, 1)])
def test_huge_stride_is_refused_the_same_way_on_every_backend(rng, backend, stride):
    x = small_tensor(rng)
    out = np.array([[0, 0, 0, 1], [0, 1, 1, 1]], dtype=np.int32)
    with pytest.raises(ValueError, match=r"stride must be <= 2147483647"):
        csc.sparse_conv(x, np.ones((27, 3, 1)), 3, stride=stride, out_coords=out)
    with pytest.raises(ValueError, match=r"stride must be <= 2147483647"):
        csc.build_kernel_map(x.coords, out, csc.kernel_offsets(3), stride=stride)


def test_largest_stride_gives_oracle_values(rng, backend):
    """stride 2**31 - 1 with coordinates 0 and 1: s * u stays exact in int64."""
    coords = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.int32)
    x = csc.SparseTensor(coords, np.array([[1.0], [2.0], [4.0]]))
    out = np.array([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=np.int32)
    y = csc.sparse_conv(x, np.ones((27, 1, 1)), 3, stride=2**31 - 1, out_coords=out)
    ref = oracle.conv_oracle(coords, x.feats, np.ones((27, 1, 1)), csc.kernel_offsets(3),
                             2**31 - 1, out)
    assert_close(y.feats, ref, 1e-12)


# ---------------------------------------------------------------------------
# 8. fork: a child process after the parent computed
# ---------------------------------------------------------------------------


def _child_conv(queue):
    rng = np.random.default_rng(1)
    coords = random_coords(rng, 3000, 3, 1, -20, 20)
    x = csc.SparseTensor(coords, rng.standard_normal((3000, 8)).astype(np.float32))
    y = csc.sparse_conv(x, np.ones((27, 8, 8), np.float32))
    queue.put(float(y.feats.sum()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_can_compute_after_the_parent_did():
    before = csc.get_num_threads()
    csc.set_num_threads(2)
    try:
        rng = np.random.default_rng(1)
        coords = random_coords(rng, 3000, 3, 1, -20, 20)
        x = csc.SparseTensor(coords, rng.standard_normal((3000, 8)).astype(np.float32))
        expected = float(csc.sparse_conv(x, np.ones((27, 8, 8), np.float32)).feats.sum())
        assert run_in_forked_child(
            _child_conv, "the forked child hung in its first convolution") == expected
    finally:
        csc.set_num_threads(before)


# ---------------------------------------------------------------------------
# 9. threads: set_num_threads while others compute; BLAS threads restored
# ---------------------------------------------------------------------------


def _blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    info = threadpoolctl.threadpool_info()
    return [entry["num_threads"] for entry in info if entry["user_api"] == "blas"]


def test_set_num_threads_while_other_threads_compute(rng):
    coords = random_coords(rng, 4000, 3, 1, -20, 20)
    feats = rng.standard_normal((4000, 16)).astype(np.float32)
    weight = rng.standard_normal((27, 16, 16)).astype(np.float32)
    expected = csc.sparse_conv(csc.SparseTensor(coords, feats), weight).feats
    blas_before = _blas_threads()
    before = csc.get_num_threads()
    errors, stop = [], threading.Event()

    def compute():
        try:
            while not stop.is_set():
                y = csc.sparse_conv(csc.SparseTensor(coords, feats), weight)
                if not np.array_equal(y.feats, expected):
                    errors.append("result changed")
        except Exception as error:
            errors.append(repr(error))

    workers = [threading.Thread(target=compute) for _ in range(3)]
    try:
        for worker in workers:
            worker.start()
        for count in [2, 1, 3, 2, 1, 2] * 3:
            csc.set_num_threads(count)
            stop.wait(0.02)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
        csc.set_num_threads(before)
    assert not errors, errors[:3]
    assert _blas_threads() == blas_before


def test_blas_thread_count_restored_after_overlapping_calls(rng):
    """Overlapping threadpoolctl contexts used to leave BLAS at one thread."""
    blas_before = _blas_threads()
    if not blas_before or max(blas_before) < 2:
        pytest.skip("BLAS runs one thread here: nothing to restore")
    _overlapping_calls(rng)
    assert _blas_threads() == blas_before


def _overlapping_calls(rng):
    """Four threads, each building maps and products on fresh tensors: their
    calls overlap in every order, including (A enters, B enters, A leaves, B
    leaves), after which the old per-call contexts left BLAS at one thread."""
    coords = random_coords(rng, 3000, 3, 1, -20, 20)
    feats = rng.standard_normal((3000, 8)).astype(np.float32)
    for _ in range(2):
        barrier = threading.Barrier(4)

        def compute():
            barrier.wait()
            for _ in range(5):
                csc.sparse_conv(csc.SparseTensor(coords, feats), np.ones((27, 8, 8), np.float32))

        threads = [threading.Thread(target=compute) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


# ---------------------------------------------------------------------------
# 15. generative output set: { u - K[k] }, every coordinate some input reaches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["2x2x2", "arbitrary"])
@pytest.mark.parametrize("stride", [1, 2])
def test_generative_outputs_are_the_reached_coordinates(rng, backend, kernel, stride):
    coords = random_coords(rng, 30, 3, 2, -4, 4)
    feats = random_feats(rng, 30, 2)
    if kernel == "2x2x2":
        offsets, kwargs = oracle.kernel_offsets_oracle(2), {"kernel_size": 2}
    else:
        offsets = np.array([[0, 0, 0], [2, -1, 0], [1, 1, 3]], dtype=np.int32)
        kwargs = {"offsets": offsets}
    weight = rng.standard_normal((len(offsets), 2, 3))
    y = csc.sparse_conv(csc.SparseTensor(coords, feats), weight, stride=stride,
                        generative=True, **kwargs)
    out_ref = oracle.generative_coords_oracle(coords, offsets, stride)
    ref = oracle.conv_oracle(coords, feats, weight, offsets, stride, out_ref)
    assert_same_rows(y.coords, y.feats, out_ref, ref, 1e-10)
    if stride == 1:  # every output row has a contribution
        kmap = csc.layer_kernel_map(csc.SparseTensor(coords, feats), generative=True,
                                    **kwargs)[0]
        assert len(np.unique(kmap.out_rows)) == kmap.n_out


def test_generative_point_with_even_kernel():
    """One point, 2x2x2: outputs u - {0,1}^3, each reading the point once."""
    x = csc.SparseTensor(np.array([[0, 5, 5, 5]], np.int32), np.ones((1, 1)))
    y = csc.sparse_conv(x, np.ones((8, 1, 1)), kernel_size=2, generative=True)
    assert sorted(map(tuple, y.coords.tolist())) == [
        (0, a, b, c) for a in (4, 5) for b in (4, 5) for c in (4, 5)]
    np.testing.assert_array_equal(y.feats, np.ones((8, 1)))
