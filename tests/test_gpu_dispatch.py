"""Which algorithm and which kernels each GPU product runs by default (issue 13's wiring).

Two spies watch the emulated GPU backend through the public API: the tuner's
choice (``cusparseconv.tuning.choose``, wrapped: its candidates and its answer)
and every kernel the launcher is asked for (``Launcher.kernel``, wrapped), so a
default that silently reverts to the SIMT or WMMA kernels, drops the row order,
or stops offering the tile shapes and cuBLAS to the tuner fails here. Results
are compared with the pair-by-pair oracle of ``oracle.py`` in float64.

Inputs are small (60 to 90 rows, one or two tiles per launch) since the emulator
runs every thread of every block; channel counts take both copy paths of the
tensor-core kernels: 8 in / 16 out (16-byte copies) and 5 in / 3 out
(element-wise fallback).
"""

import numpy as np
import pytest

import cusparseconv as csc
import oracle
from conftest import random_coords
from cusparseconv import tuning
from cusparseconv.backends import _tensor_core
from cusparseconv.backends._launch import Launcher
from cusparseconv.backends.cuda import CudaBackend

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)

pytestmark = pytest.mark.backends("cuda-emulated")


class Spy:
    """The tuner's choices and the kernels asked for, while installed."""

    def __init__(self, monkeypatch, launcher):
        self.choices = []       # (product, candidates, choice)
        self.kernels = []
        original_choose = tuning.choose

        def choose(product, candidates, *args, **kwargs):
            choice = original_choose(product, candidates, *args, **kwargs)
            self.choices.append((product, list(candidates), choice))
            return choice

        original_kernel = launcher.kernel

        def kernel(filename, name):
            self.kernels.append(name)
            return original_kernel(filename, name)

        monkeypatch.setattr(tuning, "choose", choose)
        monkeypatch.setattr(launcher, "kernel", kernel)

    def chosen(self, product):
        return [choice for name, _, choice in self.choices if name == product]

    def ran(self, prefix):
        return [name for name in self.kernels if name.startswith(prefix)]


@pytest.fixture
def fresh_tuner(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSPARSECONV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CUSPARSECONV_ALGORITHM", raising=False)
    monkeypatch.delenv("CUPY_TF32", raising=False)
    tuning.clear_memory()
    yield
    tuning.clear_memory()
    tuning.set_allow_tf32(False)
    tuning.set_deterministic(False)


@pytest.fixture
def spy(backend, monkeypatch, fresh_tuner):
    return Spy(monkeypatch, backend.backend.launcher)


def layer(rng, dtype, c_in, c_out, n=70, stride=1):
    """(x, weight, grad_out, kmap, pairs): a submanifold (stride 1) or strided
    layer of random points."""
    coords = random_coords(rng, n, 3, 2, -4, 4)
    x = csc.SparseTensor(coords, rng.standard_normal((n, c_in)).astype(dtype))
    kmap = csc.layer_kernel_map(x, 3, stride)[0]
    out_coords = coords if stride == 1 else oracle.downsample_coords_oracle(coords, stride)
    pairs = oracle.kernel_map_oracle(coords, out_coords, csc.kernel_offsets(3), stride)
    weight = (rng.standard_normal((27, c_in, c_out)) / np.sqrt(27 * c_in)).astype(dtype)
    grad_out = rng.standard_normal((kmap.n_out, c_out)).astype(dtype)
    return x, weight, grad_out, kmap, pairs


def three_products(x, weight, grad_out, kmap):
    out = csc.conv_forward(x.feats, weight, kmap)
    grad_in = csc.conv_input_grad(grad_out, weight, kmap)
    grad_w = csc.conv_weight_grad(x.feats, grad_out, kmap)
    return out, grad_in, grad_w


def assert_matches_oracle(results, x, weight, grad_out, kmap, pairs, rtol):
    feats = np.asarray(x.feats).astype(np.float64)
    w64, g64 = weight.astype(np.float64), grad_out.astype(np.float64)
    expected = (oracle.conv_from_pairs_oracle(feats, w64, pairs, kmap.n_out),
                oracle.conv_input_grad_oracle(g64, w64, pairs, kmap.n_in),
                oracle.conv_weight_grad_oracle(feats, g64, pairs, weight.shape))
    for got, ref, what in zip(results, expected, ("forward", "input_grad", "weight_grad")):
        got = np.asarray(got).astype(np.float64)
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("c_in,c_out", [(8, 16), (5, 3)], ids=["16-byte", "scalar"])
def test_sixteen_bit_products_run_on_the_tensor_cores(backend, spy, dtype, c_in, c_out):
    rng = np.random.default_rng(c_in)
    case = layer(rng, dtype, c_in, c_out, stride=2 if c_in == 5 else 1)
    results = three_products(*case[:4])
    assert all(np.asarray(r).dtype == dtype for r in results)
    assert_matches_oracle(results, *case, rtol=3e-2)
    ctype = "__half" if dtype == F16 else "__nv_bfloat16"
    if c_in == 8:   # C_dst <= 32: the narrow tile, 16-byte copies
        shapes = {"forward": "m64n32s4", "input_grad": "m64n32s4"}
        kernels = {f"tc_implicit_gemm<{ctype}, 64, 32, 4, 1>", f"tc_wgrad_partial<{ctype}, 1>"}
    else:
        shapes = {"forward": "m64n64s3-scalar", "input_grad": "m64n64s3-scalar"}
        kernels = {f"tc_implicit_gemm<{ctype}, 64, 64, 3, 0>", f"tc_wgrad_partial<{ctype}, 0>"}
    for product, shape in shapes.items():
        assert spy.chosen(product) == [f"tensor_core:{shape}"], product
    assert spy.chosen("weight_grad") == ["tensor_core"]
    assert kernels <= set(spy.kernels)
    assert f"tc_wgrad_reduce<{ctype}>" in spy.kernels
    # nothing of the SIMT / WMMA / atomic products ran
    for old in ("mask_gemm", "implicit_gemm<", "wgrad_splitk", "scatter_add"):
        assert not spy.ran(old), (old, spy.kernels)


def test_tuner_candidates_are_the_tile_shapes_and_cublas(backend, spy):
    rng = np.random.default_rng(3)
    x, weight, grad_out, kmap, _ = layer(rng, F16, 8, 16, n=40)
    three_products(x, weight, grad_out, kmap)
    candidates = {product: names for product, names, _ in spy.choices}
    shapes = ["tensor_core:m64n32s4", "tensor_core:m128n64s3", "tensor_core:m64n64s4"]
    assert candidates["forward"] == shapes + ["explicit", "explicit_sorted"]
    assert candidates["input_grad"] == shapes + ["explicit", "explicit_sorted"]
    assert candidates["weight_grad"] == ["tensor_core", "explicit"]
    # forcing the algorithm leaves the shape to the tuner; forcing a shape runs it
    spy.choices.clear()
    csc.conv_forward(x.feats, weight, kmap, algorithm="tensor_core")
    assert spy.choices[-1][1] == shapes
    csc.conv_forward(x.feats, weight, kmap, algorithm="tensor_core:m64n64s4")
    assert spy.kernels[-1] == "tc_implicit_gemm<__half, 64, 64, 4, 1>"
    with pytest.raises(ValueError, match="tile shapes of this forward are"):
        csc.conv_forward(x.feats, weight, kmap, algorithm="tensor_core:m256n8s2")


def test_row_order_is_computed_once_per_map(backend, spy, monkeypatch):
    calls = []
    original = _tensor_core.row_order_by_mask

    def counting(launcher, mask):
        calls.append(mask.shape)
        return original(launcher, mask)

    monkeypatch.setattr(_tensor_core, "row_order_by_mask", counting)
    rng = np.random.default_rng(4)
    x, weight, grad_out, kmap, _ = layer(rng, F16, 8, 8, n=40, stride=2)
    for _ in range(2):
        csc.conv_forward(x.feats, weight, kmap)
        csc.conv_input_grad(grad_out, weight, kmap)
    # one order for the map (output rows) and one for its reverse (input rows)
    assert calls == [(kmap.n_out, 1), (kmap.n_in, 1)]


def test_float32_uses_tf32_tensor_cores_only_when_allowed(backend, spy, monkeypatch):
    rng = np.random.default_rng(5)
    case = layer(rng, np.float32, 8, 16, n=60)
    exact = three_products(*case[:4])
    assert spy.chosen("forward") == ["implicit"] and spy.chosen("weight_grad") == ["splitk"]
    assert not spy.ran("tc_")
    assert_matches_oracle(exact, *case, rtol=1e-5)
    for switch in ("config", "CUPY_TF32"):
        spy.choices.clear()
        if switch == "config":
            csc.config.set_allow_tf32(True)
        else:
            monkeypatch.setenv("CUPY_TF32", "1")
        assert tuning.tf32_allowed(np)
        tf32 = three_products(*case[:4])
        csc.config.set_allow_tf32(False)
        monkeypatch.delenv("CUPY_TF32", raising=False)
        assert spy.chosen("forward") == ["tensor_core:m64n32s4"], switch
        assert spy.chosen("weight_grad") == ["tensor_core"], switch
        assert {"tc_implicit_gemm<float, 64, 32, 4, 1>", "tc_wgrad_partial<float, 1>"} <= set(
            spy.kernels)
        # TF32's 10-bit mantissas: within 5e-3 of the oracle, and visibly not float32
        assert_matches_oracle(tf32, *case, rtol=5e-3)
        assert max(float(np.abs(a - b).max()) for a, b in zip(tf32, exact)) > 1e-5
    assert not tuning.tf32_allowed(np)
    # float64 never runs on the tensor cores, even with TF32 allowed
    csc.config.set_allow_tf32(True)
    spy.choices.clear()
    x, weight, grad_out, kmap = case[:4]
    csc.conv_forward(np.asarray(x.feats, np.float64), weight.astype(np.float64), kmap)
    assert spy.chosen("forward") == ["implicit"]
    with pytest.raises(ValueError, match="not float64"):
        csc.conv_forward(np.asarray(x.feats, np.float64), weight.astype(np.float64), kmap,
                         algorithm="tensor_core")


def test_grouped_and_pre_sm80_keep_the_older_kernels(backend, spy, monkeypatch):
    rng = np.random.default_rng(6)
    coords = random_coords(rng, 50, 3, 2, -4, 4)
    feats = rng.standard_normal((50, 8)).astype(F16)
    kmap = csc.layer_kernel_map(csc.SparseTensor(coords, feats))[0]
    grouped = rng.standard_normal((27, 2, 4, 4)).astype(F16)
    csc.conv_forward(feats, grouped, kmap, groups=2)
    assert spy.chosen("forward") == ["mask"]
    with pytest.raises(ValueError, match="take one group, got 2"):
        csc.conv_forward(feats, grouped, kmap, groups=2, algorithm="tensor_core")
    # a device older than sm_80: the WMMA mask GEMM for float16
    old = CudaBackend(Launcher(np, emulated=True, arch=75))
    old_kmap = old.build_kernel_map(coords, coords, csc.kernel_offsets(3), (1, 1, 1), False,
                                    same_set=True)
    spy_old = Spy(monkeypatch, old.launcher)
    old.conv_forward(feats, rng.standard_normal((27, 8, 8)).astype(F16), old_kmap,
                     "standard", 8)
    assert spy_old.chosen("forward") == ["mask"]
    assert spy_old.kernels == ["mask_gemm_wmma<__half>"]


def test_defaults_are_deterministic_and_bit_identical(backend, spy):
    """Two runs of the three products give the same bytes, and every algorithm the
    defaults chose is atomic-free."""
    rng = np.random.default_rng(7)
    case = layer(rng, BF16, 8, 16, n=60, stride=2)
    first = three_products(*case[:4])
    second = three_products(*case[:4])
    for a, b in zip(first, second):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for product, _, choice in spy.choices:
        assert tuning.algorithm_family(choice) in tuning.DETERMINISTIC[product], (product,
                                                                                  choice)
