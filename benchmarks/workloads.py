"""Voxel workloads of the benchmark suite: real scans and synthetic scenes.

Each workload is a :class:`Workload`: ``int32`` coordinates (N, 4) =
``[batch, x, y, z]``, unique, sorted, with every spatial coordinate >= 2 (so
that a generative 3x3x3 layer never reaches a negative coordinate, which
spconv's grid would clip), and a short description of where the voxels come
from.  Real scans come from ``examples/real_scans.py`` (installed by
``benchmarks/fetch_data.sh``; the Motorcycle scan ships with scikit-image);
a workload whose source is absent is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
for folder in (HERE, EXAMPLES):
    if folder not in sys.path:
        sys.path.insert(0, folder)
import real_scans  # noqa: E402  (examples/real_scans.py: the real-scan loaders)
import scenes  # noqa: E402  (benchmarks/scenes.py, also run as a script)


@dataclasses.dataclass
class Workload:
    name: str            # short key, e.g. "table-5mm"
    kind: str            # "indoor", "outdoor", "object", "volume", "synthetic"
    description: str
    coords: np.ndarray   # (N, 4) int32
    n_points: int | None = None
    voxel_size: float | None = None
    prepare_s: float = 0.0

    @property
    def n_voxels(self) -> int:
        return len(self.coords)


def _with_margin(xyz_voxels: np.ndarray) -> np.ndarray:
    """(N, 3) integer voxels -> (N, 4) int32 rows [0, x, y, z], unique, sorted, min 2."""
    xyz = np.unique(xyz_voxels.astype(np.int64), axis=0)
    xyz -= xyz.min(axis=0) - 2
    coords = np.zeros((len(xyz), 4), dtype=np.int32)
    coords[:, 1:] = xyz
    return coords


def _voxelize(points: np.ndarray, voxel_size: float) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return _with_margin(np.floor((points - points.min(axis=0)) / voxel_size))


def _scan(loader, voxel_size):
    def make():
        result = loader()
        points = result[0] if isinstance(result, tuple) else result
        return _voxelize(points, voxel_size), len(points)
    return make


def _frog(factor):
    def make():
        coords, _ = real_scans.load_frog_tissues()
        return _with_margin(coords // factor), len(coords)
    return make


def _motorcycle(voxel_size):
    def make():
        points, _ = real_scans.load_motorcycle(with_colors=False)
        return _voxelize(points, voxel_size), len(points)
    return make


def _loader(name):
    def load():
        return getattr(real_scans, name)()
    return load


# name -> (kind, description, voxel size in metres or None, factory)
REAL = {
    "motorcycle-1cm": ("indoor", "Middlebury Motorcycle (structured light, scikit-image), 1 cm",
                       0.01, _motorcycle(0.01)),
    "motorcycle-2cm": ("indoor", "Middlebury Motorcycle (structured light, scikit-image), 2 cm",
                       0.02, _motorcycle(0.02)),
    "table-5mm": ("indoor", "PCL table_scene_lms400 (indoor laser scan), 5 mm", 0.005,
                  _scan(_loader("load_table_scene"), 0.005)),
    "potree-10cm": ("outdoor", "Potree vol_total (airborne LiDAR), 10 cm", 0.10,
                    _scan(_loader("load_potree_vol_total"), 0.10)),
    "potree-5cm": ("outdoor", "Potree vol_total (airborne LiDAR), 5 cm", 0.05,
                   _scan(_loader("load_potree_vol_total"), 0.05)),
    "dragon-1mm": ("object", "Stanford dragon vertices (range-scan mesh), 1 mm", 0.001,
                   _scan(_loader("load_stanford_dragon"), 0.001)),
    "frog-2x": ("volume", "pyvista frog tissues, labelled voxels, 2x downsampled", None,
                _frog(2)),
    "frog-4x": ("volume", "pyvista frog tissues, labelled voxels, 4x downsampled", None,
                _frog(4)),
}


def real_workload(name: str) -> Workload:
    """Build a real-scan workload; raises FileNotFoundError/ModuleNotFoundError if absent."""
    import time
    kind, description, voxel_size, make = REAL[name]
    start = time.perf_counter()
    coords, n_points = make()
    return Workload(name, kind, description, coords, n_points, voxel_size,
                    time.perf_counter() - start)


def synthetic_workload(kind: str, n_voxels: int) -> Workload:
    """``kind`` "surface" (indoor room) or "lidar" (64-beam sweep) from scenes.py."""
    import time
    start = time.perf_counter()
    fn = scenes.surface_scene if kind == "surface" else scenes.lidar_scene
    raw = fn(n_voxels)
    coords = raw.copy()
    coords[:, 1:] += 2 - raw[:, 1:].min(axis=0)
    what = ("synthetic room surface" if kind == "surface" else "synthetic 64-beam LiDAR sweep")
    return Workload(f"{kind}-{n_voxels // 1000}k", "synthetic", f"{what}, ~{n_voxels} voxels",
                    coords, None, None, time.perf_counter() - start)
