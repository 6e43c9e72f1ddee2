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
