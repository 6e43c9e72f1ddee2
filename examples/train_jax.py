"""The frog-tissue sparse U-Net of train_segmentation_torch.py, trained in JAX.

Data and task as in ``examples/train_segmentation_torch.py`` (pyvista's frog
tissue labels; occupancy and position in, tissue class out; a band of axial
slices held out), at 4x downsampling so that the whole training set is one
batch.  The network is the same family: 3x3x3 convolutions, stride-2
convolutions down, transposed convolutions back onto the finer voxels (found
in the coordinate cache), skip connections, a linear head; it is written with
``cusparseconv.jax.sparse_conv`` and trained with ``jax.jit`` and
``jax.value_and_grad`` and a small Adam written here.  (No batch norm: He
initialisation and a bias per layer.)

Run:  python examples/train_jax.py [--steps 100]
      python examples/train_jax.py --quick      (3 steps, for tests)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jax
import jax.numpy as jnp

import cusparseconv as csc
import cusparseconv.jax as csj
import real_scans  # examples/real_scans.py

WIDTHS = (16, 32, 64, 128)


def load_voxels(factor, data_dir=None):
    try:
        coords, labels = real_scans.load_frog_tissues(data_dir)
    except FileNotFoundError:
        print("frog_tissues.vti not found: running benchmarks/fetch_data.sh pyvista")
        real_scans.fetch_data("pyvista", data_dir=data_dir)
        coords, labels = real_scans.load_frog_tissues(data_dir)
    voxels, voxel_labels, _ = csc.voxelize(coords.astype(np.float64), float(factor),
                                           feats=labels, reduce="mode")
    return voxels, voxel_labels.reshape(-1)


def init_params(key, c_in, n_classes):
    def conv(key, volume, a, b):
        return {"w": jax.random.normal(key, (volume, a, b)) * np.sqrt(2.0 / (volume * a)),
                "b": jnp.zeros(b)}

    keys = iter(jax.random.split(key, 4 * len(WIDTHS) + 2))
    params = {"stem": conv(next(keys), 27, c_in, WIDTHS[0]), "down": [], "enc": [], "up": [],
              "dec": []}
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:]):
        params["down"].append(conv(next(keys), 8, a, b))
        params["enc"].append(conv(next(keys), 27, b, b))
        params["up"].append(conv(next(keys), 8, b, a))
        params["dec"].append(conv(next(keys), 27, 2 * a, a))
    params["head"] = {"w": jax.random.normal(next(keys), (WIDTHS[0], n_classes))
                      * np.sqrt(1.0 / WIDTHS[0]), "b": jnp.zeros(n_classes)}
    return params


def forward(params, coords, feats, cache):
    """Logits (N, n_classes) on the rows of ``coords``; ``cache`` chains the layers."""
    def conv(layer, at, h, **geometry):
        return csj.sparse_conv(at, h, layer["w"], bias=layer["b"], cache=cache, **geometry)

    at, h = conv(params["stem"], coords, feats)
    h = jax.nn.relu(h)
    skips = []
    for down, enc in zip(params["down"], params["enc"]):
        skips.append((at, h))
        at, h = conv(down, at, h, kernel_size=2, stride=2)
        at, h = conv(enc, at, jax.nn.relu(h))
        h = jax.nn.relu(h)
    for up, dec, (skip_at, skip_h) in zip(params["up"][::-1], params["dec"][::-1], skips[::-1]):
        at, h = conv(up, at, h, kernel_size=2, stride=2, transposed=True)   # back on skip_at
        at, h = conv(dec, at, jnp.concatenate([jax.nn.relu(h), skip_h], axis=1))
        h = jax.nn.relu(h)
    return h @ params["head"]["w"] + params["head"]["b"]


def features(coords, extent):
    position = coords[:, 1:].astype(np.float32) / extent * 2 - 1
    return np.concatenate([np.ones((len(coords), 1), np.float32), position], axis=1)


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return {"m": zeros, "v": zeros, "t": 0}

    def update(grads, state, params):
        t = state["t"] + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        scale = learning_rate * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        params = jax.tree_util.tree_map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + eps),
                                        params, m, v)
        return params, {"m": m, "v": v, "t": t}

    return init, update


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    parser.add_argument("--quick", action="store_true", help="3 steps (a smoke test)")
    parser.add_argument("--data-dir", default=None, help="folder filled by fetch_data.sh")
    args = parser.parse_args(argv)
    steps = 3 if args.quick and args.steps == 100 else args.steps

    coords, labels = load_voxels(4, args.data_dir)
    classes, labels = np.unique(labels, return_inverse=True)
    n_classes = len(classes)
    extent = (coords[:, 1:].max(axis=0) + 1).astype(np.float32)
    z = coords[:, 3]
    z_lo, z_hi = np.percentile(z, [45, 58]).astype(int)
    held_out = (z >= z_lo) & (z < z_hi)
    train_coords, train_labels = coords[~held_out], labels[~held_out]
    test_coords, test_labels = coords[held_out], labels[held_out]
    print(f"frog tissues at 4x: {len(train_coords):,} training voxels, {len(test_coords):,} "
          f"held out (slices {z_lo}..{z_hi - 1}), {n_classes} classes")

    train_feats = jnp.asarray(features(train_coords, extent))
    train_target = jnp.asarray(train_labels)
    train_cache = csc.CoordinateCache()   # kernel maps of the training set, built while tracing
    opt_init, opt_update = adam(1e-2)

    def loss_fn(params, feats, target):
        logits = forward(params, train_coords, feats, train_cache)
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_p, target[:, None], axis=1))

    @jax.jit
    def train_step(params, state, feats, target):
        loss, grads = jax.value_and_grad(loss_fn)(params, feats, target)
        params, state = opt_update(grads, state, params)
        return loss, params, state

    params = init_params(jax.random.PRNGKey(0), 4, n_classes)
    state = opt_init(params)
    start = time.perf_counter()
    losses = []
    for step in range(steps):
        loss, params, state = train_step(params, state, train_feats, train_target)
        losses.append(float(loss))
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step:3d}: cross-entropy {float(loss):.3f}")
    seconds = time.perf_counter() - start

    test_cache = csc.CoordinateCache()
    logits = forward(params, test_coords, jnp.asarray(features(test_coords, extent)), test_cache)
    prediction = np.asarray(jnp.argmax(logits, axis=1))
    accuracy = float(np.mean(prediction == test_labels))
    majority = np.mean(test_labels == np.bincount(train_labels).argmax())
    print(f"trained {steps} steps in {seconds:.0f} s (first step includes tracing); "
          f"held-out accuracy {accuracy:.3f} (most frequent class: {majority:.3f})")
    return {"losses": losses, "accuracy": accuracy, "steps": steps}


if __name__ == "__main__":
    main()
