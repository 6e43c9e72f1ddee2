"""Where the time of a CPU product goes: gathers, GEMMs, sums, the rest.

``python -m benchmarks.breakdown [workload ...] [--channels 32 64] [--threads 1 2]``
from the repository root (default workloads: ``table-5mm``, ``motorcycle-1cm``,
``surface-50k``; 3x3x3 submanifold layer).

For each row two loops over the same kernel map, timed side by side:

``ours``
    the blocked forward product exactly as the CPU backend runs it (its plan,
    its worker pool, BLAS pinned to one thread per worker: the loop of
    ``cpu.gather_multiply_reduce``: windows sliced, the other offsets' rows
    gathered a group at a time; its output is checked bit for bit against
    ``conv_forward(..., algorithm="blocked")``), the weight gradient's
    loop (``cpu.conv_weight_grad``: both sides gathered, ``A^T @ dY``) and
    ``conv_backward``'s fused pass (both gradients from the input gradient's
    gathered rows; checked bit for bit against ``conv_backward``);
``torch``
    the loop of spconv's CPU path written with torch operations (per offset:
    ``index_select`` of the pairs' input rows, ``mm`` (MKL), ``index_add_``
    into the output; the weight gradient: two ``index_select`` and ``mm``)
    at the same thread count; spconv's own gather and scatter kernels are not
    used, so this measures the primitives' cost, not spconv itself (``run.py``
    times spconv).

Each phase is timed by subtraction: the loop as it is, then without that
phase (a contiguous slice of the same length instead of a gather; no
multiply; no sum), rounds interleaved, medians. ``phase = full - without``;
``rest = full - sum of phases`` (Python, allocation, zeroing; negative when
the phases overlap in the caches). Per unit: ns per gathered row, ns per GEMM
row (2 C_in C_out flops) and the GEMM rate, ns per sum entry.

Results: ``benchmarks/results/breakdown-<machine>-<date>.json`` and ``.md``.
Nothing sets an environment variable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np

from benchmarks import run as suite
from benchmarks import workloads as wl

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WORKLOADS = ("table-5mm", "motorcycle-1cm", "surface-50k")
_SYNTHETIC = {"surface-50k": ("surface", 50_000), "surface-200k": ("surface", 200_000),
              "lidar-136k": ("lidar", 136_000)}


def load_workload(name):
    """A real scan of :mod:`benchmarks.workloads` or a synthetic scene of the suite."""
    if name in _SYNTHETIC:
        return wl.synthetic_workload(*_SYNTHETIC[name])
    return wl.real_workload(name)


def _interleaved(functions: dict, rounds: int) -> dict:
    """Median seconds of each function, the functions called in turn every round."""
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _phase_times(run, phases, rounds: int) -> dict:
    """Time ``run()`` and ``run(phase=False)`` for each phase, interleaved; the phases'
    times (ms) by subtraction (:func:`_phases`)."""
    variants = {"full": run}
    for phase in phases:
        variants[f"no_{phase}"] = lambda phase=phase: run(**{phase: False})
    return _phases(_interleaved(variants, rounds), phases)


def _phases(medians: dict, phases) -> dict:
    """Phase times (ms) by subtraction from the full loop; ``rest`` what is left."""
    full = medians["full"]
    out = {"total_ms": full * 1e3}
    for phase in phases:
        out[f"{phase}_ms"] = (full - medians[f"no_{phase}"]) * 1e3
    out["rest_ms"] = out["total_ms"] - sum(out[f"{p}_ms"] for p in phases)
    return out


class OursForward:
    """The blocked forward product as the CPU backend runs it, with phases switchable."""

    def __init__(self, csc, kmap, feats, weight):
        from cusparseconv.backends import _cpu_plan
        self.csc, self.kmap, self.plan_module = csc, kmap, _cpu_plan
        self.src, self.weight = feats, weight
        self.c_out = weight.shape[2]
        self.plan = _cpu_plan.plan_for(kmap, feats.shape[1], self.c_out, feats.dtype)
        self.out = np.zeros((kmap.n_out, self.c_out), dtype=feats.dtype)
        # what the loop without gathers reads instead: contiguous rows, as many as gathered
        longest = max((b.n_products for b in self.plan.blocks), default=0)
        self.stand_in = np.resize(feats, (max(longest, 1), feats.shape[1]))

    def run(self, gather=True, gemm=True, sum=True):  # noqa: A002 - a phase's name
        from cusparseconv._threads import parallel_for
        plan, kmap, src, weight, out = self.plan, self.kmap, self.src, self.weight, self.out
        row_bytes = src.shape[1] * src.itemsize
        out[...] = 0
        plan.make_sums(kmap)

        def run_block(block):
            products = np.empty((block.n_products, self.c_out), dtype=src.dtype)
            items = block.items
            for k, window, start, length, base, _, _ in items:
                if window and gemm:
                    np.matmul(src[start:start + length], weight[k],
                              out=products[base:base + length])
            index, groups = plan.gathers(kmap, block, row_bytes)
            for first, last, members in groups:
                if gather:
                    gathered = src.take(index[first:last], axis=0)
                else:   # the same number of rows, contiguous
                    gathered = self.stand_in[:last - first]
                at = 0
                for p in members:
                    k, _, _, length, base, _, _ = items[p]
                    if gemm:
                        np.matmul(gathered[at:at + length], weight[k],
                                  out=products[base:base + length])
                    at += length
            if sum:
                self.plan_module.add_products(plan, block, kmap, products,
                                              out[block.first:block.last])

        parallel_for(run_block, plan.blocks)
        return out

    def counts(self):
        blocks = self.plan.blocks
        gathered = sum(item[3] for b in blocks for item in b.items if not item[1])
        product_rows = sum(b.n_products for b in blocks)
        return {"gathered_rows": int(gathered), "gemm_rows": int(product_rows),
                "sum_entries": int(self.kmap.n_pairs),
                "gemm_calls": int(sum(len(b.items) for b in blocks))}


class OursWeightGrad:
    """The blocked weight gradient's loop (``cpu.conv_weight_grad``), phases switchable."""

    def __init__(self, csc, kmap, feats, grad_out):
        from cusparseconv.backends import cpu
        self.kmap, self.src, self.dst = kmap, feats, grad_out
        self.rows_of_table = cpu.rows_of_table    # a slice for consecutive rows, else take
        self.pairs, self.chunk = cpu._WGRAD_PAIRS, cpu._WGRAD_CHUNK
        self.stand_ins = (np.resize(feats, (self.chunk, feats.shape[1])),
                          np.resize(grad_out, (self.chunk, grad_out.shape[1])))
        self.items = []
        for k in range(kmap.kernel_volume):
            start, stop = int(kmap.pair_offsets[k]), int(kmap.pair_offsets[k + 1])
            for first in range(start, stop, self.pairs):
                self.items.append((k, first, min(stop, first + self.pairs)))

    def run(self, gather=True, gemm=True):
        from cusparseconv._threads import parallel_for
        kmap, src, dst = self.kmap, self.src, self.dst
        in_rows_all, out_rows_all = kmap.in_rows, kmap.out_rows
        partials = [None] * len(self.items)

        def rows_of(table, rows, side):
            if gather:
                return self.rows_of_table(table, rows)
            return self.stand_ins[side][:rows.shape[0]]   # as many rows, contiguous

        def run_item(index):
            k, first, last = self.items[index]
            partial = None
            for begin in range(first, last, self.chunk):
                end = min(last, begin + self.chunk)
                a = rows_of(src, in_rows_all[begin:end], 0)
                b = rows_of(dst, out_rows_all[begin:end], 1)
                if gemm:
                    term = a.T @ b
                    partial = term if partial is None else partial + term
            partials[index] = partial

        parallel_for(run_item, range(len(self.items)))
        grad = np.zeros((kmap.kernel_volume, src.shape[1], dst.shape[1]), dtype=src.dtype)
        if gemm:
            for (k, _, _), partial in zip(self.items, partials):
                grad[k] += partial
        return grad


class OursBackward:
    """The fused pass of ``conv_backward`` (``cpu._input_and_weight_grad`` inside
    ``cpu.gather_multiply_reduce``) as the CPU backend runs it, phases switchable:
    ``gather`` (the output-gradient rows taken for the input gradient, the unpaired
    window rows dropped and the block's own input rows taken for the weight
    gradient), ``gemm`` (the input gradient's ``G @ W[k]^T``), ``wgemm`` (the
    weight gradient's ``X^T @ G``) and ``sum`` (the input gradient's sparse sums).
    Only for maps where ``conv_backward`` takes the fused pass (checked)."""

    def __init__(self, csc, kmap, feats, weight, grad_out):
        from cusparseconv.backends import _cpu_plan, cpu
        self.plan_module = _cpu_plan
        self.x, self.src = feats, grad_out
        c_in = feats.shape[1]
        self.reverse, _, self.transposed = cpu._input_grad_operands(kmap, weight, "standard")
        self.weight_index = (np.asarray(_cpu_plan.mirror_of(kmap)) if self.reverse is kmap
                             else np.arange(kmap.kernel_volume)).tolist()
        self.plan = _cpu_plan.plan_for(self.reverse, grad_out.shape[1], c_in, feats.dtype)
        self.out = np.zeros((kmap.n_in, c_in), dtype=feats.dtype)
        self.terms = np.zeros((len(self.plan.blocks), kmap.kernel_volume, c_in,
                               grad_out.shape[1]), dtype=feats.dtype)
        longest = max((b.n_products for b in self.plan.blocks), default=0)
        self.stand_ins = (np.resize(grad_out, (max(longest, 1), grad_out.shape[1])),
                          np.resize(feats, (max(longest, 1), c_in)))

    def run(self, gather=True, gemm=True, wgemm=True, sum=True):  # noqa: A002
        from cusparseconv._threads import parallel_for
        plan, reverse, src, x = self.plan, self.reverse, self.src, self.x
        transposed, weight_index, terms, out = (self.transposed, self.weight_index,
                                                self.terms, self.out)
        pair_rows = reverse.in_rows
        row_bytes = src.shape[1] * src.itemsize
        out[...] = 0
        terms[...] = 0
        plan.make_sums(reverse)

        def run_block(block):
            products = np.empty((block.n_products, out.shape[1]), dtype=src.dtype)
            items = block.items
            _, rows = plan.sum_layout(reverse, block)
            x_rows = (x[block.first:block.last].take(rows, axis=0) if gather
                      else self.stand_ins[1][:rows.shape[0]])
            starts = np.cumsum([0] + [item[6] - item[5] for item in items]).tolist()
            block_terms = terms[block.index]

            def visit(p, g):
                k, window, start, length, _, begin, end = items[p]
                if window and length != end - begin:
                    g = (g.take(pair_rows[begin:end] - start, axis=0) if gather
                         else self.stand_ins[0][:end - begin])
                if wgemm:
                    np.matmul(x_rows[starts[p]:starts[p + 1]].T, g,
                              out=block_terms[weight_index[k]])

            for p, (k, window, start, length, base, _, _) in enumerate(items):
                if window:
                    rows_in = src[start:start + length]
                    if gemm:
                        np.matmul(rows_in, transposed[k], out=products[base:base + length])
                    visit(p, rows_in)
            index, groups = plan.gathers(reverse, block, row_bytes)
            for first, last, members in groups:
                gathered = (src.take(index[first:last], axis=0) if gather
                            else self.stand_ins[0][:last - first])
                at = 0
                for p in members:
                    k, _, _, length, base, _, _ = items[p]
                    rows_in = gathered[at:at + length]
                    if gemm:
                        np.matmul(rows_in, transposed[k], out=products[base:base + length])
                    visit(p, rows_in)
                    at += length
            if sum:
                self.plan_module.add_products(plan, block, reverse, products,
                                              out[block.first:block.last])

        parallel_for(run_block, plan.blocks)
        return out, terms.sum(axis=0)

    def counts(self):
        blocks = self.plan.blocks
        gathered = sum(item[3] for b in blocks for item in b.items if not item[1])
        return {"gathered_rows": int(gathered + self.reverse.n_pairs),
                "gemm_rows": int(sum(b.n_products for b in blocks)),
                "wgemm_rows": int(self.reverse.n_pairs),
                "sum_entries": int(self.reverse.n_pairs)}


class TorchLoop:
    """spconv's CPU loop with torch operations: per offset gather, ``mm``, scatter-add."""

    def __init__(self, torch, kmap, feats, weight, grad_out):
        self.torch = torch
        self.feats, self.weight = torch.from_numpy(feats), torch.from_numpy(weight)
        self.grad_out = torch.from_numpy(grad_out)
        self.n_out, self.c_out = kmap.n_out, weight.shape[2]
        self.pairs = []
        for k in range(kmap.kernel_volume):
            begin, end = int(kmap.pair_offsets[k]), int(kmap.pair_offsets[k + 1])
            if end > begin:
                self.pairs.append((k, torch.from_numpy(kmap.in_rows[begin:end].astype(np.int64)),
                                   torch.from_numpy(kmap.out_rows[begin:end].astype(np.int64))))

    def forward(self, gather=True, gemm=True, sum=True):  # noqa: A002 - a phase's name
        torch, feats, weight = self.torch, self.feats, self.weight
        out = torch.zeros((self.n_out, self.c_out), dtype=feats.dtype)
        with torch.no_grad():
            for k, rows_in, rows_out in self.pairs:
                n = rows_in.shape[0]
                rows = feats.index_select(0, rows_in) if gather else feats[:n]
                product = torch.mm(rows, weight[k]) if gemm else rows[:, :self.c_out]
                if sum:
                    out.index_add_(0, rows_out, product)
        return out

    def weight_grad(self, gather=True, gemm=True):
        torch, feats, grad_out = self.torch, self.feats, self.grad_out
        grad = torch.zeros(self.weight.shape, dtype=feats.dtype)
        with torch.no_grad():
            for k, rows_in, rows_out in self.pairs:
                n = rows_in.shape[0]
                a = feats.index_select(0, rows_in) if gather else feats[:n]
                b = grad_out.index_select(0, rows_out) if gather else grad_out[:n]
                if gemm:
                    grad[k] = torch.mm(a.t(), b)
        return grad


def breakdown_row(csc, torch, workload, channels, threads, rounds, seed=0):
    """One row: ours and torch's loops of the forward and the weight gradient."""
    rng = np.random.default_rng(seed)
    coords = workload.coords
    feats = rng.standard_normal((len(coords), channels), dtype=np.float32)
    grad_out = rng.standard_normal((len(coords), channels), dtype=np.float32)
    weight = (rng.standard_normal((27, channels, channels), dtype=np.float32)
              / np.float32(np.sqrt(27 * channels)))
    kmap, _, _ = csc.layer_kernel_map(csc.SparseTensor(coords, feats[:, :1]), 3)
    before = csc.get_num_threads()
    csc.set_num_threads(threads)
    try:
        return _measure_row(csc, torch, workload, kmap, feats, weight, grad_out, threads, rounds)
    finally:
        csc.set_num_threads(before)


def _measure_row(csc, torch, workload, kmap, feats, weight, grad_out, threads, rounds):
    from cusparseconv._threads import blas_pinned
    from cusparseconv.backends import backend_for
    channels = feats.shape[1]
    flops_per_row = 2 * channels * channels
    row = {"workload": workload.name, "layer": "subm3", "channels": channels,
           "threads": threads, "n_in": int(len(feats)), "n_pairs": int(kmap.n_pairs),
           "occupancy": float(kmap.n_pairs / max(27 * kmap.n_out, 1)),
           "chosen_forward": backend_for(feats).choose_algorithm(
               "forward", feats, weight, kmap, "standard", channels)[0]}
    forward = OursForward(csc, kmap, feats, weight)
    reference = csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    if not np.array_equal(forward.run(), reference):
        raise AssertionError("the breakdown's loop is not the backend's blocked forward")
    wgrad = OursWeightGrad(csc, kmap, feats, grad_out)
    np.testing.assert_allclose(wgrad.run(), csc.conv_weight_grad(feats, grad_out, kmap,
                                                                 algorithm="blocked"),
                               rtol=1e-4, atol=1e-4)
    backward = OursBackward(csc, kmap, feats, weight, grad_out)
    grad_in, grad_weight = backward.run()
    api_in, api_weight = csc.conv_backward(feats, grad_out, weight, kmap)
    if not (np.array_equal(grad_in, api_in) and np.array_equal(grad_weight, api_weight)):
        raise AssertionError("the breakdown's loop is not conv_backward's fused pass")
    counts = forward.counts()
    with blas_pinned():
        ours = _phase_times(forward.run, ("gather", "gemm", "sum"), rounds)
        ours_w = _phase_times(wgrad.run, ("gather", "gemm"), rounds)
        ours_b = _phase_times(backward.run, ("gather", "gemm", "wgemm", "sum"), rounds)
    ours.update(counts)
    _per_unit(ours, counts["gathered_rows"], counts["gemm_rows"], counts["sum_entries"],
              flops_per_row)
    _per_unit(ours_w, 2 * kmap.n_pairs, kmap.n_pairs, 0, flops_per_row)
    backward_counts = backward.counts()
    ours_b.update(backward_counts)
    _per_unit(ours_b, backward_counts["gathered_rows"], backward_counts["gemm_rows"],
              backward_counts["sum_entries"], flops_per_row)
    if ours_b["wgemm_ms"] > 0:
        ours_b["wgemm_gflops"] = kmap.n_pairs * flops_per_row / (ours_b["wgemm_ms"] * 1e6)
    row["ours"] = {"forward": ours, "weight_grad": ours_w, "backward": ours_b}
    apis = _interleaved({"forward": lambda: csc.conv_forward(feats, weight, kmap),
                         "backward": lambda: csc.conv_backward(feats, grad_out, weight, kmap)},
                        rounds)
    row["ours"]["forward_api_ms"] = apis["forward"] * 1e3
    row["ours"]["backward_api_ms"] = apis["backward"] * 1e3
    if torch is None:
        row["torch"] = {"skipped": "torch not installed"}
        return row
    loop = TorchLoop(torch, kmap, feats, weight, grad_out)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        np.testing.assert_allclose(loop.forward().numpy(), reference, rtol=1e-4, atol=1e-4)
        theirs = _phase_times(loop.forward, ("gather", "gemm", "sum"), rounds)
        theirs_w = _phase_times(loop.weight_grad, ("gather", "gemm"), rounds)
    finally:
        torch.set_num_threads(torch_threads)
    _per_unit(theirs, kmap.n_pairs, kmap.n_pairs, kmap.n_pairs, flops_per_row)
    _per_unit(theirs_w, 2 * kmap.n_pairs, kmap.n_pairs, 0, flops_per_row)
    row["torch"] = {"forward": theirs, "weight_grad": theirs_w, "version": torch.__version__}
    return row


def _per_unit(phases, gathered, gemm_rows, entries, flops_per_row):
    """Add ns per gathered row, per GEMM row, per sum entry and the GEMM rate."""
    if gathered:
        phases["ns_per_gathered_row"] = phases["gather_ms"] * 1e6 / gathered
    if gemm_rows:
        phases["ns_per_gemm_row"] = phases["gemm_ms"] * 1e6 / gemm_rows
        if phases["gemm_ms"] > 0:
            phases["gemm_gflops"] = gemm_rows * flops_per_row / (phases["gemm_ms"] * 1e6)
    if entries and "sum_ms" in phases:
        phases["ns_per_sum_entry"] = phases["sum_ms"] * 1e6 / entries


def _cells(phases, keys):
    return [f"{phases[k]:.1f}" if k in phases else "" for k in keys]


def write_markdown(path, env, rows):
    keys = ("total_ms", "gather_ms", "gemm_ms", "wgemm_ms", "sum_ms", "rest_ms")
    units = ("ns_per_gathered_row", "ns_per_gemm_row", "gemm_gflops", "wgemm_gflops",
             "ns_per_sum_entry")
    lines = [f"{env['date']}, {env['cpu']}, medians of {env['rounds']} interleaved rounds, "
             f"torch {env.get('torch', 'absent')}, thread environment {env['thread_env']}", "",
             "Phases by subtraction (see `benchmarks/breakdown.py`). Forward: ours is the "
             "backend's blocked product; torch is spconv's CPU loop written with torch ops.", "",
             "Backward: ours is `conv_backward`'s fused pass (input gradient GEMMs, "
             "weight gradient GEMMs `wgemm`, both from the same gathered rows).", "",
             "| workload | C | threads | occupancy | product | library | total ms | gather ms "
             "| GEMM ms | wGEMM ms | sum ms | rest ms | ns / gathered row | ns / GEMM row "
             "| GEMM GFLOP/s | wGEMM GFLOP/s | ns / sum entry |", "|" + "---|" * 17]
    for row in rows:
        for product in ("forward", "weight_grad", "backward"):
            for lib in ("ours", "torch"):
                phases = row.get(lib, {}).get(product)
                if phases is None:
                    continue
                lines.append("| " + " | ".join(
                    [row["workload"], str(row["channels"]), str(row["threads"]),
                     f"{row['occupancy']:.0%}", product, lib]
                    + _cells(phases, keys) + _cells(phases, units)) + " |")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workloads", nargs="*", default=list(DEFAULT_WORKLOADS))
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-torch", action="store_true", help="ours only")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import cusparseconv as csc
    torch = None if args.no_torch else suite.load_torch()
    env = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "cpu": suite.machine_name(), "rounds": args.rounds,
           "thread_env": {k: v for k, v in os.environ.items()
                          if k.startswith(("OMP_", "OPENBLAS_", "MKL_", "KMP_"))
                          or k.endswith("_NUM_THREADS")}}
    if torch is not None:
        env["torch"] = torch.__version__
    rows = []
    for name in args.workloads:
        workload = load_workload(name)
        for channels in args.channels:
            for threads in args.threads:
                row = breakdown_row(csc, torch, workload, channels, threads, args.rounds)
                rows.append(row)
                fwd = row["ours"]["forward"]
                bwd = row["ours"]["backward"]
                print(f"{name} C={channels} threads={threads}: ours fwd {fwd['total_ms']:.1f} ms "
                      f"(gather {fwd['gather_ms']:.1f}, GEMM {fwd['gemm_ms']:.1f}, "
                      f"sum {fwd['sum_ms']:.1f}); bwd {bwd['total_ms']:.1f} ms (gather "
                      f"{bwd['gather_ms']:.1f}, GEMM {bwd['gemm_ms']:.1f}, weight GEMM "
                      f"{bwd['wgemm_ms']:.1f}, sum {bwd['sum_ms']:.1f})", flush=True)
    stamp = env["date"][:16].replace(":", "")
    tag = f"-{args.tag}" if args.tag else ""
    base = os.path.join(args.out_dir, f"breakdown-{env['cpu']}-{stamp}{tag}")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(base + ".json", "w") as handle:
        json.dump({"env": env, "rows": rows}, handle, indent=1)
    write_markdown(base + ".md", env, rows)
    print(f"wrote {base}.json, {base}.md")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
