"""Compile CUDA C kernel sources as host C++ and run them on the CPU.

`EmulatedModule` mirrors `cupy.RawModule`: it takes the same source text,
options and name expressions, and ``get_function(name_expression)`` returns a
callable launched as ``kernel(grid, block, args, shared_mem=0)``. Arguments
are NumPy arrays (standing in for device memory) and explicit NumPy scalars.

The source is compiled once by g++ together with ``shim.h`` (the CUDA
built-ins) and a generated list of ``extern "C"`` launch entries, one per name
expression; the shared object is cached on disk under a hash of everything
that goes into it. See README.md beside this file for the execution model.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from .._cachedir import private_dir
from .._kernel_args import check_launch_args, param_names
from .._kernels import kernel_dir

__all__ = [
    "EmulatedModule",
    "EmulatedFunction",
    "EmulatorCompileError",
    "EmulatorLaunchError",
    "cache_dir",
    "default_include_dirs",
    "MODES",
    "SCHEDULES",
]

_HERE = Path(__file__).resolve().parent
SHIM = _HERE / "shim.h"
STUB_INCLUDE = _HERE / "include"


# Bump when the generated entry points or the launch ABI change.
_ABI_VERSION = 1
_BASE_FLAGS = (
    "-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-fvisibility=hidden",
    "-fno-gnu-unique", "-DCSC_EMULATION",
)

MODES = {"threads": 0, "cooperative": 1}
SCHEDULES = {"forward": 0, "reverse": 1, "shuffle": 2}

# Limits of the CUDA launch configuration (every current architecture).
_MAX_BLOCK = (1024, 1024, 64)
_MAX_THREADS = 1024
_MAX_GRID = (2**31 - 1, 65535, 65535)
_DEFAULT_SHARED_LIMIT = 48 * 1024
_MAX_SHARED_OPT_IN = 227 * 1024   # sm_90; sm_80 allows 163 KiB
_REDZONE = 1024                   # bytes of 0xff around each array argument
_ALIGN = 256                      # cudaMalloc alignment

# One launch at a time in the whole process: static __shared__ variables and
# the worker pools live in the shared objects.
_LAUNCH_LOCK = threading.Lock()
_LIB_LOCK = threading.Lock()
_LIBS: dict[str, "_Library"] = {}


class EmulatorCompileError(RuntimeError):
    """g++ rejected an emulated kernel source (the message holds its output)."""


class EmulatorLaunchError(RuntimeError):
    """A launch failed: failed assert, deadlock, out-of-bounds write, ..."""


_FALLBACK_DIR: list = []


def cache_dir() -> Path:
    """Directory of the compiled shared objects.

    ``emulator/`` in the private cache directory (``$CUSPARSECONV_CACHE_DIR``
    or ``~/.cache/cusparseconv``, see :mod:`cusparseconv._cachedir`). When
    that directory is refused (others can write it), is a file or cannot be
    written, a private temporary directory of this process is used instead,
    with a one-time warning.
    """
    path, reason = private_dir("emulator")
    if path is not None:
        return path
    with _LIB_LOCK:
        if not _FALLBACK_DIR:
            _FALLBACK_DIR.append(Path(tempfile.mkdtemp(prefix="cusparseconv-emulator-")))
            warnings.warn(f"cusparseconv emulator: not using the cache directory: {reason}; "
                          f"building into {_FALLBACK_DIR[0]} for this process",
                          RuntimeWarning, stacklevel=2)
    return _FALLBACK_DIR[0]


def default_include_dirs() -> tuple[str, ...]:
    """The kernel sources' directory (:func:`cusparseconv._kernels.kernel_dir`, where
    ``csc_common.cuh`` lives); none when the sources are missing."""
    try:
        return (kernel_dir(),)
    except FileNotFoundError:
        return ()


def _env_choice(name: str, table: dict, default: str) -> int:
    value = os.environ.get(name, default).strip().lower()
    if value not in table:
        raise ValueError(f"{name} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _choice(value, table: dict, env: str, default: str, what: str) -> int:
    if value is None:
        return _env_choice(env, table, default)
    if value not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {value!r}")
    return table[value]


# ---------------------------------------------------------------------------
# compiling
# ---------------------------------------------------------------------------

_COMPILER_ID: dict[str, str] = {}


def _compiler() -> str:
    cxx = os.environ.get("CUSPARSECONV_EMULATOR_CXX", "g++")
    if cxx not in _COMPILER_ID:
        path = shutil.which(cxx)
        if path is None:
            raise EmulatorCompileError(
                f"the kernel emulator needs a C++20 compiler: {cxx!r} is not on PATH "
                "(install g++ >= 11, or set CUSPARSECONV_EMULATOR_CXX)")
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True)
        _COMPILER_ID[cxx] = path + "\n" + out.stdout
    return cxx


_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]', re.M)


def _included_files(text: str, include_dirs, seen: dict[str, str]) -> None:
    """Add the contents of every header `text` includes (found in include_dirs)."""
    for _, name in _INCLUDE_RE.findall(text):
        for d in include_dirs:
            p = Path(d) / name
            if p.is_file():
                key = str(p.resolve())
                if key not in seen:
                    seen[key] = p.read_text(errors="replace")
                    _included_files(seen[key], include_dirs, seen)
                break


def _parse_options(options) -> tuple[list[str], list[str]]:
    """Split NVRTC-style options into (-D macros, -I dirs); the rest is ignored."""
    defines, includes = [], []
    items = list(options)
    i = 0
    while i < len(items):
        opt = str(items[i])
        if opt.startswith("--define-macro="):
            defines.append(opt.split("=", 1)[1])
        elif opt in ("-D", "--define-macro") and i + 1 < len(items):
            i += 1
            defines.append(str(items[i]))
        elif opt.startswith("-D"):
            defines.append(opt[2:])
        elif opt.startswith("--include-path="):
            includes.append(opt.split("=", 1)[1])
        elif opt in ("-I", "--include-path") and i + 1 < len(items):
            i += 1
            includes.append(str(items[i]))
        elif opt.startswith("-I"):
            includes.append(opt[2:])
        i += 1
    return defines, includes


def _c_string_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entry_points(name_expressions) -> str:
    lines = [
        "",
        '#line 1 "<emulator entry points>"',
        '#define CSC_EXPORT extern "C" __attribute__((visibility("default")))',
        f"CSC_EXPORT int csc_abi_version() {{ return {_ABI_VERSION}; }}",
    ]
    for i, expr in enumerate(name_expressions):
        lines += [
            f"#line 1 {_c_string_literal('name expression ' + expr)}",
            f"CSC_EXPORT int csc_launch_{i}(const ::csc_emu::LaunchConfig* cfg, void** args,"
            f" char* err, unsigned long long errlen) {{",
            f"    return ::csc_emu::launch(&{expr}, args, *cfg, err, errlen);",
            "}",
            f"CSC_EXPORT int csc_nparams_{i}() {{ return decltype(::csc_emu::info_of(&{expr}))"
            "::count(); }",
            f"CSC_EXPORT void csc_params_{i}(int* out) {{ decltype(::csc_emu::info_of(&{expr}))"
            "::describe(out); }",
        ]
    return "\n".join(lines) + "\n"


def _static_shared(so_path: Path) -> list[tuple[str, int, int]]:
    """Function-local statics of the kernels (their `__shared__` variables).

    Returns (demangled name, address in the file, bytes) for every writable
    object whose mangled name is a local static (``_ZZ...``), except guard
    variables and ``__func__``.
    """
    nm = shutil.which("nm")
    if nm is None:
        return []
    out = subprocess.run([nm, "-P", "-S", "--defined-only", str(so_path)],
                         capture_output=True, text=True)
    rows = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        name, kind, value, size = parts
        if not name.startswith("_ZZ") or kind.lower() not in ("b", "d", "v", "u", "c"):
            continue
        if name.endswith("__func__") or "E8__func__" in name:
            continue
        rows.append((name, int(value, 16), int(size, 16)))
    if not rows:
        return []
    filt = shutil.which("c++filt")
    names = [r[0] for r in rows]
    if filt:
        dem = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True)
        if dem.returncode == 0 and len(dem.stdout.splitlines()) == len(names):
            names = dem.stdout.splitlines()
    return [(n, v, s) for n, (_, v, s) in zip(names, rows)]


class _Library:
    """A loaded shared object and what the loader learnt about it."""

    def __init__(self, path: Path, n_entries: int):
        self.path = path
        self.lib = ctypes.CDLL(str(path), mode=getattr(os, "RTLD_LOCAL", 0))
        if self.lib.csc_abi_version() != _ABI_VERSION:
            raise EmulatorCompileError(f"{path}: stale emulator build (ABI mismatch)")
        anchor = ctypes.cast(self.lib.csc_abi_version, ctypes.c_void_p).value
        statics = _static_shared(path)
        anchor_off = self._symbol_offset(path, "csc_abi_version")
        base = anchor - anchor_off if anchor_off is not None else None
        # (owner function, address, bytes); owner is the demangled text before "::name"
        self.shared = []
        if base is not None:
            for name, value, size in statics:
                owner = name.rsplit("::", 1)[0]
                self.shared.append((owner, base + value, size))
        self.entries = []
        for i in range(n_entries):
            launch = getattr(self.lib, f"csc_launch_{i}")
            launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                               ctypes.c_ulonglong]
            launch.restype = ctypes.c_int
            nparams = getattr(self.lib, f"csc_nparams_{i}")()
            info = (ctypes.c_int * max(4 * nparams, 1))()
            getattr(self.lib, f"csc_params_{i}")(info)
            params = [tuple(info[4 * k:4 * k + 4]) for k in range(nparams)]
            self.entries.append((launch, params))

    @staticmethod
    def _symbol_offset(path: Path, symbol: str):
        nm = shutil.which("nm")
        if nm is None:
            return None
        out = subprocess.run([nm, "-P", "-D", "--defined-only", str(path)],
                             capture_output=True, text=True)
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == symbol:
                return int(parts[2], 16)
        return None


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(so_path: Path, digest_path: Path) -> bool:
    """True when a cached build is complete: the SHA-256 recorded beside it when it
    was written matches its bytes (a truncated or half-copied entry is rebuilt).
    Only a private directory is used (see `cache_dir`), so this guards against
    accidents, not against someone who could write there."""
    try:
        return so_path.is_file() and digest_path.read_text().strip() == _file_digest(so_path)
    except (OSError, UnicodeDecodeError):
        return False


def _build(source: str, source_name: str, name_expressions, defines, include_dirs) -> _Library:
    cxx = _compiler()
    inc_dirs = [str(STUB_INCLUDE)] + [str(d) for d in include_dirs]
    headers: dict[str, str] = {}
    _included_files(source, inc_dirs, headers)
    flags = list(_BASE_FLAGS) + ["-include", str(SHIM)]
    flags += ["-D" + d for d in defines] + ["-I" + d for d in inc_dirs]
    text = f"#line 1 {_c_string_literal(source_name)}\n" + source + _entry_points(name_expressions)
    h = hashlib.sha256()
    for part in (str(_ABI_VERSION), _COMPILER_ID[cxx], SHIM.read_text(), text,
                 "\0".join(flags), *(k + "\0" + v for k, v in sorted(headers.items()))):
        h.update(part.encode())
        h.update(b"\0\1")
    key = h.hexdigest()[:32]
    with _LIB_LOCK:
        if key in _LIBS:
            return _LIBS[key]
    out_dir = cache_dir()
    with _LIB_LOCK:
        if key in _LIBS:
            return _LIBS[key]
        so_path = out_dir / f"{key}.so"
        digest_path = out_dir / f"{key}.sha256"
        if not _intact(so_path, digest_path):
            with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
                cpp = Path(tmp) / "module.cpp"
                cpp.write_text(text)
                tmp_so = Path(tmp) / "module.so"
                cmd = [cxx, *flags, "-x", "c++", str(cpp), "-o", str(tmp_so)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise EmulatorCompileError(
                        f"emulator: g++ failed to compile {source_name} "
                        f"(name expressions {list(name_expressions)}):\n{proc.stderr[-20000:]}")
                tmp_digest = Path(tmp) / "module.sha256"
                tmp_digest.write_text(_file_digest(tmp_so))
                os.replace(tmp_so, so_path)
                os.replace(tmp_digest, digest_path)
        lib = _Library(so_path, len(name_expressions))
        _LIBS[key] = lib
        return lib


# ---------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------

class _LaunchConfig(ctypes.Structure):
    _fields_ = [
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared_bytes", ctypes.c_ulonglong),
        ("mode", ctypes.c_int),
        ("schedule", ctypes.c_int),
        ("seed", ctypes.c_ulonglong),
        ("shared_ranges", ctypes.c_void_p),
        ("n_shared_ranges", ctypes.c_ulonglong),
    ]


def _dims(value, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)):
        dims = (int(value),)
    else:
        try:
            dims = tuple(int(v) for v in value)
        except TypeError:
            raise TypeError(f"{what} must be an int or a tuple of up to 3 ints, "
                            f"got {type(value).__name__}") from None
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {len(dims)}")
    return dims + (1,) * (3 - len(dims))


class _ArgBuffers:
    """Redzoned copies of the array arguments (out-of-bounds writes are caught)."""

    def __init__(self, arrays: list[tuple[int, np.ndarray]], check_bounds: bool):
        self.pointers: dict[int, int] = {}
        self.groups = []
        self.keep = []
        if not check_bounds:
            for idx, arr in arrays:
                self.pointers[idx] = arr.ctypes.data if arr.size else 0
            return
        # merge arguments whose byte ranges overlap (in-place kernels: same array twice)
        spans = sorted((arr.ctypes.data, arr.ctypes.data + arr.nbytes, idx, arr)
                       for idx, arr in arrays)
        merged: list[list] = []
        for lo, hi, idx, arr in spans:
            if merged and arr.nbytes and lo < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
                merged[-1][2].append((idx, arr))
            else:
                merged.append([lo, hi, [(idx, arr)]])
        for lo, hi, members in merged:
            nbytes = hi - lo
            raw = np.empty(nbytes + 2 * _REDZONE + _ALIGN, dtype=np.uint8)
            start = (-raw.ctypes.data) % _ALIGN + _REDZONE
            raw[:] = 0xFF
            inner = raw[start:start + nbytes]
            if nbytes:
                ctypes.memmove(inner.ctypes.data, lo, nbytes)
            for idx, arr in members:
                self.pointers[idx] = inner.ctypes.data + (arr.ctypes.data - lo)
            self.groups.append((lo, nbytes, raw, start, members))
            self.keep.append(raw)

    def finish(self, kernel: str) -> None:
        """Check the redzones, then copy the results back into the arguments."""
        for lo, nbytes, raw, start, members in self.groups:
            before = raw[start - _REDZONE:start]
            after = raw[start + nbytes:start + nbytes + _REDZONE]
            if (before != 0xFF).any() or (after != 0xFF).any():
                idx = [i for i, _ in members]
                where = []
                if (before != 0xFF).any():
                    first = int(np.flatnonzero(before != 0xFF)[0])
                    where.append(f"{_REDZONE - first} bytes before the start")
                if (after != 0xFF).any():
                    last = int(np.flatnonzero(after != 0xFF)[-1])
                    where.append(f"up to {last + 1} bytes past the end")
                raise EmulatorLaunchError(
                    f"{kernel}: out-of-bounds write to argument {idx[0] if len(idx) == 1 else idx}"
                    f" ({nbytes} bytes): {' and '.join(where)}")
            if not nbytes:
                continue
            inner = raw[start:start + nbytes]
            if all(arr.flags.writeable for _, arr in members):
                ctypes.memmove(lo, inner.ctypes.data, nbytes)
            else:
                orig = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(lo))
                if not np.array_equal(orig, inner):
                    raise EmulatorLaunchError(
                        f"{kernel}: the kernel wrote into read-only argument "
                        f"{[i for i, _ in members]}")


class EmulatedFunction:
    """One kernel of an `EmulatedModule`; call it like a `cupy.RawKernel`.

    Attributes
    ----------
    name : str
        The name expression.
    params : list of (size, kind, pointee_size, pointee_kind)
        The kernel's parameters as compiled.
    max_dynamic_shared_size_bytes : int
        Dynamic shared memory a launch may request (48 KiB unless raised, as
        on the GPU).
    mode, schedule, seed : see `EmulatedModule`.
    """

    def __init__(self, module: "EmulatedModule", name: str, launch, params, shared):
        self.module = module
        self.name = name
        self._launch = launch
        self.params = params
        self._shared = shared  # [(address, bytes)] of this kernel's static __shared__
        self.static_shared_bytes = sum(s for _, s in shared)
        self._ranges = (ctypes.c_ulonglong * max(2 * len(shared), 1))(
            *[v for a, s in shared for v in (a, s)])
        self.max_dynamic_shared_size_bytes = _DEFAULT_SHARED_LIMIT
        self.mode = module.mode
        self.schedule = module.schedule
        self.seed = module.seed
        self.check_bounds = module.check_bounds
        self.param_names = param_names(module.code, name)

    def __repr__(self):
        return f"<EmulatedFunction {self.name} ({len(self.params)} parameters)>"

    def __call__(self, grid, block, args, shared_mem=0, stream=None,
                 enable_cooperative_groups=False):
        """Launch the kernel synchronously.

        Parameters
        ----------
        grid, block : int or tuple of up to 3 ints
        args : tuple or list
            NumPy arrays (C-contiguous; passed as device pointers) and NumPy
            scalars of the exact parameter type.
        shared_mem : int
            Bytes of dynamic shared memory (`CSC_DYNAMIC_SHARED`).
        stream : ignored (launches are synchronous).
        """
        gdim = _dims(grid, "grid")
        bdim = _dims(block, "block")
        nthreads = bdim[0] * bdim[1] * bdim[2]
        if (min(gdim) < 1 or min(bdim) < 1 or any(b > m for b, m in zip(bdim, _MAX_BLOCK))
                or nthreads > _MAX_THREADS or any(g > m for g, m in zip(gdim, _MAX_GRID))):
            raise ValueError(
                f"{self.name}: invalid launch configuration grid={gdim} block={bdim} (each "
                f"dimension >= 1, block <= {_MAX_BLOCK} with at most {_MAX_THREADS} threads, "
                f"grid <= {_MAX_GRID})")
        shared_mem = int(shared_mem)
        limit = max(self.max_dynamic_shared_size_bytes, _DEFAULT_SHARED_LIMIT)
        if shared_mem < 0 or shared_mem > min(limit, _MAX_SHARED_OPT_IN):
            raise ValueError(
                f"{self.name}: shared_mem={shared_mem} bytes exceeds "
                f"max_dynamic_shared_size_bytes={self.max_dynamic_shared_size_bytes}")
        if self.static_shared_bytes + shared_mem > max(limit, _DEFAULT_SHARED_LIMIT):
            raise ValueError(
                f"{self.name}: static ({self.static_shared_bytes}) + dynamic ({shared_mem}) "
                f"shared memory exceeds {limit} bytes")
        check_launch_args(self.name, self.params, args, names=self.param_names)
        holders = []
        arrays = []
        for i, (arg, p) in enumerate(zip(args, self.params)):
            if isinstance(arg, np.ndarray):
                arrays.append((i, arg))
                holders.append(None)
            else:
                holders.append(ctypes.create_string_buffer(arg.tobytes(), p[0]))
        cfg = _LaunchConfig()
        cfg.grid[:] = gdim
        cfg.block[:] = bdim
        cfg.shared_bytes = shared_mem
        cfg.mode = self._pick(self.mode, MODES, "CUSPARSECONV_EMULATOR_MODE", "threads", "mode")
        cfg.schedule = self._pick(self.schedule, SCHEDULES, "CUSPARSECONV_EMULATOR_SCHEDULE",
                                  "forward", "schedule")
        seed = self.seed
        if seed is None:
            seed = int(os.environ.get("CUSPARSECONV_EMULATOR_SEED", "0"))
        cfg.seed = int(seed) & (2**64 - 1)
        cfg.shared_ranges = ctypes.cast(self._ranges, ctypes.c_void_p)
        cfg.n_shared_ranges = len(self._shared)
        err = ctypes.create_string_buffer(2048)
        with _LAUNCH_LOCK:
            bufs = _ArgBuffers(arrays, self.check_bounds)
            slots = (ctypes.c_void_p * max(len(args), 1))()
            ptr_holders = {}
            for i in range(len(args)):
                if i in bufs.pointers:
                    ptr_holders[i] = ctypes.c_void_p(bufs.pointers[i])
                    slots[i] = ctypes.cast(ctypes.pointer(ptr_holders[i]), ctypes.c_void_p)
                else:
                    slots[i] = ctypes.cast(holders[i], ctypes.c_void_p)
            rc = self._launch(ctypes.byref(cfg), slots, err, len(err))
            if rc != 0:
                raise EmulatorLaunchError(f"{self.name}: {err.value.decode(errors='replace')}")
            bufs.finish(self.name)

    @staticmethod
    def _pick(value, table, env, default, what):
        if isinstance(value, int) and value in table.values():
            return value
        return _choice(value, table, env, default, what)


class EmulatedModule:
    """A kernel source compiled for the host, with the interface of `cupy.RawModule`.

    Parameters
    ----------
    code : str
        CUDA C source (it includes ``csc_common.cuh`` first).
    options : tuple of str
        NVRTC options; ``-D``/``--define-macro`` and ``-I``/``--include-path``
        are honoured, the rest (``-arch``, ``--std``, ...) is ignored.
    name_expressions : sequence of str
        The kernels to make callable, spelled as for `cupy.RawModule`
        (``"gather_rows<float>"``, ``"kmap_search_tiles<3>"``).
    path : str, optional
        Read the source from this file instead of `code`.
    include_dirs : sequence of str, optional
        Extra include directories; default: the package's ``raw_kernels``.
    mode : {"threads", "cooperative"}, optional
        "threads": one OS thread per CUDA thread of a block (real
        interleaving). "cooperative": fibers on one OS thread, each running
        until it blocks on a barrier, in `schedule` order (deterministic:
        a missing barrier gives the same wrong result every time). Default:
        ``$CUSPARSECONV_EMULATOR_MODE`` or "threads".
    schedule : {"forward", "reverse", "shuffle"}, optional
        Thread order of the cooperative mode (default
        ``$CUSPARSECONV_EMULATOR_SCHEDULE`` or "forward").
    seed : int, optional
        Seeds the shuffled block order (and the "shuffle" schedule); default
        ``$CUSPARSECONV_EMULATOR_SEED`` or 0.
    check_bounds : bool
        Run on redzoned copies of the array arguments and raise
        `EmulatorLaunchError` on a write outside them (reads outside see
        0xff bytes: NaN or -1).
    """

    def __init__(self, code: str | None = None, options=(), name_expressions=(), *,
                 path: str | None = None, include_dirs=None, mode=None, schedule=None,
                 seed=None, check_bounds: bool = True, **cupy_only):
        unknown = set(cupy_only) - {"backend", "translate_cucomplex",
                                    "enable_cooperative_groups", "jitify"}
        if unknown:
            raise TypeError(f"EmulatedModule got unexpected arguments {sorted(unknown)}")
        if (code is None) == (path is None):
            raise TypeError("EmulatedModule needs exactly one of code= and path=")
        source_name = "<source>"
        if path is not None:
            code = Path(path).read_text()
            source_name = str(path)
        if isinstance(name_expressions, str):
            raise TypeError("name_expressions must be a sequence of str, not a str")
        self.code = code
        self.options = tuple(options)
        self.name_expressions = tuple(str(n) for n in (name_expressions or ()))
        defines, inc = _parse_options(self.options)
        dirs = tuple(include_dirs) if include_dirs is not None else default_include_dirs()
        self.include_dirs = tuple(inc) + tuple(str(d) for d in dirs)
        self._defines = defines
        self.mode = mode
        self.schedule = schedule
        self.seed = seed
        self.check_bounds = bool(check_bounds)
        for value, table, what in ((mode, MODES, "mode"), (schedule, SCHEDULES, "schedule")):
            if value is not None and value not in table:
                raise ValueError(f"{what} must be one of {sorted(table)}, got {value!r}")
        self._source_name = source_name
        self._lib = _build(code, source_name, self.name_expressions, defines, self.include_dirs)
        self._functions: dict[str, EmulatedFunction] = {}
        self._extra: dict[str, _Library] = {}

    def get_function(self, name: str) -> EmulatedFunction:
        """The kernel `name` (a name expression given at construction, or the
        plain name of a non-template kernel)."""
        if name in self._functions:
            return self._functions[name]
        if name in self.name_expressions:
            lib, index = self._lib, self.name_expressions.index(name)
        elif re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*", name):
            lib = _build(self.code, self._source_name, (name,), self._defines, self.include_dirs)
            index = 0
        else:
            raise KeyError(
                f"{name!r} is not one of the module's name expressions "
                f"{list(self.name_expressions)} (cupy.RawModule fails the same way)")
        launch, params = lib.entries[index]
        base = name.split("<", 1)[0].strip()
        exact = [(addr, size) for owner, addr, size in lib.shared
                 if self._owner_matches(owner, name, base)]
        # A name expression spelled through a typedef does not match the
        # demangled owner: then poison the statics of every kernel of that name.
        poison = exact or [(addr, size) for owner, addr, size in lib.shared
                           if self._owner_matches(owner, base, base)]
        fn = EmulatedFunction(self, name, launch, params, poison)
        fn.static_shared_bytes = sum(size for _, size in exact)
        self._functions[name] = fn
        return fn

    @staticmethod
    def _owner_matches(owner: str, name: str, base: str) -> bool:
        # owner looks like "void gather_rows<float>(float const*, ...)" or
        # "gather_rows<float>(float const*, ...)"; compare the text before "("
        head = owner.split("(", 1)[0].strip()
        head = head.split(" ", 1)[1] if head.startswith("void ") else head
        norm = re.sub(r"\s+", "", head)
        if norm == re.sub(r"\s+", "", name):
            return True
        return "<" not in name and norm.split("<", 1)[0] == base
