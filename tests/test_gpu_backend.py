"""The GPU backend's kernels against the oracle: under host emulation in CI, on a device
with the ``gpu`` marker.

Every kernel of raw_kernels/ runs here through the GPU backend's own code path
(kernel-map build, every algorithm of the three products, depthwise, pooling,
global pooling), for every dtype, with sizes that leave partial tiles and
partial warps, |K| > 32 (multi-word pair masks), and empty and one-point sets,
and is compared with the brute-force oracle of ``oracle.py`` (not with the CPU
backend). The public API of every regime runs on this backend in the oracle
suites (``test_conv_oracle.py`` and the others take conftest's ``backend``).
"""

import numpy as np
import pytest

import cusparseconv as csc
import oracle
from conftest import bfloat16, random_coords
from cusparseconv import tuning
from cusparseconv.coords import SortedKeys

#: These tests drive the GPU backend object itself: its two forms.
pytestmark = pytest.mark.backends("cuda-emulated", "cuda")


@pytest.fixture(autouse=True)
def emulation_schedule(monkeypatch, request):
    """Emulated launches run cooperatively (conftest's backend fixture) in a thread order
    that changes from test to test; test_threads_mode_sample keeps the OS-thread mode,
    where the threads of a block truly interleave."""
    import os
    if "CUSPARSECONV_EMULATOR_SCHEDULE" not in os.environ:
        orders = ("forward", "reverse", "shuffle")
        monkeypatch.setenv("CUSPARSECONV_EMULATOR_SCHEDULE",
                           orders[sum(map(ord, request.node.name)) % 3])


def coords_of(rng, n, ndim=3, span=7, batches=2):
    """``n`` unique random rows in [-span, span) (random order)."""
    return random_coords(rng, n, ndim, batches, -span, span)


def downsample(coords, stride):
    return oracle.downsample_coords_oracle(coords, stride)


def pairs_of(kmap, get):
    """Per-offset sets of (in_row, out_row) of a map, and the sorted-order check."""
    in_rows, out_rows = get(kmap.in_rows), get(kmap.out_rows)
    pairs = []
    for k in range(kmap.kernel_volume):
        sl = slice(int(kmap.pair_offsets[k]), int(kmap.pair_offsets[k + 1]))
        assert np.all(np.diff(out_rows[sl]) > 0), "pairs sorted by output row"
        pairs.append(set(zip(in_rows[sl].tolist(), out_rows[sl].tolist())))
    return pairs


def geometries(rng):
    """(name, in_coords, out_coords, offsets, stride, transposed, same_set)."""
    fine = coords_of(rng, 150)
    coarse = downsample(fine, 2)
    k3, k2 = csc.kernel_offsets(3), csc.kernel_offsets(2)
    generated = oracle.generative_coords_oracle(fine[:20], k3)
    yield "submanifold", fine, fine, k3, (1, 1, 1), False, True
    yield "strided", fine, coarse, k2, (2, 2, 2), False, False
    yield "strided-3", fine, coarse, k3, (2, 2, 2), False, False
    yield "transposed", coarse, fine, k2, (2, 2, 2), True, False
    yield "generative", fine[:20], generated, k3, (1, 1, 1), False, False
    yield "anisotropic", fine, downsample(fine, (1, 2, 3)), \
        csc.kernel_offsets((3, 2, 1)), (1, 2, 3), False, False
    yield "k125", fine, fine, csc.kernel_offsets(5), (1, 1, 1), False, True
    yield "empty-out", fine, np.zeros((0, 4), np.int32), k3, (1, 1, 1), False, False
    yield "one-point", fine[:1], fine[:1], k3, (1, 1, 1), False, True


@pytest.mark.parametrize("index", range(9))
def test_kernel_maps_match_the_oracle(backend, index):
    rng = np.random.default_rng(index)
    name, in_c, out_c, offsets, stride, transposed, same = list(geometries(rng))[index]
    kmap = backend.kmap(in_c, out_c, offsets, stride, transposed, same_set=same)
    expected = oracle.kernel_map_oracle(in_c, out_c, offsets, stride, transposed)
    assert pairs_of(kmap, backend.get) == expected, name
    reverse = csc.reverse_kernel_map(kmap)
    assert pairs_of(reverse, backend.get) == [{(o, i) for i, o in pairs} for pairs in expected]
    assert csc.reverse_kernel_map(reverse) is kmap
    mask, neighbour = (backend.get(a) for a in csc.pair_mask(kmap))
    n_out, kernel_volume = len(out_c), len(offsets)
    expected_neighbour = np.full((n_out, kernel_volume), -1, np.int32)
    expected_mask = np.zeros((n_out, -(-kernel_volume // 32)), np.uint32)
    for k, pairs in enumerate(expected):
        for i, o in pairs:
            expected_neighbour[o, k] = i
            expected_mask[o, k // 32] |= np.uint32(1 << (k % 32))
    assert np.array_equal(neighbour, expected_neighbour)
    assert np.array_equal(mask, expected_mask)


@pytest.mark.parametrize("ndim", [1, 2, 4])
@pytest.mark.parametrize("transposed", [False, True])
def test_kernel_maps_in_other_dimensions(backend, ndim, transposed):
    rng = np.random.default_rng(ndim)
    fine = coords_of(rng, 120 if ndim > 1 else 24, ndim=ndim, span=6)
    coarse = downsample(fine, 2)
    offsets = csc.kernel_offsets(3, 1, ndim)
    in_c, out_c = (coarse, fine) if transposed else (fine, coarse)
    kmap = backend.kmap(in_c, out_c, offsets, (2,) * ndim, transposed)
    assert pairs_of(kmap, backend.get) == oracle.kernel_map_oracle(in_c, out_c, offsets, 2,
                                                                   transposed)


def test_hash_lookup_and_duplicates(backend):
    rng = np.random.default_rng(3)
    coords = coords_of(rng, 300)
    keys = SortedKeys(backend.put(coords))
    queries = csc.coords.pack(np.concatenate([coords[::-1], coords[:5] + [0, 0, 0, 99]]))
    rows = backend.get(backend.backend.lookup(keys, backend.put(queries)))
    assert np.array_equal(rows[:len(coords)], np.arange(len(coords))[::-1])
    assert np.all(rows[len(coords):] == -1)


DTYPE_NAMES = ["float32", "float64", "float16", "bfloat16"]


def dtype_for(backend, name):
    dtype = bfloat16() if name == "bfloat16" else np.dtype(name)
    if not backend.supports(dtype):
        pytest.skip("this CuPy has no bfloat16 arrays (needs CuPy >= 14 and ml_dtypes)")
    return dtype


def tolerance(dtype):
    return {"float64": 1e-10, "float32": 1e-4}.get(np.dtype(dtype).name, 2e-2)


def assert_close(got, expected, dtype):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
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


def refused_by_tensor_cores(backend, algorithm, dtype_name, layout, product):
    """True (after checking the error) where the tensor-core algorithm must refuse the
    product: float64, float32 with TF32 off (the default), grouped layouts."""
    if algorithm != "tensor_core" or (dtype_name in ("float16", "bfloat16")
                                      and layout == "standard"):
        return False
    reason = {"float64": "not float64", "float32": "only as TF32"}.get(dtype_name,
                                                                       "take one group")
    kmap = backend.kmap(np.zeros((1, 4), np.int32), np.zeros((1, 4), np.int32),
                        csc.kernel_offsets(1), (1, 1, 1), False, same_set=True)
    dtype = dtype_for(backend, dtype_name)
    groups = 2 if layout == "grouped" else 1
    weight = np.ones((1, 2, 1, 1) if groups == 2 else (1, 2, 2), dtype)
    feats = backend.put(np.ones((1, 2), dtype))
    with pytest.raises(ValueError, match=reason):
        if product == "forward":
            backend.backend.conv_forward(feats, backend.put(weight), kmap, layout, 2,
                                         algorithm="tensor_core")
        else:
            backend.backend.conv_weight_grad(feats, feats, kmap, layout, weight.shape,
                                             algorithm="tensor_core")
    return True


@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
@pytest.mark.parametrize("algorithm", ["explicit", "explicit_sorted", "implicit", "mask",
                                       "tensor_core"])
@pytest.mark.parametrize("layout", ["standard", "grouped"])
def test_forward_and_input_grad_match_the_oracle(backend, dtype_name, algorithm, layout):
    dtype = dtype_for(backend, dtype_name)
    if refused_by_tensor_cores(backend, algorithm, dtype_name, layout, "forward"):
        return
    rng = np.random.default_rng(11)
    coords = coords_of(rng, 170)                      # 170 rows: partial 64- and 32-row tiles
    offsets = csc.kernel_offsets(3)
    c_in, c_out, groups = (20, 18, 2) if layout == "grouped" else (19, 70, 1)
    feats = rng.standard_normal((len(coords), c_in)).astype(dtype)
    weight = make_weight(rng, layout, 27, c_in, c_out, groups, dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    pairs = oracle.kernel_map_oracle(coords, coords, offsets)
    kmap = backend.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    expected = oracle.conv_from_pairs_oracle(feats, weight, pairs, len(coords), groups, bias)
    got = backend.backend.conv_forward(backend.put(feats), backend.put(weight), kmap, layout,
                                       c_out, bias=backend.put(bias), algorithm=algorithm)
    assert got.dtype == dtype
    assert_close(backend.get(got), expected, dtype)
    grad_out = rng.standard_normal((len(coords), c_out)).astype(dtype)
    expected_in = oracle.conv_input_grad_oracle(grad_out, weight, pairs, len(coords), groups)
    got_in = backend.backend.conv_input_grad(backend.put(grad_out), backend.put(weight), kmap,
                                             layout, c_in, algorithm=algorithm)
    assert got_in.dtype == dtype
    assert_close(backend.get(got_in), expected_in, dtype)


@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
@pytest.mark.parametrize("algorithm", ["explicit", "splitk", "tensor_core"])
@pytest.mark.parametrize("layout", ["standard", "grouped"])
def test_weight_grad_matches_the_oracle(backend, dtype_name, algorithm, layout):
    dtype = dtype_for(backend, dtype_name)
    if refused_by_tensor_cores(backend, algorithm, dtype_name, layout, "weight_grad"):
        return
    rng = np.random.default_rng(12)
    fine = coords_of(rng, 200)
    coarse = downsample(fine, 2)
    offsets = csc.kernel_offsets(3)
    c_in, c_out, groups = (12, 6, 3) if layout == "grouped" else (17, 66, 1)
    feats = rng.standard_normal((len(fine), c_in)).astype(dtype)
    grad_out = rng.standard_normal((len(coarse), c_out)).astype(dtype)
    shape = (27, c_in, c_out) if groups == 1 else (27, groups, c_in // groups, c_out // groups)
    pairs = oracle.kernel_map_oracle(fine, coarse, offsets, 2)
    kmap = backend.kmap(fine, coarse, offsets, (2, 2, 2), False)
    expected = oracle.conv_weight_grad_oracle(feats, grad_out, pairs, shape, groups)
    got = backend.backend.conv_weight_grad(backend.put(feats), backend.put(grad_out), kmap,
                                           layout, shape, algorithm=algorithm)
    assert got.shape == shape and got.dtype == dtype
    assert_close(backend.get(got), expected, dtype)


@pytest.mark.parametrize("dtype_name", DTYPE_NAMES)
def test_depthwise_matches_the_oracle(backend, dtype_name):
    dtype = dtype_for(backend, dtype_name)
    rng = np.random.default_rng(13)
    coords = coords_of(rng, 120)
    offsets = csc.kernel_offsets(3)
    channels = 37                                     # a partial 32-channel block
    feats = rng.standard_normal((len(coords), channels)).astype(dtype)
    weight = rng.standard_normal((27, channels)).astype(dtype)
    bias = rng.standard_normal(channels).astype(dtype)
    grad_out = rng.standard_normal((len(coords), channels)).astype(dtype)
    pairs = oracle.kernel_map_oracle(coords, coords, offsets)
    kmap = backend.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    run, put, get = backend.backend, backend.put, backend.get
    assert_close(get(run.conv_forward(put(feats), put(weight), kmap, "depthwise", channels,
                                      bias=put(bias))),
                 oracle.conv_from_pairs_oracle(feats, weight, pairs, len(coords), channels,
                                               bias), dtype)
    assert_close(get(run.conv_input_grad(put(grad_out), put(weight), kmap, "depthwise",
                                         channels)),
                 oracle.conv_input_grad_oracle(grad_out, weight, pairs, len(coords), channels),
                 dtype)
    assert_close(get(run.conv_weight_grad(put(feats), put(grad_out), kmap, "depthwise",
                                          (27, channels))),
                 oracle.conv_weight_grad_oracle(feats, grad_out, pairs, (27, channels),
                                                channels), dtype)


@pytest.mark.parametrize("kernel_size", [5, 7])
def test_multi_word_pair_masks(backend, kernel_size):
    # 125 and 343 offsets: 4 and 11 mask words per row
    rng = np.random.default_rng(kernel_size)
    coords = coords_of(rng, 90, span=4)
    offsets = csc.kernel_offsets(kernel_size)
    feats = rng.standard_normal((len(coords), 5)).astype(np.float32)
    weight = rng.standard_normal((len(offsets), 5, 3)).astype(np.float32)
    pairs = oracle.kernel_map_oracle(coords, coords, offsets)
    kmap = backend.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    expected = oracle.conv_from_pairs_oracle(feats, weight, pairs, len(coords))
    for algorithm in ("mask", "explicit_sorted"):
        got = backend.backend.conv_forward(backend.put(feats), backend.put(weight), kmap,
                                           "standard", 3, algorithm=algorithm)
        assert_close(backend.get(got), expected, np.float32)


@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64", "bfloat16"])
def test_pooling_matches_the_oracle(backend, mode, dtype_name):
    dtype = dtype_for(backend, dtype_name)
    rng = np.random.default_rng(14)
    fine = coords_of(rng, 160)
    coarse = downsample(fine, 2)
    offsets = csc.kernel_offsets(3)
    feats = rng.permutation(len(fine) * 6).reshape(len(fine), 6).astype(dtype)  # no ties
    grad_out = rng.standard_normal((len(coarse), 6)).astype(dtype)
    kmap = backend.kmap(fine, coarse, offsets, (2, 2, 2), False)
    run, put, get = backend.backend, backend.put, backend.get
    assert_close(get(run.pool_forward(put(feats), kmap, mode)),
                 oracle.pool_oracle(fine, feats, offsets, 2, coarse, mode), dtype)
    assert_close(get(run.pool_backward(put(grad_out), put(feats), kmap, mode)),
                 oracle.pool_backward_oracle(grad_out, fine, feats, offsets, 2, coarse, mode),
                 dtype)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_segment_reduce_matches_a_per_segment_loop(backend, mode):
    rng = np.random.default_rng(15)
    feats = rng.standard_normal((50, 7)).astype(np.float32)
    segments = rng.integers(0, 4, size=50)
    reduce = {"sum": np.sum, "mean": np.mean, "max": np.max}[mode]
    expected = np.stack([reduce(feats[segments == s].astype(np.float64), axis=0)
                         for s in range(4)])
    got = backend.backend.segment_reduce(backend.put(feats), backend.put(segments), 4, mode)
    assert_close(backend.get(got), expected, np.float32)


def test_empty_inputs(backend):
    empty = np.zeros((0, 4), np.int32)
    offsets = csc.kernel_offsets(3)
    kmap = backend.kmap(empty, empty, offsets, (1, 1, 1), False, same_set=True)
    assert kmap.n_pairs == 0
    out = backend.backend.conv_forward(backend.put(np.zeros((0, 3), np.float32)),
                                       backend.put(np.ones((27, 3, 2), np.float32)), kmap,
                                       "standard", 2)
    assert out.shape == (0, 2)
    one = np.array([[0, 1, 1, 1]], np.int32)
    kmap = backend.kmap(one, empty, offsets, (1, 1, 1), False)
    grad = backend.backend.conv_input_grad(backend.put(np.zeros((0, 2), np.float32)),
                                           backend.put(np.ones((27, 3, 2), np.float32)), kmap,
                                           "standard", 3)
    assert backend.get(grad).tolist() == [[0.0, 0.0, 0.0]]


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


@pytest.mark.backends("cuda-emulated")
@pytest.mark.parametrize("algorithm", ["explicit", "implicit", "mask"])
def test_threads_mode_sample(backend, monkeypatch, algorithm):
    """A sample of every product kernel with OS threads per block (real interleaving)."""
    monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "threads")
    rng = np.random.default_rng(21)
    coords = coords_of(rng, 80)
    offsets = csc.kernel_offsets(3)
    feats = rng.standard_normal((len(coords), 6)).astype(np.float32)
    weight = rng.standard_normal((27, 6, 5)).astype(np.float32)
    pairs = oracle.kernel_map_oracle(coords, coords, offsets)
    kmap = backend.kmap(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    got = backend.backend.conv_forward(feats, weight, kmap, "standard", 5, algorithm=algorithm)
    assert_close(got, oracle.conv_from_pairs_oracle(feats, weight, pairs, len(coords)),
                 np.float32)
    wgrad = "splitk" if algorithm == "implicit" else "explicit"
    got_w = backend.backend.conv_weight_grad(feats, got, kmap, "standard", (27, 6, 5),
                                             algorithm=wgrad)
    assert_close(got_w, oracle.conv_weight_grad_oracle(feats, got, pairs, (27, 6, 5)),
                 np.float32)
