"""A small run of every kernel family, for compute-sanitizer (memcheck, racecheck, synccheck).

Runs each kernel of ``raw_kernels/`` at least once on small inputs with
partial tiles (hash table, kernel-map search and compaction, pair masks,
gather/scatter, every algorithm of the three products in float32 and
float16 (bfloat16 where CuPy has it; float32 on the tensor cores as TF32),
both copy paths of the tensor-core kernels (16-byte and element-wise),
depthwise, pooling forward and backward, segment reduction) and checks each result against the CPU backend,
so a clean sanitizer run also means right answers. Prints one line per family
and exits 1 if any result is wrong.

    compute-sanitizer --tool memcheck python benchmarks/sanitizer_run.py
    python benchmarks/sanitizer_run.py --emulate      # the same calls under host emulation
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cusparseconv as csc  # noqa: E402
from cusparseconv import tuning  # noqa: E402
from cusparseconv.backends import cpu, get_backend  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulate", action="store_true")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    backend = get_backend("cuda-emulated" if args.emulate else "cuda")
    if args.emulate:
        put = get = np.asarray
    else:
        import cupy

        # every array its own cudaMalloc: memcheck then sees accesses past each array,
        # which a pooled allocation would hide inside a larger block
        cupy.cuda.set_allocator(None)
        put, get = cupy.asarray, cupy.asnumpy
    tuning.set_autotune(False)
    rng = np.random.default_rng(0)
    fine = np.unique(rng.integers(-7, 7, size=(260, 4)), axis=0).astype(np.int32)
    fine[:, 0] %= 2
    fine = np.unique(fine, axis=0)
    coarse, _ = csc.coords.downsample(fine, (2, 2, 2))
    offsets = csc.kernel_offsets(3)
    failures = []

    def check(name, got, want, tolerance):
        got = np.asarray(get(got), np.float64)
        want = np.asarray(want, np.float64)
        error = np.abs(got - want).max(initial=0.0) / max(1.0, np.abs(want).max(initial=0.0))
        status = "ok" if error <= tolerance else "WRONG"
        if status != "ok":
            failures.append(name)
        print(f"{status:<6}{name:<48} max error {error:.2e}", flush=True)

    kmap = backend.build_kernel_map(put(fine), put(coarse), offsets, (2, 2, 2), False)
    reference = cpu.build_kernel_map(fine, coarse, offsets, (2, 2, 2), False)
    check("kernel map (hash, search, compact, mask)", kmap.in_rows, reference.in_rows, 0)
    check("reverse table", backend.reverse(kmap).in_rows, cpu.reverse_map(reference).in_rows, 0)
    dtypes = [(np.dtype(name), tol) for name, tol in (("float32", 1e-4), ("float16", 2e-2))
              if name in args.dtypes]
    try:
        import ml_dtypes

        bf16 = np.dtype(ml_dtypes.bfloat16)
        if not args.emulate:
            import cupy

            cupy.zeros(1, dtype=bf16)
        if "bfloat16" in args.dtypes:
            dtypes.append((bf16, 4e-2))
    except Exception:  # noqa: BLE001 - bfloat16 is optional
        print("bfloat16 skipped: this CuPy has no bfloat16 arrays")
    # the tensor-core algorithm twice: its default shape (24 -> 16 channels: 16-byte
    # copies) and its element-wise fallback; float32 on them as TF32
    shapes = {"tensor_core": ["tensor_core", "tensor_core:m64n64s3-scalar"]}
    for dtype, tolerance in dtypes:
        feats = rng.standard_normal((len(fine), 24)).astype(dtype)
        weight = (rng.standard_normal((27, 24, 16)) / 8).astype(dtype)
        grad = rng.standard_normal((len(coarse), 16)).astype(dtype)
        tf32 = dtype == np.float32
        tuning.set_allow_tf32(tf32)
        for family in tuning.ALGORITHMS["forward"]:
            limit = 5e-3 if tf32 and family == "tensor_core" else tolerance
            for algorithm in shapes.get(family, [family]):
                check(f"forward {algorithm} {dtype.name}",
                      backend.conv_forward(put(feats), put(weight), kmap, "standard", 16,
                                           algorithm=algorithm),
                      cpu.conv_forward(feats, weight, reference, "standard", 16), limit)
                check(f"input_grad {algorithm} {dtype.name}",
                      backend.conv_input_grad(put(grad), put(weight), kmap, "standard", 24,
                                              algorithm=algorithm),
                      cpu.conv_input_grad(grad, weight, reference, "standard", 24), limit)
        for algorithm in tuning.ALGORITHMS["weight_grad"]:
            limit = 5e-3 if tf32 and algorithm == "tensor_core" else tolerance
            check(f"weight_grad {algorithm} {dtype.name}",
                  backend.conv_weight_grad(put(feats), put(grad), kmap, "standard",
                                           weight.shape, algorithm=algorithm),
                  cpu.conv_weight_grad(feats, grad, reference, "standard", weight.shape),
                  limit)
        tuning.set_allow_tf32(False)
        # the odd channel counts take the tensor cores' element-wise weight gradient
        odd = rng.standard_normal((len(coarse), 18)).astype(dtype)
        if not tf32:
            check(f"weight_grad tensor_core (scalar) {dtype.name}",
                  backend.conv_weight_grad(put(feats[:, :20].copy()), put(odd), kmap,
                                           "standard", (27, 20, 18), algorithm="tensor_core"),
                  cpu.conv_weight_grad(feats[:, :20].copy(), odd, reference, "standard",
                                       (27, 20, 18)), tolerance)
        feats = feats[:, :20].copy()
        depth_w = rng.standard_normal((27, 20)).astype(dtype)
        grad20 = rng.standard_normal((len(coarse), 20)).astype(dtype)
        check(f"depthwise forward {dtype.name}",
              backend.conv_forward(put(feats), put(depth_w), kmap, "depthwise", 20),
              cpu.conv_forward(feats, depth_w, reference, "depthwise", 20), tolerance)
        check(f"depthwise weight_grad {dtype.name}",
              backend.conv_weight_grad(put(feats), put(grad20), kmap, "depthwise", (27, 20)),
              cpu.conv_weight_grad(feats, grad20, reference, "depthwise", (27, 20)), tolerance)
    values = rng.permutation(len(fine) * 5).reshape(len(fine), 5).astype(np.float32)
    grad5 = rng.standard_normal((len(coarse), 5)).astype(np.float32)
    for mode in ("max", "avg", "sum"):
        check(f"pool {mode}", backend.pool_forward(put(values), kmap, mode),
              cpu.pool_forward(values, reference, mode), 1e-5)
        check(f"pool {mode} backward", backend.pool_backward(put(grad5), put(values), kmap, mode),
              cpu.pool_backward(grad5, values, reference, mode), 1e-5)
    segments = rng.integers(0, 4, size=len(fine))
    for mode in ("sum", "mean", "max"):
        check(f"segment_reduce {mode}",
              backend.segment_reduce(put(values), put(segments), 4, mode),
              cpu.segment_reduce(values, segments, 4, mode), 1e-5)
    if not args.emulate:
        import cupy

        cupy.cuda.get_current_stream().synchronize()
    print(f"{'all kernel families ran' if not failures else 'WRONG: ' + ', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
