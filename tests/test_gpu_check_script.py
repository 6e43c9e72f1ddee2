"""benchmarks/gpu_check.sh runs end to end on the emulated backend (GPU_CHECK_EMULATE=1).

The same steps as on a GPU machine, at small sizes: check, the kernel-map and
product tests, the sanitizer workload (compute-sanitizer itself is skipped
with a note), the benchmark with roofline figures, and the spconv step with a
stand-in tarball whose spconv cannot be imported (the reason must be recorded
and the step must still pass on our side). About a minute and a half.
"""

import io
import json
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def broken_spconv_tarball(path):
    """An xz tarball laid out like pack_spconv_for_gpu.sh's, whose spconv fails to import."""
    data = b"raise ImportError('stand-in spconv: built for CPython 3.12 and CUDA 12.6')\n"
    with tarfile.open(path, "w:xz") as tar:
        for name in ("spconv/__init__.py", "spconv/pytorch/__init__.py"):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_gpu_check_emulated_dry_run(tmp_path):
    out = tmp_path / "out"
    tarball = tmp_path / "spconv.tar.xz"
    broken_spconv_tarball(tarball)
    env = dict(os.environ, GPU_CHECK_EMULATE="1", OUT=str(out), PYTHON=sys.executable,
               SPCONV_TARBALL=str(tarball))
    run = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], env=env,
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    summary = {row["step"]: row for row in json.loads((out / "summary.json").read_text())}
    assert set(summary) == {"check", "tests-kernels", "sanitizer", "sanitizer-workload", "bench",
                            "spconv"}
    assert summary["sanitizer"]["status"] == "skipped"
    assert all(row["status"] == "ok" for name, row in summary.items() if name != "sanitizer")
    check = json.loads((out / "check.json").read_text())
    assert check["ok"] and check["convolutions"] and all(r["ok"] for r in check["compile"])
    assert "0 failed" in summary["tests-kernels"]["result"]
    bench = json.loads((out / "bench_gpu.json").read_text())
    assert all("ratio_to_floor" in r for r in bench["records"])
    spconv = json.loads((out / "spconv.json").read_text())
    assert any("stand-in spconv" in note for note in spconv["notes"])
    assert spconv["records"] and all(r["ours_error_vs_cpu_float64"] < 1e-4
                                     for r in spconv["records"])
    assert not list(out.glob("*peers-site*"))
    assert "step" in run.stdout.splitlines()[-10] or "all steps ok" in run.stdout
