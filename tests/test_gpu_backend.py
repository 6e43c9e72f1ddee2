"""The GPU backend against the CPU backend: under host emulation in CI, on a device with `gpu`.

Every kernel of raw_kernels/ runs here through the GPU backend's own code path
(kernel-map build, every algorithm of the three products, depthwise, pooling,
global pooling), for every dtype, with sizes that leave partial tiles and
partial warps, |K| > 32 (multi-word pair masks), and empty and one-point sets.
"""

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv import tuning
from cusparseconv.backends import cpu, get_backend, use_backend
from cusparseconv.coords import SortedKeys

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


class Device:
    """A backend plus the copies to and from its memory."""

    def __init__(self, name):
        self.name = name
        if name == "cuda":
            cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
            try:
                if cupy.cuda.runtime.getDeviceCount() < 1:
                    pytest.skip("no CUDA device")
            except Exception as error:  # CUDARuntimeError without a driver
                pytest.skip(f"no CUDA device ({error.__class__.__name__})")
            self.put, self.get = cupy.asarray, cupy.asnumpy
        else:
            self.put = self.get = lambda array: array
        self.backend = get_backend(name)

    def supports(self, dtype):
        """CuPy carries bfloat16 only from v14 with ml_dtypes installed."""
        if self.name != "cuda" or np.dtype(dtype) != BF16:
            return True
        import cupy
        try:
            cupy.zeros(1, dtype=BF16)
        except Exception:
            return False
        return True

    def kmap(self, in_coords, out_coords, offsets, stride, transposed, same_set=False):
        in_dev = self.put(in_coords)
        out_dev = in_dev if same_set else self.put(out_coords)
        return self.backend.build_kernel_map(in_dev, out_dev, offsets, tuple(stride),
                                             transposed, same_set=same_set)


@pytest.fixture(params=["cuda-emulated", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    return Device(request.param)


@pytest.fixture(autouse=True)
def cooperative_emulation(monkeypatch, request):
    """Most emulated launches run cooperatively (fibers, deterministic, fast) in a
    thread order that changes from test to test; test_threads_mode_sample keeps the
    OS-thread mode, where the threads of a block truly interleave."""
    import os
    if "CUSPARSECONV_EMULATOR_MODE" not in os.environ:
        monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "cooperative")
        orders = ("forward", "reverse", "shuffle")
        monkeypatch.setenv("CUSPARSECONV_EMULATOR_SCHEDULE",
                           orders[sum(map(ord, request.node.name)) % 3])


def random_coords(rng, n, ndim=3, span=7, batches=2):
    coords = rng.integers(-span, span, size=(n, 1 + ndim))
    coords[:, 0] = rng.integers(0, batches, size=n)
    coords = np.unique(coords, axis=0).astype(np.int32)
    return coords[rng.permutation(len(coords))]


def cpu_kmap(in_coords, out_coords, offsets, stride, transposed):
    return cpu.build_kernel_map(in_coords, out_coords, offsets, tuple(stride), transposed,
                                same_set=in_coords is out_coords)


def geometries(rng):
    """(name, in_coords, out_coords, offsets, stride, transposed, same_set)."""
    fine = random_coords(rng, 150)
    coarse, _ = csc.coords.downsample(fine, (2, 2, 2))
    k3, k2 = csc.kernel_offsets(3), csc.kernel_offsets(2)
    generated, _ = csc.coords.expand(fine[:20], k3, (1, 1, 1))
    yield "submanifold", fine, fine, k3, (1, 1, 1), False, True
    yield "strided", fine, coarse, k2, (2, 2, 2), False, False
    yield "strided-3", fine, coarse, k3, (2, 2, 2), False, False
    yield "transposed", coarse, fine, k2, (2, 2, 2), True, False
    yield "generative", fine[:20], generated, k3, (1, 1, 1), False, False
    yield "anisotropic", fine, csc.coords.downsample(fine, (1, 2, 3))[0], \
        csc.kernel_offsets((3, 2, 1)), (1, 2, 3), False, False
    yield "k125", fine, fine, csc.kernel_offsets(5), (1, 1, 1), False, True
    yield "empty-out", fine, np.zeros((0, 4), np.int32), k3, (1, 1, 1), False, False
    yield "one-point", fine[:1], fine[:1], k3, (1, 1, 1), False, True


@pytest.mark.parametrize("index", range(9))
def test_kernel_maps_match_the_cpu(device, index):
    rng = np.random.default_rng(index)
    name, in_c, out_c, offsets, stride, transposed, same = list(geometries(rng))[index]
    expected = cpu_kmap(in_c, in_c if same else out_c, offsets, stride, transposed)
    got = device.kmap(in_c, out_c, offsets, stride, transposed, same_set=same)
    assert np.array_equal(got.pair_offsets, expected.pair_offsets), name
    assert np.array_equal(device.get(got.in_rows), expected.in_rows), name
    assert np.array_equal(device.get(got.out_rows), expected.out_rows), name
    reverse, expected_reverse = got.reverse(), expected.reverse()
    assert np.array_equal(device.get(reverse.in_rows), expected_reverse.in_rows)
    assert np.array_equal(device.get(reverse.out_rows), expected_reverse.out_rows)
    mask, neighbour = got.pair_mask()
    expected_mask, expected_neighbour = expected.pair_mask()
    assert np.array_equal(device.get(mask), expected_mask)
    assert np.array_equal(device.get(neighbour), expected_neighbour)


@pytest.mark.parametrize("ndim", [1, 2, 4])
@pytest.mark.parametrize("transposed", [False, True])
def test_kernel_maps_in_other_dimensions(device, ndim, transposed):
    rng = np.random.default_rng(ndim)
    fine = random_coords(rng, 120, ndim=ndim, span=6)
    coarse, _ = csc.coords.downsample(fine, (2,) * ndim)
    offsets = csc.kernel_offsets(3, 1, ndim)
    in_c, out_c = (coarse, fine) if transposed else (fine, coarse)
    expected = cpu_kmap(in_c, out_c, offsets, (2,) * ndim, transposed)
    got = device.kmap(in_c, out_c, offsets, (2,) * ndim, transposed)
    assert np.array_equal(got.pair_offsets, expected.pair_offsets)
    assert np.array_equal(device.get(got.in_rows), expected.in_rows)
    assert np.array_equal(device.get(got.out_rows), expected.out_rows)


def test_hash_lookup_and_duplicates(device):
    rng = np.random.default_rng(3)
    coords = random_coords(rng, 300)
    keys = SortedKeys(coords)
    queries = csc.coords.pack(np.concatenate([coords[::-1], coords[:5] + [0, 0, 0, 99]]))
    rows = device.get(device.backend.lookup(keys, device.put(queries)))
    assert np.array_equal(rows[:len(coords)], np.arange(len(coords))[::-1])
    assert np.all(rows[len(coords):] == -1)


DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]


def tolerance(dtype):
    return {"float64": 1e-10, "float32": 1e-4}.get(np.dtype(dtype).name, 2e-2)


def assert_close(got, expected, dtype):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance(dtype) * scale)


def make_weight(rng, layout, kernel_volume, c_in, c_out, groups, dtype):
    if layout == "standard":
        shape = (kernel_volume, c_in, c_out)
    elif layout == "grouped":
        shape = (kernel_volume, groups, c_in // groups, c_out // groups)
    else:
        shape = (kernel_volume, c_in)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("algorithm", ["explicit", "explicit_sorted", "implicit", "mask"])
@pytest.mark.parametrize("layout", ["standard", "grouped"])
def test_forward_and_input_grad_match_the_cpu(device, dtype, algorithm, layout):
    if not device.supports(dtype):
        pytest.skip("this CuPy has no bfloat16 arrays (needs CuPy >= 14 and ml_dtypes)")
    rng = np.random.default_rng(11)
    coords = random_coords(rng, 170)                  # 170 rows: partial 64- and 32-row tiles
    offsets = csc.kernel_offsets(3)
    c_in, c_out, groups = (20, 18, 2) if layout == "grouped" else (19, 70, 1)
    feats = rng.standard_normal((len(coords), c_in)).astype(dtype)
    weight = make_weight(rng, layout, 27, c_in, c_out, groups, dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    expected_map = cpu_kmap(coords, coords, offsets, (1, 1, 1), False)
    kmap = device.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    expected = cpu.conv_forward(feats, weight, expected_map, layout, c_out, bias=bias)
    got = device.backend.conv_forward(device.put(feats), device.put(weight), kmap, layout,
                                      c_out, bias=device.put(bias), algorithm=algorithm)
    assert got.dtype == dtype
    assert_close(device.get(got), expected, dtype)
    grad_out = rng.standard_normal((len(coords), c_out)).astype(dtype)
    expected_in = cpu.conv_input_grad(grad_out, weight, expected_map, layout, c_in)
    got_in = device.backend.conv_input_grad(device.put(grad_out), device.put(weight), kmap,
                                            layout, c_in, algorithm=algorithm)
    assert_close(device.get(got_in), expected_in, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("algorithm", ["explicit", "splitk"])
@pytest.mark.parametrize("layout", ["standard", "grouped"])
def test_weight_grad_matches_the_cpu(device, dtype, algorithm, layout):
    if not device.supports(dtype):
        pytest.skip("this CuPy has no bfloat16 arrays (needs CuPy >= 14 and ml_dtypes)")
    rng = np.random.default_rng(12)
    fine = random_coords(rng, 200)
    coarse, _ = csc.coords.downsample(fine, (2, 2, 2))
    offsets = csc.kernel_offsets(3)
    c_in, c_out, groups = (12, 6, 3) if layout == "grouped" else (17, 66, 1)
    feats = rng.standard_normal((len(fine), c_in)).astype(dtype)
    grad_out = rng.standard_normal((len(coarse), c_out)).astype(dtype)
    shape = (27, c_in, c_out) if groups == 1 else (27, groups, c_in // groups, c_out // groups)
    expected_map = cpu_kmap(fine, coarse, offsets, (2, 2, 2), False)
    kmap = device.kmap(fine, coarse, offsets, (2, 2, 2), False)
    expected = cpu.conv_weight_grad(feats, grad_out, expected_map, layout, shape)
    got = device.backend.conv_weight_grad(device.put(feats), device.put(grad_out), kmap, layout,
                                          shape, algorithm=algorithm)
    assert got.shape == shape and got.dtype == dtype
    assert_close(device.get(got), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_depthwise_matches_the_cpu(device, dtype):
    if not device.supports(dtype):
        pytest.skip("this CuPy has no bfloat16 arrays (needs CuPy >= 14 and ml_dtypes)")
    rng = np.random.default_rng(13)
    coords = random_coords(rng, 120)
    offsets = csc.kernel_offsets(3)
    channels = 37                                     # a partial 32-channel block
    feats = rng.standard_normal((len(coords), channels)).astype(dtype)
    weight = rng.standard_normal((27, channels)).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    grad_out = rng.standard_normal((len(coords), channels)).astype(dtype)
    expected_map = cpu_kmap(coords, coords, offsets, (1, 1, 1), False)
    kmap = device.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    backend = device.backend
    assert_close(device.get(backend.conv_forward(device.put(feats), device.put(weight), kmap,
                                                 "depthwise", channels, bias=device.put(bias))),
                 cpu.conv_forward(feats, weight, expected_map, "depthwise", channels, bias=bias),
                 dtype)
    assert_close(device.get(backend.conv_input_grad(device.put(grad_out), device.put(weight),
                                                    kmap, "depthwise", channels)),
                 cpu.conv_input_grad(grad_out, weight, expected_map, "depthwise", channels),
                 dtype)
    assert_close(device.get(backend.conv_weight_grad(device.put(feats), device.put(grad_out),
                                                     kmap, "depthwise", (27, channels))),
                 cpu.conv_weight_grad(feats, grad_out, expected_map, "depthwise",
                                      (27, channels)), dtype)


@pytest.mark.parametrize("kernel_size", [5, 7])
def test_multi_word_pair_masks(device, kernel_size):
    # 125 and 343 offsets: 4 and 11 mask words per row
    rng = np.random.default_rng(kernel_size)
    coords = random_coords(rng, 90, span=4)
    offsets = csc.kernel_offsets(kernel_size)
    feats = rng.standard_normal((len(coords), 5)).astype(np.float32)
    weight = rng.standard_normal((len(offsets), 5, 3)).astype(np.float32)
    expected_map = cpu_kmap(coords, coords, offsets, (1, 1, 1), False)
    kmap = device.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    expected = cpu.conv_forward(feats, weight, expected_map, "standard", 3)
    for algorithm in ("mask", "explicit_sorted"):
        got = device.backend.conv_forward(device.put(feats), device.put(weight), kmap,
                                          "standard", 3, algorithm=algorithm)
        assert_close(device.get(got), expected, np.float32)


@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float64), BF16],
                         ids=lambda d: d.name)
def test_pooling_matches_the_cpu(device, mode, dtype):
    if not device.supports(dtype):
        pytest.skip("this CuPy has no bfloat16 arrays (needs CuPy >= 14 and ml_dtypes)")
    rng = np.random.default_rng(14)
    fine = random_coords(rng, 160)
    coarse, _ = csc.coords.downsample(fine, (2, 2, 2))
    offsets = csc.kernel_offsets(3)
    feats = rng.permutation(len(fine) * 6).reshape(len(fine), 6).astype(dtype)  # no ties
    grad_out = rng.standard_normal((len(coarse), 6)).astype(dtype)
    expected_map = cpu_kmap(fine, coarse, offsets, (2, 2, 2), False)
    kmap = device.kmap(fine, coarse, offsets, (2, 2, 2), False)
    assert_close(device.get(device.backend.pool_forward(device.put(feats), kmap, mode)),
                 cpu.pool_forward(feats, expected_map, mode), dtype)
    assert_close(device.get(device.backend.pool_backward(device.put(grad_out), device.put(feats),
                                                         kmap, mode)),
                 cpu.pool_backward(grad_out, feats, expected_map, mode), dtype)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_segment_reduce_matches_the_cpu(device, mode):
    rng = np.random.default_rng(15)
    feats = rng.standard_normal((50, 7)).astype(np.float32)
    segments = rng.integers(0, 4, size=50)
    got = device.backend.segment_reduce(device.put(feats), device.put(segments), 4, mode)
    assert_close(device.get(got), cpu.segment_reduce(feats, segments, 4, mode), np.float32)


def test_empty_inputs(device):
    empty = np.zeros((0, 4), np.int32)
    offsets = csc.kernel_offsets(3)
    kmap = device.kmap(empty, empty, offsets, (1, 1, 1), False, same_set=True)
    assert kmap.n_pairs == 0
    out = device.backend.conv_forward(device.put(np.zeros((0, 3), np.float32)),
                                      device.put(np.ones((27, 3, 2), np.float32)), kmap,
                                      "standard", 2)
    assert out.shape == (0, 2)
    one = np.array([[0, 1, 1, 1]], np.int32)
    kmap = device.kmap(one, empty, offsets, (1, 1, 1), False)
    grad = device.backend.conv_input_grad(device.put(np.zeros((0, 2), np.float32)),
                                          device.put(np.ones((27, 3, 2), np.float32)), kmap,
                                          "standard", 3)
    assert device.get(grad).tolist() == [[0.0, 0.0, 0.0]]


@pytest.mark.parametrize("regime", ["submanifold", "strided", "transposed", "generative",
                                    "transposed-generative", "explicit"])
def test_public_api_runs_through_the_emulated_gpu_path(regime):
    rng = np.random.default_rng(16)
    coords = random_coords(rng, 120)
    feats = rng.standard_normal((len(coords), 4))
    kwargs = {"submanifold": {}, "strided": dict(kernel_size=2, stride=2),
              "transposed": dict(kernel_size=2, stride=2),
              "generative": dict(generative=True),
              "transposed-generative": dict(kernel_size=2, stride=2, transposed=True,
                                            generative=True),
              "explicit": dict(out_coords=coords[::3].copy())}[regime]
    kernel_volume = 8 if kwargs.get("kernel_size") == 2 else 27
    weight = rng.standard_normal((kernel_volume, 4, 3))

    def run():
        x = csc.SparseTensor(coords, feats)
        if regime == "transposed":
            x = csc.sparse_conv(x, np.ones((8, 4, 4)), kernel_size=2, stride=2)
        y = csc.sparse_conv(x, weight, **kwargs)
        kmap = csc.layer_kernel_map(x, **kwargs)[0]
        grad_in = csc.conv_input_grad(np.ones_like(y.feats), weight, kmap)
        return y.coords, y.feats, grad_in

    expected = run()
    with use_backend("cuda-emulated"):
        got = run()
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_tuner_measures_remembers_and_respects_determinism(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSPARSECONV_CACHE_DIR", str(tmp_path))
    tuning.clear_memory()
    calls = []

    def run(name):
        calls.append(name)

    bucket = tuning.shape_bucket("forward", 100, 100, 900, 8, 8, 27, "float32", "test")
    best = tuning.choose("forward", ["explicit", "implicit", "mask"], None, bucket, "implicit",
                         run, autotune=True, repeats=1)
    assert best in ("explicit", "implicit", "mask") and set(calls) == {"explicit", "implicit",
                                                                       "mask"}
    assert (tmp_path / "tuning.json").read_text().count(best) >= 1
    calls.clear()
    assert tuning.choose("forward", ["explicit", "implicit", "mask"], None, bucket, "implicit",
                         run, autotune=True) == best and not calls          # remembered
    tuning.set_deterministic(True)
    try:
        choice = tuning.choose("forward", ["explicit", "implicit", "mask"], None, bucket + "d",
                               "implicit", run, autotune=True, repeats=1)
        assert choice == "mask"
    finally:
        tuning.set_deterministic(False)
        tuning.clear_memory()
    monkeypatch.setenv("CUSPARSECONV_ALGORITHM", "forward=explicit,weight_grad=splitk")
    assert tuning.forced_algorithm("forward", None) == "explicit"
    assert tuning.forced_algorithm("weight_grad", None) == "splitk"
    assert tuning.forced_algorithm("input_grad", None) is None
    with pytest.raises(ValueError, match="algorithm"):
        tuning.forced_algorithm("forward", "cudnn")


@pytest.mark.parametrize("algorithm", ["explicit", "implicit", "mask"])
def test_threads_mode_sample(monkeypatch, algorithm):
    """A sample of every product kernel with OS threads per block (real interleaving)."""
    monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "threads")
    device = Device("cuda-emulated")
    rng = np.random.default_rng(21)
    coords = random_coords(rng, 80)
    offsets = csc.kernel_offsets(3)
    feats = rng.standard_normal((len(coords), 6)).astype(np.float32)
    weight = rng.standard_normal((27, 6, 5)).astype(np.float32)
    expected_map = cpu_kmap(coords, coords, offsets, (1, 1, 1), False)
    kmap = device.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    got = device.backend.conv_forward(feats, weight, kmap, "standard", 5, algorithm=algorithm)
    assert_close(got, cpu.conv_forward(feats, weight, expected_map, "standard", 5), np.float32)
    wgrad = "splitk" if algorithm == "implicit" else "explicit"
    got_w = device.backend.conv_weight_grad(feats, got, kmap, "standard", (27, 6, 5),
                                            algorithm=wgrad)
    assert_close(got_w, cpu.conv_weight_grad(feats, got, expected_map, "standard", (27, 6, 5)),
                 np.float32)
