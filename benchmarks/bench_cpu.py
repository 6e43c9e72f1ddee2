"""CPU benchmark: cusparseconv against spconv 2.x (CPU build), in one run.

For each workload (synthetic scene from ``scenes.py``) and each channel count
C, the same coordinates, features and weights go to both libraries.  Outputs
are checked to agree before anything is timed; each operation is then run
``--repeats`` times after a warm-up and the median is reported, with the
ratio ``spconv time / cusparseconv time`` (> 1: cusparseconv is faster).

Operations (3x3x3 = submanifold, stride 1; 2x2x2 = stride 2):

===============  ==========================================  ====================================
name             cusparseconv                                spconv
===============  ==========================================  ====================================
map3             build_kernel_map (3x3x3)                    ops.get_indice_pairs (subm)
fwd3             sparse_conv on a new SparseTensor           SubMConv3d on a new SparseConvTensor
fwd3_cached      conv_forward with a prebuilt map            SubMConv3d reusing its indice_key
fwdbwd3_cached   conv_forward + conv_input_grad              SubMConv3d forward + autograd
                 + conv_weight_grad, prebuilt map            backward, reusing its indice_key
down2            sparse_conv stride 2 (map included)         SparseConv3d(2, stride 2), new tensor
up2_cached       conv_forward, prebuilt transposed map       SparseInverseConv3d (reuses down2's
                                                             indice pairs)
up2              sparse_conv transposed, out_coords given    (no equivalent)
                 (map included)
===============  ==========================================  ====================================

Before timing, every operation is checked against spconv run with one torch
thread (max relative error, must be <= 1e-4).  Then a determinism check: each
library runs the same layer several times with ``--threads`` threads and is
compared bit for bit with itself and row by row with a 1-thread run (spconv's
CPU path returns wrong rows now and then with 2 torch threads; ours must be
bit-identical at any thread count).  Peak memory of map + forward + backward is
measured in a fresh child process per library.

Run ``benchmarks/setup_peers.sh`` once, then
``benchmarks/.venv-peers/bin/python benchmarks/bench_cpu.py``.
"""

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings

# No OMP_* or thread environment variable is set here (a user sets none): both
# libraries run as they do in a user's process; the environment's own settings
# are recorded in the JSON.
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import scenes  # noqa: E402

SCENES = {"surface": scenes.surface_scene, "lidar": scenes.lidar_scene}
AGREE_RTOL = 1e-4  # max |ours - spconv| / max |spconv| accepted (float32, sums of <= 27*64 terms)


# --------------------------------------------------------------------------- #
# libraries
# --------------------------------------------------------------------------- #

def load_ours():
    """The cusparseconv module, or (None, reason) while its API is incomplete."""
    try:
        csc = importlib.import_module("cusparseconv")
    except Exception as exc:  # noqa: BLE001 - report anything, keep benchmarking spconv
        return None, f"import cusparseconv failed: {type(exc).__name__}: {exc}"
    needed = ("SparseTensor", "sparse_conv", "kernel_offsets", "build_kernel_map", "conv_forward",
              "conv_input_grad", "conv_weight_grad", "set_num_threads")
    missing = [name for name in needed if not hasattr(csc, name)]
    if missing:
        where = getattr(csc, "__file__", None)
        return None, f"cusparseconv lacks {', '.join(missing)} (file {where})"
    return csc, None


def load_spconv():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch
            import spconv
            import spconv.pytorch as spt
    except Exception as exc:  # noqa: BLE001
        return None, f"import spconv failed: {type(exc).__name__}: {exc}"
    if not torch.cuda.is_available():
        # spconv 2.3.8's indice_conv_backward asks torch.cuda for the current
        # stream before taking its CPU branch (where the stream is unused), so
        # backward fails with a CPU-only torch.  Hand it a null stream instead.
        import spconv.pytorch.ops as spconv_ops
        spconv_ops.get_current_stream = lambda: 0
    return (torch, spt, spconv.__version__), None


def spec_offsets(kernel_size, ndim=3):
    """Kernel offsets as SPEC section 2 defines them (C order, centre (k-1)//2 or 0)."""
    centre = (kernel_size - 1) // 2 if kernel_size % 2 else 0
    axes = [np.arange(kernel_size) - centre] * ndim
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1).astype(np.int32)


# --------------------------------------------------------------------------- #
# spconv: weight layout and kernel order, found with impulses
# --------------------------------------------------------------------------- #

def spconv_kernel_order(torch, spt, kernel_size, stride):
    """Our offset index of every spconv kernel position (flattened in C order).

    One input voxel per input channel (voxel i carries e_i); for each spconv
    kernel position P only W[:, P, :] is non-zero, with W[0, P, i] = i + 1, so
    an output u reading voxel v through P holds v + 1; the offset of P in our
    convention is v - stride * u (SPEC section 3: y_u = sum x_{s u + K[k]} W[k]).
    """
    ours = spec_offsets(kernel_size)
    if stride == 1:
        block = spec_offsets(3) + 8
    else:
        block = spec_offsets(kernel_size) + stride * 4
    n_in = len(block)
    coords = np.concatenate([np.zeros((n_in, 1), np.int32), block.astype(np.int32)], axis=1)
    if stride == 1:
        layer = spt.SubMConv3d(n_in, 1, kernel_size, bias=False)
    else:
        layer = spt.SparseConv3d(n_in, 1, kernel_size, stride=stride, bias=False)
    shape = tuple(layer.weight.shape)
    if shape != (1,) + (kernel_size,) * 3 + (n_in,):
        raise RuntimeError(f"unexpected spconv weight layout {shape}: "
                           "expected (C_out, k, k, k, C_in)")
    order = np.empty(kernel_size ** 3, dtype=np.int64)
    # one torch thread: spconv 2.3.8's CPU submanifold layer gave a wrong row in 6 of 30
    # probes at 2 threads on this 27-voxel block (0 of 30 at 1 thread)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _probe_positions(torch, spt, layer, block, coords, n_in, stride, ours, order)
    finally:
        torch.set_num_threads(threads)
    if sorted(order) != list(range(kernel_size ** 3)):
        raise RuntimeError(f"spconv kernel order is not a permutation: {order}")
    return order


def _probe_positions(torch, spt, layer, block, coords, n_in, stride, ours, order):
    """Fill ``order``: the offset of each spconv kernel position, one position at a time."""
    kernel_size = layer.weight.shape[1]
    with torch.no_grad():
        for position in range(kernel_size ** 3):
            layer.weight.zero_()
            layer.weight.view(1, -1, n_in)[0, position] = torch.arange(1, n_in + 1,
                                                                       dtype=torch.float32)
            x = spt.SparseConvTensor(torch.eye(n_in), torch.from_numpy(coords), [32, 32, 32], 1)
            y = layer(x)
            values = y.features[:, 0].numpy()
            rows = np.nonzero(values)[0]
            found = set()
            for row in rows:
                v = block[int(round(values[row])) - 1]
                u = y.indices[row, 1:].numpy()
                found.add(tuple(v - stride * u))
            if len(found) != 1:
                raise RuntimeError(f"spconv kernel position {position}: offsets {found}")
            (offset,) = found
            order[position] = np.nonzero(np.all(ours == np.array(offset), axis=1))[0][0]


def to_spconv_weight(torch, weight, order):
    """(K, C_in, C_out) ours -> (C_out, k, k, k, C_in) spconv."""
    k = round(len(order) ** (1 / 3))
    w = weight[order].reshape(k, k, k, weight.shape[1], weight.shape[2])
    return torch.from_numpy(np.ascontiguousarray(w.transpose(4, 0, 1, 2, 3)))


def from_spconv_weight(weight, order):
    """(C_out, k, k, k, C_in) spconv -> (K, C_in, C_out) ours."""
    c_out, c_in = weight.shape[0], weight.shape[-1]
    per_position = weight.reshape(c_out, -1, c_in).transpose(1, 2, 0)
    ours = np.empty_like(per_position)
    ours[order] = per_position
    return ours


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

def sorted_rows(coords, feats):
    order = np.lexsort(np.asarray(coords).T[::-1])
    return np.asarray(coords)[order], np.asarray(feats)[order]


def compare(ours_coords, ours_feats, ref_coords, ref_feats):
    """Max relative error of ours against ref after matching rows by coordinate."""
    oc, of = sorted_rows(ours_coords, ours_feats)
    rc, rf = sorted_rows(ref_coords, ref_feats)
    if oc.shape != rc.shape or not np.array_equal(oc, rc):
        return {"coords_equal": False, "n_ours": len(oc), "n_ref": len(rc), "max_rel_err": None,
                "agree": False}
    return compare_arrays(of, rf)


def compare_arrays(ours, ref):
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(ours - ref).max()) / scale
    return {"coords_equal": True, "max_rel_err": err, "agree": bool(err <= AGREE_RTOL)}


def measure(fns, repeats, warmup):
    """Time each callable of ``fns`` (name -> fn), interleaved run by run.

    The runs of the two libraries alternate, so that slow phases of a shared
    or throttled machine hit both alike; the median is the reported time.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    gc.collect()
    gc.disable()  # arrays are freed by reference counting; no collector pauses in the runs
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                   "times_s": t} for name, t in times.items()}


def thread_environment():
    """The OMP_*, OPENBLAS_*, MKL_*, KMP_* and *_NUM_THREADS variables of this process
    (recorded, never set by the benchmarks)."""
    prefixes = ("OMP_", "OPENBLAS_", "MKL_", "KMP_", "GOMP_")
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(prefixes) or k.endswith("_NUM_THREADS")}


def spatial_shape(coords):
    # even extent, so that a 2x2x2 stride-2 spconv layer keeps every voxel
    return [int(e) for e in ((coords[:, 1:].max(axis=0) + 2) // 2 * 2)]


# --------------------------------------------------------------------------- #
# the two libraries, operation by operation
# --------------------------------------------------------------------------- #

class Ours:
    def __init__(self, csc, coords, feats, w3, w2, w2_up, grad_out):
        self.csc, self.coords, self.feats = csc, coords, feats
        self.w3, self.w2, self.w2_up, self.grad_out = w3, w2, w2_up, grad_out
        self.off3 = csc.kernel_offsets(3)
        self.off2 = csc.kernel_offsets(2)
        if not np.array_equal(np.asarray(self.off3), spec_offsets(3)) or \
                not np.array_equal(np.asarray(self.off2), spec_offsets(2)):
            raise RuntimeError("cusparseconv.kernel_offsets disagrees with SPEC section 2")
        self.kmap3 = self.map3()
        down = self.down2()
        self.down_coords = np.asarray(down.coords)
        self.down_feats = np.asarray(down.feats)
        self.kmap_up = csc.build_kernel_map(self.down_coords, coords, self.off2, stride=2,
                                            transposed=True)

    def map3(self):
        return self.csc.build_kernel_map(self.coords, self.coords, self.off3, stride=1)

    def fwd3(self):
        return self.csc.sparse_conv(self.csc.SparseTensor(self.coords, self.feats), self.w3,
                                    kernel_size=3)

    def fwd3_cached(self):
        return self.csc.conv_forward(self.feats, self.w3, self.kmap3)

    def fwdbwd3_cached(self):
        out = self.csc.conv_forward(self.feats, self.w3, self.kmap3)
        grad_in = self.csc.conv_input_grad(self.grad_out, self.w3, self.kmap3)
        grad_w = self.csc.conv_weight_grad(self.feats, self.grad_out, self.kmap3)
        return out, grad_in, grad_w

    def down2(self):
        return self.csc.sparse_conv(self.csc.SparseTensor(self.coords, self.feats), self.w2,
                                    kernel_size=2, stride=2)

    def up2_cached(self):
        return self.csc.conv_forward(self.down_feats, self.w2_up, self.kmap_up)

    def up2(self):
        x = self.csc.SparseTensor(self.down_coords, self.down_feats, stride=2)
        return self.csc.sparse_conv(x, self.w2_up, kernel_size=2, stride=2, transposed=True,
                                    out_coords=self.coords)


class Spconv:
    def __init__(self, libs, order3, order2, coords, feats, w3, w2, w2_up, grad_out):
        torch, spt, _ = libs
        self.torch, self.spt = torch, spt
        self.coords_np = coords
        self.indices = torch.from_numpy(coords)
        self.feats = torch.from_numpy(feats)
        self.grad_out = torch.from_numpy(grad_out)
        self.shape = spatial_shape(coords)
        self.batch_size = int(coords[:, 0].max()) + 1
        c_in, c_out = w3.shape[1], w3.shape[2]
        self.order3 = order3
        self.subm = spt.SubMConv3d(c_in, c_out, 3, bias=False, indice_key="subm3")
        self.down = spt.SparseConv3d(c_in, c_out, 2, stride=2, bias=False, indice_key="down2")
        self.up = spt.SparseInverseConv3d(c_out, c_in, 2, bias=False, indice_key="down2")
        with torch.no_grad():
            self.subm.weight.copy_(to_spconv_weight(torch, w3, order3))
            self.down.weight.copy_(to_spconv_weight(torch, w2, order2))
            self.up.weight.copy_(to_spconv_weight(torch, w2_up, order2))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the stored down2 output must be right (see determinism)
        try:
            with torch.no_grad():
                self.cached_in = self.subm(self.tensor())  # carries the subm3 indice pairs
                self.cached_in = self.cached_in.replace_feature(self.feats)
                self.down_out = self.down(self.tensor())  # carries the down2 indice pairs
        finally:
            torch.set_num_threads(threads)

    def tensor(self, feats=None):
        return self.spt.SparseConvTensor(self.feats if feats is None else feats, self.indices,
                                         self.shape, self.batch_size)

    def map3(self):
        ops = self.spt.ops
        return ops.get_indice_pairs(self.indices, self.batch_size, self.shape,
                                    self.spt.ConvAlgo.Native, [3] * 3, [1] * 3, [1] * 3, [1] * 3,
                                    [0] * 3, True, False)

    def fwd3(self):
        with self.torch.no_grad():
            return self.subm(self.tensor())

    def fwd3_cached(self):
        with self.torch.no_grad():
            return self.subm(self.cached_in)

    def fwdbwd3_cached(self):
        feats = self.feats.clone().requires_grad_(True)
        self.subm.weight.grad = None
        out = self.subm(self.cached_in.replace_feature(feats))
        out.features.backward(self.grad_out)
        return out.features.detach(), feats.grad, self.subm.weight.grad

    def down2(self):
        with self.torch.no_grad():
            return self.down(self.tensor())

    def up2_cached(self):
        with self.torch.no_grad():
            return self.up(self.down_out)


# --------------------------------------------------------------------------- #
# checks
# --------------------------------------------------------------------------- #

def check_agreement(ours, peer, order3):
    """Max relative errors of every operation, ours vs spconv (before timing).

    spconv runs with one torch thread here: with more, its CPU path returns
    wrong rows now and then (see :func:`determinism`), which would hide a
    layout or maths mismatch behind its own race.
    """
    torch = peer.torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checks = {}
        y_ours = ours.fwd3()
        y_peer = peer.fwd3()
        checks["fwd3"] = compare(y_ours.coords, y_ours.feats, y_peer.indices.numpy(),
                                 y_peer.features.numpy())
        checks["fwd3_same_rows"] = bool(np.array_equal(np.asarray(y_ours.coords), ours.coords))
        if not np.array_equal(peer.cached_in.indices.numpy(), ours.coords):
            raise RuntimeError("spconv submanifold output rows are not its input rows")
        checks["fwd3_cached"] = compare_arrays(ours.fwd3_cached(),
                                               peer.fwd3_cached().features.numpy())
        out, grad_in, grad_w = ours.fwdbwd3_cached()
        p_out, p_grad_in, p_grad_w = peer.fwdbwd3_cached()
        checks["fwdbwd3_cached.out"] = compare_arrays(out, p_out.numpy())
        checks["fwdbwd3_cached.grad_in"] = compare_arrays(grad_in, p_grad_in.numpy())
        checks["fwdbwd3_cached.grad_w"] = compare_arrays(
            grad_w, from_spconv_weight(p_grad_w.numpy(), order3))
        d_ours = ours.down2()
        d_peer = peer.down2()
        checks["down2"] = compare(d_ours.coords, d_ours.feats, d_peer.indices.numpy(),
                                  d_peer.features.numpy())
        u_peer = peer.up2_cached()
        checks["up2_cached"] = compare(ours.coords, ours.up2_cached(), u_peer.indices.numpy(),
                                       u_peer.features.numpy())
        u_ours = ours.up2()
        checks["up2"] = compare(u_ours.coords, u_ours.feats, u_peer.indices.numpy(),
                                u_peer.features.numpy())
    finally:
        torch.set_num_threads(threads)
    return checks


def _rows_off(values, reference):
    """Rows of ``values`` farther than AGREE_RTOL * max|reference| from ``reference``."""
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    tolerance = AGREE_RTOL * max(float(np.abs(reference).max()), 1e-30)
    return int((np.abs(values - reference).max(axis=1) > tolerance).sum())


def _repeat_runs(fn, runs):
    """``runs`` results of ``fn``; every other run starts after a 50 ms pause
    (a training loop does other work between layers; the pause changes how the
    worker threads are scheduled)."""
    results = []
    for run in range(runs):
        if run % 2:
            time.sleep(0.05)
        results.append(fn())
    return results


def determinism(ours, peer, threads, runs):
    """Bit-identity of repeated runs, and rows that differ from a 1-thread run.

    spconv: submanifold forward (new tensor each time) and input / weight
    gradients, ``runs`` times with ``threads`` torch threads, against the same
    operation run with one thread.  Ours: the same with 1 and ``threads``
    threads; every result must be bit-identical.
    """
    report = {}
    if peer is not None:
        torch = peer.torch

        def spconv_fwd():
            y = peer.fwd3()
            return y.indices.numpy().copy(), y.features.numpy().copy()

        def spconv_grads():
            _, grad_in, grad_w = peer.fwdbwd3_cached()
            return grad_in.numpy().copy(), grad_w.numpy().copy()

        def spconv_down():
            y = peer.down2()
            return y.indices.numpy().copy(), y.features.numpy().copy()

        torch.set_num_threads(1)
        ref_idx, ref_feat = spconv_fwd()
        ref_gin, ref_gw = spconv_grads()
        ref_down_idx, ref_down = spconv_down()
        torch.set_num_threads(threads)
        fwd = _repeat_runs(spconv_fwd, runs)
        grads = _repeat_runs(spconv_grads, runs)
        downs = _repeat_runs(spconv_down, runs)
        same_rows = all(np.array_equal(idx, ref_idx) for idx, _ in fwd)
        report["spconv"] = {
            "threads": threads, "runs": runs,
            "fwd3_bit_identical_runs": all(np.array_equal(f, fwd[0][1]) for _, f in fwd),
            "fwd3_rows_off_vs_1_thread": [_rows_off(f, ref_feat) for _, f in fwd]
            if same_rows else "output rows differ",
            "fwd3_max_rel_err_vs_1_thread": max(compare_arrays(f, ref_feat)["max_rel_err"]
                                                for _, f in fwd) if same_rows else None,
            "grad_in_bit_identical_runs": all(np.array_equal(g, grads[0][0]) for g, _ in grads),
            "grad_in_rows_off_vs_1_thread": [_rows_off(g, ref_gin) for g, _ in grads],
            "grad_w_bit_identical_runs": all(np.array_equal(w, grads[0][1]) for _, w in grads),
            "grad_w_max_rel_err_vs_1_thread": max(compare_arrays(w, ref_gw)["max_rel_err"]
                                                  for _, w in grads),
            "down2_rows_off_vs_1_thread": [_rows_off(f, ref_down) if np.array_equal(i, ref_down_idx)
                                           else "output rows differ" for i, f in downs],
        }
        if ours is not None:
            y_ours = np.asarray(ours.fwd3().feats)
            report["spconv"]["fwd3_rows_off_vs_ours"] = [_rows_off(f, y_ours) for _, f in fwd]
            report["spconv"]["fwd3_1_thread_rows_off_vs_ours"] = _rows_off(ref_feat, y_ours)
    if ours is not None:
        csc = ours.csc

        def ours_all():
            y = ours.fwd3()
            _, grad_in, grad_w = ours.fwdbwd3_cached()
            return (np.asarray(y.coords).copy(), np.asarray(y.feats).copy(),
                    np.asarray(grad_in).copy(), np.asarray(grad_w).copy())

        results = []
        for n in sorted({1, threads}):
            csc.set_num_threads(n)
            results += _repeat_runs(ours_all, runs if n == threads else 2)
        csc.set_num_threads(threads)
        ref = results[0]
        report["cusparseconv"] = {
            "threads_compared": sorted({1, threads}), "runs": len(results),
            "fwd3_bit_identical": all(np.array_equal(r[0], ref[0]) and np.array_equal(r[1], ref[1])
                                      for r in results),
            "grad_in_bit_identical": all(np.array_equal(r[2], ref[2]) for r in results),
            "grad_w_bit_identical": all(np.array_equal(r[3], ref[3]) for r in results),
        }
    return report


def print_determinism(key, report):
    sp = report.get("spconv")
    if sp:
        print(f"  spconv {key}, {sp['threads']} threads, {sp['runs']} runs: forward bit-identical "
              f"{sp['fwd3_bit_identical_runs']}, rows off vs its 1-thread result "
              f"{sp['fwd3_rows_off_vs_1_thread']} (max rel err "
              f"{_fmt_err(sp['fwd3_max_rel_err_vs_1_thread'])}); grad_in bit-identical "
              f"{sp['grad_in_bit_identical_runs']}, rows off {sp['grad_in_rows_off_vs_1_thread']}; "
              f"grad_w bit-identical {sp['grad_w_bit_identical_runs']} (max rel err "
              f"{_fmt_err(sp['grad_w_max_rel_err_vs_1_thread'])}); down2 rows off "
              f"{sp['down2_rows_off_vs_1_thread']}")
        if "fwd3_rows_off_vs_ours" in sp:
            print(f"    forward rows off vs cusparseconv: {sp['fwd3_rows_off_vs_ours']} "
                  f"(1 thread: {sp['fwd3_1_thread_rows_off_vs_ours']})")
    ours = report.get("cusparseconv")
    if ours:
        print(f"  cusparseconv {key}, threads {ours['threads_compared']}, {ours['runs']} runs: "
              f"forward bit-identical {ours['fwd3_bit_identical']}, grad_in "
              f"{ours['grad_in_bit_identical']}, grad_w {ours['grad_w_bit_identical']}")


def _fmt_err(value):
    return "-" if value is None else f"{value:.1e}"


# --------------------------------------------------------------------------- #
# memory: a child process runs one library's map + forward + backward
# --------------------------------------------------------------------------- #

def _rss_mib(field):
    """VmRSS (current) or VmHWM (peak) of this process in MiB, from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(library, scene, n_voxels, channels, threads, seed):
    """Print, as JSON, the peak RSS growth of map + forward + backward (second run)."""
    coords, feats, w3, _, _, grad_out = make_inputs(scene, n_voxels, channels, seed)
    if library == "ours":
        csc, reason = load_ours()
        if csc is None:
            print(json.dumps({"error": reason}))
            return
        csc.set_num_threads(threads)
        offsets = csc.kernel_offsets(3)

        def step():
            kmap = csc.build_kernel_map(coords, coords, offsets, stride=1)
            csc.conv_forward(feats, w3, kmap)
            csc.conv_input_grad(grad_out, w3, kmap)
            csc.conv_weight_grad(feats, grad_out, kmap)
    else:
        libs, reason = load_spconv()
        if libs is None:
            print(json.dumps({"error": reason}))
            return
        torch, spt, _ = libs
        torch.set_num_threads(threads)
        layer = spt.SubMConv3d(channels, channels, 3, bias=False, indice_key="subm3")
        indices, grad = torch.from_numpy(coords), torch.from_numpy(grad_out)
        shape, batch_size = spatial_shape(coords), int(coords[:, 0].max()) + 1

        def step():
            x = torch.from_numpy(feats).requires_grad_(True)
            layer.weight.grad = None
            y = layer(spt.SparseConvTensor(x, indices, shape, batch_size))
            y.features.backward(grad)

    step()  # first run: imports, thread pools, allocator warm-up
    gc.collect()
    before = _rss_mib("VmRSS")
    reset = _reset_peak_rss()
    step()
    peak = _rss_mib("VmHWM")
    report = {"rss_before_mib": before, "rss_peak_mib": peak, "peak_was_reset": reset,
              "rss_growth_mib": peak - before,
              "inputs_mib": (coords.nbytes + feats.nbytes + w3.nbytes + grad_out.nbytes) / 2 ** 20}
    if library == "ours":
        tracemalloc.start()
        step()
        report["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    print(json.dumps(report))


def measure_memory(library, scene, n_voxels, channels, threads, seed):
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child",
           f"{library}:{scene}:{n_voxels}:{channels}:{threads}:{seed}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": (proc.stderr or proc.stdout)[-500:]}


# --------------------------------------------------------------------------- #
# driver
# --------------------------------------------------------------------------- #

def make_inputs(scene, n_voxels, channels, seed):
    coords = SCENES[scene](n_voxels)
    rng = np.random.default_rng(seed + channels)
    n = len(coords)
    feats = rng.standard_normal((n, channels), dtype=np.float32)
    w3 = (rng.standard_normal((27, channels, channels), dtype=np.float32)
          / np.float32(np.sqrt(27 * channels)))
    w2 = (rng.standard_normal((8, channels, channels), dtype=np.float32)
          / np.float32(np.sqrt(8 * channels)))
    w2_up = (rng.standard_normal((8, channels, channels), dtype=np.float32)
             / np.float32(np.sqrt(8 * channels)))
    grad_out = rng.standard_normal((n, channels), dtype=np.float32)
    return coords, feats, w3, w2, w2_up, grad_out


OPS = ("map3", "fwd3", "fwd3_cached", "fwdbwd3_cached", "down2", "up2_cached", "up2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voxels", type=int, nargs="+", default=[136_000, 200_000],
                        help="voxel counts of the surface scenes (default: 136000 200000)")
    parser.add_argument("--lidar-voxels", type=int, nargs="*", default=[136_000],
                        help="voxel counts of the LiDAR scenes (default: 136000; none to skip)")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64],
                        help="channel counts C (C -> C convolutions; default: 16 32 64)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per operation (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=2, help="threads for both libraries")
    parser.add_argument("--determinism-runs", type=int, default=4,
                        help="runs per library in the determinism check (0 to skip)")
    parser.add_argument("--memory-channels", type=int, nargs="*", default=[32],
                        help="channel counts whose peak memory is measured, in a child process "
                             "per library (default: 32; none to skip)")
    parser.add_argument("--spconv-threads", type=int, default=None,
                        help="torch threads for spconv (default: --threads)")
    parser.add_argument("--no-spconv", action="store_true", help="time cusparseconv only")
    parser.add_argument("--no-ours", action="store_true", help="time spconv only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="JSON path (default: benchmarks/results/cpu-<date>.json)")
    parser.add_argument("--_memory-child", dest="memory_child", default=None,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def fmt_ms(entry):
    return "-" if entry is None else f"{entry['median_s'] * 1e3:9.1f}"


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        library, scene, n, c, t, seed = args.memory_child.split(":")
        memory_child(library, scene, int(n), int(c), int(t), int(seed))
        return 0

    ours_mod, ours_reason = (None, "--no-ours") if args.no_ours else load_ours()
    peer_libs, peer_reason = (None, "--no-spconv") if args.no_spconv else load_spconv()
    if ours_mod is None:
        print(f"[cusparseconv not timed: {ours_reason}]")
    if peer_libs is None:
        print(f"[spconv not timed: {peer_reason}]")
    if ours_mod is None and peer_libs is None:
        return 1

    try:
        from threadpoolctl import threadpool_limits, threadpool_info
        threadpool_limits(args.threads)
        blas = [f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                for i in threadpool_info()]
    except ImportError:
        blas = ["threadpoolctl not installed"]
    if ours_mod is not None:
        ours_mod.set_num_threads(args.threads)
    order3 = order2 = None
    if peer_libs is not None:
        torch, spt, _ = peer_libs
        spconv_threads = args.spconv_threads or args.threads
        torch.set_num_threads(spconv_threads)
        order3 = spconv_kernel_order(torch, spt, 3, 1)
        order2 = spconv_kernel_order(torch, spt, 2, 2)

    gc.freeze()  # torch holds ~10^6 objects: keep them out of every later collection
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(), "machine": platform.machine(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "spconv_threads": args.spconv_threads or args.threads,
        "numpy": np.__version__, "blas": blas,
        "cusparseconv": getattr(ours_mod, "__version__", None) if ours_mod else None,
        "cusparseconv_skipped": ours_reason,
        "spconv": peer_libs[2] if peer_libs else None, "spconv_skipped": peer_reason,
        "torch": peer_libs[0].__version__ if peer_libs else None,
        "spconv_kernel_order_3x3x3": order3.tolist() if order3 is not None else None,
        "spconv_kernel_order_2x2x2": order2.tolist() if order2 is not None else None,
        "repeats": args.repeats, "warmup": args.warmup,
        "thread_environment": thread_environment(),
    }
    print(f"# {env['date']}  {env['cpu']}  threads={args.threads} "
          f"(spconv {env['spconv_threads']})  repeats={args.repeats} "
          f"(median)  numpy {np.__version__}  spconv {env['spconv']}  torch {env['torch']}  "
          f"thread environment {env['thread_environment'] or 'none'}")
    if order3 is not None:
        identity = np.array_equal(order3, np.arange(27)) and np.array_equal(order2, np.arange(8))
        print(f"# spconv weight (C_out, k, k, k, C_in); kernel positions in SPEC order: {identity}")

    workloads = [("surface", n) for n in args.voxels] + [("lidar", n) for n in args.lidar_voxels]
    results = []
    total_start = time.perf_counter()
    for scene, n_voxels in workloads:
        for channels in args.channels:
            coords, feats, w3, w2, w2_up, grad_out = make_inputs(scene, n_voxels, channels,
                                                                 args.seed)
            entry = {"scene": scene, "n_voxels_requested": n_voxels, "n_voxels": len(coords),
                     "channels": channels, "ours": {}, "spconv": {}, "ratio": {}}
            ours = peer = None
            if ours_mod is not None:
                ours = Ours(ours_mod, coords, feats, w3, w2, w2_up, grad_out)
                entry["n_pairs_3x3x3"] = int(ours.kmap3.n_pairs) \
                    if hasattr(ours.kmap3, "n_pairs") else None
            if peer_libs is not None:
                peer = Spconv(peer_libs, order3, order2, coords, feats, w3, w2, w2_up, grad_out)
            if ours is not None and peer is not None:
                entry["agreement"] = check_agreement(ours, peer, order3)
                bad = [k for k, v in entry["agreement"].items()
                       if isinstance(v, dict) and not v["agree"]]
                errs = ", ".join(f"{k} {v['max_rel_err']:.1e}" if v.get("max_rel_err") is not None
                                 else f"{k} coords differ"
                                 for k, v in entry["agreement"].items() if isinstance(v, dict))
                print(f"  check {scene} N={len(coords)} C={channels}: max rel err {errs}"
                      + (f"  ** MISMATCH: {bad} **" if bad else ""))
            for op in OPS:
                fns = {}
                if ours is not None:
                    fns["ours"] = getattr(ours, op)
                if peer is not None and hasattr(peer, op):
                    fns["spconv"] = getattr(peer, op)
                for name, timing in measure(fns, args.repeats, args.warmup).items():
                    entry[name][op] = timing
                if op in entry["ours"] and op in entry["spconv"]:
                    entry["ratio"][op] = (entry["spconv"][op]["median_s"]
                                          / entry["ours"][op]["median_s"])
                    entry.setdefault("ratio_of_min", {})[op] = (entry["spconv"][op]["min_s"]
                                                                / entry["ours"][op]["min_s"])
                    # runs r of both libraries were back to back: their ratio sees one phase
                    # of a noisy machine, so the median of per-run ratios is the steadiest
                    entry.setdefault("ratio_paired", {})[op] = statistics.median(
                        a / b for a, b in zip(entry["spconv"][op]["times_s"],
                                              entry["ours"][op]["times_s"]))
            if channels in args.memory_channels:
                for name, present in (("ours", ours), ("spconv", peer)):
                    if present is not None:
                        threads = args.threads if name == "ours" else env["spconv_threads"]
                        entry[f"memory_{name}_fwdbwd"] = measure_memory(
                            name, scene, n_voxels, channels, threads, args.seed)
            results.append(entry)
            print_entry(entry)
            del ours, peer
            gc.collect()

    determinism_report = {}
    if args.determinism_runs > 0:
        for scene, n_voxels in workloads[:1] + [w for w in workloads if w[0] == "lidar"][:1]:
            channels = 32 if 32 in args.channels else args.channels[0]
            coords, feats, w3, w2, w2_up, grad_out = make_inputs(scene, n_voxels, channels,
                                                                 args.seed)
            ours = Ours(ours_mod, coords, feats, w3, w2, w2_up, grad_out) if ours_mod else None
            peer = (Spconv(peer_libs, order3, order2, coords, feats, w3, w2, w2_up, grad_out)
                    if peer_libs else None)
            key = f"{scene}-{len(coords)}-C{channels}"
            determinism_report[key] = determinism(ours, peer, args.threads, args.determinism_runs)
            if peer is not None:
                peer.torch.set_num_threads(env["spconv_threads"])
            print_determinism(key, determinism_report[key])

    elapsed = time.perf_counter() - total_start
    print(f"# total {elapsed:.0f} s")
    out = args.out or os.path.join(HERE, "results",
                                   f"cpu-{datetime.date.today().isoformat()}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"environment": env, "results": results, "determinism": determinism_report,
                   "elapsed_s": elapsed}, f, indent=1)
    print(f"# wrote {out}")
    return 0


def print_entry(entry):
    head = f"{entry['scene']} N={entry['n_voxels']} C={entry['channels']}"
    if entry.get("n_pairs_3x3x3"):
        head += f" pairs/N={entry['n_pairs_3x3x3'] / entry['n_voxels']:.2f}"
    print(f"\n{head}")
    print(f"  {'operation':<16}{'ours ms':>10}{'spconv ms':>11}{'spconv/ours':>13}"
          f"{'paired':>9}")
    for op in OPS:
        ours, peer = entry["ours"].get(op), entry["spconv"].get(op)
        if ours is None and peer is None:
            continue
        ratio = entry["ratio"].get(op)
        paired = entry.get("ratio_paired", {}).get(op)
        print(f"  {op:<16}{fmt_ms(ours):>10}{fmt_ms(peer):>11}"
              f"{'' if ratio is None else f'{ratio:12.2f}x':>13}"
              f"{'' if paired is None else f'{paired:8.2f}x':>9}")
    for name in ("ours", "spconv"):
        mem = entry.get(f"memory_{name}_fwdbwd")
        if mem and "error" not in mem:
            extra = (f", tracemalloc peak {mem['tracemalloc_peak_mib']:.0f} MiB"
                     if "tracemalloc_peak_mib" in mem else "")
            print(f"  {name} map+fwd+bwd peak RSS growth {mem['rss_growth_mib']:.0f} MiB"
                  f"{extra} (inputs {mem['inputs_mib']:.0f} MiB)")
        elif mem:
            print(f"  {name} memory child failed: {mem['error']}")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
