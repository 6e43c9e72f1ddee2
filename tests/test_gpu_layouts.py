"""The GPU backend under emulation with CuPy's layout freedom, host reads and missing kernels.

* Layout mode: every array-module routine the GPU backend calls returns a
  non-C-contiguous result (F-ordered for 2-D and more, a strided view at an
  offset for 1-D), as CuPy may (``cupy.cumsum(a, axis=0)`` of a 2-D array is
  F-ordered). Kernels read raw pointers, so the backend must hand them only
  arrays it made C-contiguous; the emulated launcher refuses any other. Every
  regime (public API) and every algorithm (backend products) must still match
  the CPU backend, and every wrapped routine must have been exercised.
* Host reads: a new geometry costs one device-to-host read in the backend.
* Architectures: on a device older than a kernel file's ``csc-min-arch`` the
  backend falls back (one warning) and still matches the CPU.
"""

import contextlib
import warnings

import numpy as np
import pytest

import cusparseconv as csc
from conftest import random_coords
from cusparseconv import backends, tuning
from cusparseconv.backends import cpu
from cusparseconv.backends._launch import KernelUnavailableError, Launcher
from cusparseconv.backends.cuda import CudaBackend

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

# routines of the array module whose results CuPy documents as C-contiguous
_C_BY_CONTRACT = {"empty", "zeros", "full", "ascontiguousarray"}


def _scrambled(result):
    """The same values in a non-C-contiguous array (F order, or strided at an offset)."""
    if not isinstance(result, np.ndarray) or result.ndim == 0 or result.size < 2:
        return result
    if result.ndim >= 2:
        out = np.empty(result.shape[::-1], dtype=result.dtype).T
        if not out.flags.c_contiguous:
            out[...] = result
            return out
    holder = np.empty(result.shape + (2,), dtype=result.dtype)
    out = holder[..., 1]                                  # element stride doubled, offset
    out[...] = result
    assert not out.flags.c_contiguous
    return out


class LayoutScramblingNumpy:
    """NumPy standing in for CuPy, whose routines return non-C-contiguous arrays."""

    def __init__(self):
        self.calls = {}
        self.wrapped = set()

    def __getattr__(self, name):
        value = getattr(np, name)
        if not callable(value) or name in _C_BY_CONTRACT or isinstance(value, type):
            return value
        self.wrapped.add(name)

        def wrapper(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return _scrambled(value(*args, **kwargs))

        return wrapper


@contextlib.contextmanager
def tf32(enabled):
    """TF32 allowed inside the block when ``enabled``."""
    before = tuning.is_tf32_allowed()
    tuning.set_allow_tf32(enabled or before)
    try:
        yield
    finally:
        tuning.set_allow_tf32(before)


@pytest.fixture
def scrambling_backend(monkeypatch, cooperative):
    xp = LayoutScramblingNumpy()
    backend = CudaBackend(Launcher(xp, emulated=True))
    monkeypatch.setitem(backends._instances, "cuda-emulated", backend)
    return backend, xp


REGIMES = {
    "submanifold": {}, "strided": dict(kernel_size=2, stride=2),
    "strided-3": dict(kernel_size=3, stride=2), "dilated": dict(dilation=2),
    "transposed": dict(kernel_size=2, stride=2),
    "generative": dict(generative=True),
    "transposed-generative": dict(kernel_size=2, stride=2, transposed=True, generative=True),
    "explicit": None, "grouped": dict(groups=2), "depthwise": dict(groups=4),
    "per-axis": dict(kernel_size=(3, 2, 1), stride=(1, 2, 2)),
    "offsets": dict(offsets=np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, 0, -1]],
                                     dtype=np.int32)),
    "even": dict(kernel_size=2),
}


def test_every_regime_and_algorithm_with_scrambled_layouts(scrambling_backend):
    backend, xp = scrambling_backend
    rng = np.random.default_rng(3)
    coords = random_coords(rng, 90, 3, 2, -6, 6)
    feats = np.asfortranarray(rng.standard_normal((len(coords), 4)))     # F-ordered input

    def regimes():
        results = []
        for name, kwargs in REGIMES.items():
            x = csc.SparseTensor(coords, feats)
            if name == "explicit":
                kwargs = dict(out_coords=coords[::3].copy())
            if name == "transposed":
                x = csc.sparse_conv(x, np.ones((8, 4, 4)), kernel_size=2, stride=2)
            kmap = csc.layer_kernel_map(x, **{k: v for k, v in kwargs.items()
                                              if k != "groups"})[0]
            kernel_volume = kmap.kernel_volume
            groups = kwargs.get("groups", 1)
            shape = ((kernel_volume, 4) if groups == 4 else
                     (kernel_volume, 2, 2, 3) if groups == 2 else (kernel_volume, 4, 3))
            weight = np.asfortranarray(np.random.default_rng(7).standard_normal(shape))
            y = csc.sparse_conv(x, weight, **kwargs)
            grad = np.asfortranarray(np.ones_like(y.feats))
            results.append((y.coords, y.feats,
                            csc.conv_input_grad(grad, weight, kmap, groups=groups),
                            csc.conv_weight_grad(x.feats, grad, kmap, groups=groups)))
        pooled = csc.sparse_pool(csc.SparseTensor(coords, feats), 2, 2, mode="max")
        results.append((pooled.coords, pooled.feats,
                        csc.global_pool(csc.SparseTensor(coords, feats), mode="mean").feats))
        return results

    expected = regimes()
    with backends.use_backend("cuda-emulated"):
        got = regimes()
    for got_item, expected_item in zip(got, expected):
        for a, b in zip(got_item, expected_item):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)

    # every algorithm of every product, and pooling modes, on the backend itself
    offsets = csc.kernel_offsets(3)
    fine = coords
    coarse, _ = csc.coords.downsample(fine, (2, 2, 2))
    kmap = backend.build_kernel_map(fine, coarse, offsets, (2, 2, 2), False)
    reference = cpu.build_kernel_map(fine, coarse, offsets, (2, 2, 2), False)
    # float16 with 8 channels in (the tensor cores' 16-byte copies) and 6 out (their
    # element-wise fallback in the weight gradient); float32 with TF32 allowed
    for dtype, c_in in ((np.float32, 6), (np.float16, 8)):
        x = np.asfortranarray(rng.standard_normal((len(fine), c_in)).astype(dtype))
        w = rng.standard_normal((27, c_in, 8)).astype(dtype)
        g = rng.standard_normal((len(coarse), 8)).astype(dtype)
        for algorithm in tuning.ALGORITHMS["forward"]:
            tol = 1e-4 if dtype == np.float32 and algorithm != "tensor_core" else 3e-2
            with tf32(dtype == np.float32 and algorithm == "tensor_core"):
                np.testing.assert_allclose(
                    backend.conv_forward(x, w, kmap, "standard", 8, algorithm=algorithm),
                    cpu.conv_forward(x, w, reference, "standard", 8), rtol=tol, atol=tol * 10)
                np.testing.assert_allclose(
                    backend.conv_input_grad(g, w, kmap, "standard", c_in, algorithm=algorithm),
                    cpu.conv_input_grad(g, w, reference, "standard", c_in), rtol=tol,
                    atol=tol * 10)
        for algorithm in tuning.ALGORITHMS["weight_grad"]:
            tol = 1e-4 if dtype == np.float32 and algorithm != "tensor_core" else 3e-2
            with tf32(dtype == np.float32 and algorithm == "tensor_core"):
                np.testing.assert_allclose(
                    backend.conv_weight_grad(x, g, kmap, "standard", (27, c_in, 8),
                                             algorithm=algorithm),
                    cpu.conv_weight_grad(x, g, reference, "standard", (27, c_in, 8)),
                    rtol=tol, atol=tol * 10)
    x32 = rng.permutation(len(fine) * 3).reshape(len(fine), 3).astype(np.float32)
    for mode in ("max", "avg", "sum"):
        np.testing.assert_allclose(backend.pool_forward(np.asfortranarray(x32), kmap, mode),
                                   cpu.pool_forward(x32, reference, mode), rtol=1e-6)
        g = rng.standard_normal((len(coarse), 3)).astype(np.float32)
        np.testing.assert_allclose(backend.pool_backward(g, x32, kmap, mode),
                                   cpu.pool_backward(g, x32, reference, mode), rtol=1e-5,
                                   atol=1e-6)
    assert xp.wrapped and set(xp.calls) == xp.wrapped, (
        f"wrapped routines never exercised: {sorted(xp.wrapped - set(xp.calls))}")
    assert {"matmul", "concatenate", "argsort", "searchsorted"} <= xp.wrapped


def test_scrambled_layout_would_be_refused(cooperative):
    """The launcher refuses an F-ordered (K, n_tiles) table for kmap_compact_tiles (as
    CuPy's cumsum along axis 0 would return it), naming kernel and argument."""
    launcher = Launcher(np, emulated=True)
    neighbour = np.array([[0, -1], [1, 2]], dtype=np.int32)
    tile_start = np.asfortranarray(np.zeros((2, 3), np.int32))
    outputs = [np.empty(3, np.int32), np.empty(3, np.int32), np.empty((2, 2), np.int32),
               np.empty((2, 1), np.uint32)]
    with pytest.raises(ValueError, match=r"kmap_compact_tiles: array argument 4 must be "
                                         r"C-contiguous \(parameter `tile_start`"):
        launcher.launch("kernel_map.cu", "kmap_compact_tiles", (1, 1, 1), (128,),
                        (neighbour, np.int32(2), np.int32(2), np.int32(1), tile_start,
                         np.int32(3), np.array([0, 1, 3], np.int64), *outputs))


def test_one_host_read_per_new_geometry(cooperative):
    launcher = Launcher(np, emulated=True)
    backend = CudaBackend(launcher)
    rng = np.random.default_rng(5)
    fine = random_coords(rng, 120, 3, 2, -6, 6)
    coarse, _ = csc.coords.downsample(fine, (2, 2, 2))
    offsets = csc.kernel_offsets(2)
    before = launcher.host_reads
    kmap = backend.build_kernel_map(fine, coarse, offsets, (2, 2, 2), False)
    assert launcher.host_reads - before == 1          # duplicates + pair counts, one read
    before = launcher.host_reads
    backend.build_kernel_map(fine, fine, csc.kernel_offsets(3), (1, 1, 1), False,
                             same_set=True)
    assert launcher.host_reads - before == 1
    # products read nothing back
    before = launcher.host_reads
    x = rng.standard_normal((len(fine), 4)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3)).astype(np.float32)
    for algorithm in tuning.ALGORITHMS["forward"]:
        with tf32(algorithm == "tensor_core"):
            backend.conv_forward(x, w, kmap, "standard", 3, algorithm=algorithm)
    g = rng.standard_normal((kmap.n_out, 3)).astype(np.float16)
    for algorithm in tuning.ALGORITHMS["weight_grad"]:
        backend.conv_weight_grad(x.astype(np.float16), g, kmap, "standard", (8, 4, 3),
                                 algorithm=algorithm)
    assert launcher.host_reads == before
    # duplicates are still found by that one read
    duplicated = np.concatenate([fine, fine[:1]])
    packed = csc.coords.pack(duplicated)       # SortedKeys itself would refuse them
    keys = csc.coords.SortedKeys._of(np.sort(packed), np.argsort(packed, kind="stable"), False)
    with pytest.raises(ValueError, match="unique rows, got 1 duplicates"):
        backend.build_kernel_map(duplicated, coarse, offsets, (2, 2, 2), False, in_keys=keys)


def test_bf16_mask_falls_back_below_sm80_with_one_warning(cooperative, monkeypatch):
    from cusparseconv.backends import cuda

    monkeypatch.setattr(cuda, "_WARNED", set())
    launcher = Launcher(np, emulated=True, arch=75)
    backend = CudaBackend(launcher)
    with pytest.raises(KernelUnavailableError, match="sm_80"):
        launcher.kernel("mask_gemm_bf16.cu", "mask_gemm_wmma<__nv_bfloat16>")
    rng = np.random.default_rng(9)
    coords = random_coords(rng, 70, 3, 2, -6, 6)
    offsets = csc.kernel_offsets(3)
    kmap = backend.build_kernel_map(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    reference = cpu.build_kernel_map(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    x = rng.standard_normal((len(coords), 5)).astype(BF16)
    w = rng.standard_normal((27, 5, 4)).astype(BF16)
    expected = cpu.conv_forward(x, w, reference, "standard", 4).astype(np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = backend.conv_forward(x, w, kmap, "standard", 4, algorithm="mask")
            np.testing.assert_allclose(got.astype(np.float64), expected, rtol=3e-2, atol=0.1)
    messages = [str(w.message) for w in caught if "tensor-core" in str(w.message)]
    assert len(messages) == 1 and "sm_80" in messages[0]
    # float16 tensor cores exist on sm_75: no fallback there
    launcher.kernel("mask_gemm.cu", "mask_gemm_wmma<__half>")


def test_groups_beyond_grid_z_use_the_explicit_algorithms(cooperative):
    """``groups`` maps to gridDim.z (at most 65535) in the fused kernels."""
    backend = CudaBackend(Launcher(np, emulated=True))
    coords = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.int32)
    offsets = np.array([[0, 0, 0], [1, 0, 0]], dtype=np.int32)
    kmap = backend.build_kernel_map(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    reference = cpu.build_kernel_map(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    groups = 65536
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((3, groups)).astype(np.float32)
    weight = rng.standard_normal((2, groups, 1, 1)).astype(np.float32)
    with pytest.raises(ValueError, match=r"65536 groups to gridDim.z, at most 65535"):
        backend.conv_forward(feats, weight, kmap, "grouped", groups, algorithm="implicit")
    got = backend.conv_forward(feats, weight, kmap, "grouped", groups)
    np.testing.assert_allclose(got, cpu.conv_forward(feats, weight, reference, "grouped",
                                                     groups), rtol=1e-5, atol=1e-6)
