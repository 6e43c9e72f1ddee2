"""Voxelize a real scan and train a small sparse encoder-decoder with the NumPy API only.

Data: the Middlebury "Motorcycle" structured-light scan shipped with
scikit-image (about 343k points with colour), back-projected to 3D.
Task: predict each voxel's colour from its geometry (self-supervised), with a
U-Net-shaped network: 3x3x3 convolutions, a stride-2 downsampling, a
transposed convolution that restores the finer voxels from the coordinate
cache, and a skip connection. Forward and backward run through
``cusparseconv.conv_forward`` / ``conv_input_grad`` / ``conv_weight_grad``.

Run:  python examples/voxelize_and_convolve.py [--voxel-size 0.01] [--steps 5]
      python examples/voxelize_and_convolve.py --points scan.laz --voxel-size 0.1
      (any point file with per-point colour that cusparseconv.io.read_points reads:
      LAS/LAZ, PLY, PCD, NPY/NPZ)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import cusparseconv as csc
from cusparseconv.io import read_points
from real_scans import load_motorcycle  # examples/real_scans.py


class Conv:
    """One sparse convolution layer with its parameters and gradients."""

    def __init__(self, name, c_in, c_out, rng, **geometry):
        self.name, self.geometry = name, geometry
        kernel_volume = len(csc.kernel_offsets(geometry.get("kernel_size", 3), 1, 3))
        scale = np.sqrt(2.0 / (kernel_volume * c_in))
        self.weight = (rng.standard_normal((kernel_volume, c_in, c_out)) * scale).astype(
            np.float32)
        self.bias = np.zeros(c_out, dtype=np.float32)
        self.seconds = 0.0

    def forward(self, x: csc.SparseTensor) -> csc.SparseTensor:
        start = time.perf_counter()
        self.kmap, out_id, out_stride = csc.layer_kernel_map(x, **self.geometry)
        self.input = x
        feats = csc.conv_forward(x.feats, self.weight, self.kmap, bias=self.bias)
        self.seconds += time.perf_counter() - start
        return csc.SparseTensor._from_set(x.cache, out_id, feats, out_stride)

    def backward(self, grad_out):
        start = time.perf_counter()
        self.grad_weight = csc.conv_weight_grad(self.input.feats, grad_out, self.kmap)
        self.grad_bias = csc.conv_bias_grad(grad_out)
        grad_in = csc.conv_input_grad(grad_out, self.weight, self.kmap)
        self.seconds += time.perf_counter() - start
        return grad_in

    def step(self, learning_rate):
        self.weight -= learning_rate * self.grad_weight
        self.bias -= learning_rate * self.grad_bias


def relu(x):
    return x.replace_feats(np.maximum(x.feats, 0))


def coloured_points(path):
    """xyz relative to the cloud's minimum (float64) and RGB in [0, 1] (float32) of a
    point file; its colour attribute is scaled by the maximum of its integer type."""
    cloud = read_points(path)
    if "colour" not in cloud.attributes:
        raise SystemExit(f"{path}: no per-point colour (red/green/blue or rgb); this example "
                         f"learns to predict colour from geometry")
    colour = cloud.attributes["colour"]
    scale = np.iinfo(colour.dtype).max if colour.dtype.kind in "iu" else 1.0
    points = cloud.xyz - np.nanmin(cloud.xyz, axis=0)   # LiDAR tiles sit far from 0
    keep = np.isfinite(points).all(axis=1)
    return points[keep], (colour[keep] / scale).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel-size", type=float, default=0.01,
                        help="in the file's units: metres (default 0.01)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--points", default=None,
                        help="a point file with colours instead of the Motorcycle scan")
    args = parser.parse_args(argv)

    points, colors = (coloured_points(args.points) if args.points else load_motorcycle())
    start = time.perf_counter()
    coords, voxel_colors, point_to_voxel = csc.voxelize(points, args.voxel_size, feats=colors,
                                                        reduce="mean")
    voxelize_ms = (time.perf_counter() - start) * 1e3
    # Input features from geometry only: height and depth of the voxel centre, and a constant.
    centre = (coords[:, 1:] + 0.5) * args.voxel_size
    inputs = np.stack([centre[:, 1] - centre[:, 1].mean(), centre[:, 2] - centre[:, 2].mean(),
                       np.ones(len(coords))], axis=1).astype(np.float32)
    target = voxel_colors.astype(np.float32)
    print(f"scan: {len(points):,} points -> {len(coords):,} voxels of {args.voxel_size} m "
          f"({voxelize_ms:.0f} ms)")

    rng = np.random.default_rng(0)
    enc1 = Conv("enc1 3x3x3 3->16", 3, 16, rng)
    down = Conv("down 2x2x2/2 16->32", 16, 32, rng, kernel_size=2, stride=2)
    enc2 = Conv("enc2 3x3x3 32->32", 32, 32, rng)
    up = Conv("up T2x2x2/2 32->16", 32, 16, rng, kernel_size=2, stride=2, transposed=True)
    head = Conv("head 3x3x3 16->3", 16, 3, rng)
    layers = [enc1, down, enc2, up, head]

    x = csc.SparseTensor(coords, inputs)
    for step in range(args.steps):
        a1 = relu(enc1.forward(x))
        a2 = relu(enc2.forward(relu(down.forward(a1))))
        u = up.forward(a2)                       # finer coordinates found in the cache
        skip = u.replace_feats(u.feats + a1.feats)  # same rows, same order as a1
        pred = head.forward(relu(skip))
        error = pred.feats - target
        loss = float(np.mean(error ** 2))

        grad = 2.0 * error / error.size
        grad_skip = head.backward(grad) * (skip.feats > 0)
        grad = up.backward(grad_skip) * (a2.feats > 0)
        grad = enc2.backward(grad) * (enc2.input.feats > 0)
        grad = down.backward(grad) + grad_skip     # both branches meet at a1
        enc1.backward(grad * (a1.feats > 0))
        if step == 0:  # the first step also built the kernel maps; time the rest
            for layer in layers:
                layer.seconds = 0.0
        for layer in layers:
            layer.step(args.lr)
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}: colour MSE {loss:.5f}")

    print(f"\n{'layer':<22}{'in rows':>10}{'out rows':>10}{'pairs':>11}{'fwd+bwd ms':>11}")
    for layer in layers:
        kmap = layer.kmap
        print(f"{layer.name:<22}{kmap.n_in:>10,}{kmap.n_out:>10,}{kmap.n_pairs:>11,}"
              f"{layer.seconds / max(args.steps - 1, 1) * 1e3:>11.1f}")
    per_point = csc.devoxelize(pred.feats, point_to_voxel)
    print(f"\npredicted colours back on the {len(per_point):,} points: "
          f"mean abs error {np.abs(per_point - colors).mean():.4f}")


if __name__ == "__main__":
    main()
