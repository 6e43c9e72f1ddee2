"""The training examples run end to end on real data (``--quick``).

They need the frog tissue labels from the pyvista wheel; the wheel (2.7 MB)
is fetched by ``benchmarks/fetch_data.sh pyvista`` when absent, and the tests
skip only when the registry cannot be reached.
"""

import importlib.util
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
if EXAMPLES not in sys.path:  # the examples import their neighbour real_scans.py
    sys.path.insert(0, EXAMPLES)
import real_scans  # noqa: E402


def _example(name):
    path = os.path.join(ROOT, "examples", name + ".py")
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir():
    if not os.path.exists(os.path.join(real_scans.default_data_dir(), "pyvista", "frog_tissues.vti")):
        try:
            real_scans.fetch_data("pyvista")
        except (RuntimeError, FileNotFoundError) as exc:
            pytest.skip(f"could not fetch the pyvista wheel (registry unreachable?): {exc}")
    return real_scans.default_data_dir()


def test_train_segmentation_torch_quick(data_dir, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    out = tmp_path / "segmentation.png"
    result = _example("train_segmentation_torch").main(
        ["--quick", "--out", str(out), "--data-dir", data_dir])
    assert result["steps"] == 8
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["miou"] <= 1.0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_segmentation_scores_against_hand_count():
    pytest.importorskip("torch")
    example = _example("train_segmentation_torch")
    prediction = np.array([0, 0, 1, 1, 2, 2])
    target = np.array([0, 1, 1, 1, 2, 0])
    accuracy, miou, present = example.scores(prediction, target, 4)
    # IoU: class 0 1/3, class 1 2/3, class 2 1/2; class 3 absent
    assert accuracy == pytest.approx(4 / 6)
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3) and present == 3


def test_train_jax_quick(data_dir):
    pytest.importorskip("jax")
    result = _example("train_jax").main(["--quick", "--data-dir", data_dir])
    losses = result["losses"]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert 0.0 <= result["accuracy"] <= 1.0
