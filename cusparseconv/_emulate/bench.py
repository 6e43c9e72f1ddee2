"""Launch overhead of the kernel emulator (``python -m cusparseconv._emulate.bench``).

Prints, for each execution mode, the time of an empty launch, of one block of
256 threads, and of one 256-thread block that passes 10 ``__syncthreads``
(``barrier_rounds`` with 5 rounds), plus a 64-block grid of the latter.
"""

from __future__ import annotations

import time

import numpy as np

from .._kernels import kernel_source
from .module import EmulatedModule


def _best(fn, repeat: int) -> float:
    fn()  # warm-up: starts the worker threads / fiber stacks
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    src = kernel_source("emulator_selftest.cu")
    module = EmulatedModule(src, name_expressions=["noop", "barrier_rounds"])
    noop = module.get_function("noop")
    rounds = module.get_function("barrier_rounds")
    data = np.zeros(256 * 64, np.float32)
    print(f"{'mode':<12} {'case':<44} {'time':>10}")
    for mode in ("threads", "cooperative"):
        noop.mode = rounds.mode = mode
        cases = [
            ("empty kernel, 1 block x 1 thread", lambda: noop(1, 1, ())),
            ("empty kernel, 1 block x 256 threads", lambda: noop(1, 256, ())),
            ("256 threads, 10 barriers, 1 block",
             lambda: rounds(1, 256, (data, np.int32(5)))),
            ("256 threads, 10 barriers, 64 blocks",
             lambda: rounds(64, 256, (data, np.int32(5)))),
        ]
        for name, fn in cases:
            t = _best(fn, 5)
            print(f"{mode:<12} {name:<44} {t * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
