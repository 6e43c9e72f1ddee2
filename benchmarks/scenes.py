"""Deterministic synthetic voxel scenes for the benchmarks.

Two kinds of workload, both returned as ``int32`` coordinate arrays of shape
(N, 4) holding ``[batch, x, y, z]`` rows that are unique, non-negative and
sorted lexicographically:

- :func:`surface_scene`: an indoor room scanned as a surface (floor, walls with
  a doorway and windows, a table, boxes and spheres), slightly rotated about
  the vertical axis so that walls are not aligned with the grid.  This is the
  ScanNet-like regime: a 2-D manifold in 3-D, about 9 neighbours per voxel for
  a 3x3x3 kernel.
- :func:`lidar_scene`: the rings of a spinning 64-beam LiDAR hitting a ground
  plane and a few boxes (cars, buildings), dense near the sensor and sparse far
  away (the KITTI / nuScenes regime).

The scene geometry is fixed by ``seed``; its scale (room size in voxels, voxel
size of the LiDAR grid) is tuned so that N is within about 1% of the requested
``n_voxels``.  Results are cached in ``benchmarks/data/*.npy``.
"""

import os

import numpy as np

__all__ = ["surface_scene", "lidar_scene", "DATA_DIR"]

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
_TOLERANCE = 0.01  # relative distance to n_voxels accepted by the scale search


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

def _voxelize(points, batch_index=0):
    """Unique voxels hit by ``points`` (M, 3) float, as (N, 4) int32 sorted rows."""
    voxels = np.floor(points).astype(np.int64)
    voxels -= voxels.min(axis=0)
    extent = voxels.max(axis=0) + 1
    keys = np.ravel_multi_index(voxels.T, extent)
    keys = np.unique(keys)  # sorted, so rows come out in lexicographic order
    xyz = np.stack(np.unravel_index(keys, extent), axis=1)
    coords = np.empty((len(xyz), 4), dtype=np.int32)
    coords[:, 0] = batch_index
    coords[:, 1:] = xyz
    return coords


def _grid(u_len, v_len, step):
    """(P, 2) sample positions covering [0, u_len) x [0, v_len) every ``step``."""
    u = np.arange(0.0, max(u_len, step), step)
    v = np.arange(0.0, max(v_len, step), step)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    return uu.ravel(), vv.ravel()


def _rect(origin, edge_u, edge_v, step, keep=None):
    """Points on the parallelogram origin + a*edge_u + b*edge_v, a, b in [0, 1).

    ``keep``: optional function (a, b) -> bool mask, to cut holes.
    """
    origin, edge_u, edge_v = (np.asarray(a, dtype=np.float64) for a in (origin, edge_u, edge_v))
    len_u, len_v = np.linalg.norm(edge_u), np.linalg.norm(edge_v)
    su, sv = _grid(len_u, len_v, step)
    a, b = su / max(len_u, 1e-9), sv / max(len_v, 1e-9)
    if keep is not None:
        mask = keep(a, b)
        a, b = a[mask], b[mask]
    return origin + a[:, None] * edge_u + b[:, None] * edge_v


def _box_surface(lo, hi, step, bottom=False):
    """Points on the faces of the axis-aligned box [lo, hi] (open at the bottom)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    dx, dy, dz = hi - lo
    ex, ey, ez = np.array([dx, 0, 0]), np.array([0, dy, 0]), np.array([0, 0, dz])
    faces = [
        _rect(lo, ex, ey, step) + ez,  # top
        _rect(lo, ex, ez, step), _rect(lo + ey, ex, ez, step),
        _rect(lo, ey, ez, step), _rect(lo + ex, ey, ez, step),
    ]
    if bottom:
        faces.append(_rect(lo, ex, ey, step))
    return np.concatenate(faces)


def _sphere_surface(centre, radius, step):
    """Points on a sphere, spaced about ``step`` apart."""
    n_lat = max(int(np.ceil(np.pi * radius / step)), 2)
    theta = (np.arange(n_lat) + 0.5) * (np.pi / n_lat)
    ring = np.maximum(np.ceil(2 * np.pi * radius * np.sin(theta) / step).astype(np.int64), 3)
    theta_rep = np.repeat(theta, ring)
    start = np.cumsum(ring) - ring
    phi = (np.arange(ring.sum()) - np.repeat(start, ring)) * np.repeat(2 * np.pi / ring, ring)
    sin_theta = np.sin(theta_rep)
    unit = np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), np.cos(theta_rep)], axis=1)
    return np.asarray(centre) + radius * unit


def _tune_scale(count_for_scale, n_target, scale, exponent):
    """Find ``scale`` with count_for_scale(scale) within _TOLERANCE of n_target.

    Assumes count ~ scale**exponent (secant steps on that model, then bisection
    as a safeguard).  Returns (scale, coords).
    """
    lo = hi = None
    best = None
    for _ in range(30):
        coords = count_for_scale(scale)
        n = len(coords)
        err = n / n_target - 1.0
        if best is None or abs(err) < abs(best[0]):
            best = (err, scale, coords)
        if abs(err) <= _TOLERANCE:
            break
        if n < n_target:
            lo = scale if lo is None else max(lo, scale)
        else:
            hi = scale if hi is None else min(hi, scale)
        new = scale * (n_target / n) ** (1.0 / exponent)
        if lo is not None and hi is not None and not lo < new < hi:
            new = 0.5 * (lo + hi)
        scale = new
    return best[1], best[2]


def _cached(name, build):
    path = os.path.join(DATA_DIR, name + ".npy")
    if os.path.exists(path):
        return np.load(path)
    coords = build()
    os.makedirs(DATA_DIR, exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp.npy"
    np.save(tmp, coords)
    os.replace(tmp, path)
    return coords


def _stack_batches(make_one, n_voxels, seed, batch_size):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    for b in range(batch_size):
        n_item = n_voxels // batch_size + (1 if b < n_voxels % batch_size else 0)
        coords = make_one(n_item, seed + b)
        coords[:, 0] = b
        parts.append(coords)
    return np.concatenate(parts)


# --------------------------------------------------------------------------- #
# indoor surface
# --------------------------------------------------------------------------- #

def _room_layout(seed):
    """Room geometry in units of the room length (x extent 1), from ``seed``."""
    rng = np.random.default_rng(seed)
    layout = {
        "size": np.array([1.0, rng.uniform(0.65, 0.85), rng.uniform(0.28, 0.34)]),
        "yaw": rng.uniform(0.12, 0.30),  # radians, rotation about z
        "spheres": [],
        "boxes": [],
    }
    lx, ly, lz = layout["size"]
    for _ in range(4):
        r = rng.uniform(0.03, 0.07)
        c = [rng.uniform(0.15, 0.85) * lx, rng.uniform(0.15, 0.85) * ly, r + rng.uniform(0, 0.08)]
        layout["spheres"].append((np.array(c), r))
    for _ in range(5):
        size = rng.uniform([0.05, 0.05, 0.04], [0.16, 0.14, 0.12])
        lo = [rng.uniform(0.05, 0.95 - size[0]) * lx, rng.uniform(0.05, 0.95 - size[1]) * ly, 0.0]
        layout["boxes"].append((np.array(lo), np.array(lo) + size))
    layout["table"] = np.array([rng.uniform(0.3, 0.5) * lx, rng.uniform(0.3, 0.5) * ly])
    return layout


def _room_points(layout, length, step):
    """Surface sample points of the room scaled to ``length`` voxels along x."""
    lx, ly, lz = layout["size"] * length
    parts = [_rect([0, 0, 0], [lx, 0, 0], [0, ly, 0], step)]  # floor

    # walls; the wall at y = 0 has a doorway, the one at x = lx two windows.
    def door(a, b):
        return ~((a > 0.40) & (a < 0.52) & (b < 0.70))

    def windows(a, b):
        in_band = (b > 0.35) & (b < 0.75)
        return ~(in_band & (((a > 0.15) & (a < 0.35)) | ((a > 0.60) & (a < 0.80))))

    parts.append(_rect([0, 0, 0], [lx, 0, 0], [0, 0, lz], step, keep=door))
    parts.append(_rect([0, ly, 0], [lx, 0, 0], [0, 0, lz], step))
    parts.append(_rect([0, 0, 0], [0, ly, 0], [0, 0, lz], step))
    parts.append(_rect([lx, 0, 0], [0, ly, 0], [0, 0, lz], step, keep=windows))
    # table: a top and four legs
    tx, ty = layout["table"] * length
    tw, td, th = 0.22 * length, 0.14 * length, 0.09 * length
    top = 0.012 * length
    parts.append(_box_surface([tx, ty, th], [tx + tw, ty + td, th + top], step, bottom=True))
    leg = 0.012 * length
    for cx in (tx, tx + tw - leg):
        for cy in (ty, ty + td - leg):
            parts.append(_box_surface([cx, cy, 0], [cx + leg, cy + leg, th], step))
    for lo, hi in layout["boxes"]:
        parts.append(_box_surface(lo * length, hi * length, step))
    for centre, radius in layout["spheres"]:
        parts.append(_sphere_surface(centre * length, radius * length, step))
    points = np.concatenate(parts)
    c, s = np.cos(layout["yaw"]), np.sin(layout["yaw"])
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return points @ rotation.T + 0.5  # +0.5: the floor sits inside voxel layer z = 0


def _surface_one(n_voxels, seed):
    layout = _room_layout(seed)
    step = 0.35  # sample spacing in voxels: < 1/2 so that no voxel is skipped

    def make(length):
        return _voxelize(_room_points(layout, length, step))

    # surface area grows as length**2; ~3.9 voxels per unit area for this layout
    _, coords = _tune_scale(make, n_voxels, scale=np.sqrt(n_voxels / 3.9), exponent=2.0)
    return coords


def surface_scene(n_voxels, seed=0, batch_size=1):
    """A room-like surface voxelized to about ``n_voxels`` voxels.

    Parameters
    ----------
    n_voxels : int
        Total number of voxels wanted over all batch items; the result is
        within about 1% of it.
    seed : int
        Fixes the room layout.  Batch item b uses the layout ``seed + b``.
    batch_size : int
        Number of scenes stacked along column 0.

    Returns
    -------
    coords : ndarray of int32, shape (N, 4)
        Unique ``[batch, x, y, z]`` rows, non-negative, sorted lexicographically.
    """
    name = f"surface-n{n_voxels}-s{seed}-b{batch_size}"
    return _cached(name, lambda: _stack_batches(_surface_one, n_voxels, seed, batch_size))


# --------------------------------------------------------------------------- #
# LiDAR sweep
# --------------------------------------------------------------------------- #

def _lidar_points(seed, n_azimuth, n_rings=64):
    """Hit points (M, 3) in metres of one sweep from a sensor at 1.8 m height."""
    rng = np.random.default_rng(seed)
    elevation = np.deg2rad(np.linspace(-24.9, 2.0, n_rings))
    azimuth = np.linspace(0.0, 2 * np.pi, n_azimuth, endpoint=False)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    direction = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)
    direction = direction.reshape(-1, 3)
    origin = np.array([0.0, 0.0, 1.8])
    max_range = 70.0

    # scene: cars and buildings as axis-aligned boxes, from the layout seed
    layout = np.random.default_rng(1000 + seed)
    boxes = []
    for _ in range(14):  # cars
        r, a = layout.uniform(5, 40), layout.uniform(0, 2 * np.pi)
        centre = np.array([r * np.cos(a), r * np.sin(a)])
        half = np.array([2.2, 0.9]) if layout.random() < 0.5 else np.array([0.9, 2.2])
        boxes.append((np.r_[centre - half, 0.0], np.r_[centre + half, 1.5]))
    for _ in range(6):  # buildings
        r, a = layout.uniform(18, 45), layout.uniform(0, 2 * np.pi)
        centre = np.array([r * np.cos(a), r * np.sin(a)])
        half = layout.uniform([4, 4], [10, 10])
        boxes.append((np.r_[centre - half, 0.0], np.r_[centre + half, layout.uniform(6, 15)]))
    lo = np.array([b[0] for b in boxes])  # (B, 3)
    hi = np.array([b[1] for b in boxes])

    # ray / ground plane
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(direction[:, 2] < 0, -origin[2] / direction[:, 2], np.inf)
        inv = 1.0 / direction  # (R, 3)
        t0 = (lo[None] - origin) * inv[:, None]  # (R, B, 3)
        t1 = (hi[None] - origin) * inv[:, None]
    t_near = np.nanmax(np.minimum(t0, t1), axis=2)
    t_far = np.nanmin(np.maximum(t0, t1), axis=2)
    hit = (t_near <= t_far) & (t_far > 0)
    t_box = np.where(hit, np.maximum(t_near, 0.0), np.inf).min(axis=1)
    t = np.minimum(t_ground, t_box)
    keep = t < max_range
    t = t[keep] + rng.normal(0.0, 0.02, keep.sum())  # range noise
    return origin + t[:, None] * direction[keep]


def _lidar_one(n_voxels, seed):
    # ~1.3 rays per wanted voxel; the voxel size is then tuned to hit n_voxels
    n_azimuth = max(int(1.3 * n_voxels / 64), 64)
    points = _lidar_points(seed, n_azimuth)
    if len(points) < n_voxels:
        points = _lidar_points(seed, int(n_azimuth * 1.2 * n_voxels / len(points)))

    def make(inv_voxel):
        return _voxelize(points * inv_voxel)

    # count grows with 1/voxel_size roughly linearly (dense near, sparse far)
    _, coords = _tune_scale(make, n_voxels, scale=10.0, exponent=1.0)
    return coords


def lidar_scene(n_voxels, seed=0, batch_size=1):
    """One 64-beam LiDAR sweep (ground, cars, buildings) voxelized to about ``n_voxels``.

    Parameters and return value as for :func:`surface_scene`.
    """
    name = f"lidar-n{n_voxels}-s{seed}-b{batch_size}"
    return _cached(name, lambda: _stack_batches(_lidar_one, n_voxels, seed, batch_size))


if __name__ == "__main__":  # quick look: sizes, timings, neighbour statistics
    import time

    for fn, n in ((surface_scene, 136_000), (surface_scene, 200_000), (lidar_scene, 136_000)):
        start = time.perf_counter()
        name = f"{fn.__name__.split('_')[0]}-n{n}-s0-b1"
        path = os.path.join(DATA_DIR, name + ".npy")
        if os.path.exists(path):
            os.remove(path)
        coords = fn(n)
        elapsed = time.perf_counter() - start
        print(f"{fn.__name__}({n}): N={len(coords)} ({len(coords) / n - 1:+.2%}) "
              f"extent={coords[:, 1:].max(axis=0) + 1} in {elapsed:.2f} s")
