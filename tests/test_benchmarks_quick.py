"""``python -m benchmarks.run --quick`` runs and writes its JSON, table and chart.

A smoke run of the benchmark suite (small synthetic scene, few repeats); it
checks the files and their structure, never the times.  spconv is used when
importable (or from benchmarks/.venv-peers); otherwise its columns must say
"not installed".
"""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out-dir",
                           str(out_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out_dir, proc.stdout


def test_quick_run_writes_json_and_table(quick_run):
    out_dir, stdout = quick_run
    (path,) = glob.glob(os.path.join(out_dir, "run-*-quick.json"))
    with open(path) as f:
        report = json.load(f)
    assert os.path.exists(path[:-5] + ".md")
    env = report["environment"]
    assert env["quick"] is True and env["machine"] in os.path.basename(path)
    results = report["results"]
    layers = {e["layer"] for e in results}
    assert {"subm3", "down2", "up2", "gen3"} <= layers
    for entry in results:
        for op in ("fwd", "fwdbwd") + (("map",) if entry["layer"] != "unet" else ()):
            assert entry["ours"][op]["median_s"] > 0, (entry["workload"], entry["layer"], op)
        if env["spconv"] is None:
            assert "not installed" in entry["spconv"]["skipped"] or \
                entry["spconv"]["skipped"] == "--no-spconv"
        else:
            assert entry["spconv"]["fwd"]["median_s"] > 0
        for peer, agreement in entry["agreement"].items():
            assert agreement["agree"], (entry["workload"], entry["layer"], peer, agreement)
    if env["torch"] is not None:
        assert "unet" in layers
        assert any("fwd" in e["dense"] for e in results)   # the small grid fits
    assert "# total" in stdout


def test_quick_run_writes_chart(quick_run):
    pytest.importorskip("matplotlib")
    out_dir, _ = quick_run
    (png,) = glob.glob(os.path.join(out_dir, "run-*-quick.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rows_index():
    import numpy as np
    sys.path.insert(0, ROOT)
    from benchmarks.run import rows_index
    reference = np.array([[0, 1, 2, 3], [0, 5, 5, 5], [1, 1, 2, 3]])
    query = np.array([[1, 1, 2, 3], [0, 9, 9, 9], [0, 1, 2, 3]])
    assert rows_index(reference, query).tolist() == [2, -1, 0]


def test_quick_run_rows_carry_occupancy_and_sgemm_fraction(quick_run):
    out_dir, _ = quick_run
    (path,) = glob.glob(os.path.join(out_dir, "run-*-quick.json"))
    with open(path) as f:
        report = json.load(f)
    assert report["environment"]["sgemm_gflops_start"] > 0
    for entry in report["results"]:
        if entry["layer"] == "unet":
            continue
        assert 0 < entry["occupancy"] <= 1
        assert entry["sgemm_gflops"] > 0
        assert set(entry["ours"]["sgemm_fraction"]) == {"fwd", "fwdbwd"}
        if entry["layer"] != "up2":
            assert entry["ours"]["mapfwd"]["median_s"] > 0


def test_targets_summary_of_the_quick_run(quick_run, tmp_path):
    from benchmarks import targets
    out_dir, _ = quick_run
    (path,) = glob.glob(os.path.join(out_dir, "run-*-quick.json"))
    summary = tmp_path / "summary.md"
    assert targets.main([path, "--before", path, "--out", str(summary)]) == 0
    text = summary.read_text()
    assert "## Layers" in text and "| motorcycle-2cm | suite | subm3 |" in text
    assert "strided forward <= 1.0 x spconv" in text


def test_load_generator_runs_and_stops():
    from benchmarks.load import busy
    with busy(1) as load:
        processes = list(load._processes)
        assert all(p.is_alive() for p in processes)
    report = load.report()
    assert report["procs"] == 1 and report["iterations_per_s_per_proc"] >= 0
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(ValueError, match="procs"):
        with busy(-1):
            pass
