"""The device launcher checks every launch, without a GPU: a fake CuPy whose RawModule
is compiled by the real NVRTC (for the mangled names), and fake device arrays that
expose ``__cuda_array_interface__``. Also: the NVRTC source carries a hash of its
headers, and the grid limits are enforced."""

import shutil
import types

import numpy as np
import pytest

from cusparseconv import _kernels
from cusparseconv._emulate import nvrtc_check
from cusparseconv._kernel_args import KernelArgumentError, params_from_mangled
from cusparseconv.backends._launch import KernelUnavailableError, Launcher


@pytest.fixture(scope="module")
def nvrtc_ready():
    reason = nvrtc_check.nvrtc_unavailable_reason()
    if reason:
        pytest.skip(reason)


class FakeDeviceArray:
    """Duck-typed device memory: shape, dtype, strides, device, pointer."""

    def __init__(self, shape, dtype, order="C", device=0, offset=0):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        itemsize = self.dtype.itemsize
        if order == "C":
            strides, step = [], itemsize
            for extent in reversed(self.shape):
                strides.insert(0, step)
                step *= extent
        else:
            strides, step = [], itemsize
            for extent in self.shape:
                strides.append(step)
                step *= extent
        self.strides = tuple(strides)
        self.device = types.SimpleNamespace(id=device)
        self._pointer = 0x7F0000000000 + offset

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                "strides": None if self.strides == FakeDeviceArray(
                    self.shape, self.dtype).strides else self.strides,
                "data": (self._pointer, False)}


class FakeRawModule:
    """cupy.RawModule stand-in: compiled by NVRTC (no GPU), launches are recorded."""

    launches = []

    def __init__(self, code, options, name_expressions):
        assert code.splitlines()[-1].startswith("// csc-headers-sha256: ")
        self.code, self.options = code, options
        path = None
        for candidate in nvrtc_check.kernel_sources():
            if code.startswith(candidate.read_text().rstrip()):
                path = candidate
        result = nvrtc_check.compile_source(path, "sm_90")
        self.module = types.SimpleNamespace(mapping=result.lowered_names)

    def get_function(self, name):
        def kernel(grid, block, args, shared_mem=0):
            FakeRawModule.launches.append((name, grid, block))
        return kernel


def fake_cupy(current_device=0, arch="90"):
    runtime = types.SimpleNamespace(getDevice=lambda: current_device)
    cuda = types.SimpleNamespace(runtime=runtime,
                                 Device=lambda *a: types.SimpleNamespace(compute_capability=arch))
    return types.SimpleNamespace(cuda=cuda, RawModule=FakeRawModule)


def compact_args(n_rows=40, kernel_volume=3, order="C", start_dtype=np.int32, device=0):
    """Arguments of kmap_compact_tiles; ``order`` / ``start_dtype`` / ``device`` apply to
    argument 4, the (K, n_tiles) tile starts."""
    n_tiles = -(-n_rows // 32)
    return (FakeDeviceArray((n_rows, kernel_volume), np.int32),
            np.int32(n_rows), np.int32(kernel_volume), np.int32(1),
            FakeDeviceArray((kernel_volume, n_tiles), start_dtype, order=order, device=device),
            np.int32(n_tiles),
            FakeDeviceArray((kernel_volume + 1,), np.int64),
            FakeDeviceArray((n_rows * kernel_volume,), np.int32),
            FakeDeviceArray((n_rows * kernel_volume,), np.int32),
            FakeDeviceArray((n_rows, kernel_volume), np.int32),
            FakeDeviceArray((n_rows, 1), np.uint32))


def compact(launcher, args):
    launcher.launch("kernel_map.cu", "kmap_compact_tiles", (1, 1, 1), (128,), args)


def test_device_launcher_checks_layout_dtype_and_device(nvrtc_ready):
    launcher = Launcher(fake_cupy(), emulated=False)
    FakeRawModule.launches.clear()
    compact(launcher, compact_args())
    assert [name for name, _, _ in FakeRawModule.launches] == ["kmap_compact_tiles"]
    with pytest.raises(KernelArgumentError,
                       match=r"kmap_compact_tiles: array argument 4 must be C-contiguous "
                             r"\(parameter `tile_start` of kmap_compact_tiles\)"):
        compact(launcher, compact_args(order="F"))
    with pytest.raises(KernelArgumentError, match=r"parameter 4 is a pointer to 4-byte signed "
                                                  r"integer, got an array of int64 \(parameter "
                                                  r"`tile_start`"):
        compact(launcher, compact_args(start_dtype=np.int64))
    with pytest.raises(KernelArgumentError, match=r"argument 4 lives on device 1, but the "
                                                  r"current device is 0"):
        compact(launcher, compact_args(device=1))
    host = list(compact_args())
    host[0] = np.zeros((40, 3), np.int32)
    with pytest.raises(KernelArgumentError, match=r"argument 0 is a host \(NumPy\) array"):
        compact(launcher, tuple(host))
    python_int = list(compact_args())
    python_int[1] = 40
    with pytest.raises(KernelArgumentError, match=r"parameter 1 .*Python int .*`n_query`"):
        compact(launcher, tuple(python_int))
    assert len(FakeRawModule.launches) == 1          # nothing bad was launched
    # a 16-bit kernel: float16 and bfloat16 storage are accepted, float32 is not
    launcher.kernel("pooling.cu", "pool_sum<__half>")
    with pytest.raises(ValueError, match=r"grid dimension z = 70000 exceeds CUDA's limit"):
        launcher.launch("implicit_gemm.cu", "implicit_gemm<float>", (1, 1, 70000), (256,), ())


def test_device_launcher_refuses_kernels_above_the_device_arch(nvrtc_ready):
    launcher = Launcher(fake_cupy(arch="75"), emulated=False)
    with pytest.raises(KernelUnavailableError, match=r"mask_gemm_bf16.cu needs sm_80 "
                                                             r"or newer; this device is sm_75"):
        launcher.kernel("mask_gemm_bf16.cu", "mask_gemm_wmma<__nv_bfloat16>")
    launcher.kernel("mask_gemm.cu", "mask_gemm<__nv_bfloat16>")   # SIMT exists on sm_75


def test_params_from_mangled_names():
    # (a kernel of an earlier kernel_map.cu; the parser only reads the name)
    # kmap_search<3>(const int*, long long, const int*, int, const int*, int,
    #                const unsigned long long*, const int*, unsigned long long, int*)
    params = params_from_mangled("_Z11kmap_searchILi3EEvPKixS1_iS1_iPKyS1_yPi")
    assert [chr(p[1]) for p in params] == list("pipipippup")
    assert params[6] == (8, ord("p"), 8, ord("u")) and params[8] == (8, ord("u"), 0, 0)
    half = params_from_mangled("_Z8pool_sumI6__halfEvPKT_PKixiiiPS0_")
    assert half[0] == (8, ord("p"), 2, ord("h")) and half[-1] == (8, ord("p"), 2, ord("h"))
    acc = params_from_mangled("_Z11finish_rowsIdEvPKN7csc_accIT_E4typeExiPKS1_iPS1_")
    assert acc[0] == (8, ord("p"), 8, ord("f"))
    with pytest.raises(ValueError, match="carries no parameter types"):
        params_from_mangled("plain_c_name")


def test_nvrtc_source_hashes_the_headers(tmp_path, monkeypatch):
    copy = tmp_path / "raw_kernels"
    shutil.copytree(_kernels.kernel_dir(), copy)
    for function in (_kernels.kernel_dir, _kernels.kernel_source, _kernels.nvrtc_source):
        function.cache_clear()
    monkeypatch.setattr(_kernels, "kernel_dir", lambda: str(copy))
    try:
        before = _kernels.nvrtc_source("mask_gemm.cu")
        header = copy / "csc_tile.cuh"           # included by mask_gemm.cu and csc_mask_wmma.cuh
        header.write_text(header.read_text() + "\n// edited\n")
        _kernels.nvrtc_source.cache_clear()
        after = _kernels.nvrtc_source("mask_gemm.cu")
        assert before != after and before.splitlines()[:-1] == after.splitlines()[:-1]
        unrelated = _kernels.nvrtc_source("hash_table.cu")
        (copy / "csc_mask_wmma.cuh").write_text("// changed\n")
        _kernels.nvrtc_source.cache_clear()
        assert _kernels.nvrtc_source("hash_table.cu") == unrelated   # does not include it
    finally:
        for function in (_kernels.kernel_source, _kernels.nvrtc_source):
            function.cache_clear()
