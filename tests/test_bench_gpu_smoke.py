"""The GPU benchmark script runs end to end under host emulation (its numbers mean nothing)."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_gpu_emulated_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "cooperative")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_gpu
    finally:
        sys.path.pop(0)
    out = tmp_path / "gpu.json"
    bench_gpu.main(["--emulate", "--channels", "8", "--dtypes", "float32", "--out", str(out),
                    "--no-chart"])
    result = json.loads(out.read_text())
    algorithms = {(r["product"], r["algorithm"]) for r in result["records"]}
    assert ("forward", "mask") in algorithms and ("weight_grad", "splitk") in algorithms
    assert all(r["max_relative_error"] < 1e-4 for r in result["records"])
    rates = result["meta"]["roofline"]
    assert rates["copy_gbps"] > 0 and rates["gemm_tflops"]["float32"] > 0
    assert all(r["floor_ms"] > 0 and r["ratio_to_floor"] == r["ms"] / r["floor_ms"]
               for r in result["records"])
    assert result["meta"]["device"] == "host-emulation"
