"""spconv and cusparseconv side by side on the same workloads (GPU; CPU for a dry run).

For each workload, dtype (float16, float32) and layer, the same coordinates,
features and weights go to both libraries; the outputs are compared first
(rows matched by coordinate, max relative error within the dtype's tolerance)
and only then timed (median of ``--repeats`` runs after a warm-up, each run
synchronised with the device):

=========  ===================================  ==========================================
layer      cusparseconv                         spconv
=========  ===================================  ==========================================
subm3      ``conv_forward`` on a 3x3x3 map      ``SubMConv3d(C, C, 3)`` reusing its indices
           (map built once, not timed)
down2      ``conv_forward`` on a 2x2x2,         ``SparseConv3d(C, C, 2, stride=2)``
           stride-2 map                         reusing its indices
up2        ``conv_forward`` on the transposed   ``SparseInverseConv3d(C, C, 2)`` on down2's
           map back to the fine rows            indices
=========  ===================================  ==========================================

spconv comes from ``--spconv-site`` (the folder ``gpu_check.sh`` unpacks the
tarball of ``pack_spconv_for_gpu.sh`` into) or the environment. When it cannot
be imported or run, the reason is recorded in the JSON and ours is still timed.
The weight layout and kernel order of spconv are those ``bench_cpu.py`` finds
with impulses (found again here on the CPU when spconv's CPU path works).

    python benchmarks/bench_spconv_gpu.py --spconv-site peers-site --out spconv.json
    python benchmarks/bench_spconv_gpu.py --device cpu --voxels 3000 --channels 8   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import cusparseconv as csc  # noqa: E402
from cusparseconv.backends import cpu, get_backend  # noqa: E402

LAYERS = ("subm3", "down2", "up2")
TOLERANCE = {"float32": 1e-4, "float16": 2e-2}


def load_spconv(site=None):
    """(torch, spconv.pytorch, version) or (None, reason)."""
    if site:
        sys.path.insert(0, os.path.abspath(site))
    try:
        import torch
        import spconv
        import spconv.pytorch as spt
    except Exception as error:  # noqa: BLE001 - the reason is the result
        return None, f"import spconv failed: {type(error).__name__}: {error}"
    return (torch, spt, getattr(spconv, "__version__", "?")), None


def sorted_rows(coords, feats):
    coords, feats = np.asarray(coords), np.asarray(feats)
    order = np.lexsort(coords.T[::-1])
    return coords[order], feats[order]


def max_relative_error(ours_coords, ours_feats, ref_coords, ref_feats):
    """Max |ours - ref| / max |ref| after matching rows by coordinate (None when the
    coordinate sets differ)."""
    oc, of = sorted_rows(ours_coords, ours_feats)
    rc, rf = sorted_rows(ref_coords, ref_feats)
    if oc.shape != rc.shape or not np.array_equal(oc, rc):
        return None
    of, rf = np.asarray(of, np.float64), np.asarray(rf, np.float64)
    return float(np.abs(of - rf).max(initial=0.0)) / max(float(np.abs(rf).max(initial=0.0)),
                                                          1e-30)


class Ours:
    """Our three layers on one backend (maps built once)."""

    def __init__(self, backend_name, coords):
        self.backend = get_backend(backend_name)
        self.device = backend_name == "cuda"
        xp = self.backend.xp
        self.put = xp.asarray if self.device else np.asarray
        self.get = xp.asnumpy if self.device else np.asarray
        self.sync = (lambda: xp.cuda.get_current_stream().synchronize()) if self.device else (
            lambda: None)
        self.coords = coords
        self.coarse, _ = csc.coords.downsample(coords, (2, 2, 2))
        fine_d, coarse_d = self.put(coords), self.put(self.coarse)
        self.maps = {
            "subm3": self.backend.build_kernel_map(fine_d, fine_d, csc.kernel_offsets(3),
                                                   (1, 1, 1), False, same_set=True),
            "down2": self.backend.build_kernel_map(fine_d, coarse_d, csc.kernel_offsets(2),
                                                   (2, 2, 2), False),
            "up2": self.backend.build_kernel_map(coarse_d, fine_d, csc.kernel_offsets(2),
                                                 (2, 2, 2), True),
        }
        self.out_coords = {"subm3": coords, "down2": self.coarse, "up2": coords}

    def layer(self, name, feats, weight):
        kmap = self.maps[name]
        feats_d, weight_d = self.put(feats), self.put(weight)
        return lambda: self.backend.conv_forward(feats_d, weight_d, kmap, "standard",
                                                 weight.shape[2])


class Spconv:
    """spconv's three layers on ``device`` with our weights (converted)."""

    def __init__(self, libs, coords, device, channels, dtype, orders):
        import bench_cpu

        self.torch, self.spt, _ = libs
        self.bench_cpu = bench_cpu
        torch, spt = self.torch, self.spt
        self.device = torch.device(device)
        self.dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
        self.indices = torch.from_numpy(coords).to(self.device)
        self.shape = bench_cpu.spatial_shape(coords)
        self.batch = int(coords[:, 0].max()) + 1
        self.orders = orders
        self.layers = {
            "subm3": spt.SubMConv3d(channels, channels, 3, bias=False, indice_key="subm3"),
            "down2": spt.SparseConv3d(channels, channels, 2, stride=2, bias=False,
                                      indice_key="down2"),
            "up2": spt.SparseInverseConv3d(channels, channels, 2, bias=False,
                                           indice_key="down2"),
        }
        for layer in self.layers.values():
            layer.to(self.device, self.dtype)

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def layer(self, name, feats, weight, down_input=None, coarse_coords=None):
        torch = self.torch
        order = self.orders[3 if name == "subm3" else 2]
        with torch.no_grad():
            self.layers[name].weight.copy_(
                self.bench_cpu.to_spconv_weight(torch, weight.astype(np.float32), order)
                .to(self.device, self.dtype))
        feats_t = torch.from_numpy(np.asarray(feats, np.float32)).to(self.device, self.dtype)
        if name == "up2":
            # down2 on the fine rows leaves its indice pairs in the coarse tensor; our
            # coarse features (rows of `coarse_coords`) go in spconv's coarse row order
            fine_t = torch.from_numpy(np.asarray(down_input, np.float32)).to(self.device,
                                                                            self.dtype)
            with torch.no_grad():
                coarse = self.layers["down2"](self.tensor(fine_t))
            spconv_rows = coarse.indices.cpu().numpy()
            where = {tuple(row): i for i, row in enumerate(np.asarray(coarse_coords).tolist())}
            order = np.array([where[tuple(row)] for row in spconv_rows.tolist()], np.int64)
            coarse = coarse.replace_feature(feats_t[torch.from_numpy(order).to(self.device)])
            return lambda: self._run(name, coarse)
        source = self.tensor(feats_t)
        with torch.no_grad():
            primed = self.layers[name](source)      # builds (and keeps) the indice pairs
        del primed
        return lambda: self._run(name, source)

    def tensor(self, feats_t):
        return self.spt.SparseConvTensor(feats_t, self.indices, self.shape, self.batch)

    def _run(self, name, tensor):
        with self.torch.no_grad():
            return self.layers[name](tensor)


def time_ms(function, sync, repeats, warmup=2):
    for _ in range(warmup):
        function()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def workloads(args):
    if args.voxels <= 20_000:
        rng = np.random.default_rng(0)
        coords = np.unique(rng.integers(0, 24, size=(args.voxels, 4)), axis=0)
        coords[:, 0] = 0
        return [(f"random-{len(np.unique(coords, axis=0))}",
                 np.unique(coords, axis=0).astype(np.int32))]
    from scenes import surface_scene

    return [(f"surface-{args.voxels // 1000}k", surface_scene(args.voxels))]


def run(args):
    result = {"records": [], "spconv": None, "notes": []}
    libs, reason = load_spconv(args.spconv_site)
    if libs is None:
        result["notes"].append(reason)
    else:
        result["spconv"] = libs[2]
    ours_backend = {"cuda": "cuda", "cpu": "cpu", "emulated": "cuda-emulated"}[args.device]
    orders = None
    if libs is not None:
        try:
            import bench_cpu

            torch, spt, _ = libs
            if not torch.cuda.is_available():
                import spconv.pytorch.ops as spconv_ops
                spconv_ops.get_current_stream = lambda: 0
            orders = {3: bench_cpu.spconv_kernel_order(torch, spt, 3, 1),
                      2: bench_cpu.spconv_kernel_order(torch, spt, 2, 2)}
        except Exception as error:  # noqa: BLE001
            orders = {3: np.arange(27), 2: np.arange(8)}
            result["notes"].append(f"kernel order not probed on the CPU ({type(error).__name__}: "
                                   f"{error}); assuming C order, as bench_cpu.py found")
    for workload, coords in workloads(args):
        ours = Ours(ours_backend, coords)
        geometry = {"subm3": (coords, coords, 3, 1, False),
                    "down2": (coords, ours.coarse, 2, 2, False),
                    "up2": (ours.coarse, coords, 2, 2, True)}
        for dtype in args.dtypes:
            if ours_backend == "cpu" and dtype == "float16":
                continue    # the CPU backend has float16, spconv's CPU path does not
            for channels in args.channels:
                rng = np.random.default_rng(channels)
                fine_feats = rng.standard_normal((len(coords), channels)).astype(dtype)
                coarse_feats = rng.standard_normal((len(ours.coarse), channels)).astype(dtype)
                for layer in LAYERS:
                    kernel_volume = 27 if layer == "subm3" else 8
                    weight = (rng.standard_normal((kernel_volume, channels, channels))
                              / np.sqrt(kernel_volume * channels)).astype(dtype)
                    feats = coarse_feats if layer == "up2" else fine_feats
                    record = {"workload": workload, "voxels": len(coords), "dtype": dtype,
                              "channels": channels, "layer": layer,
                              "pairs": ours.maps[layer].n_pairs}
                    run_ours = ours.layer(layer, feats, weight)
                    ours_out = ours.get(run_ours())
                    in_c, out_c, size, stride, transposed = geometry[layer]
                    expected = cpu.conv_forward(
                        feats.astype(np.float64), weight.astype(np.float64),
                        cpu.build_kernel_map(in_c, out_c, csc.kernel_offsets(size),
                                             (stride,) * 3, transposed), "standard", channels)
                    record["ours_error_vs_cpu_float64"] = max_relative_error(
                        ours.out_coords[layer], ours_out, ours.out_coords[layer], expected)
                    record["ours_ms"] = time_ms(run_ours, ours.sync, args.repeats)
                    if libs is not None and "spconv_failed" not in result:
                        try:
                            peer = Spconv(libs, coords, "cuda" if args.device == "cuda"
                                          else "cpu", channels, dtype, orders)
                            run_peer = peer.layer(layer, feats, weight,
                                                  down_input=fine_feats, coarse_coords=ours.coarse)
                            out = run_peer()
                            peer_coords = out.indices.cpu().numpy()
                            peer_feats = out.features.float().cpu().numpy()
                            error = max_relative_error(ours.out_coords[layer], ours_out,
                                                       peer_coords, peer_feats)
                            record["spconv_vs_ours_max_rel_error"] = error
                            record["agree"] = error is not None and error <= TOLERANCE[dtype]
                            if record["agree"]:
                                record["spconv_ms"] = time_ms(run_peer, peer.sync, args.repeats)
                                record["spconv_over_ours"] = record["spconv_ms"] / record[
                                    "ours_ms"]
                        except Exception as error:  # noqa: BLE001 - recorded, then go on
                            result["spconv_failed"] = f"{type(error).__name__}: {error}"
                            result["notes"].append(f"spconv failed on {layer} {dtype}: "
                                                   f"{type(error).__name__}: {error}")
                    result["records"].append(record)
                    print(json.dumps(record), flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu", "emulated"), default="cuda")
    parser.add_argument("--spconv-site", help="folder holding the unpacked spconv wheels")
    parser.add_argument("--voxels", type=int, default=200_000)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "float32"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = run(args)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    for note in result["notes"]:
        print(f"note: {note}")
    wrong = [r for r in result["records"] if r.get("ours_error_vs_cpu_float64") is None
             or r["ours_error_vs_cpu_float64"] > TOLERANCE[r["dtype"]]]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
