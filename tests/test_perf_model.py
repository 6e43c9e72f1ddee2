"""The performance model of benchmarks/perf_model.py: floors and modelled kernel times.

Hand-computed figures for small cases, and the model run end to end on a small
map (kernel figures given, so no ptxas is needed). The model predicts; nothing
here times anything.
"""

import os
import sys

import numpy as np
import pytest

import cusparseconv as csc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import perf_model  # noqa: E402

sys.path.pop(0)


def test_product_work_and_floor():
    work = perf_model.product_work("forward", n_in=1000, n_out=500, n_pairs=8000,
                                   kernel_volume=27, c_in=64, c_out=32, itemsize=2)
    assert work["flops"] == 2 * 8000 * 64 * 32
    # features in once, weights once, result once, 4 bytes of map per pair
    assert work["min_bytes"] == 1000 * 64 * 2 + 27 * 64 * 32 * 2 + 500 * 32 * 2 + 4 * 8000
    grad = perf_model.product_work("weight_grad", 1000, 500, 8000, 27, 64, 32, 2)
    assert grad["min_bytes"] == 1000 * 64 * 2 + 500 * 32 * 2 + 27 * 64 * 32 * 2 + 4 * 8000
    # 1 GFLOP at 1 TFLOP/s is 1 ms; 1 GB at 1000 GB/s is 1 ms: the larger wins
    assert perf_model.floor_ms(1e9, 5e8, 1.0, 1000.0) == pytest.approx(1.0)
    assert perf_model.floor_ms(1e8, 2e9, 1.0, 1000.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="product must be"):
        perf_model.product_work("backward", 1, 1, 1, 1, 1, 1, 2)


def test_implicit_gemm_model_counts_the_executed_work_and_the_bytes():
    ceil = perf_model.H100_SXM
    shape = perf_model.KernelShape("k", 4)
    common = dict(n_rows=128 * 200, n_src=128 * 200, n_pairs=100_000, kernel_volume=27,
                  n_words=1, c_src=64, c_dst=64, itemsize=2, tile_rows=128, tile_cols=64)
    model = perf_model.implicit_gemm_model(ceil, shape, tile_steps=1600, **common)
    assert model["executed_flops"] == 2 * 1600 * 128 * 64 * 64
    assert model["executed_flops"] / model["useful_flops"] == pytest.approx(1600 * 128 / 1e5)
    gathered, weight_tiles = 100_000 * 64 * 2, 1600 * 64 * 64 * 2
    assert model["l2_bytes"] > gathered + weight_tiles
    assert model["tensor_ms"] == pytest.approx(
        model["executed_flops"] / (989.4 * 0.5 * 1e9))
    assert model["time_ms"] == max(model["tensor_ms"], model["l2_ms"], model["dram_ms"])
    assert model["blocks"] == 200
    # more offsets per tile (input row order): more executed work and more weight tiles
    raster = perf_model.implicit_gemm_model(ceil, shape, tile_steps=3200, ordered=False,
                                            **common)
    assert raster["time_ms"] > model["time_ms"]


def test_small_grids_are_stretched():
    ceil = perf_model.H100_SXM
    model = perf_model.implicit_gemm_model(
        ceil, perf_model.KernelShape("k", 4), n_rows=128 * 66, n_src=128 * 66, n_pairs=10_000,
        kernel_volume=27, n_words=1, c_src=64, c_dst=64, itemsize=2, tile_rows=128,
        tile_cols=64, tile_steps=500)
    worst = max(model["tensor_ms"], model["l2_ms"], model["dram_ms"])
    assert model["time_ms"] == pytest.approx(worst * 2)   # 66 blocks on 132 SMs


def test_predictions_on_a_small_map():
    rng = np.random.default_rng(0)
    coords = np.unique(np.hstack([np.zeros((3000, 1), int), rng.integers(0, 20, (3000, 3))]),
                       axis=0).astype(np.int32)
    shapes = {name: perf_model.KernelShape(name, 4) for name in (
        "tc_implicit_gemm<__half, 128, 64, 3, 1>", "tc_implicit_gemm<__half, 64, 64, 4, 1>",
        "tc_wgrad_partial<__half, 1>")}
    result = perf_model.predictions(coords, 64, shapes=shapes)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    assert result["pairs"] == kmap.n_pairs and result["voxels"] == len(coords)
    rows = {(r["device"], r["product"]): r for r in result["rows"]}
    assert len(rows) == 8
    for device in ("H100 SXM5", "H200 SXM"):
        forward = rows[device, "forward"]
        assert forward["model"]["time_ms"] >= forward["floor_ms"] > 0
        assert forward["model"]["executed_flops"] >= forward["model"]["useful_flops"]
        assert forward["raster"]["executed_flops"] >= forward["model"]["executed_flops"]
        assert rows[device, "kernel map"]["model"]["probes"] == len(coords) * 27
    assert rows["H200 SXM", "forward"]["floor_ms"] <= rows["H100 SXM5", "forward"]["floor_ms"]
    table = perf_model.markdown("small", result)
    assert "Predictions, not measurements" in table and table.count("\n| H") == 8
