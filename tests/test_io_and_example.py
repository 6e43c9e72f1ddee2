"""The Motorcycle loader and the main example, end to end (on the Motorcycle scan and
on a point file through cusparseconv.io.read_points)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import cusparseconv as csc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
pytest.importorskip("skimage", reason="scikit-image (test extra) ships the Motorcycle scan")
from real_scans import load_motorcycle  # noqa: E402  (examples/real_scans.py)


def test_motorcycle_back_projection():
    points, colors = load_motorcycle()
    assert points.shape == (343274, 3) and points.dtype == np.float32
    assert np.isfinite(points).all()
    # The scene sits 2 to 5 m in front of the camera and spans about 3 m across.
    assert 2.0 < points[:, 2].min() and points[:, 2].max() < 5.5
    assert 2.5 < np.ptp(points[:, 0]) < 4.0
    assert colors.shape == points.shape and 0 <= colors.min() and colors.max() <= 1
    plain, none = load_motorcycle(with_colors=False)
    assert none is None and np.array_equal(plain, points)


def test_motorcycle_voxelizes_to_a_surface():
    points, _ = load_motorcycle(with_colors=False)
    coords, _, point_to_voxel = csc.voxelize(points, 0.02)
    x = csc.SparseTensor(coords, np.ones((len(coords), 1), dtype=np.float32))
    kmap = csc.layer_kernel_map(x)[0]
    pairs_per_voxel = kmap.n_pairs / len(coords)
    assert 20_000 < len(coords) < 40_000
    assert 6 < pairs_per_voxel < 15  # a 2-D surface in 3-D: about 9 of 27 neighbours
    assert point_to_voxel.shape == (len(points),)


def test_main_example_runs_and_learns():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "voxelize_and_convolve.py"),
         "--voxel-size", "0.03", "--steps", "6"],
        capture_output=True, text=True, timeout=300, check=True)
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines()
              if line.startswith("step")]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert "up T2x2x2/2" in result.stdout


def test_main_example_on_a_point_file(tmp_path):
    """--points: a coloured PLY written by plyfile, read by cusparseconv.io.read_points;
    coordinates far from the origin, as in a LiDAR tile."""
    pytest.importorskip("plyfile")
    from point_files import ply_bytes

    rng = np.random.default_rng(7)
    direction = rng.normal(size=(6000, 3))
    points = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    table = np.empty(len(points), dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"),
                                         ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for column, axis in enumerate("xyz"):
        table[axis] = points[:, column] + 5e5
    for column, channel in enumerate(("red", "green", "blue")):
        table[channel] = ((points[:, column] + 1) * 127.5).astype(np.uint8)
    path = tmp_path / "sphere.ply"
    ply_bytes(path, table)
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "voxelize_and_convolve.py"), "--points",
         str(path), "--voxel-size", "0.1", "--steps", "6"],
        capture_output=True, text=True, timeout=300, check=True)
    assert "6,000 points ->" in result.stdout
    losses = [float(line.split()[-1]) for line in result.stdout.splitlines()
              if line.startswith("step")]
    assert len(losses) >= 2 and losses[-1] < losses[0]
