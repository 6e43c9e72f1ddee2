"""``python -m cusparseconv check [--arch sm_XX] [--emulate] [--json PATH]``."""

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: python -m cusparseconv check [--arch sm_XX] [--emulate] [--json PATH]\n"
              "  check: versions, CUDA headers, every kernel compiled with NVRTC, and on a GPU "
              "one small convolution per algorithm against the CPU", file=sys.stderr)
        return 2
    from ._check import main as check

    return check(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
