"""``python -m cusparseconv check``: is this installation able to run the GPU backend?

Prints the versions (package, Python, NumPy, SciPy, CuPy, NVRTC and its library,
CUDA driver and device when present), the CUDA include directories the kernels
compile against (of the NVRTC's own release), compiles every kernel source
with exactly the text, options and include paths the device launcher uses
(for the device's architecture, or ``--arch``; without either, every
architecture NVRTC supports), and on a device (or with ``--emulate``, under
host emulation) runs one small convolution per algorithm of every product
against the CPU backend. Ends with a table; the exit status is 1 when
anything failed, 0 otherwise. ``--json PATH`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

__all__ = ["run_check", "main"]


def _versions(report):
    import scipy

    from . import __file__ as package_file
    from . import __version__

    report["package_dir"] = os.path.dirname(os.path.abspath(package_file))
    report["versions"] = versions = {
        "cusparseconv": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "scipy": scipy.__version__,
    }
    try:
        import cupy

        versions["cupy"] = cupy.__version__
    except Exception as error:  # noqa: BLE001 - reported
        versions["cupy"] = f"not importable ({type(error).__name__}: {error})"
        return None
    try:
        versions["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as error:  # noqa: BLE001
        versions["cuda_driver"] = f"none ({type(error).__name__})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # noqa: BLE001
        report["device"] = f"none ({type(error).__name__}: {error})"
        return None
    if count < 1:
        report["device"] = "none"
        return None
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    arch = int(cupy.cuda.Device().compute_capability)
    report["device"] = f"{name} (sm_{arch}, {props['totalGlobalMem'] / 2**30:.0f} GiB)"
    return arch


def _compile(report, archs):
    from ._emulate import nvrtc_check

    headers = nvrtc_check.cuda_headers()
    report["nvrtc"] = {"library": headers.nvrtc_path,
                       "version": ".".join(map(str, headers.nvrtc_version or ())),
                       "supported_archs": list(nvrtc_check.supported_archs())
                       if headers.nvrtc_version else []}
    report["include_dirs"] = list(headers.include_dirs)
    report["header_versions"] = {k: [[w, ".".join(map(str, v))] for w, v in items]
                                 for k, items in headers.versions.items()}
    rows = report["compile"] = []
    if headers.problems:
        rows.append({"file": "(headers)", "arch": "-", "ok": False,
                     "detail": "; ".join(headers.problems)})
        return
    from ._kernels import kernel_dir, min_arch

    for path in nvrtc_check.kernel_sources(kernel_dir()):
        lowest = min_arch(path.read_text())
        for arch in archs:
            if lowest is not None and int(arch[3:]) < lowest:
                rows.append({"file": path.name, "arch": arch, "ok": True,
                             "detail": f"not built: needs sm_{lowest} (the backend falls back)"})
                continue
            start = time.perf_counter()
            try:
                result = nvrtc_check.compile_source(path, arch, werror=False)
                rows.append({"file": path.name, "arch": arch, "ok": True,
                             "detail": f"{len(result.lowered_names)} kernels, "
                                       f"{result.cubin_bytes} bytes, "
                                       f"{time.perf_counter() - start:.1f} s"})
            except Exception as error:  # noqa: BLE001 - reported
                rows.append({"file": path.name, "arch": arch, "ok": False,
                             "detail": str(error)[:4000]})


def _convolutions(report, backend_name):
    """One small convolution per algorithm and product against the CPU backend."""
    import cusparseconv as csc

    from . import tuning
    from .backends import cpu, get_backend

    backend = get_backend(backend_name)
    put = (lambda a: a) if backend_name != "cuda" else backend.xp.asarray
    get = (lambda a: np.asarray(a)) if backend_name != "cuda" else backend.xp.asnumpy
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(-6, 6, size=(300, 4)), axis=0).astype(np.int32)
    coords[:, 0] = coords[:, 0] % 2
    coords = np.unique(coords, axis=0)
    coarse, _ = csc.coords.downsample(coords, (2, 2, 2))
    offsets = csc.kernel_offsets(3)
    rows = report["convolutions"] = []
    kmap = backend.build_kernel_map(put(coords), put(coarse), offsets, (2, 2, 2), False)
    reference = cpu.build_kernel_map(coords, coarse, offsets, (2, 2, 2), False)
    for dtype, tolerance in ((np.float32, 1e-4), (np.float16, 2e-2)):
        feats = rng.standard_normal((len(coords), 16)).astype(dtype)
        weight = (rng.standard_normal((27, 16, 8)) / 8).astype(dtype)
        grad = rng.standard_normal((len(coarse), 8)).astype(dtype)
        expected = {
            "forward": cpu.conv_forward(feats, weight, reference, "standard", 8),
            "input_grad": cpu.conv_input_grad(grad, weight, reference, "standard", 16),
            "weight_grad": cpu.conv_weight_grad(feats, grad, reference, "standard",
                                                weight.shape),
        }
        calls = {
            "forward": lambda a: backend.conv_forward(put(feats), put(weight), kmap, "standard",
                                                      8, algorithm=a),
            "input_grad": lambda a: backend.conv_input_grad(put(grad), put(weight), kmap,
                                                            "standard", 16, algorithm=a),
            "weight_grad": lambda a: backend.conv_weight_grad(put(feats), put(grad), kmap,
                                                              "standard", weight.shape,
                                                              algorithm=a),
        }
        for product, algorithms in tuning.ALGORITHMS.items():
            for algorithm in algorithms:
                # float32 runs on the tensor cores as TF32 only: allowed for this row
                tf32 = algorithm == "tensor_core" and np.dtype(dtype) == np.float32
                limit = 5e-3 if tf32 else tolerance
                row = {"dtype": np.dtype(dtype).name, "product": product,
                       "algorithm": algorithm + (" (TF32)" if tf32 else "")}
                allowed = tuning.is_tf32_allowed()
                tuning.set_allow_tf32(allowed or tf32)
                try:
                    got = get(calls[product](algorithm)).astype(np.float64)
                    want = np.asarray(expected[product], np.float64)
                    scale = max(1.0, float(np.abs(want).max()))
                    error = float(np.abs(got - want).max()) / scale
                    row.update(ok=bool(error <= limit), detail=f"max error {error:.2e} "
                                                               f"(tolerance {limit})")
                except Exception as exc:  # noqa: BLE001 - reported
                    row.update(ok=False, detail=f"{type(exc).__name__}: {exc}"[:2000])
                finally:
                    tuning.set_allow_tf32(allowed)
                rows.append(row)


def run_check(arch: str | None = None, emulate: bool = False) -> dict:
    """Everything ``check`` reports, as a dict (``report["ok"]``: no failure)."""
    report: dict = {}
    device_arch = _versions(report)
    from ._emulate import nvrtc_check

    try:
        supported = nvrtc_check.supported_archs()
    except Exception as error:  # noqa: BLE001
        supported = ()
        report["nvrtc_error"] = f"{type(error).__name__}: {error}"
    if arch is not None:
        archs = [arch]
    elif device_arch is not None:
        archs = [f"sm_{device_arch}"]
    else:
        archs = list(supported)
    report["archs"] = archs
    if supported and any(a not in supported for a in archs):
        report["compile"] = [{"file": "(arch)", "arch": a, "ok": False,
                              "detail": f"NVRTC {supported} cannot target {a}"}
                             for a in archs if a not in supported]
    elif supported:
        _compile(report, archs)
    else:
        report["compile"] = [{"file": "(nvrtc)", "arch": "-", "ok": False,
                              "detail": report.get("nvrtc_error", "NVRTC unavailable")}]
    if device_arch is not None:
        _convolutions(report, "cuda")
    elif emulate:
        _convolutions(report, "cuda-emulated")
    failures = [r for r in report.get("compile", []) + report.get("convolutions", [])
                if not r["ok"]]
    report["ok"] = not failures
    return report


def _print(report, out=sys.stdout):
    def line(text=""):
        print(text, file=out)

    line(f"cusparseconv check ({report['package_dir']})")
    for name, value in report["versions"].items():
        line(f"  {name:<14} {value}")
    line(f"  {'device':<14} {report.get('device', 'none')}")
    nvrtc = report.get("nvrtc", {})
    line(f"  {'nvrtc':<14} {nvrtc.get('version', '?')} ({nvrtc.get('library', '?')})")
    for include in report.get("include_dirs", []):
        line(f"  {'include':<14} {include}")
    line()
    line(f"{'kernel source':<26}{'arch':<9}{'result':<7}detail")
    for row in report.get("compile", []):
        line(f"{row['file']:<26}{row['arch']:<9}{'ok' if row['ok'] else 'FAIL':<7}"
             f"{row['detail'].splitlines()[0] if row['detail'] else ''}")
    if report.get("convolutions"):
        line()
        line(f"{'dtype':<10}{'product':<13}{'algorithm':<17}{'result':<7}detail")
        for row in report["convolutions"]:
            line(f"{row['dtype']:<10}{row['product']:<13}{row['algorithm']:<17}"
                 f"{'ok' if row['ok'] else 'FAIL':<7}{row['detail'].splitlines()[0]}")
    elif "device" in report:
        line()
        line("no convolution run: no CUDA device (use --emulate for the host emulation)")
    line()
    failures = [r for r in report.get("compile", []) + report.get("convolutions", [])
                if not r["ok"]]
    line("check passed" if not failures else f"check FAILED: {len(failures)} failure(s)")
    for row in failures:
        line(f"--- {row.get('file', row.get('product'))} {row.get('arch', row.get('algorithm'))}")
        line(row["detail"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cusparseconv check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", help="compile for this architecture (e.g. sm_90) instead of "
                                       "the device's")
    parser.add_argument("--emulate", action="store_true",
                        help="without a device, run the small convolutions under emulation")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    args = parser.parse_args(argv)
    report = run_check(args.arch, args.emulate)
    _print(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    return 0 if report["ok"] else 1
