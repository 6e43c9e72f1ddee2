"""Loaders for real point clouds that ship inside registry packages.

Nothing is downloaded at run time: each loader reads a file installed by a
Python package and raises a clear error naming the package when it is absent.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

#: Calibration of the 4x down-sampled Middlebury 2014 "Motorcycle" pair as
#: shipped by scikit-image (see ``skimage.data.stereo_motorcycle``).
MOTORCYCLE_CALIBRATION = {
    "focal_px": 994.978,
    "principal_x": 311.193,
    "principal_y": 254.877,
    "principal_dx": 31.086,
    "baseline_mm": 193.001,
}


def _package_file(package: str, relative: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"this data set ships with the '{package}' package, which is not installed; "
            f"run: pip install {install_hint}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, relative)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{relative} not found in the installed '{package}' package")


def load_motorcycle(with_colors: bool = True):
    """The Middlebury "Motorcycle" scan: a structured-light disparity map back-projected.

    The ground-truth disparity ``d`` (500 x 741 pixels) of scikit-image's
    ``motorcycle_disp.npz`` becomes depth ``Z = f * B / (d + dx)`` and points
    ``X = (u - cx) Z / f``, ``Y = (v - cy) Z / f``, in metres; pixels without a
    measurement (infinite disparity) are dropped, leaving about 343k points.

    Parameters
    ----------
    with_colors : bool
        Also read the left image (needs Pillow) for per-point RGB in [0, 1].

    Returns
    -------
    points : ndarray of float32, shape (N, 3)
        x right, y down, z forward from the left camera, metres.
    colors : ndarray of float32, shape (N, 3) or None
    """
    disparity_path = _package_file("skimage", os.path.join("data", "motorcycle_disp.npz"),
                                   "scikit-image")
    with np.load(disparity_path) as archive:
        disparity = archive[archive.files[0]].astype(np.float64)
    calib = MOTORCYCLE_CALIBRATION
    valid = np.isfinite(disparity) & (disparity > 0)
    rows, cols = np.nonzero(valid)
    depth = calib["focal_px"] * calib["baseline_mm"] / (disparity[valid] + calib["principal_dx"])
    x = (cols - calib["principal_x"]) * depth / calib["focal_px"]
    y = (rows - calib["principal_y"]) * depth / calib["focal_px"]
    points = (np.stack([x, y, depth], axis=1) / 1000.0).astype(np.float32)
    colors = None
    if with_colors:
        try:
            from PIL import Image
        except ImportError:
            raise ModuleNotFoundError(
                "reading the colours needs Pillow: pip install pillow "
                "(or call load_motorcycle(with_colors=False))") from None
        image_path = _package_file("skimage", os.path.join("data", "motorcycle_left.png"),
                                   "scikit-image")
        with Image.open(image_path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        colors = rgb[rows, cols]
    return points, colors
