"""Algorithm choice for the GPU products: forced, heuristic or measured (autotuned).

Each product (``forward``, ``input_grad``, ``weight_grad``) has several GPU
algorithms (docs/SPEC.md section 6). The choice, in order of precedence:

1. the ``algorithm=`` argument of the product;
2. the ``CUSPARSECONV_ALGORITHM`` environment variable, either one name for
   every product or ``product=name`` pairs separated by commas;
3. the autotuner: on first use of a shape bucket it times every candidate and
   remembers the fastest, in memory and in ``tuning.json`` under the cache
   directory (``CUSPARSECONV_CACHE_DIR``, default ``~/.cache/cusparseconv``;
   see :mod:`cusparseconv._cachedir`: a directory others can write is not
   used). Writers merge their results into the file under a file lock, so
   processes tuning at the same time keep each other's results;
4. a heuristic, when tuning is off (``set_autotune(False)``,
   ``CUSPARSECONV_AUTOTUNE=0``, under host emulation, and while the current
   stream is being captured into a CUDA graph): ``tensor_core`` wherever the
   tensor-core kernels run (float16 / bfloat16 on sm_80+, float32 too when
   TF32 is allowed; one group, at most 512 offsets), else ``mask`` for 16-bit
   inputs or in deterministic mode and ``implicit`` otherwise; for the weight
   gradient ``tensor_core``, else ``splitk`` (``explicit`` in deterministic
   mode).

The ``tensor_core`` algorithm has several compiled tile shapes
(:data:`cusparseconv.backends._tensor_core.VARIANTS`); the backend offers
each as a candidate named ``tensor_core:<shape>`` (e.g.
``tensor_core:m64n64s4``), so the tuner times and remembers the shape too.
Forcing ``tensor_core`` lets the tuner choose among its shapes only.

TF32 (float32 multiplied with 10-bit mantissas on the tensor cores) is off
by default: :func:`set_allow_tf32` turns it on for this library, and CuPy's
own switch (the ``CUPY_TF32`` environment variable, or
``cupy._core.set_compute_type``) is honoured too (:func:`tf32_allowed`).

Candidates whose workspace (the memory an algorithm allocates beyond its
output) exceeds ``WORKSPACE_FRACTION`` of the free device memory are not
run, neither to time them nor as the heuristic's pick while another fits. A
candidate that fails (out of memory, a kernel that does not compile or does
not exist on the device) is dropped for its shape bucket and remembered for
the rest of the process.

Deterministic mode (``set_deterministic(True)`` or
``CUSPARSECONV_DETERMINISTIC=1``) only allows atomic-free algorithms.

Every decision is logged at DEBUG on the ``cusparseconv.tuning`` logger (the
algorithm, why, and the measured times when it was timed); :func:`plan` tells
the decision without running anything (used by :func:`cusparseconv.explain`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings

from ._cachedir import private_dir

#: Every GPU algorithm per product, in the order tried when nothing else decides.
ALGORITHMS = {
    "forward": ("explicit", "explicit_sorted", "implicit", "mask", "tensor_core"),
    "input_grad": ("explicit", "explicit_sorted", "implicit", "mask", "tensor_core"),
    "weight_grad": ("explicit", "splitk", "tensor_core"),
}
#: The atomic-free subset (bit-identical results from run to run).
DETERMINISTIC = {
    "forward": ("explicit_sorted", "mask", "tensor_core"),
    "input_grad": ("explicit_sorted", "mask", "tensor_core"),
    "weight_grad": ("explicit", "tensor_core"),
}
#: Largest share of the free device memory one candidate's workspace may take.
WORKSPACE_FRACTION = 0.5

_settings = {
    # read once, when this module is imported (cusparseconv.config documents every variable)
    "deterministic": os.environ.get("CUSPARSECONV_DETERMINISTIC", "0") not in ("", "0"),
    "autotune": os.environ.get("CUSPARSECONV_AUTOTUNE", "1") not in ("", "0"),
    "tf32": False,
}
_log = logging.getLogger(__name__)
_memory: dict[str, str] = {}
_failed: dict[str, set] = {}
_file_loaded = {"done": False}
_lock = threading.Lock()


def set_deterministic(enabled: bool) -> None:
    """Allow only atomic-free GPU algorithms (results identical from run to run)."""
    _settings["deterministic"] = bool(enabled)


def set_autotune(enabled: bool) -> None:
    """Time the candidate algorithms on first use of a shape (True) or use the heuristic."""
    _settings["autotune"] = bool(enabled)


def is_deterministic() -> bool:
    """Whether only atomic-free GPU algorithms are allowed."""
    return _settings["deterministic"]


def is_autotune() -> bool:
    """Whether the GPU products time their candidate algorithms on first use of a shape."""
    return _settings["autotune"]


def set_allow_tf32(enabled: bool) -> None:
    """Let the GPU products multiply float32 as TF32 on the tensor cores (sm_80+).

    TF32 keeps float32's range but rounds the operands to 10 mantissa bits (a
    relative error of about 1e-3 per product, accumulated in float32). Off by
    default; CuPy's own switch (``CUPY_TF32=1``) also turns it on
    (:func:`tf32_allowed`)."""
    _settings["tf32"] = bool(enabled)


def is_tf32_allowed() -> bool:
    """Whether :func:`set_allow_tf32` turned TF32 on (CuPy's switch not included:
    see :func:`tf32_allowed`)."""
    return _settings["tf32"]


def _cupy_env_tf32() -> bool:
    """``CUPY_TF32`` read as CuPy reads it (an integer, on when > 0)."""
    try:
        return int(os.environ.get("CUPY_TF32", "0") or "0") > 0
    except ValueError:
        return False


def tf32_allowed(xp=None) -> bool:
    """Whether float32 products may run as TF32: :func:`set_allow_tf32`, or CuPy's switch.

    CuPy's switch is its compute type for float32 (``CUPY_TF32=1`` sets it on
    first use; ``cupy._core.set_compute_type`` changes it) when ``xp`` is CuPy;
    under host emulation (``xp`` NumPy, or None) the ``CUPY_TF32`` environment
    variable, read as CuPy reads it.
    """
    if _settings["tf32"]:
        return True
    linalg = getattr(getattr(xp, "_core", None), "_routines_linalg", None)
    get = getattr(linalg, "get_compute_type", None)
    tf32 = getattr(linalg, "COMPUTE_TYPE_TF32", None)
    if get is not None and tf32 is not None:
        import numpy

        return get(numpy.float32) == tf32
    return _cupy_env_tf32()


def algorithm_family(name: str) -> str:
    """The algorithm a candidate name belongs to: ``tensor_core:m64n64s4`` -> ``tensor_core``."""
    return name.partition(":")[0]


def _tuning_file():
    """Path of tuning.json, or None when the cache directory is not usable."""
    directory, reason = private_dir()
    if directory is None:
        warnings.warn(f"cusparseconv: tuning results are kept in memory only: {reason}",
                      RuntimeWarning, stacklevel=4)
        return None
    return os.path.join(directory, "tuning.json")


def forced_algorithm(product: str, algorithm: str | None) -> str | None:
    """The algorithm the user forces for ``product`` (argument, then environment).

    A name of :data:`ALGORITHMS`, or ``tensor_core:<shape>`` for one tile shape of
    the tensor-core kernels (the backend checks the shape)."""
    if algorithm not in (None, "auto"):
        if algorithm_family(str(algorithm)) not in ALGORITHMS[product]:
            raise ValueError(f"algorithm for the {product} product must be one of "
                             f"{('auto',) + ALGORITHMS[product]}, got {algorithm!r}")
        return algorithm
    setting = os.environ.get("CUSPARSECONV_ALGORITHM", "").strip()
    if not setting:
        return None
    for part in setting.split(","):
        name, _, value = part.partition("=")
        if not value:  # a single name applies to every product that has it
            if algorithm_family(name.strip()) in ALGORITHMS[product]:
                return name.strip()
            continue
        if name.strip() == product:
            if algorithm_family(value.strip()) not in ALGORITHMS[product]:
                raise ValueError(f"CUSPARSECONV_ALGORITHM: {product} must be one of "
                                 f"{ALGORITHMS[product]}, got {value.strip()!r}")
            return value.strip()
    return None


def shape_bucket(product, n_in, n_out, n_pairs, c_in, c_out, kernel_volume, dtype,
                 device="") -> str:
    """Key of a shape class: sizes rounded to powers of two."""
    def bucket(value):
        return 0 if value <= 0 else 1 << (int(value) - 1).bit_length()
    return (f"{device}|{product}|in{bucket(n_in)}|out{bucket(n_out)}|pairs{bucket(n_pairs)}|"
            f"c{c_in}x{c_out}|k{kernel_volume}|{dtype}")


def _read_file(path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if isinstance(k, str) and isinstance(v, str)}


def _load_file():
    if _file_loaded["done"]:
        return
    _file_loaded["done"] = True
    path = _tuning_file()
    if path is not None:
        for key, value in _read_file(path).items():
            _memory.setdefault(key, value)


class _FileLock:
    """An exclusive advisory lock on ``path`` (fcntl; a no-op where unavailable)."""

    def __init__(self, path):
        self.path, self.handle = path, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.handle = open(self.path, "a+b")  # noqa: SIM115 - released in __exit__
        os.chmod(self.path, 0o600)
        fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            import fcntl

            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()


def _save_file(new_entries: dict):
    """Merge ``new_entries`` into tuning.json under its lock (atomic replace)."""
    path = _tuning_file()
    if path is None:
        return
    try:
        with _FileLock(path + ".lock"):
            merged = _read_file(path)
            merged.update(new_entries)
            temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(merged, handle, indent=1, sort_keys=True)
            os.replace(temporary, path)
        for key, value in merged.items():
            _memory.setdefault(key, value)
    except OSError:  # a read-only or full disk must not break a forward pass
        pass


def record(bucket: str, algorithm: str) -> None:
    """Remember ``algorithm`` for ``bucket`` in memory and in tuning.json."""
    with _lock:
        _memory[bucket] = algorithm
        _save_file({bucket: algorithm})


def clear_memory() -> None:
    """Forget in-memory tuning decisions and failures (the JSON file is kept)."""
    _memory.clear()
    _failed.clear()
    _file_loaded["done"] = False


def remember_failure(bucket: str, algorithm: str) -> None:
    """Never pick ``algorithm`` for ``bucket`` again in this process."""
    with _lock:
        _failed.setdefault(bucket, set()).add(algorithm)
        if _memory.get(bucket) == algorithm:
            del _memory[bucket]


def failed(bucket: str) -> frozenset:
    """Algorithms that failed for ``bucket`` in this process."""
    return frozenset(_failed.get(bucket, ()))


def plan(product: str, candidates, forced: str | None, bucket: str, heuristic: str,
         autotune: bool | None = None, workspace=None, free_bytes=None,
         capturing: bool = False) -> tuple[str | None, str]:
    """What :func:`choose` decides before it times anything, without running a candidate.

    Parameters are those of :func:`choose`.

    Returns
    -------
    algorithm : str or None
        The choice; None when :func:`choose` would time the allowed candidates
        (the shape class was not tuned yet).
    reason : str
        Why, in words.
    """
    if forced is not None:
        return forced, "forced (algorithm= argument or CUSPARSECONV_ALGORITHM)"
    allowed, notes = _allowed(product, candidates, bucket, workspace, free_bytes)
    if heuristic not in allowed:
        heuristic = allowed[0]
    tune = _settings["autotune"] if autotune is None else autotune
    with _lock:
        if tune:
            _load_file()
        known = _memory.get(bucket)
    context = f" ({'; '.join(notes)})" if notes else ""
    if known in allowed:
        return known, f"autotuned earlier for this shape class{context}"
    if len(allowed) == 1:
        return allowed[0], f"the only allowed candidate{context}"
    if not tune:
        return heuristic, (f"heuristic, not timed (autotuning off; always so under host "
                           f"emulation); candidates {allowed}{context}")
    if capturing:
        return heuristic, f"heuristic, stream being captured (no timing){context}"
    return None, f"not tuned yet: the first call times {allowed} and keeps the fastest{context}"


def _log_choice(product, bucket, algorithm, reason):
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("%s: algorithm %r, %s [%s]", product, algorithm, reason, bucket,
                   extra={"product": product, "algorithm": algorithm, "reason": reason})


def choose(product: str, candidates, forced: str | None, bucket: str, heuristic: str,
           run, synchronize=None, autotune: bool | None = None, repeats: int = 3,
           workspace=None, free_bytes=None, capturing: bool = False,
           failures: tuple = (MemoryError,)) -> str:
    """Pick the algorithm for one call.

    Parameters
    ----------
    product : str
    candidates : sequence of str
        Algorithms able to run this call, in order of preference.
    forced : str or None
        From :func:`forced_algorithm` (returned as is).
    bucket : str
        From :func:`shape_bucket`.
    heuristic : str
        Used when tuning is off (if allowed, else the first allowed candidate).
    run : callable(name) -> object
        Runs one candidate (its result is discarded while tuning).
    synchronize : callable or None
        Waits for the device before reading the clock.
    autotune : bool or None
        None: the process-wide setting (:func:`set_autotune`).
    workspace : dict {name: bytes}, optional
        Memory each candidate allocates.
    free_bytes : int or callable() -> int, optional
        Free device memory; with ``workspace``, candidates above
        ``WORKSPACE_FRACTION`` of it are skipped (unless none fits: then the
        smallest is used).
    capturing : bool
        The stream is being captured into a CUDA graph: never time, use the
        remembered or heuristic choice.
    failures : tuple of exception types
        Raised by a candidate that cannot run this shape: it is dropped and
        remembered, and the others are timed.
    """
    choice, reason = plan(product, candidates, forced, bucket, heuristic, autotune,
                          workspace, free_bytes, capturing)
    if choice is not None:
        _log_choice(product, bucket, choice, reason)
        return choice
    allowed, _ = _allowed(product, candidates, bucket, workspace, free_bytes)
    timings = {}
    errors = {}
    for name in allowed:
        try:
            run(name)  # warm-up: compiles the kernel and fills allocator pools
            if synchronize:
                synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                run(name)
            if synchronize:
                synchronize()
        except failures as error:
            remember_failure(bucket, name)
            errors[name] = f"{type(error).__name__}: {error}"
            continue
        timings[name] = (time.perf_counter() - start) / repeats
    if not timings:
        raise RuntimeError(f"every {product} algorithm failed for this shape: {errors}")
    best = min(timings, key=timings.get)
    record(bucket, best)
    if _log.isEnabledFor(logging.DEBUG):
        measured = ", ".join(f"{name} {seconds * 1e3:.3f} ms" for name, seconds in
                             sorted(timings.items(), key=lambda item: item[1]))
        _log_choice(product, bucket, best, f"autotuned now, the fastest: {measured}")
    return best


def _allowed(product, candidates, bucket, workspace, free_bytes) -> tuple[list, list]:
    """(the candidates allowed for this call, notes on what was excluded and why)."""
    dropped = failed(bucket)
    allowed = [c for c in candidates if c not in dropped
               and (not _settings["deterministic"]
                    or algorithm_family(c) in DETERMINISTIC[product])]
    if not allowed:
        raise RuntimeError(f"no {product} algorithm is allowed for this call (candidates "
                           f"{list(candidates)}, failed here {sorted(dropped)}, deterministic "
                           f"mode {_settings['deterministic']})")
    notes = []
    if _settings["deterministic"]:
        notes.append("deterministic mode")
    if dropped:
        notes.append(f"failed here before: {sorted(dropped)}")
    if workspace is not None and free_bytes is not None:
        budget = WORKSPACE_FRACTION * (free_bytes() if callable(free_bytes) else free_bytes)
        fits = [c for c in allowed if workspace.get(c, 0) <= budget]
        if len(fits) < len(allowed):
            notes.append(f"workspace over {WORKSPACE_FRACTION:.0%} of free memory: "
                         f"{sorted(set(allowed) - set(fits))}")
        allowed = fits or [min(allowed, key=lambda c: workspace.get(c, 0))]
    return allowed, notes
