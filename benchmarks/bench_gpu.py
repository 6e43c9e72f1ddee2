"""GPU benchmark: every algorithm of every product against a same-flop dense GEMM.

For each workload (a synthetic room surface from ``scenes.py`` and, when its
data is installed, the Motorcycle scan), dtype and channel count C -> C it
reports, after checking every algorithm's output against the CPU backend:

* the kernel-map build time (hash table, both neighbour tables, pair tables);
* per product (forward, input gradient, weight gradient) and algorithm: the
  backend's default choice (``algorithm`` ``default (<name>)``: what a user's call
  runs, the tuner switched off so that it is the heuristic's pick), every
  algorithm of ``tuning.ALGORITHMS`` forced, and every tile shape of the
  tensor-core products (``tensor_core:<shape>``; float16 and bfloat16, float32
  only with ``--tf32``, which also makes TF32 the float32 default): the
  median time over CUDA-event-timed runs after warm-up, achieved TFLOP/s
  (2 * pairs * C_in * C_out) and GB/s (gathered rows read, weights read,
  output written once);
* the time of a dense cuBLAS GEMM of the same flop count, (pairs x C_in) @
  (C_in x C_out), measured in the same run: ``ours / dense`` is our distance
  to the hardware;
* a roofline floor per record (``perf_model.py``), from two rates measured in
  the same run: the dense GEMM rate of the dtype (a large square cuBLAS GEMM)
  and the device copy bandwidth (a large device-to-device copy): ``floor_ms =
  max(flops / gemm rate, min_bytes / copy bandwidth)``, where ``min_bytes`` is
  the fewest bytes the product must move (source features once, weights once,
  result once, 4 bytes of map per pair), and ``ratio_to_floor = ms / floor_ms``;
* the kernel-map build three ways, each with CUDA events (device time, including
  the one host read) and the wall time with Python dispatch beside it: the
  backend's build, the tiled build (``_kmap_gpu.build_pair_tables``, hash table
  included) and, as the reference, a device sort of the same packed keys;
* ``torch.nn.functional.conv3d`` (cuDNN) on the densified grid where the grid
  fits in memory and a CUDA build of PyTorch is importable;
* the CuPy memory pool's footprint after each product (a peak-memory proxy).

``--emulate`` runs the same code on tiny inputs under the host emulation of
the kernels (NumPy arrays, perf_counter timings): a smoke test that CI runs so
that this script cannot rot; its numbers mean nothing.

Usage::

    python benchmarks/bench_gpu.py                      # on a GPU machine
    python benchmarks/bench_gpu.py --emulate --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import perf_model  # noqa: E402  (benchmarks/perf_model.py)

import cusparseconv as csc  # noqa: E402
from cusparseconv import tuning  # noqa: E402
from cusparseconv.backends import _kmap_gpu, cpu, get_backend  # noqa: E402
from cusparseconv.backends import _tensor_core as tc  # noqa: E402
from cusparseconv.backends._launch import device_launcher, emulated_launcher  # noqa: E402
from cusparseconv.coords import pack  # noqa: E402

PRODUCTS = ("forward", "input_grad", "weight_grad")


class Device:
    """Array module, backend and timer of a real device or of the emulation."""

    def __init__(self, emulate: bool):
        self.emulated = emulate
        self.backend = get_backend("cuda-emulated" if emulate else "cuda")
        self.launcher = emulated_launcher() if emulate else device_launcher()
        self.xp = self.launcher.xp
        if emulate:
            self.name = "host-emulation"
        else:
            import cupy

            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
            self.name = props["name"].decode() if isinstance(props["name"], bytes) else str(
                props["name"])

    def put(self, array):
        return array if self.emulated else self.xp.asarray(array)

    def get(self, array):
        return array if self.emulated else self.xp.asnumpy(array)

    def time_ms(self, function, repeats: int, warmup: int = 1) -> float:
        """Median wall time of ``function`` in ms (CUDA events on a device)."""
        for _ in range(warmup):
            function()
        times = []
        if self.emulated:
            for _ in range(repeats):
                start = time.perf_counter()
                function()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)
        import cupy

        for _ in range(repeats):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            function()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop))
        return statistics.median(times)

    def time_both_ms(self, function, repeats: int, warmup: int = 1) -> tuple:
        """(median device time by CUDA events, median wall time with Python dispatch),
        both in ms; under emulation both are wall times."""
        for _ in range(warmup):
            function()
        wall = []
        for _ in range(repeats):
            self.synchronize()
            start = time.perf_counter()
            function()
            self.synchronize()
            wall.append((time.perf_counter() - start) * 1e3)
        return self.time_ms(function, repeats, warmup=0), statistics.median(wall)

    def synchronize(self):
        if not self.emulated:
            self.xp.cuda.get_current_stream().synchronize()

    def pool_bytes(self) -> int:
        if self.emulated:
            return 0
        import cupy

        return int(cupy.get_default_memory_pool().total_bytes())


def workloads(args):
    from scenes import surface_scene

    if args.emulate:
        rng = np.random.default_rng(0)
        coords = np.unique(rng.integers(0, 9, size=(300, 4)), axis=0).astype(np.int32)
        coords[:, 0] = 0
        yield "tiny-random", np.unique(coords, axis=0)
        return
    for n in args.voxels:
        yield f"surface-{n // 1000}k", surface_scene(n)
    try:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))), "examples"))
        from real_scans import load_motorcycle  # examples/real_scans.py

        points, _ = load_motorcycle(with_colors=False)
        yield "motorcycle-5mm", csc.voxelize(points, 0.005)[0]
    except (ImportError, OSError) as error:
        print(f"motorcycle scan skipped: {error}")


def check_close(got, expected, dtype, what, tf32=False):
    tolerance = (5e-3 if tf32 else 1e-4) if np.dtype(dtype) == np.float32 else 2e-2
    expected = np.asarray(expected, np.float64)
    error = np.abs(np.asarray(got, np.float64) - expected).max(initial=0.0)
    scale = max(1.0, np.abs(expected).max(initial=0.0))
    if error > tolerance * scale:
        raise AssertionError(f"{what}: max error {error:.3g} exceeds {tolerance * scale:.3g}")
    return float(error / scale)


def dense_gemm_ms(device, n_pairs, c_in, c_out, dtype, repeats):
    xp = device.xp
    a = xp.ones((max(n_pairs, 1), c_in), dtype=dtype)
    b = xp.ones((c_in, c_out), dtype=dtype)
    return device.time_ms(lambda: xp.matmul(a, b), repeats)


def roofline_rates(device, dtypes, repeats):
    """{"copy_gbps": device copy bandwidth, "gemm_tflops": {dtype: dense GEMM rate}}."""
    xp = device.xp
    n_bytes = (1 << 28) if not device.emulated else (1 << 20)
    source = xp.ones(n_bytes // 4, dtype=np.float32)
    target = xp.empty_like(source)
    copy_ms = device.time_ms(lambda: xp.copyto(target, source), repeats)
    rates = {"copy_gbps": 2 * n_bytes / copy_ms / 1e6, "gemm_tflops": {}}
    size = 8192 if not device.emulated else 128
    for name in dtypes:
        a = xp.ones((size, size), dtype=name)
        gemm_ms = device.time_ms(lambda: xp.matmul(a, a), repeats)
        rates["gemm_tflops"][name] = 2 * size ** 3 / gemm_ms / 1e9
    return rates


def cudnn_ms(coords, channels, dtype, repeats, max_elements=2**31):
    """torch conv3d on the densified grid (None when not possible)."""
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    if not torch.cuda.is_available():
        return None, "torch has no CUDA"
    extent = coords[:, 1:].max(axis=0) - coords[:, 1:].min(axis=0) + 1
    if int(np.prod(extent)) * channels > max_elements // 4:
        return None, f"grid {tuple(int(e) for e in extent)} too large"
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[np.dtype(dtype).name]
    grid = torch.zeros((1, channels, *[int(e) for e in extent]), dtype=torch_dtype,
                       device="cuda")
    weight = torch.ones((channels, channels, 3, 3, 3), dtype=torch_dtype, device="cuda")
    for _ in range(2):
        torch.nn.functional.conv3d(grid, weight, padding=1)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.nn.functional.conv3d(grid, weight, padding=1)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), None


def build_tables(device, coords_dev, offsets):
    """Both directions of the submanifold map by the tiled build (hash table included)."""
    launcher, xp = device.launcher, device.xp
    table, duplicates = _kmap_gpu.insert_keys(launcher, pack(coords_dev),
                                              xp.arange(coords_dev.shape[0], dtype=np.int64))
    return _kmap_gpu.build_pair_tables(launcher, coords_dev, coords_dev, offsets,
                                       (1,) * (coords_dev.shape[1] - 1), False, table,
                                       same_set=True, duplicates=(duplicates,))


def map_records(device, name, coords, coords_dev, offsets, n_pairs, repeats):
    """The kernel-map build three ways, each timed by events and by the wall clock."""
    keys = pack(coords_dev)
    xp = device.xp

    def backend_build():  # a fresh SortedKeys each time: the hash table is rebuilt too
        return device.backend.build_kernel_map(
            coords_dev, coords_dev, offsets, (1, 1, 1), False, same_set=True,
            in_keys=csc.coords.SortedKeys(coords_dev))

    builds = {"backend build": backend_build,
              "tiled build (_kmap_gpu)": lambda: build_tables(device, coords_dev, offsets),
              "device sort of the packed keys": lambda: xp.sort(keys)}
    records = []
    for what, function in builds.items():
        reads = device.launcher.host_reads
        function()
        host_reads = device.launcher.host_reads - reads
        event_ms, wall_ms = device.time_both_ms(function, repeats)
        records.append(dict(workload=name, voxels=len(coords), pairs=n_pairs, build=what,
                            ms=event_ms, wall_ms=wall_ms, host_reads=host_reads))
        print(f"  map: {what:<32}{event_ms:9.3f} ms (events) {wall_ms:9.3f} ms (wall), "
              f"{host_reads} host read(s)")
    return records


def product_calls(device, kmap, feats_d, weight_d, grad_d, channels, dtype, allow_tf32):
    """{(product, algorithm): call}: the default choice, every algorithm forced, and every
    tile shape of the tensor-core products where they run this dtype."""
    backend = device.backend
    run = {
        "forward": lambda a: backend.conv_forward(feats_d, weight_d, kmap, "standard",
                                                  channels, algorithm=a),
        "input_grad": lambda a: backend.conv_input_grad(grad_d, weight_d, kmap, "standard",
                                                        channels, algorithm=a),
        "weight_grad": lambda a: backend.conv_weight_grad(feats_d, grad_d, kmap, "standard",
                                                          weight_d.shape, algorithm=a),
    }
    on_tensor_cores = tc.supports(dtype, allow_tf32)
    calls = {}
    for product in PRODUCTS:
        names = [a for a in tuning.ALGORITHMS[product]
                 if a != "tensor_core" or on_tensor_cores]
        if on_tensor_cores and product != "weight_grad":
            names += [f"tensor_core:{shape}" for shape in tc.variants_for(dtype, channels,
                                                                           channels)]
        for name in names:
            calls[product, name] = lambda p=product, a=name: run[p](a)
        calls[product, "default"] = lambda p=product: run[p](None)
    return calls


def run(args):
    device = Device(args.emulate)
    tuning.set_autotune(False)  # every algorithm is timed explicitly here
    tuning.set_allow_tf32(args.tf32)
    offsets = csc.kernel_offsets(3)
    records, maps = [], []
    rates = roofline_rates(device, args.dtypes, args.repeats)
    print(f"roofline: copy {rates['copy_gbps']:.0f} GB/s, dense GEMM "
          + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in rates["gemm_tflops"].items()))
    for name, coords in workloads(args):
        coords_dev = device.put(coords)
        kmap = device.backend.build_kernel_map(coords_dev, coords_dev, offsets, (1, 1, 1), False,
                                               same_set=True,
                                               in_keys=csc.coords.SortedKeys(coords_dev))
        reference_map = cpu.build_kernel_map(coords, coords, offsets, (1, 1, 1), False,
                                             same_set=True)
        n_pairs = kmap.n_pairs
        print(f"{name}: {len(coords):,} voxels, {n_pairs:,} pairs")
        maps += map_records(device, name, coords, coords_dev, offsets, n_pairs, args.repeats)
        map_ms = maps[-3]["ms"]
        for dtype_name in args.dtypes:
            dtype = np.dtype(dtype_name)
            for channels in args.channels:
                rng = np.random.default_rng(channels)
                feats = rng.standard_normal((len(coords), channels)).astype(dtype)
                weight = (rng.standard_normal((27, channels, channels)) /
                          np.sqrt(27 * channels)).astype(dtype)
                grad_out = rng.standard_normal((len(coords), channels)).astype(dtype)
                feats_d, weight_d, grad_d = map(device.put, (feats, weight, grad_out))
                expected = {
                    "forward": cpu.conv_forward(feats, weight, reference_map, "standard",
                                                channels),
                    "input_grad": cpu.conv_input_grad(grad_out, weight, reference_map,
                                                      "standard", channels),
                    "weight_grad": cpu.conv_weight_grad(feats, grad_out, reference_map,
                                                        "standard", weight.shape),
                }
                calls = product_calls(device, kmap, feats_d, weight_d, grad_d, channels,
                                      dtype, args.tf32)
                tf32 = args.tf32 and dtype == np.float32
                dense = dense_gemm_ms(device, n_pairs, channels, channels, dtype, args.repeats)
                cudnn, cudnn_note = (None, "emulation") if args.emulate else cudnn_ms(
                    coords, channels, dtype, args.repeats)
                gemm_rate = rates["gemm_tflops"][dtype_name]
                for (product, algorithm), call in sorted(
                        calls.items(), key=lambda item: PRODUCTS.index(item[0][0])):
                    error = check_close(device.get(call()), expected[product], dtype,
                                        f"{name} {dtype_name} C={channels} {product} "
                                        f"{algorithm}",
                                        tf32=tf32 and algorithm.startswith(("default",
                                                                            "tensor_core")))
                    ms = device.time_ms(call, args.repeats)
                    if algorithm == "default":
                        algorithm = f"default ({device.backend.last_algorithm[product]})"
                    work = perf_model.product_work(product, len(coords), len(coords), n_pairs,
                                                   27, channels, channels, dtype.itemsize)
                    floor_ms = perf_model.floor_ms(work["flops"], work["min_bytes"], gemm_rate,
                                                   rates["copy_gbps"])
                    record = dict(workload=name, voxels=len(coords), pairs=n_pairs,
                                  dtype=dtype_name, channels=channels, product=product,
                                  algorithm=algorithm,
                                  ms=ms, map_ms=map_ms, flops=work["flops"],
                                  min_bytes=work["min_bytes"],
                                  tflops=work["flops"] / ms / 1e9,
                                  gbps=work["min_bytes"] / ms / 1e6,
                                  dense_gemm_ms=dense, ratio_to_dense=ms / dense,
                                  floor_ms=floor_ms, ratio_to_floor=ms / floor_ms,
                                  cudnn_ms=cudnn, cudnn_note=cudnn_note,
                                  max_relative_error=error,
                                  pool_bytes=device.pool_bytes())
                    records.append(record)
                    print(f"  {dtype_name} C={channels:<4} {product:<11} {algorithm:<30}"
                          f"{ms:9.3f} ms {record['tflops']:7.2f} TFLOP/s "
                          f"x{record['ratio_to_dense']:.2f} dense "
                          f"x{record['ratio_to_floor']:.2f} floor")
    return device, records, rates, maps


def write(device, records, path, chart, rates=None, maps=()):
    meta = dict(device=device.name, date=datetime.date.today().isoformat(),
                host=platform.node(), cusparseconv=csc.__version__, roofline=rates)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(dict(meta=meta, records=records, maps=list(maps)), handle, indent=1)
    print(f"wrote {path}")
    if not chart:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return
    labels = [f"{r['workload']} {r['dtype']} C{r['channels']} {r['product']} {r['algorithm']}"
              for r in records]
    figure, axis = plt.subplots(figsize=(10, max(3, 0.22 * len(records))))
    axis.barh(range(len(records)), [r["ratio_to_dense"] for r in records])
    axis.set_yticks(range(len(records)), labels, fontsize=6)
    axis.axvline(1.0, color="k", linewidth=0.8)
    axis.set_xlabel("time / same-flop dense cuBLAS GEMM (lower is better)")
    axis.set_title(f"cusparseconv on {device.name}, {meta['date']}")
    figure.tight_layout()
    png = os.path.splitext(path)[0] + ".png"
    figure.savefig(png, dpi=120)
    print(f"wrote {png}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, nargs="+", default=[200_000])
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--emulate", action="store_true",
                        help="tiny inputs under host emulation (smoke test)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/"
                                                     "<date>-<device>.json)")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32: float32 runs on the tensor cores by default and "
                             "their float32 products are timed (checked to 5e-3)")
    args = parser.parse_args(argv)
    if args.emulate:
        args.channels, args.repeats = [c for c in args.channels if c <= 32] or [8], 1
    device, records, rates, maps = run(args)
    path = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"{datetime.date.today().isoformat()}-{device.name.replace(' ', '_')}.json")
    write(device, records, path, chart=not args.no_chart, rates=rates, maps=maps)


if __name__ == "__main__":
    main()
