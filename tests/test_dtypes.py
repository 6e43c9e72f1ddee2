"""16-bit features: float16 and bfloat16 (ml_dtypes) accumulate in float32."""

import numpy as np
import pytest

import cusparseconv as csc


def _scene(rng):
    coords = np.unique(rng.integers(0, 7, size=(200, 4)), axis=0).astype(np.int32)
    coords[:, 0] = 0
    return np.unique(coords, axis=0)



@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_16bit_products_keep_dtype_and_match_float64(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
        tolerance = 2e-2
    else:
        dtype, tolerance = np.dtype(np.float16), 3e-3
    rng = np.random.default_rng(0)
    coords = _scene(rng)
    feats = rng.standard_normal((len(coords), 8)).astype(dtype)
    weight = rng.standard_normal((27, 8, 4)).astype(dtype)
    x = csc.SparseTensor(coords, feats)
    kmap = csc.layer_kernel_map(x)[0]
    exact = csc.conv_forward(feats.astype(np.float64), weight.astype(np.float64), kmap)
    out = csc.conv_forward(feats, weight, kmap)
    assert out.dtype == dtype
    scale = np.abs(exact).max()
    assert np.abs(out.astype(np.float64) - exact).max() / scale < tolerance
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grad_in = csc.conv_input_grad(grad_out, weight, kmap)
    grad_w = csc.conv_weight_grad(feats, grad_out, kmap)
    assert grad_in.dtype == grad_w.dtype == dtype
    exact_in = csc.conv_input_grad(grad_out.astype(np.float64), weight.astype(np.float64), kmap)
    assert np.abs(grad_in.astype(np.float64) - exact_in).max() / np.abs(exact_in).max() < tolerance
    pooled = csc.sparse_pool(x, 2, 2, "avg")
    assert pooled.feats.dtype == dtype


def test_integer_and_complex_feats_are_refused():
    coords = np.array([[0, 0, 0, 0]], dtype=np.int32)
    for bad in (np.ones((1, 2), dtype=np.int64), np.ones((1, 2), dtype=np.complex128)):
        with pytest.raises(TypeError, match="feats"):
            csc.SparseTensor(coords, bad)
