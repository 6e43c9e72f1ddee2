"""Algorithm choice for the GPU products: forced, heuristic or measured (autotuned).

Each product (``forward``, ``input_grad``, ``weight_grad``) has several GPU
algorithms (SPEC section 6). The choice, in order of precedence:

1. the ``algorithm=`` argument of the product;
2. the ``CUSPARSECONV_ALGORITHM`` environment variable, either one name for
   every product or ``product=name`` pairs separated by commas;
3. the autotuner: on first use of a shape bucket it times every candidate and
   remembers the fastest, in memory and in ``tuning.json`` under the cache
   directory (``CUSPARSECONV_CACHE_DIR``, default ``~/.cache/cusparseconv``);
4. a heuristic, when tuning is off (``set_autotune(False)``,
   ``CUSPARSECONV_AUTOTUNE=0``, and always under host emulation).

Deterministic mode (``set_deterministic(True)`` or
``CUSPARSECONV_DETERMINISTIC=1``) only allows atomic-free algorithms.
"""

from __future__ import annotations

import json
import os
import threading
import time

#: Every GPU algorithm per product.
ALGORITHMS = {
    "forward": ("explicit", "explicit_sorted", "implicit", "mask"),
    "input_grad": ("explicit", "explicit_sorted", "implicit", "mask"),
    "weight_grad": ("explicit", "splitk"),
}
#: The atomic-free subset (bit-identical results from run to run).
DETERMINISTIC = {
    "forward": ("explicit_sorted", "mask"),
    "input_grad": ("explicit_sorted", "mask"),
    "weight_grad": ("explicit",),
}

_settings = {
    "deterministic": os.environ.get("CUSPARSECONV_DETERMINISTIC", "0") not in ("", "0"),
    "autotune": os.environ.get("CUSPARSECONV_AUTOTUNE", "1") not in ("", "0"),
}
_memory: dict[str, str] = {}
_file_loaded = {"done": False}
_lock = threading.Lock()


def set_deterministic(enabled: bool) -> None:
    """Allow only atomic-free GPU algorithms (results identical from run to run)."""
    _settings["deterministic"] = bool(enabled)


def set_autotune(enabled: bool) -> None:
    """Time the candidate algorithms on first use of a shape (True) or use the heuristic."""
    _settings["autotune"] = bool(enabled)


def is_deterministic() -> bool:
    return _settings["deterministic"]


def cache_dir() -> str:
    """Directory of the persistent caches (tuning results, emulator builds)."""
    return os.environ.get("CUSPARSECONV_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "cusparseconv")


def _tuning_file() -> str:
    return os.path.join(cache_dir(), "tuning.json")


def forced_algorithm(product: str, algorithm: str | None) -> str | None:
    """The algorithm the user forces for ``product`` (argument, then environment)."""
    if algorithm not in (None, "auto"):
        if algorithm not in ALGORITHMS[product]:
            raise ValueError(f"algorithm for the {product} product must be one of "
                             f"{('auto',) + ALGORITHMS[product]}, got {algorithm!r}")
        return algorithm
    setting = os.environ.get("CUSPARSECONV_ALGORITHM", "").strip()
    if not setting:
        return None
    for part in setting.split(","):
        name, _, value = part.partition("=")
        if not value:  # a single name applies to every product that has it
            if name.strip() in ALGORITHMS[product]:
                return name.strip()
            continue
        if name.strip() == product:
            if value.strip() not in ALGORITHMS[product]:
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


def _load_file():
    if _file_loaded["done"]:
        return
    _file_loaded["done"] = True
    try:
        with open(_tuning_file(), encoding="utf-8") as handle:
            stored = json.load(handle)
        if isinstance(stored, dict):
            _memory.update({k: v for k, v in stored.items() if isinstance(v, str)})
    except (OSError, ValueError):
        pass


def _save_file():
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        temporary = _tuning_file() + f".{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(_memory, handle, indent=1, sort_keys=True)
        os.replace(temporary, _tuning_file())
    except OSError:  # a read-only home must not break a forward pass
        pass


def clear_memory() -> None:
    """Forget in-memory tuning decisions (the JSON file is kept)."""
    _memory.clear()


def choose(product: str, candidates, forced: str | None, bucket: str, heuristic: str,
           run, synchronize=None, autotune: bool | None = None, repeats: int = 3) -> str:
    """Pick the algorithm for one call.

    Parameters
    ----------
    product : str
    candidates : sequence of str
        Algorithms able to run this call.
    forced : str or None
        From :func:`forced_algorithm`.
    bucket : str
        From :func:`shape_bucket`.
    heuristic : str
        Used when tuning is off.
    run : callable(name) -> object
        Runs one candidate (its result is discarded while tuning).
    synchronize : callable or None
        Waits for the device before reading the clock.
    """
    if forced is not None:
        return forced
    allowed = [c for c in candidates
               if not _settings["deterministic"] or c in DETERMINISTIC[product]]
    if not allowed:
        raise RuntimeError(f"no {product} algorithm is allowed for this call")
    if heuristic not in allowed:
        heuristic = allowed[0]
    if not (_settings["autotune"] if autotune is None else autotune) or len(allowed) == 1:
        return heuristic
    with _lock:
        _load_file()
        known = _memory.get(bucket)
    if known in allowed:
        return known
    timings = {}
    for name in allowed:
        run(name)  # warm-up: compiles the kernel and fills allocator pools
        if synchronize:
            synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            run(name)
        if synchronize:
            synchronize()
        timings[name] = (time.perf_counter() - start) / repeats
    best = min(timings, key=timings.get)
    with _lock:
        _memory[bucket] = best
        _save_file()
    return best
