"""Train a sparse U-Net (cusparseconv.torch) to segment the tissues of a frog.

Data: pyvista's ``frog_tissues.vti``, a 136 x 470 x 500 label volume with 29
tissue classes (about 1.15M labelled voxels), read from the pyvista wheel by
``real_scans.load_frog_tissues`` of ``examples/real_scans.py`` (``bash benchmarks/fetch_data.sh
pyvista`` installs it; this script runs that when the file is absent).

Task: the labelled voxels, downsampled 2x (about 144k voxels), are the sparse
input; each voxel's features are only its occupancy and its normalised
position, so the network has to recognise the tissues from the shape of the
body around each voxel.  A band of axial slices in the middle of the body is
held out; the network trains on random crops of the rest (two crops per
batch) and is evaluated on the held-out band: voxel accuracy and mean IoU over
the classes present there.  A picture of one held-out slice (labels next to
prediction) is written with matplotlib.

Run:  python examples/train_segmentation_torch.py [--steps 300] [--out frog_segmentation.png]
      python examples/train_segmentation_torch.py --quick      (a few steps, for tests)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import cusparseconv as csc
import cusparseconv.torch as cst
import real_scans  # examples/real_scans.py


def load_voxels(factor, data_dir=None):
    """Labelled voxels of the frog, downsampled ``factor`` times (label: the mode)."""
    try:
        coords, labels = real_scans.load_frog_tissues(data_dir)
    except FileNotFoundError:
        print("frog_tissues.vti not found: running benchmarks/fetch_data.sh pyvista")
        real_scans.fetch_data("pyvista", data_dir=data_dir)
        coords, labels = real_scans.load_frog_tissues(data_dir)
    voxels, voxel_labels, _ = csc.voxelize(coords.astype(np.float64), float(factor),
                                           feats=labels, reduce="mode")
    return voxels, voxel_labels.reshape(-1), len(coords)


class UNet(torch.nn.Module):
    """Three levels: 3x3x3 blocks, stride-2 convolutions down, transposed ones up, skips."""

    def __init__(self, c_in, n_classes, widths=(16, 32, 64, 128)):
        super().__init__()

        def block(a, b):
            return torch.nn.Sequential(cst.SparseConv3d(a, b, bias=False), cst.SparseBatchNorm(b),
                                       cst.SparseReLU())

        self.stem = block(c_in, widths[0])
        self.down = torch.nn.ModuleList()
        self.enc = torch.nn.ModuleList()
        self.up = torch.nn.ModuleList()
        self.dec = torch.nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.down.append(cst.SparseConv3d(a, b, kernel_size=2, stride=2))
            self.enc.append(block(b, b))
            self.up.append(cst.SparseConvTranspose3d(b, a, kernel_size=2, stride=2))
            self.dec.append(block(2 * a, a))
        self.head = cst.SparseLinear(widths[0], n_classes)

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for down, enc in zip(self.down, self.enc):
            skips.append(x)
            x = enc(down(x))
        for up, dec, skip in zip(reversed(self.up), reversed(self.dec), reversed(skips)):
            x = dec(cst.cat(up(x), skip))
        return self.head(x)


def features(coords, extent):
    """(N, 4): occupancy and the position normalised to [-1, 1] per axis."""
    position = coords[:, 1:].astype(np.float32) / extent * 2 - 1
    return np.concatenate([np.ones((len(coords), 1), np.float32), position], axis=1)


def random_crops(coords, labels, rng, n_crops, size):
    """``n_crops`` random boxes of ``size`` voxels, stacked along the batch column."""
    parts, part_labels = [], []
    for b in range(n_crops):
        centre = coords[rng.integers(len(coords)), 1:]
        low = centre - np.asarray(size) // 2
        inside = np.all((coords[:, 1:] >= low) & (coords[:, 1:] < low + size), axis=1)
        crop = coords[inside].copy()
        crop[:, 0] = b
        parts.append(crop)
        part_labels.append(labels[inside])
    return np.concatenate(parts), np.concatenate(part_labels)


def scores(prediction, target, n_classes):
    """Accuracy and mean IoU over the classes present in ``target`` or ``prediction``."""
    confusion = np.bincount(target * n_classes + prediction,
                            minlength=n_classes ** 2).reshape(n_classes, n_classes)
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = confusion.sum(1) > 0
    iou = intersection[present] / np.maximum(union[present], 1)
    return intersection.sum() / confusion.sum(), float(iou.mean()), int(present.sum())


def save_picture(path, coords, labels, prediction, z, n_classes, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    on_slice = coords[:, 3] == z
    xy = coords[on_slice, 1:3] - coords[:, 1:3].min(axis=0)
    shape = tuple(coords[:, 1:3].max(axis=0) - coords[:, 1:3].min(axis=0) + 1)
    colours = np.concatenate([plt.get_cmap("tab20").colors, plt.get_cmap("tab20b").colors])
    cmap = ListedColormap(colours[:n_classes])
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    for ax, values, name in ((axes[0], labels, "labels"), (axes[1], prediction, "prediction")):
        image = np.full(shape, np.nan)
        image[xy[:, 0], xy[:, 1]] = values[on_slice]
        ax.imshow(image.T, cmap=cmap, vmin=-0.5, vmax=n_classes - 0.5, interpolation="nearest",
                  origin="lower")
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--out", default="frog_segmentation.png",
                        help="PNG of a held-out slice: labels next to the prediction")
    parser.add_argument("--quick", action="store_true",
                        help="4x downsampling, small crops, 8 steps (a smoke test)")
    parser.add_argument("--data-dir", default=None, help="folder filled by fetch_data.sh")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = 8 if args.quick and args.steps == 300 else args.steps
    factor = 4 if args.quick else 2
    crop = np.array([64, 64, 32]) // (factor // 2)

    from tqdm import tqdm

    start = time.perf_counter()
    coords, labels, n_full = load_voxels(factor, args.data_dir)
    classes, labels = np.unique(labels, return_inverse=True)
    n_classes = len(classes)
    extent = (coords[:, 1:].max(axis=0) + 1).astype(np.float32)
    z = coords[:, 3]
    z_lo, z_hi = np.percentile(z, [45, 58]).astype(int)
    held_out = (z >= z_lo) & (z < z_hi)
    train_coords, train_labels = coords[~held_out], labels[~held_out]
    test_coords, test_labels = coords[held_out], labels[held_out]
    print(f"frog tissues: {n_full:,} labelled voxels -> {len(coords):,} voxels at {factor}x, "
          f"{n_classes} classes ({time.perf_counter() - start:.1f} s)")
    print(f"held out: axial slices {z_lo}..{z_hi - 1} ({len(test_coords):,} voxels); "
          f"training on crops of the other {len(train_coords):,}")

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = UNet(4, n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    start = time.perf_counter()
    progress = tqdm(range(steps), desc="training", unit="step", mininterval=1.0)
    for _ in progress:
        crop_coords, crop_labels = random_crops(train_coords, train_labels, rng, 2, crop)
        x = cst.SparseTensor(crop_coords, torch.from_numpy(features(crop_coords, extent)))
        logits = model(x).feats
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(crop_labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", voxels=len(crop_coords))
    train_seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        x = cst.SparseTensor(test_coords, torch.from_numpy(features(test_coords, extent)))
        prediction = model(x).feats.argmax(dim=1).numpy()
    accuracy, miou, n_present = scores(prediction, test_labels, n_classes)
    majority = np.bincount(train_labels).argmax()
    print(f"trained {steps} steps in {train_seconds:.0f} s "
          f"({1e3 * train_seconds / max(steps, 1):.0f} ms/step)")
    print(f"held-out voxels: accuracy {accuracy:.3f}, mIoU {miou:.3f} over {n_present} classes "
          f"(always predicting the most frequent class: accuracy "
          f"{np.mean(test_labels == majority):.3f})")
    slice_z = int(np.median(test_coords[:, 3]))
    save_picture(args.out, test_coords, test_labels, prediction, slice_z, n_classes,
                 f"frog tissues, held-out slice z={slice_z} ({factor}x): accuracy {accuracy:.3f},"
                 f" mIoU {miou:.3f}")
    print(f"wrote {args.out}")
    return {"accuracy": accuracy, "miou": miou, "steps": steps}


if __name__ == "__main__":
    main()
