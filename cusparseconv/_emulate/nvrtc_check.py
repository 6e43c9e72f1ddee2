"""Compile the kernel sources with NVRTC, without a GPU (the CI compile check).

Each ``raw_kernels/*.cu`` file declares the name expressions the package may
request, one comment line each::

    // csc-instantiate: gather_rows<float>

`compile_source` compiles a file with all of them for one architecture
through CuPy's low-level NVRTC bindings (``cupy_backends.cuda.libs.nvrtc``:
createProgram / addNameExpression / compileProgram / getCUBIN /
getLoweredName), which work on a machine with no GPU, and treats every
warning as an error. The CUDA headers (``cuda_fp16.h``, ``cuda_bf16.h``,
``mma.h``) come from the PyPI wheels ``nvidia-cuda-runtime`` and
``nvidia-cuda-crt`` (``crt/mma.h``), so no local CUDA toolkit is needed.

Run it by hand with ``python -m cusparseconv._emulate.nvrtc_check``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ARCHS",
    "NVRTC_OPTIONS",
    "CHECK_OPTIONS",
    "NvrtcCompileError",
    "CompileResult",
    "parse_instantiations",
    "kernel_sources",
    "cuda_include_dirs",
    "nvrtc_unavailable_reason",
    "compile_source",
]

RAW_KERNELS = Path(__file__).resolve().parent.parent.parent / "raw_kernels"
ARCHS = ("sm_80", "sm_90")
# Options the GPU backend passes to cupy.RawModule (plus -I for raw_kernels/ and
# the CUDA headers); the check adds the architecture and warnings-as-errors.
NVRTC_OPTIONS = ("--std=c++17",)
CHECK_OPTIONS = ("-Werror=all-warnings",)

_INSTANTIATE = re.compile(r"^\s*//\s*csc-instantiate:\s*(.+?)\s*$", re.M)


class NvrtcCompileError(RuntimeError):
    """NVRTC rejected a source (the message holds the compile log)."""


@dataclass
class CompileResult:
    arch: str
    cubin_bytes: int
    lowered_names: dict = field(default_factory=dict)
    log: str = ""


def parse_instantiations(text: str) -> list[str]:
    """The name expressions a source declares with ``// csc-instantiate:`` lines.

    Parameters
    ----------
    text : str
        The source text.

    Returns
    -------
    list of str
        In file order, duplicates removed.
    """
    seen = []
    for expr in _INSTANTIATE.findall(text):
        if expr not in seen:
            seen.append(expr)
    return seen


def kernel_sources(directory: Path | str = RAW_KERNELS) -> list[Path]:
    """Every ``*.cu`` file of `directory` (default: the package's raw_kernels)."""
    return sorted(Path(directory).glob("*.cu"))


def cuda_include_dirs() -> list[str]:
    """Include directories holding ``cuda_fp16.h``, ``cuda_bf16.h`` and ``mma.h``.

    Looked up in the ``nvidia`` namespace package of the CUDA wheels
    (``nvidia-cuda-runtime``, ``nvidia-cuda-crt``: ``nvidia/cu13/include``;
    the CUDA 12 wheels: ``nvidia/cuda_runtime/include``). An empty list when
    none is installed. A local toolkit is deliberately not consulted.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for root in spec.submodule_search_locations:
        root = Path(root)
        candidates = sorted(root.glob("cu*/include")) + [root / "cuda_runtime" / "include",
                                                          root / "cuda_nvcc" / "include",
                                                          root / "cuda_crt" / "include"]
        for inc in candidates:
            if (inc / "cuda_fp16.h").is_file() or (inc / "crt" / "mma.h").is_file():
                if str(inc) not in found:
                    found.append(str(inc))
    have = {name: any((Path(d) / name).is_file() for d in found)
            for name in ("cuda_fp16.h", "cuda_bf16.h", "mma.h", "crt/mma.h")}
    return found if all(have.values()) else []


def _nvrtc():
    from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415 - optional dependency

    return nvrtc


def nvrtc_unavailable_reason() -> str | None:
    """None when NVRTC and the CUDA headers are usable, else why not."""
    try:
        nvrtc = _nvrtc()
    except Exception as exc:  # ImportError, or a broken CuPy install
        return (f"CuPy's NVRTC bindings cannot be imported ({type(exc).__name__}: {exc}); "
                "`pip install -e .[test]` installs cupy-cuda13x and nvidia-cuda-nvrtc")
    try:
        nvrtc.getVersion()
    except Exception as exc:
        return (f"the NVRTC library cannot be loaded ({type(exc).__name__}: {exc}); "
                "install the nvidia-cuda-nvrtc wheel")
    if not cuda_include_dirs():
        return ("the CUDA headers (cuda_fp16.h, cuda_bf16.h, mma.h) were not found in the "
                "nvidia-cuda-runtime / nvidia-cuda-crt wheels")
    return None


def compile_source(path: Path | str, arch: str, name_expressions=None, include_dirs=None,
                   options=()) -> CompileResult:
    """Compile one kernel source with NVRTC for `arch`.

    Parameters
    ----------
    path : path-like
        The ``.cu`` file.
    arch : str
        ``"sm_80"``, ``"sm_90"``, ...
    name_expressions : sequence of str, optional
        Default: the file's ``csc-instantiate`` lines.
    include_dirs : sequence of str, optional
        Default: the file's directory and `cuda_include_dirs()`.
    options : sequence of str
        Extra NVRTC options.

    Returns
    -------
    CompileResult
        CUBIN size and the lowered (mangled) name of every name expression.

    Raises
    ------
    NvrtcCompileError
        On any error or warning (warnings are compiled as errors).
    """
    nvrtc = _nvrtc()
    path = Path(path)
    text = path.read_text()
    if name_expressions is None:
        name_expressions = parse_instantiations(text)
    if include_dirs is None:
        include_dirs = [str(path.parent)] + cuda_include_dirs()
    opts = [f"-arch={arch}", *NVRTC_OPTIONS, *CHECK_OPTIONS,
            *(f"-I{d}" for d in include_dirs), *options]
    prog = nvrtc.createProgram(text, path.name, [], [])
    try:
        for expr in name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception as exc:
            log = nvrtc.getProgramLog(prog)
            raise NvrtcCompileError(
                f"NVRTC failed on {path.name} for {arch} ({exc}) with options {opts} and "
                f"name expressions {list(name_expressions)}:\n{log}") from None
        log = nvrtc.getProgramLog(prog)
        if re.search(r"\bwarning\b", log, re.I):  # belt and braces: -Werror should catch them
            raise NvrtcCompileError(f"NVRTC warnings on {path.name} for {arch}:\n{log}")
        cubin = nvrtc.getCUBIN(prog)
        lowered = {expr: nvrtc.getLoweredName(prog, expr) for expr in name_expressions}
        return CompileResult(arch, len(cubin), lowered, log)
    finally:
        nvrtc.destroyProgram(prog)


def main(argv=None) -> int:
    reason = nvrtc_unavailable_reason()
    if reason:
        print(f"nvrtc_check: {reason}", file=sys.stderr)
        return 2
    paths = [Path(p) for p in (argv or [])] or kernel_sources()
    failed = 0
    for path in paths:
        for arch in ARCHS:
            try:
                res = compile_source(path, arch)
                print(f"ok    {path.name} {arch}: {len(res.lowered_names)} name expressions, "
                      f"{res.cubin_bytes} bytes of CUBIN")
            except NvrtcCompileError as exc:
                failed += 1
                print(f"FAIL  {exc}")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
