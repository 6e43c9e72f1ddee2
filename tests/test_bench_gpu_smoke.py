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
    from cusparseconv import tuning

    out = tmp_path / "gpu.json"
    settings = tuning.is_autotune(), tuning.is_tf32_allowed()
    try:       # the script sets both for its process
        bench_gpu.main(["--emulate", "--channels", "8", "--dtypes", "float32", "--out",
                        str(out), "--no-chart", "--tf32"])
    finally:
        tuning.set_autotune(settings[0])
        tuning.set_allow_tf32(settings[1])
    result = json.loads(out.read_text())
    algorithms = {(r["product"], r["algorithm"]) for r in result["records"]}
    assert ("forward", "mask") in algorithms and ("weight_grad", "splitk") in algorithms
    # with --tf32 the defaults are the tensor cores; every tile shape is timed too
    assert {("forward", "default (tensor_core:m64n32s4)"), ("input_grad", "tensor_core:m64n64s4"),
            ("weight_grad", "default (tensor_core)")} <= algorithms
    for r in result["records"]:
        on_tensor_cores = "tensor_core" in r["algorithm"]
        assert r["max_relative_error"] < (5e-3 if on_tensor_cores else 1e-4), r
    rates = result["meta"]["roofline"]
    assert rates["copy_gbps"] > 0 and rates["gemm_tflops"]["float32"] > 0
    assert all(r["floor_ms"] > 0 and r["ratio_to_floor"] == r["ms"] / r["floor_ms"]
               for r in result["records"])
    # the floor: FLOPs over the GEMM rate or the fewest bytes over the copy bandwidth
    for r in result["records"]:
        assert r["floor_ms"] == max(r["flops"] / (rates["gemm_tflops"]["float32"] * 1e9),
                                    r["min_bytes"] / (rates["copy_gbps"] * 1e6))
    builds = {m["build"]: m for m in result["maps"]}
    assert set(builds) == {"backend build", "tiled build (_kmap_gpu)",
                           "device sort of the packed keys"}
    assert builds["tiled build (_kmap_gpu)"]["host_reads"] == 1
    assert all(m["ms"] > 0 and m["wall_ms"] > 0 for m in builds.values())
    assert result["meta"]["device"] == "host-emulation"
