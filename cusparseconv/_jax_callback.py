"""How the JAX adapter runs a core function on JAX values: in place on XLA's
buffers, or through the host.

:func:`call` is the adapter's one way into the core. ``compute(*arrays, out=)``
is a core function on NumPy (CPU) or CuPy (GPU) arrays that writes its result
into ``out`` where it can (the products' ``out=``) and returns it; a function
that returns another array has it copied into ``out``.

Two routes, chosen by feature detection when the operation is traced:

* ``"buffer"`` (JAX >= 0.7, ``jax.experimental.buffer_callback``): XLA hands
  the callback its own buffers, the operands and the result's, without a copy.
  On the CPU they are NumPy views (buffer protocol); on a CUDA GPU they become
  CuPy arrays (``__cuda_array_interface__``) and the core's CuPy work is
  issued on XLA's stream (``cupy.cuda.ExternalStream(ctx.stream)``), so it is
  ordered with the rest of the XLA program and nothing leaves the device. The
  result is computed straight into XLA's output buffer.
* ``"host"`` (older JAX, or ``host=True``): ``jax.pure_callback`` copies the
  operands to host memory, calls ``compute`` on NumPy arrays (``out=None``)
  and copies the result back.

Under ``jax.vmap`` both routes run the callback once per element of the
mapped axis, one after another (``vmap_method="sequential"``): correct for
any batched operand, as fast as a Python loop over the batch.

Kernel maps are values of the host (NumPy) while tracing: the output shapes
come from them. On a GPU the callback asks :func:`kernel_map_on` for the
map's copy on the operands' device: its pair table is copied there once per
(map, device) and kept as long as the host map lives (a weak-keyed table);
the GPU backend derives its neighbour tables and reverse table from those
pairs once, in its own per-map state.
"""

from __future__ import annotations

import inspect
import threading
import weakref

import numpy as np

import jax

from ._arrays import is_cupy
from .kmap import KernelMap

try:  # JAX >= 0.7
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # pragma: no cover - depends on the installed JAX
    _buffer_callback = None

__all__ = ["call", "route", "kernel_map_on"]

# DLPack device types of the buffers XLA hands to a buffer callback
_DL_CPU, _DL_CUDA = 1, 2
# vmapped callbacks run one by one (the keyword is absent before jax 0.4.34)
_HOST_VMAP = ({"vmap_method": "sequential"}
              if "vmap_method" in inspect.signature(jax.pure_callback).parameters else {})


def route() -> str:
    """``"buffer"`` when this JAX has ``jax.experimental.buffer_callback``, else ``"host"``."""
    return "buffer" if _buffer_callback is not None else "host"


def call(compute, result_shape, *operands, host: bool = False):
    """``compute(*operands, out=...)`` as one JAX operation returning ``result_shape``.

    Parameters
    ----------
    compute : callable(*arrays, out=array or None) -> array
        Core work on NumPy or CuPy arrays (``None`` operands stay ``None``). With a
        tuple ``result_shape`` it returns a tuple of arrays, one per result, and
        ``out`` is a tuple of targets (or None).
    result_shape : jax.ShapeDtypeStruct, or a tuple of them
    *operands : jax.Array or None
    host : bool
        Take the host route even where the buffer route exists (for work the
        core cannot run on the device arrays, e.g. global pooling).

    Returns
    -------
    jax.Array, or a tuple of them for a tuple ``result_shape``
    """
    several = isinstance(result_shape, tuple)
    if host or _buffer_callback is None:
        def on_host(*arrays):
            result = compute(*[None if a is None else np.asarray(a) for a in arrays], out=None)
            return tuple(result) if several else result

        return jax.pure_callback(on_host, result_shape, *operands, **_HOST_VMAP)

    def in_place(ctx, out, *buffers):
        first = out[0] if several else out
        device_type = first.__dlpack_device__()[0]
        if device_type == _DL_CPU:
            arrays = [None if b is None else np.asarray(b) for b in buffers]
            targets = tuple(np.asarray(o) for o in out) if several else np.asarray(out)
            _store(compute(*arrays, out=targets), targets, several)
        elif device_type == _DL_CUDA:
            _run_on_gpu(ctx, compute, out, buffers, several)
        else:
            raise NotImplementedError(f"cusparseconv runs JAX buffers of the CPU and of CUDA "
                                      f"GPUs, got DLPack device type {device_type}")

    return _buffer_callback(in_place, result_shape, vmap_method="sequential")(*operands)


def _store(result, target, several: bool = False) -> None:
    """``result`` into ``target`` unless the core already wrote it there (pairwise for
    several results)."""
    if several:
        for one, place in zip(result, target):
            _store(one, place)
    elif result is not target:
        target[...] = result


def _run_on_gpu(ctx, compute, out, buffers, several: bool = False) -> None:
    """The CUDA branch of the buffer route: CuPy views of XLA's device buffers, every
    CuPy call on XLA's stream of this execution (not run in CI: no GPU there)."""
    import cupy

    first = out[0] if several else out
    device_id = first.__dlpack_device__()[1]
    with cupy.cuda.Device(device_id), cupy.cuda.ExternalStream(ctx.stream, device_id):
        arrays = [None if b is None else cupy.asarray(b) for b in buffers]
        targets = tuple(cupy.asarray(o) for o in out) if several else cupy.asarray(out)
        _store(compute(*arrays, out=targets), targets, several)


#: host KernelMap -> {device id: the same map with its pair table on that device}
_DEVICE_MAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DEVICE_MAPS_LOCK = threading.Lock()


def kernel_map_on(kmap: KernelMap, like) -> KernelMap:
    """``kmap`` on the device of the array ``like``: the map itself for NumPy arrays,
    for CuPy arrays its copy on that device (made once per map and device)."""
    if not is_cupy(like) or is_cupy(kmap.in_rows):
        return kmap
    import cupy

    device_id = like.device.id
    with _DEVICE_MAPS_LOCK:
        per_device = _DEVICE_MAPS.setdefault(kmap, {})
        found = per_device.get(device_id)
        if found is None:
            with cupy.cuda.Device(device_id):
                found = KernelMap(cupy.asarray(kmap.in_rows), cupy.asarray(kmap.out_rows),
                                  kmap.pair_offsets, kmap.n_in, kmap.n_out, kmap.offsets,
                                  kmap.stride, kmap.transposed)
            per_device[device_id] = found
    return found
