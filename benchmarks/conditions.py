"""CPU speed under the conditions a user's process meets: a busy machine, torch in the
process, a training loop mixing our layers and torch layers.

``python -m benchmarks.conditions [--quick] [--loads 0 1 2]`` from the
repository root. Four parts, each ours and spconv (CPU) side by side in one run:

``load``
    layers of the suite (``map+fwd``: kernel map and forward on a new
    coordinate set; ``fwd+bwd``: forward, input and weight gradients on a
    built map), run interleaved library by library, with 0, 1 and 2 busy
    processes (:mod:`benchmarks.load`) on the machine; the slowdown of each
    library is its median time under load over its median quiet time. Ours runs
    at its default thread count and at one thread (``ours_t1``, the
    like-for-like comparison with spconv at one torch thread).

``torch``
    our layers in a process that never imports torch (a child process), in
    this process (torch and spconv loaded) with torch idle for 0.2 s before
    each call, and right after a torch operation (the state inside a training
    step, when torch's OpenMP threads have just finished their work).

``train``
    a training loop of a small sparse network (3x3x3 submanifold, 2x2x2
    stride-2 and transposed convolutions of 32 and 64 channels, batch norm,
    ReLU, a linear head, cross-entropy, SGD) on crops of a real scan, new
    coordinates every step, in our layers (``cusparseconv.torch``) and in
    spconv's, each with torch at its default thread count and at one thread
    (``ours_torch1``, ``spconv_torch1``; our layers follow torch's count), ours
    with torch at one thread and our layers at our default count
    (``ours_torch1_own``: ``cusparseconv.set_num_threads``) and with torch at its
    default and our layers at one thread (``ours_own1``), and,
    as a reference, a per-voxel MLP of the same widths in plain torch; step
    times (median, 90th percentile, p90 / median) quiet and under load.
    spconv's net at the default count is checked against itself at one thread
    first and not timed if its logits differ (:func:`check_spconv_net`). The
    nets take turns (``train_rounds`` turns of a few steps each, after a
    warm-up), so that a slow phase of the machine falls on all of them.

``thread``
    layers of the suite with one thread of this process running Python without
    pause (:func:`benchmarks.load.busy_python_thread`: what a loader thread
    parsing files or a busy-polling monitor does), ours as it runs by default
    (Python's switch interval shortened during our calls,
    ``cusparseconv._switch``), ours with that turned off (``ours_long``:
    ``config.set_short_switch_interval(False)``) and spconv at its agreeing
    setting; the slowdown of each is its median time beside the busy thread
    over its median time without it, measured in the same part.

In the ``load`` part spconv runs with torch at one thread and at torch's
default count, interleaved; at each load its time is that of the faster
setting (both are what a user gets without environment variables; which one
wins depends on the layer and the load, see ``benchmarks/README.md``).

Nothing sets an environment variable: torch, spconv and cusparseconv run with
their defaults (thread counts: torch's and ours both default to the cores of
this process). Results: ``benchmarks/results/conditions-<machine>-<date>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks import bench_cpu as bc
from benchmarks import run as suite
from benchmarks import workloads as wl
from benchmarks.load import busy, busy_python_thread

HERE = os.path.dirname(os.path.abspath(__file__))

FULL = {"layers": [("table-5mm", "subm3", 32), ("motorcycle-1cm", "subm3", 32),
                   ("frog-2x", "subm3", 32), ("table-5mm", "down2", 32)],
        "thread_layers": [("motorcycle-1cm", "subm3", 32), ("table-5mm", "down2", 32)],
        "thread_repeats": 5, "repeats": 7, "torch_repeats": 9,
        "train_scan": "motorcycle-1cm", "train_steps": 40, "train_rounds": 5,
        "train_warmup": 5, "crop_fraction": 0.5}
QUICK = {"layers": [("motorcycle-2cm", "subm3", 16)], "repeats": 3, "torch_repeats": 3,
         "thread_layers": [("motorcycle-2cm", "subm3", 16)], "thread_repeats": 2,
         "train_scan": "motorcycle-2cm", "train_steps": 6, "train_warmup": 2, "train_rounds": 2,
         "crop_fraction": 0.5}


def _median_ms(times):
    return 1e3 * statistics.median(times)


# --------------------------------------------------------------------------- #
# load
# --------------------------------------------------------------------------- #

def with_our_threads(threads, fn):
    """``fn`` run with cusparseconv on ``threads`` threads, as the torch adapter runs it
    under ``torch.set_num_threads(threads)`` (the worker pool stays as it is)."""
    from cusparseconv._threads import framework_threads

    def call():
        with framework_threads(threads):
            return fn()
    return call


def _layer_entry(csc, spconv_libs, orders, name, layer_name, channels):
    """(our layer, spconv's on the same inputs or None, the row's description with
    spconv's agreement at one torch thread)."""
    workload = wl.real_workload(name)
    layer = suite.Layer(csc, layer_name, workload.coords, channels, 0)
    peer = suite.SpconvLayer(spconv_libs, orders, layer) if spconv_libs else None
    entry = {"workload": name, "layer": layer_name, "channels": channels,
             "n_in": len(layer.in_coords), "n_pairs": layer.n_pairs,
             "agreement": peer.check() if peer else None}
    return layer, peer, entry


def part_load(plan, loads, csc, spconv_libs, orders):
    rows = []
    for name, layer_name, channels in plan["layers"]:
        layer, peer, entry = _layer_entry(csc, spconv_libs, orders, name, layer_name,
                                          channels)
        entry["by_load"] = {}
        if peer is not None and peer.valid:
            # torch at one thread and at its default: both settings a user gets without
            # environment variables, each checked against ours; spconv's slowdown is that
            # of the faster one among those whose results agree (run.pick_spconv_setting:
            # spconv 2.3.8's CPU layers at two torch threads returned wrong outputs)
            checks = {threads: entry["agreement"] if threads == 1 else peer.check(threads)
                      for threads in sorted({1, peer.torch.get_num_threads()})}
            entry["agreement_by_torch_threads"] = checks
            agreeing = [threads for threads, found in checks.items() if found.get("agree")]
        for procs in loads:
            fns = {"ours.mapfwd": layer.mapfwd, "ours.fwdbwd": layer.fwdbwd,
                   # ours on one thread: the like-for-like slowdown beside spconv's at one
                   # torch thread (a library on two threads shares both cores with the load)
                   "ours_t1.mapfwd": with_our_threads(1, layer.mapfwd),
                   "ours_t1.fwdbwd": with_our_threads(1, layer.fwdbwd)}
            if peer is not None and peer.valid:
                fns.update({f"spconv_t{threads}.{op}": suite.with_torch_threads(
                    peer.torch, threads, getattr(peer, op))
                    for op in ("mapfwd", "fwdbwd") for threads in agreeing})
            with busy(procs) as load:
                timing = bc.measure(fns, plan["repeats"], 1)
            got = {k: v["times_s"] for k, v in timing.items()}
            for op in ("mapfwd", "fwdbwd"):   # spconv's faster setting at this load
                settings = [k for k in got if k.startswith("spconv_t") and k.endswith(op)]
                if settings:
                    got[f"spconv.{op}"] = got[min(settings,
                                                  key=lambda k: statistics.median(got[k]))]
            entry["by_load"][procs] = {"load": load.report() if procs else None, **got}
        quiet = entry["by_load"].get(0)
        if quiet:
            for procs, got in entry["by_load"].items():
                got["slowdown"] = {k: statistics.median(got[k]) / statistics.median(quiet[k])
                                   for k in quiet if k in got and k not in ("load",)}
        rows.append(entry)
        print(f"load {name} {layer_name} C={channels}: " + "; ".join(
            f"{procs} busy: " + ", ".join(f"{k} {_median_ms(v):.1f} ms (x{got['slowdown'][k]:.2f})"
                                          for k, v in got.items()
                                          if k not in ("load", "slowdown")
                                          and not k.startswith("spconv_t"))
            for procs, got in entry["by_load"].items()), flush=True)
        del layer, peer
        gc.collect()
    return rows


# --------------------------------------------------------------------------- #
# torch in the process
# --------------------------------------------------------------------------- #

def _ours_only_child(spec):
    """In a child that never imports torch: medians of ours (JSON on stdout)."""
    name, layer_name, channels, repeats = spec.split(":")
    import cusparseconv as csc
    assert "torch" not in sys.modules
    workload = wl.real_workload(name)
    layer = suite.Layer(csc, layer_name, workload.coords, int(channels), 0)
    timing = bc.measure({"mapfwd": layer.mapfwd, "fwd": layer.fwd, "fwdbwd": layer.fwdbwd},
                        int(repeats), 1)
    print(json.dumps({k: v["times_s"] for k, v in timing.items()}
                     | {"torch_imported": "torch" in sys.modules}))


def part_torch(plan, csc, torch):
    rows = []
    busy_tensor = torch.randn(768, 768)
    for name, layer_name, channels in plan["layers"]:
        cmd = [sys.executable, "-m", "benchmarks.conditions", "--_ours-only",
               f"{name}:{layer_name}:{channels}:{plan['torch_repeats']}"]
        proc = subprocess.run(cmd, cwd=os.path.dirname(HERE), capture_output=True, text=True,
                              timeout=1800)
        try:
            alone = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            alone = {"error": (proc.stderr or proc.stdout)[-800:]}
        workload = wl.real_workload(name)
        layer = suite.Layer(csc, layer_name, workload.coords, channels, 0)
        entry = {"workload": name, "layer": layer_name, "channels": channels,
                 "no_torch": alone}
        for mode in ("torch_idle", "after_torch_op"):
            times = {"mapfwd": [], "fwd": [], "fwdbwd": []}
            for op in times:
                fn = getattr(layer, op)
                fn()
                for _ in range(plan["torch_repeats"]):
                    if mode == "torch_idle":
                        busy_tensor @ busy_tensor
                        time.sleep(0.2)     # torch's OpenMP threads are asleep by now
                    else:
                        busy_tensor @ busy_tensor   # its threads still spin-wait
                    start = time.perf_counter()
                    fn()
                    times[op].append(time.perf_counter() - start)
            entry[mode] = times
        summary = {}
        for op in ("mapfwd", "fwd", "fwdbwd"):
            base = alone.get(op)
            if base:
                summary[op] = {mode: statistics.median(entry[mode][op]) / statistics.median(base)
                               for mode in ("torch_idle", "after_torch_op")}
        entry["relative_to_no_torch"] = summary
        rows.append(entry)
        print(f"torch {name} {layer_name} C={channels}: no torch " + ", ".join(
            f"{op} {_median_ms(alone[op]):.1f} ms" for op in ("mapfwd", "fwd", "fwdbwd")
            if op in alone) + "; " + ", ".join(
            f"{op}: idle x{v['torch_idle']:.2f}, after op x{v['after_torch_op']:.2f}"
            for op, v in summary.items()), flush=True)
    return rows


# --------------------------------------------------------------------------- #
# a thread of this process running Python without pause
# --------------------------------------------------------------------------- #

def with_long_switch_interval(csc, fn):
    """``fn`` run with our calls leaving Python's switch interval as it is."""
    def call():
        before = csc.config.is_short_switch_interval()
        csc.config.set_short_switch_interval(False)
        try:
            return fn()
        finally:
            csc.config.set_short_switch_interval(before)
    return call


def _thread_rate(thread, fn, rates):
    """``fn``, appending the busy thread's iterations per second during each call."""
    def call():
        count, start = thread.iterations, time.perf_counter()
        try:
            return fn()
        finally:
            rates.append((thread.iterations - count) / (time.perf_counter() - start))
    return call


def part_thread(plan, csc, spconv_libs, orders):
    rows = []
    for name, layer_name, channels in plan["thread_layers"]:
        layer, peer, entry = _layer_entry(csc, spconv_libs, orders, name, layer_name,
                                          channels)
        entry["switch_interval_s"] = sys.getswitchinterval()
        fns = {}
        for op in ("mapfwd", "fwdbwd"):
            fns[f"ours.{op}"] = getattr(layer, op)
            fns[f"ours_long.{op}"] = with_long_switch_interval(csc, getattr(layer, op))
            if peer is not None and peer.valid:   # at one torch thread: its right setting
                fns[f"spconv.{op}"] = suite.with_torch_threads(peer.torch, 1,
                                                               getattr(peer, op))
        quiet = bc.measure(fns, plan["thread_repeats"], 1)
        rates = {k: [] for k in fns}
        with busy_python_thread() as thread:
            time.sleep(0.5)   # the busy thread alone: its rate without our calls
            alone = thread.report()["iterations_per_s"]
            beside = bc.measure({k: _thread_rate(thread, fn, rates[k])
                                 for k, fn in fns.items()}, plan["thread_repeats"], 0)
        entry["quiet"] = {k: v["times_s"] for k, v in quiet.items()}
        entry["busy_thread"] = {k: v["times_s"] for k, v in beside.items()}
        entry["thread"] = thread.report()
        # what the busy thread got done while each library's calls ran, against alone
        entry["thread_share"] = {k: statistics.median(v) / alone if alone else None
                                 for k, v in rates.items()}
        entry["slowdown"] = {k: statistics.median(entry["busy_thread"][k])
                             / statistics.median(entry["quiet"][k]) for k in fns}
        rows.append(entry)
        print(f"thread {name} {layer_name} C={channels}: " + ", ".join(
            f"{k} {_median_ms(entry['quiet'][k]):.1f} -> "
            f"{_median_ms(entry['busy_thread'][k]):.1f} ms (x{entry['slowdown'][k]:.2f}; "
            f"busy thread at {entry['thread_share'][k]:.2f} of its rate alone)"
            for k in fns), flush=True)
        del layer, peer
        gc.collect()
    return rows


# --------------------------------------------------------------------------- #
# training loop
# --------------------------------------------------------------------------- #

WIDTHS = (32, 64)
N_CLASSES = 8
C_IN = 4


def _crops(coords, count, fraction, seed):
    """``count`` crops of about ``fraction`` of the voxels: the side of a random plane."""
    rng = np.random.default_rng(seed)
    xyz = coords[:, 1:].astype(np.float64)
    centre = xyz.mean(axis=0)
    crops = []
    for _ in range(count):
        normal = rng.standard_normal(3)
        normal /= np.linalg.norm(normal)
        side = (xyz - centre) @ normal
        keep = side <= np.quantile(side, fraction)
        crops.append(np.ascontiguousarray(coords[keep]))
    return crops


def _targets(coords, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, N_CLASSES, len(coords))


class OursNet:
    def __init__(self, torch):
        import cusparseconv.torch as cst
        nn = torch.nn
        a, b = WIDTHS
        self.torch, self.cst = torch, cst
        torch.manual_seed(0)
        self.stem = nn.ModuleList([cst.SparseConv3d(C_IN, a, 3), cst.SparseBatchNorm(a),
                                   cst.SparseReLU(), cst.SparseConv3d(a, a, 3),
                                   cst.SparseBatchNorm(a), cst.SparseReLU()])
        self.down = nn.ModuleList([cst.SparseConv3d(a, b, 2, stride=2), cst.SparseBatchNorm(b),
                                   cst.SparseReLU(), cst.SparseConv3d(b, b, 3),
                                   cst.SparseBatchNorm(b), cst.SparseReLU()])
        self.up = nn.ModuleList([cst.SparseConvTranspose3d(b, a, 2, stride=2),
                                 cst.SparseBatchNorm(a), cst.SparseReLU()])
        self.head = nn.Linear(a, N_CLASSES)
        self.params = [p for m in (self.stem, self.down, self.up, self.head)
                       for p in m.parameters()]

    def loss(self, coords, feats, target):
        x = self.cst.SparseTensor(coords, feats)
        for m in self.stem:
            x = m(x)
        skip = x
        for m in self.down:
            x = m(x)
        x = self.up[0](x, out_coords=skip)
        for m in self.up[1:]:
            x = m(x)
        logits = self.head(x.feats + skip.feats)
        return self.torch.nn.functional.cross_entropy(logits, target)


class SpconvNet:
    def __init__(self, torch, spt):
        nn = torch.nn
        a, b = WIDTHS
        self.torch, self.spt = torch, spt
        torch.manual_seed(0)
        self.stem = spt.SparseSequential(
            spt.SubMConv3d(C_IN, a, 3, bias=False, indice_key="s0"), nn.BatchNorm1d(a), nn.ReLU(),
            spt.SubMConv3d(a, a, 3, bias=False, indice_key="s0"), nn.BatchNorm1d(a), nn.ReLU())
        self.down = spt.SparseSequential(
            spt.SparseConv3d(a, b, 2, stride=2, bias=False, indice_key="d1"), nn.BatchNorm1d(b),
            nn.ReLU(), spt.SubMConv3d(b, b, 3, bias=False, indice_key="s1"), nn.BatchNorm1d(b),
            nn.ReLU())
        self.up = spt.SparseSequential(
            spt.SparseInverseConv3d(b, a, 2, bias=False, indice_key="d1"), nn.BatchNorm1d(a),
            nn.ReLU())
        self.head = nn.Linear(a, N_CLASSES)
        self.params = [p for m in (self.stem, self.down, self.up, self.head)
                       for p in m.parameters()]

    def logits(self, coords, feats):
        indices = self.torch.from_numpy(coords)
        shape = [int(e) for e in (coords[:, 1:].max(axis=0) + 4) // 2 * 2]
        x = self.spt.SparseConvTensor(feats, indices, shape, 1)
        skip = self.stem(x)
        x = self.up(self.down(skip))
        # SparseInverseConv3d returns the rows of the layer's input, in its order
        return self.head(x.features + skip.features)

    def loss(self, coords, feats, target):
        return self.torch.nn.functional.cross_entropy(self.logits(coords, feats), target)


class TorchMLP:
    """Per-voxel MLP of the same widths: the cost of the torch layers alone."""

    def __init__(self, torch):
        nn = torch.nn
        a, b = WIDTHS
        self.torch = torch
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(C_IN, a), nn.BatchNorm1d(a), nn.ReLU(),
                                 nn.Linear(a, a), nn.BatchNorm1d(a), nn.ReLU(),
                                 nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(),
                                 nn.Linear(b, b), nn.BatchNorm1d(b), nn.ReLU(),
                                 nn.Linear(b, a), nn.BatchNorm1d(a), nn.ReLU(),
                                 nn.Linear(a, N_CLASSES))
        self.params = list(self.net.parameters())

    def loss(self, coords, feats, target):
        return self.torch.nn.functional.cross_entropy(self.net(feats), target)


def _features(torch, coords):
    """(n, C_IN) float32 input features of a crop: a one and the scaled coordinates."""
    return torch.from_numpy(np.ascontiguousarray(
        np.concatenate([np.ones((len(coords), 1)), coords[:, 1:] / 100.0], axis=1),
        dtype=np.float32))


# spconv's net at a torch thread count agrees with it at one thread (whose layers agree
# with ours, benchmarks.run) when its logits are this close (largest difference over the
# largest logit); its wrong two-thread products put them 0.1 or more apart
NET_LOGITS_RTOL = 1e-3


def check_spconv_net(torch, net, coords, target, threads):
    """spconv's training net run with ``threads`` torch threads against the same net at
    one thread, on one crop: ``{"agree", "logits_rel_err", "stem_grad_rel_err"}``.

    spconv 2.3.8's CPU layers return wrong outputs at two torch threads
    (``benchmarks.run``); a step time of a wrong computation is no speed."""
    feats = _features(torch, coords)

    def run(count):
        before = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            for p in net.params:
                p.grad = None
            logits = net.logits(coords, feats)
            torch.nn.functional.cross_entropy(logits, target).backward()
            return (logits.detach().numpy().copy(),
                    net.stem[0].weight.grad.detach().numpy().copy())
        finally:
            torch.set_num_threads(before)
            for p in net.params:
                p.grad = None

    reference, timed = run(1), run(threads)
    errors = [float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
              for a, b in zip(reference, timed)]
    return {"agree": errors[0] <= NET_LOGITS_RTOL, "logits_rel_err": errors[0],
            "stem_grad_rel_err": errors[1], "torch_threads": threads}


class Trainer:
    """SGD steps of ``net`` over ``crops`` in turn, one crop a step; :meth:`steps` goes on
    where the last call stopped (the same optimizer), so the nets of a run can take
    turns."""

    def __init__(self, torch, net, crops, targets):
        self.torch, self.net, self.crops = torch, net, crops
        self.optimizer = torch.optim.SGD(net.params, lr=0.01, momentum=0.9)
        self.feats = [_features(torch, c) for c in crops]
        self.targets = [torch.from_numpy(t) for t in targets]
        self.done = 0

    def steps(self, count, torch_threads=None, ours_threads=None):
        """Seconds of each of ``count`` steps, with torch at ``torch_threads`` threads
        (its count as it is when None; restored after) and our layers at
        ``ours_threads`` (``cusparseconv.set_num_threads``; None: the adapter's
        default, torch's count; back to the default after)."""
        import cusparseconv
        torch = self.torch
        before = torch.get_num_threads()
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
        if ours_threads is not None:
            cusparseconv.set_num_threads(ours_threads)
        times = []
        try:
            for _ in range(count):
                i = self.done % len(self.crops)
                start = time.perf_counter()
                self.optimizer.zero_grad()
                loss = self.net.loss(self.crops[i], self.feats[i], self.targets[i])
                loss.backward()
                self.optimizer.step()
                times.append(time.perf_counter() - start)
                self.done += 1
        finally:
            torch.set_num_threads(before)
            if ours_threads is not None:
                cusparseconv.set_num_threads(None)
        return times


def _step_summary(times):
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(np.ceil(0.9 * len(ordered))) - 1)]
    median = statistics.median(ordered)
    return {"median_ms": 1e3 * median, "p90_ms": 1e3 * p90, "p90_over_median": p90 / median,
            "max_ms": 1e3 * ordered[-1], "min_ms": 1e3 * ordered[0], "times_s": times}


def part_train(plan, loads, torch, spconv_libs):
    workload = wl.real_workload(plan["train_scan"])
    crops = _crops(workload.coords, 4, plan["crop_fraction"], 0)
    targets = [_targets(c, i) for i, c in enumerate(crops)]
    # name: (net, torch's threads, ours) while it trains; None: as it is (torch's
    # default; ours following torch's count through the adapter). "ours_torch1_own":
    # torch at one thread, our layers at our default count (the steadiest setting under
    # load, README "Threads and determinism")
    import cusparseconv
    own = cusparseconv.get_num_threads()
    nets = {"ours": (OursNet(torch), None, None), "ours_torch1": (OursNet(torch), 1, None),
            "ours_torch1_own": (OursNet(torch), 1, own), "ours_own1": (OursNet(torch), None, 1),
            "torch_mlp": (TorchMLP(torch), None, None)}
    result = {"scan": plan["train_scan"], "voxels_per_step": [len(c) for c in crops],
              "widths": WIDTHS, "by_load": {}, "spconv_check": None}
    if spconv_libs is not None:
        check = check_spconv_net(torch, SpconvNet(torch, spconv_libs[1]), crops[0],
                                 torch.from_numpy(targets[0]), torch.get_num_threads())
        result["spconv_check"] = check
        print(f"train: spconv's net at {check['torch_threads']} torch threads against one: "
              f"logits rel. err. {check['logits_rel_err']:.1e}, stem gradient "
              f"{check['stem_grad_rel_err']:.1e}" + ("" if check["agree"] else
                                                     " (wrong: not timed)"), flush=True)
        if check["agree"] or check["torch_threads"] == 1:
            nets["spconv"] = (SpconvNet(torch, spconv_libs[1]), None, None)
        nets["spconv_torch1"] = (SpconvNet(torch, spconv_libs[1]), 1, None)
    rounds = plan["train_rounds"]
    per_round = -(-plan["train_steps"] // rounds)
    for procs in loads:
        got = {}
        with busy(procs) as load:
            # the nets take turns, a few steps each, so that a phase of this machine
            # falls on all of them alike; each keeps its optimizer across its turns
            trainers = {name: Trainer(torch, net, crops, targets)
                        for name, (net, _, _) in nets.items()}
            times = {name: [] for name in nets}
            for name, trainer in trainers.items():
                trainer.steps(plan["train_warmup"], *nets[name][1:])
            for _ in range(rounds):
                for name, trainer in trainers.items():
                    times[name] += trainer.steps(per_round, *nets[name][1:])
            for name in nets:
                got[name] = _step_summary(times[name])
        got["load"] = load.report() if procs else None
        result["by_load"][procs] = got
        print(f"train, {procs} busy: " + "; ".join(
            f"{name} median {v['median_ms']:.1f} ms p90 {v['p90_ms']:.1f} ms "
            f"(p90/median {v['p90_over_median']:.2f}, max {v['max_ms']:.0f})"
            for name, v in got.items() if name != "load"), flush=True)
    return result


# --------------------------------------------------------------------------- #
# driver
# --------------------------------------------------------------------------- #

def write_markdown(path, env, report):
    lines = [f"{env['date']}, {env['cpu']}, {env['cpu_count']} cores, cusparseconv threads "
             f"{env['cusparseconv_threads']}, torch threads {env['torch_threads']}, spconv "
             f"{env['spconv']}, thread environment {env['thread_environment'] or 'none'}", ""]
    if report.get("load"):
        lines += ["## Busy machine (median ms; slowdown against 0 busy processes)", "",
                  "| workload | layer | C | busy | ours map+fwd | ours 1 thread map+fwd "
                  "| spconv map+fwd | ours fwd+bwd | ours 1 thread fwd+bwd | spconv fwd+bwd |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for e in report["load"]:
            for procs, got in e["by_load"].items():
                cells = []
                for key in ("ours.mapfwd", "ours_t1.mapfwd", "spconv.mapfwd", "ours.fwdbwd",
                            "ours_t1.fwdbwd", "spconv.fwdbwd"):
                    if key in got:
                        cells.append(f"{_median_ms(got[key]):.1f} (x{got['slowdown'][key]:.2f})")
                    else:
                        cells.append("")
                lines.append(f"| {e['workload']} | {e['layer']} | {e['channels']} | {procs} | "
                             + " | ".join(cells) + " |")
        lines.append("")
    if report.get("torch"):
        lines += ["## Torch in the process (ours; median ms, and against a process without torch)",
                  "", "| workload | layer | C | op | no torch | torch idle | after a torch op |",
                  "|---|---|---|---|---|---|---|"]
        for e in report["torch"]:
            for op, rel in e["relative_to_no_torch"].items():
                lines.append(f"| {e['workload']} | {e['layer']} | {e['channels']} | {op} | "
                             f"{_median_ms(e['no_torch'][op]):.1f} | "
                             f"{_median_ms(e['torch_idle'][op]):.1f} (x{rel['torch_idle']:.2f}) | "
                             f"{_median_ms(e['after_torch_op'][op]):.1f} "
                             f"(x{rel['after_torch_op']:.2f}) |")
        lines.append("")
    if report.get("thread"):
        lines += ["## A thread of this process running Python without pause (median ms, "
                  "and against the same without it; `thread`: the busy thread's rate of "
                  "work during those calls over its rate alone)", "",
                  "| workload | layer | C | op | ours | ours, switch interval left as it is "
                  "| spconv |", "|---|---|---|---|---|---|---|"]
        for e in report["thread"]:
            for op in ("mapfwd", "fwdbwd"):
                cells = []
                for who in ("ours", "ours_long", "spconv"):
                    key = f"{who}.{op}"
                    share = e.get("thread_share", {}).get(key)
                    cells.append(f"{_median_ms(e['quiet'][key]):.1f} -> "
                                 f"{_median_ms(e['busy_thread'][key]):.1f} "
                                 f"(x{e['slowdown'][key]:.2f}"
                                 + (f"; thread {share:.2f}" if share is not None else "")
                                 + ")" if key in e["quiet"] else "")
                lines.append(f"| {e['workload']} | {e['layer']} | {e['channels']} | {op} | "
                             + " | ".join(cells) + " |")
        lines.append("")
    if report.get("train"):
        t = report["train"]
        lines += [f"## Training loop ({t['scan']} crops of {min(t['voxels_per_step'])}-"
                  f"{max(t['voxels_per_step'])} voxels, widths {t['widths']})", "",
                  "| busy | net | median ms | p90 ms | p90 / median | max ms |",
                  "|---|---|---|---|---|---|"]
        check = t.get("spconv_check")
        if check:
            lines[-3:-3] = [f"spconv's net at {check['torch_threads']} torch threads against "
                            f"itself at one: logits rel. err. {check['logits_rel_err']:.1e} ("
                            + ("agrees" if check["agree"] else "wrong: its `spconv` row is "
                               "not timed") + ")", ""]
        for procs, got in t["by_load"].items():
            for name, v in got.items():
                if name == "load":
                    continue
                lines.append(f"| {procs} | {name} | {v['median_ms']:.1f} | {v['p90_ms']:.1f} | "
                             f"{v['p90_over_median']:.2f} | {v['max_ms']:.0f} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_chart(path, env, report):
    """Slowdowns under load (left) and training-step times (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    labels, values = [], {}
    for e in report.get("load") or []:
        for procs, got in e["by_load"].items():
            if str(procs) == "0":
                continue
            labels.append(f"{e['workload']} {e['layer']} C{e['channels']}, {procs} busy")
            for key, factor in got.get("slowdown", {}).items():
                values.setdefault(key, []).append(factor)
    if labels:
        y = np.arange(len(labels))
        height = 0.8 / max(len(values), 1)
        for i, (key, factors) in enumerate(sorted(values.items())):
            axes[0].barh(y + (i - (len(values) - 1) / 2) * height, factors, height, label=key)
        axes[0].set_yticks(y)
        axes[0].set_yticklabels(labels, fontsize=7)
        axes[0].axvline(1.0, color="black", linewidth=0.8)
        axes[0].set_xlabel("time under load / quiet time")
        axes[0].legend(fontsize=7)
        axes[0].invert_yaxis()
    train = report.get("train")
    if train:
        data, names = [], []
        for procs, got in train["by_load"].items():
            for name, v in got.items():
                if name == "load":
                    continue
                data.append(np.asarray(v["times_s"]) * 1e3)
                names.append(f"{name}\n{procs} busy")
        axes[1].boxplot(data, whis=(0, 90))
        axes[1].set_xticks(range(1, len(names) + 1))
        axes[1].set_xticklabels(names, fontsize=7, rotation=45)
        axes[1].set_yscale("log")
        axes[1].set_ylabel("training step, ms (whiskers: min and p90)")
    fig.suptitle(f"cusparseconv vs spconv under load, {env['cpu']}, {env['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2],
                        help="busy processes per condition (default 0 1 2)")
    parser.add_argument("--parts", nargs="+", default=["load", "torch", "thread", "train"],
                        choices=["load", "torch", "thread", "train"])
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--peers-venv", default=os.path.join(HERE, ".venv-peers"))
    parser.add_argument("--_ours-only", dest="ours_only", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.ours_only:
        _ours_only_child(args.ours_only)
        return 0
    plan = QUICK if args.quick else FULL
    import cusparseconv as csc
    spconv_libs, reason = suite.load_spconv(args.peers_venv)
    torch = spconv_libs[0] if spconv_libs else suite.load_torch()
    if torch is None:
        print("torch is not installed: nothing to measure here")
        return 1
    orders = {}
    if spconv_libs is not None:
        orders = {3: bc.spconv_kernel_order(torch, spconv_libs[1], 3, 1),
                  2: bc.spconv_kernel_order(torch, spconv_libs[1], 2, 2)}
    stamp = datetime.datetime.now()
    env = {"date": stamp.isoformat(timespec="seconds"), "machine": suite.machine_name(),
           "cpu": bc._cpu_name(), "cpu_count": os.cpu_count(),
           "cusparseconv_threads": csc.get_num_threads(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "spconv": spconv_libs[2] if spconv_libs else reason,
           "thread_environment": bc.thread_environment(), "loadavg_start": os.getloadavg(),
           "quick": args.quick, "loads": args.loads}
    env["sgemm_gflops_start"] = suite.sgemm_rate(env["cusparseconv_threads"])
    print(f"# {env['date']} {env['cpu']} ours {env['cusparseconv_threads']} threads, torch "
          f"{env['torch_threads']}, spconv {env['spconv']}, sgemm "
          f"{env['sgemm_gflops_start']:.0f} GFLOP/s, thread environment "
          f"{env['thread_environment'] or 'none'}", flush=True)
    gc.freeze()
    report = {}
    if "load" in args.parts:
        report["load"] = part_load(plan, args.loads, csc, spconv_libs, orders)
    if "torch" in args.parts:
        report["torch"] = part_torch(plan, csc, torch)
    if "thread" in args.parts:
        report["thread"] = part_thread(plan, csc, spconv_libs, orders)
    if "train" in args.parts:
        report["train"] = part_train(plan, args.loads, torch, spconv_libs)
    env["sgemm_gflops_end"] = suite.sgemm_rate(env["cusparseconv_threads"])
    env["loadavg_end"] = os.getloadavg()
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"conditions-{env['machine']}-"
                        f"{stamp.strftime('%Y-%m-%dT%H%M')}" + ("-quick" if args.quick else "")
                        + (f"-{args.tag}" if args.tag else ""))
    with open(base + ".json", "w") as f:
        json.dump({"environment": env, **report}, f, indent=1, default=str)
    write_markdown(base + ".md", env, report)
    written = [base + ".json", base + ".md"]
    try:
        write_chart(base + ".png", env, report)
        written.append(base + ".png")
    except ImportError as exc:
        print(f"# no chart: {exc} (pip install matplotlib)")
    print("# wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
