"""Where the network rows' time goes: per-layer forward times of our MinkUNet-style
network and spconv's (the networks of :mod:`benchmarks.run`), forward passes of
the two alternating, paired ratios per layer.

``python -m benchmarks.unet_layers WORKLOAD [--repeats R] [--threads T] [--cpu-time]``

Each layer's time is its sparse convolution on a fresh coordinate set as the
network runs it (kernel map and plan builds included where the layer is the
first on its map), without its batch norm and ReLU (the same torch calls in
both networks). Torch runs at ``--torch-threads`` for both networks (default 1;
the suite's network rows instead time spconv with torch at one and at two
threads and keep the faster); our convolutions at ``--threads``
(``cusparseconv.set_num_threads``).

``--cpu-time`` reads the calling thread's CPU time instead of the wall clock:
steady on a shared machine, but it counts only the calling thread, so it is a
fair comparison only with ``--threads 1`` and spconv's OpenMP at one thread
(``OMP_NUM_THREADS=1`` in your shell; nothing here sets it). Measured that way
on a loaded 2-core Xeon (motorcycle-1cm, 5 forwards): the whole forward ours /
spconv 1.13, the first layers at full resolution 0.9-1.26, the coarse levels
(C = 128, 256 on 3k-10k rows) and the stride-2 layers 1.2-1.35.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from benchmarks import bench_cpu as bc
from benchmarks import run as suite
from benchmarks import workloads as wl


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", help="a workload name of benchmarks.workloads "
                                         "(e.g. motorcycle-1cm) or surface-N")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per network")
    parser.add_argument("--threads", type=int, default=2, help="our threads")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch's threads")
    parser.add_argument("--cpu-time", action="store_true",
                        help="the calling thread's CPU time instead of the wall clock")
    parser.add_argument("--width", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--peers-venv", default=os.path.join(suite.HERE, ".venv-peers"),
                        help="venv holding spconv (default benchmarks/.venv-peers)")
    return parser.parse_args(argv)


def workload(name):
    if name.startswith("surface-") and name.split("-", 1)[1].isdigit():
        return wl.synthetic_workload("surface", int(name.split("-", 1)[1]))
    return wl.real_workload(name)


def timed_layers(times, clock):
    """A ``layer_timer`` for the networks' ``forward``: each convolution's time goes
    into ``times[index]``."""
    def layer_timer(index, convolve):
        start = clock()
        out = convolve()
        times.setdefault(index, []).append(clock() - start)
        return out
    return layer_timer


def main(argv=None):
    args = parse_args(argv)
    libs, reason = suite.load_spconv(args.peers_venv)
    if libs is None:
        sys.exit(f"spconv is needed: {reason}")
    torch, spt, _ = libs
    import cusparseconv as csc
    torch.set_num_threads(1)   # spconv's kernel-order probe needs it (benchmarks/README.md)
    orders = {3: bc.spconv_kernel_order(torch, spt, 3, 1),
              2: bc.spconv_kernel_order(torch, spt, 2, 2)}
    torch.set_num_threads(args.torch_threads)
    csc.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    coords = workload(args.workload).coords
    inputs = suite.UNetInputs(coords, 4, tuple(args.width), 20, 0)
    ours, peer = suite.OursUNet(torch, inputs), suite.SpconvUNet(libs, orders, inputs)
    times = {"ours": {}, "spconv": {}}
    totals = {"ours": [], "spconv": []}
    runs = {name: (lambda t, net=net: net.forward(timed_layers(t, clock)))
            for name, net in (("ours", ours), ("spconv", peer))}
    with torch.no_grad():
        for run in range(args.repeats + 1):        # the first forward of each is warm-up
            names = ("ours", "spconv") if run % 2 == 0 else ("spconv", "ours")
            for name in names:
                scratch = {} if run == 0 else times[name]
                start = clock()
                runs[name](scratch)
                if run:
                    totals[name].append(clock() - start)
    paired = [a / b for a, b in zip(totals["ours"], totals["spconv"])]
    unit = "CPU ms (calling thread)" if args.cpu_time else "ms"
    print(f"{args.workload}: {len(coords):,} voxels, ours {args.threads} threads, torch "
          f"{args.torch_threads}, {args.repeats} forwards each, {unit}")
    print(f"whole forward: ours {statistics.median(totals['ours']) * 1e3:.1f}, spconv "
          f"{statistics.median(totals['spconv']) * 1e3:.1f}, paired ours/spconv "
          f"{statistics.median(paired):.2f}")
    print(f"{'#':>3} {'layer':<6} {'level':>5} {'C in -> out':>12} {'ours':>8} {'spconv':>8} "
          f"{'paired':>7}")
    for index, (kind, level, c_in, c_out) in enumerate(inputs.plan):
        if index not in times["ours"]:
            continue
        a, b = times["ours"][index], times["spconv"][index]
        ratio = statistics.median([x / y for x, y in zip(a, b)])
        print(f"{index:>3} {kind:<6} {level:>5} {f'{c_in} -> {c_out}':>12} "
              f"{statistics.median(a) * 1e3:>8.1f} {statistics.median(b) * 1e3:>8.1f} "
              f"{ratio:>7.2f}")


if __name__ == "__main__":
    main()
