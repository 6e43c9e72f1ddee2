"""Compile the kernel sources with NVRTC, without a GPU (the compile check).

Each ``raw_kernels/*.cu`` file declares the name expressions the package may
request, one comment line each, and optionally the oldest architecture it
supports::

    // csc-instantiate: gather_rows<float>
    // csc-min-arch: sm_80

`compile_source` compiles a file with all of them for one architecture
through CuPy's low-level NVRTC bindings (``cupy_backends.cuda.libs.nvrtc``:
createProgram / addNameExpression / compileProgram / getCUBIN /
getLoweredName), which work on a machine with no GPU, with exactly the text,
options and include directories the device launcher uses at run time
(:func:`cusparseconv._kernels.nvrtc_source`, ``NVRTC_OPTIONS``,
:func:`cuda_include_dirs`) plus warnings as errors. `supported_archs` asks
NVRTC which architectures it can target; `compile_all` compiles every file for
every one of them it supports, in parallel processes.

The CUDA headers (``cuda_fp16.h``, ``cuda_bf16.h``, ``mma.h`` and the
``crt/mma.h`` it includes) must come from the same CUDA major.minor release
as the NVRTC library in use (`cuda_headers`): from the ``nvidia-*`` wheels
beside a pip-installed NVRTC (``nvidia-cuda-runtime``, ``nvidia-cuda-crt``;
for CUDA 12 ``nvidia-cuda-runtime-cu12`` and ``nvidia-cuda-nvcc-cu12``), or
from the toolkit an NVRTC library was loaded from. A pip-installed NVRTC
without those wheels may use a toolkit's headers (``$CUDA_PATH``,
``$CUDA_HOME``, ``/usr/local/cuda``) only when their ``CUDART_VERSION`` is
the NVRTC's major.minor.

Run it by hand with ``python -m cusparseconv._emulate.nvrtc_check`` (or
``python -m cusparseconv check``).
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import multiprocessing
import os
import re
import sys
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .._kernels import NVRTC_OPTIONS, kernel_dir, min_arch, nvrtc_source

__all__ = [
    "NVRTC_OPTIONS",
    "CHECK_OPTIONS",
    "REQUIRED_HEADERS",
    "NvrtcCompileError",
    "CompileResult",
    "CudaHeaders",
    "parse_instantiations",
    "kernel_sources",
    "supported_archs",
    "archs_for",
    "nvrtc_library",
    "cuda_headers",
    "cuda_include_dirs",
    "nvrtc_unavailable_reason",
    "compile_source",
    "compile_all",
    "run_nvrtc",
]

RAW_KERNELS = Path(kernel_dir())
# The check adds warnings-as-errors to the run-time options.
CHECK_OPTIONS = ("-Werror=all-warnings",)
REQUIRED_HEADERS = ("cuda_fp16.h", "cuda_bf16.h", "mma.h", "crt/mma.h")

_INSTANTIATE = re.compile(r"^\s*//\s*csc-instantiate:\s*(.+?)\s*$", re.M)
_VERSION_MACRO = re.compile(r"#define\s+(?:CUDART_VERSION|CUDA_VERSION)\s+(\d+)")


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


def _nvrtc():
    from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415 - optional dependency

    return nvrtc


def _arch_number(arch: str) -> int:
    match = re.fullmatch(r"(?:sm|compute)_(\d+)[af]?", arch)
    if not match:
        raise ValueError(f"arch must look like 'sm_90', got {arch!r}")
    return int(match.group(1))


@lru_cache(maxsize=None)
def supported_archs() -> tuple[str, ...]:
    """Every architecture the NVRTC in use can compile for (``nvrtcGetSupportedArchs``),
    e.g. ``("sm_75", "sm_80", ..., "sm_121")`` for NVRTC 13."""
    return tuple(f"sm_{a}" for a in _nvrtc().getSupportedArchs())


def archs_for(path: Path | str, archs=None) -> list[str]:
    """The architectures of `archs` (default: `supported_archs`) a source supports
    (all of them from its ``csc-min-arch`` on)."""
    archs = supported_archs() if archs is None else archs
    lowest = min_arch(Path(path).read_text())
    return [a for a in archs if lowest is None or _arch_number(a) >= lowest]


# ---------------------------------------------------------------------------
# NVRTC library and CUDA headers
# ---------------------------------------------------------------------------

@lru_cache(maxsize=None)
def nvrtc_library() -> tuple[str, tuple[int, int]]:
    """(path of the NVRTC shared library CuPy loaded, its (major, minor) version).

    Raises whatever loading NVRTC raises when it cannot be loaded.
    """
    nvrtc = _nvrtc()
    version = tuple(int(v) for v in nvrtc.getVersion())
    path = ""
    try:
        with open("/proc/self/maps", encoding="utf-8") as handle:
            for line in handle:
                if "libnvrtc.so" in line or "libnvrtc-" in line and ".so" in line:
                    candidate = line.split()[-1]
                    if os.path.basename(candidate).startswith("libnvrtc.so"):
                        path = candidate
                        break
    except OSError:
        pass
    if not path:
        try:
            from cuda.pathfinder import load_nvidia_dynamic_lib

            path = load_nvidia_dynamic_lib("nvrtc").abs_path or ""
        except Exception:  # noqa: BLE001 - only a report
            path = ""
    return os.path.realpath(path) if path else "", version


# Wheels that put CUDA headers in nvidia/*/include and carry the CUDA release as version.
_HEADER_WHEELS = ("nvidia-cuda-runtime", "nvidia-cuda-crt", "nvidia-cuda-nvcc",
                  "nvidia-cuda-nvrtc")


@lru_cache(maxsize=None)
def _wheel_versions() -> dict:
    """{include directory: {distribution: (major, minor)}} of the CUDA header wheels."""
    found: dict = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.removesuffix("-cu12").removesuffix("-cu13") not in _HEADER_WHEELS:
            continue  # e.g. nvidia-cublas, nvidia-cuda-cccl: versioned on their own
        try:
            major, minor = (int(v) for v in dist.version.split(".")[:2])
        except ValueError:
            continue
        for file in dist.files or ():
            parts = Path(file).parts
            if "include" in parts and parts[0] == "nvidia":
                include = dist.locate_file(Path(*parts[:parts.index("include") + 1]))
                found.setdefault(os.path.realpath(include), {})[name] = (major, minor)
    return found


def _header_version(include: Path):
    for name in ("cuda_runtime_api.h", "cuda.h"):
        path = include / name
        if path.is_file():
            match = _VERSION_MACRO.search(path.read_text(errors="replace"))
            if match:
                value = int(match.group(1))
                return value // 1000, (value % 1000) // 10
    return None


@dataclass
class CudaHeaders:
    """Where the CUDA headers come from, and what is wrong with them.

    Attributes
    ----------
    nvrtc_path : str
    nvrtc_version : (int, int) or None
    include_dirs : list of str
        Directories of the NVRTC's own release holding the required headers.
    versions : dict
        {include dir: list of (what, (major, minor))} found for each candidate.
    problems : list of str
        Empty when every required header was found in the NVRTC's release.
    """

    nvrtc_path: str = ""
    nvrtc_version: tuple | None = None
    include_dirs: list = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)


def _candidate_include_dirs(lib_path: str) -> tuple[list[Path], bool]:
    """Include directories of the release an NVRTC library belongs to, and whether
    it comes from pip wheels."""
    lib = Path(lib_path)
    parts = lib.parts
    if "nvidia" in parts:  # a wheel: nvidia/cu13/lib or nvidia/cuda_nvrtc/lib
        root = Path(*parts[:len(parts) - parts[::-1].index("nvidia")])
        return sorted(p for p in root.glob("*/include") if p.is_dir()), True
    # a toolkit: <root>/lib64/libnvrtc.so or <root>/targets/<triple>/lib/libnvrtc.so
    found = [lib.parent.parent / "include"]
    if lib.parent.parent.parent.name == "targets":
        found.append(lib.parent.parent.parent.parent / "include")
    return [p for p in found if p.is_dir()], False


@lru_cache(maxsize=None)
def cuda_headers() -> CudaHeaders:
    """The CUDA header directories that match the NVRTC in use (see module docstring)."""
    report = CudaHeaders()
    try:
        report.nvrtc_path, report.nvrtc_version = nvrtc_library()
    except Exception as exc:  # noqa: BLE001
        report.problems.append(f"NVRTC cannot be loaded ({type(exc).__name__}: {exc})")
        return report
    if not report.nvrtc_path:
        report.problems.append("the NVRTC library's path is unknown, so its headers cannot "
                               "be matched")
        return report
    candidates, from_wheels = _candidate_include_dirs(report.nvrtc_path)
    wheels = _wheel_versions()
    want = tuple(report.nvrtc_version[:2])
    have = {}
    primary = set(candidates)
    ignored = []
    if from_wheels and not all(any((c / h).is_file() for c in candidates)
                               for h in REQUIRED_HEADERS):
        # a pip NVRTC without the header wheels: a toolkit's headers are acceptable
        # only when they are of exactly the NVRTC's release (checked below)
        for variable in ("CUDA_PATH", "CUDA_HOME"):
            if os.environ.get(variable):
                candidates.append(Path(os.environ[variable]) / "include")
        candidates.append(Path("/usr/local/cuda/include"))
        candidates = [c for i, c in enumerate(candidates)
                      if c.is_dir() and c not in candidates[:i]]
    for include in candidates:
        seen = [(f"{name} wheel", version)
                for name, version in sorted(wheels.get(os.path.realpath(include), {}).items())]
        macro = _header_version(include)
        if macro is not None:
            seen.append(("CUDART_VERSION", macro))
        report.versions[str(include)] = seen
        wrong = [(what, v) for what, v in seen if tuple(v) != want]
        present = [h for h in REQUIRED_HEADERS if (include / h).is_file()]
        if not present:
            continue
        if include not in primary and not seen:
            ignored.append(f"{include}: its CUDA release cannot be read (no CUDART_VERSION)")
            continue
        if wrong:
            (report.problems if include in primary else ignored).append(
                f"{include} holds CUDA {'/'.join(f'{v[0]}.{v[1]}' for _, v in wrong)} headers "
                f"({', '.join(w for w, _ in wrong)}) but NVRTC is {want[0]}.{want[1]}: install "
                f"the matching wheels (pip install 'nvidia-cuda-runtime=={want[0]}.{want[1]}.*' "
                f"...) so that headers and compiler come from one release")
            continue
        report.include_dirs.append(str(include))
        for header in present:
            have.setdefault(header, str(include))
    missing = [h for h in REQUIRED_HEADERS if h not in have]
    if missing:
        report.problems.extend(ignored)
        hint = ("pip install 'cusparseconv[cuda13]' (or [cuda12]) brings nvidia-cuda-runtime "
                "and nvidia-cuda-crt (CUDA 12: nvidia-cuda-nvcc-cu12)" if from_wheels else
                "install the toolkit's headers (cuda-cudart-dev, cuda-crt)")
        report.problems.append(
            f"{', '.join(missing)} not found beside the NVRTC library {report.nvrtc_path} "
            f"(CUDA {want[0]}.{want[1]}); looked in {[str(c) for c in candidates]}; {hint}")
    return report


def cuda_include_dirs() -> list[str]:
    """Include directories holding ``cuda_fp16.h``, ``cuda_bf16.h``, ``mma.h`` and
    ``crt/mma.h`` of the NVRTC's release; an empty list when any is missing or of
    another release (`cuda_headers` says why)."""
    report = cuda_headers()
    return [] if report.problems else list(report.include_dirs)


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
    report = cuda_headers()
    if report.problems:
        return "; ".join(report.problems)
    return None


# ---------------------------------------------------------------------------
# compiling
# ---------------------------------------------------------------------------

def compile_source(path: Path | str, arch: str, name_expressions=None, include_dirs=None,
                   options=(), werror: bool = True) -> CompileResult:
    """Compile one kernel source with NVRTC for `arch`.

    Parameters
    ----------
    path : path-like
        The ``.cu`` file. Files of ``raw_kernels/`` are compiled as the device
        launcher hands them to NVRTC (`nvrtc_source`: a header hash first).
    arch : str
        ``"sm_80"``, ``"sm_90"``, ...
    name_expressions : sequence of str, optional
        Default: the file's ``csc-instantiate`` lines.
    include_dirs : sequence of str, optional
        Default: ``raw_kernels`` and `cuda_include_dirs()`, as at run time.
    options : sequence of str
        Extra NVRTC options.
    werror : bool
        Compile warnings as errors (the CI check); False compiles with exactly
        the run-time options (``python -m cusparseconv check``).

    Returns
    -------
    CompileResult
        CUBIN size and the lowered (mangled) name of every name expression.

    Raises
    ------
    NvrtcCompileError
        On any error or warning (warnings are compiled as errors).
    """
    path = Path(path)
    if path.parent.resolve() == RAW_KERNELS.resolve():
        text = nvrtc_source(path.name)
    else:
        text = path.read_text()
    if name_expressions is None:
        name_expressions = parse_instantiations(text)
    if include_dirs is None:
        include_dirs = [str(RAW_KERNELS)] + cuda_include_dirs()
    options = [*(CHECK_OPTIONS if werror else ()), *(f"-I{d}" for d in include_dirs), *options]
    compiled = run_nvrtc(text, path.name, f"-arch={arch}", name_expressions, options,
                         output="cubin")
    # belt and braces: -Werror should already have turned warnings into errors
    if werror and re.search(r"\bwarning\b", compiled["log"], re.I):
        raise NvrtcCompileError(f"NVRTC warnings on {path.name} for {arch}:\n{compiled['log']}")
    return CompileResult(arch, len(compiled["cubin"]), compiled["lowered"], compiled["log"])


def run_nvrtc(text: str, name: str, arch_option: str, name_expressions, options=(),
              output: str = "cubin") -> dict:
    """Compile ``text`` with NVRTC and the run-time options (the one place that drives
    an NVRTC program: the compile check and the compiled-code check use it).

    Parameters
    ----------
    text : str
        The source.
    name : str
        Its file name (for messages).
    arch_option : str
        ``"-arch=sm_90"`` (CUBIN) or ``"-arch=compute_90"`` (PTX).
    name_expressions : sequence of str
    options : sequence of str
        Added after ``NVRTC_OPTIONS`` (include directories, warnings as errors).
    output : {"cubin", "ptx"}

    Returns
    -------
    dict
        ``log``, ``lowered`` (name expression -> mangled name) and the output
        (``cubin`` bytes or ``ptx`` text).

    Raises
    ------
    NvrtcCompileError
        With NVRTC's log.
    """
    nvrtc = _nvrtc()
    opts = [arch_option, *NVRTC_OPTIONS, *options]
    prog = nvrtc.createProgram(text, name, [], [])
    try:
        for expr in name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, opts)
        except Exception as exc:
            raise NvrtcCompileError(
                f"NVRTC failed on {name} for {arch_option} ({exc}) with options {opts} and "
                f"name expressions {list(name_expressions)}:\n{nvrtc.getProgramLog(prog)}"
            ) from None
        result = {"log": nvrtc.getProgramLog(prog),
                  "lowered": {expr: nvrtc.getLoweredName(prog, expr)
                              for expr in name_expressions}}
        if output == "ptx":
            ptx = nvrtc.getPTX(prog)
            result["ptx"] = (ptx.decode() if isinstance(ptx, bytes) else ptx).rstrip("\0")
        else:
            result["cubin"] = nvrtc.getCUBIN(prog)
        return result
    finally:
        nvrtc.destroyProgram(prog)


@dataclass
class CompileOutcome:
    """One (file, arch) of `compile_all`."""

    file: str
    arch: str
    ok: bool
    seconds: float
    cubin_bytes: int = 0
    lowered_names: dict = field(default_factory=dict)
    error: str = ""


def _compile_job(job) -> list[CompileOutcome]:
    path, archs = job
    outcomes = []
    for arch in archs:
        start = time.perf_counter()
        try:
            result = compile_source(path, arch)
            outcomes.append(CompileOutcome(Path(path).name, arch, True,
                                           time.perf_counter() - start, result.cubin_bytes,
                                           result.lowered_names))
        except Exception as exc:  # noqa: BLE001 - reported per file and arch
            outcomes.append(CompileOutcome(Path(path).name, arch, False,
                                           time.perf_counter() - start, error=str(exc)))
    return outcomes


def compile_all(archs=None, paths=None, processes: int | None = None) -> list[CompileOutcome]:
    """Compile every source for every architecture it supports.

    Parameters
    ----------
    archs : sequence of str, optional
        Default: `supported_archs`. Each file is compiled for those of them at
        or above its ``csc-min-arch``.
    paths : sequence of path-like, optional
        Default: every ``raw_kernels/*.cu``.
    processes : int, optional
        Worker processes (default: the number of CPUs, at most 8; 1 compiles
        in this process). NVRTC holds a process-wide lock while compiling, so
        only processes run compiles in parallel.

    Returns
    -------
    list of CompileOutcome
        One per (file, architecture), files in order, architectures ascending.
    """
    paths = [Path(p) for p in (paths or kernel_sources())]
    archs = tuple(archs or supported_archs())
    jobs = [(str(p), tuple(archs_for(p, archs))) for p in paths]
    processes = processes or min(8, os.cpu_count() or 1)
    if processes <= 1 or len(jobs) <= 1:
        return [o for job in jobs for o in _compile_job(job)]
    # split each file's architectures in two halves so that large files spread
    split = []
    for path, file_archs in jobs:
        half = (len(file_archs) + 1) // 2
        split += [(path, file_archs[:half]), (path, file_archs[half:])]
    split = [job for job in split if job[1]]
    split.sort(key=lambda job: -os.path.getsize(job[0]))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        results = list(pool.map(_compile_job, split))
    outcomes = [o for batch in results for o in batch]
    order = {str(p.name): i for i, p in enumerate(paths)}
    outcomes.sort(key=lambda o: (order[o.file], _arch_number(o.arch)))
    return outcomes


def main(argv=None) -> int:
    reason = nvrtc_unavailable_reason()
    if reason:
        print(f"nvrtc_check: {reason}", file=sys.stderr)
        return 2
    paths = [Path(p) for p in (argv or [])] or kernel_sources()
    start = time.perf_counter()
    outcomes = compile_all(paths=paths)
    for o in outcomes:
        if o.ok:
            print(f"ok    {o.file} {o.arch}: {len(o.lowered_names)} name expressions, "
                  f"{o.cubin_bytes} bytes of CUBIN ({o.seconds:.1f} s)")
        else:
            print(f"FAIL  {o.file} {o.arch}: {o.error}")
    print(f"{len(outcomes)} compiles in {time.perf_counter() - start:.1f} s")
    return 1 if any(not o.ok for o in outcomes) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
