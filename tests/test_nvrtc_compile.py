"""Every raw_kernels/*.cu compiles with NVRTC for every architecture NVRTC supports, no GPU.

Each file is compiled with all the name expressions its ``// csc-instantiate:``
lines declare, for every architecture ``nvrtcGetSupportedArchs`` lists (NVRTC
13: sm_75 to sm_121) at or above its ``// csc-min-arch:``, warnings as errors,
with the text, options and CUDA headers the device launcher uses at run time
(headers of the NVRTC's own release, from the test extra's wheels). The whole
matrix compiles once per test session in parallel processes (about a minute
on two cores). The parameter types NVRTC's mangled names give (what the device
launcher checks arguments against) must equal the emulator's for every kernel.
The tests skip, with the reason, where CuPy or NVRTC is missing; in CI (``CI``
set) a missing NVRTC is a failure instead, since the test extra installs it.
"""

import os
import time

import pytest

from cusparseconv._emulate import nvrtc_check
from cusparseconv._kernel_args import params_from_mangled
from cusparseconv._kernels import NVRTC_OPTIONS, kernel_dir, min_arch

SOURCES = nvrtc_check.kernel_sources()


@pytest.fixture(scope="session")
def nvrtc_ready():
    reason = nvrtc_check.nvrtc_unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"NVRTC compile check cannot run in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def compiled(nvrtc_ready):
    """{(file, arch): CompileOutcome} for every file and supported architecture."""
    start = time.perf_counter()
    outcomes = nvrtc_check.compile_all()
    seconds = time.perf_counter() - start
    print(f"\nNVRTC compile check: {len(outcomes)} (file, arch) compiles in {seconds:.1f} s")
    return {(o.file, o.arch): o for o in outcomes}


def test_sources_exist():
    assert any(p.name == "emulator_selftest.cu" for p in SOURCES)


def test_every_source_declares_its_instantiations():
    for path in SOURCES:
        text = path.read_text()
        assert '#include "csc_common.cuh"' in text, f"{path.name} must include csc_common.cuh"
        if "template" in text and "__global__" in text:
            assert nvrtc_check.parse_instantiations(text), (
                f"{path.name} defines kernel templates but no '// csc-instantiate:' line")


def test_parse_instantiations_and_min_arch():
    text = ("// csc-instantiate: gather_rows<float>\n"
            "  //csc-instantiate:   kmap_search<3>  \n"
            "// csc-instantiate: gather_rows<float>\n"
            "// not an instantiation: foo<int>\n"
            "// csc-min-arch: sm_80\n")
    assert nvrtc_check.parse_instantiations(text) == ["gather_rows<float>", "kmap_search<3>"]
    assert min_arch(text) == 80 and min_arch("// nothing\n") is None


def test_nvrtc_lists_the_architectures_we_promise(nvrtc_ready):
    archs = nvrtc_check.supported_archs()
    for required in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90"):
        assert required in archs, archs


def test_every_source_compiles_for_every_supported_arch(compiled):
    failures = [f"{o.file} {o.arch}: {o.error[:2000]}" for o in compiled.values() if not o.ok]
    assert not failures, "\n\n".join(failures)
    for path in SOURCES:
        names = set(nvrtc_check.parse_instantiations(path.read_text()))
        lowest = min_arch(path.read_text()) or 0
        archs = [a for a in nvrtc_check.supported_archs() if int(a[3:]) >= lowest]
        assert archs, path.name
        for arch in archs:
            outcome = compiled[(path.name, arch)]
            assert outcome.cubin_bytes > 0 and set(outcome.lowered_names) == names


def test_sm75_keeps_the_float32_and_float16_mask_kernels(compiled):
    names = compiled[("mask_gemm.cu", "sm_75")].lowered_names
    assert {"mask_gemm<float>", "mask_gemm<__half>", "mask_gemm<__nv_bfloat16>",
            "mask_gemm_wmma<__half>"} <= set(names)
    assert ("mask_gemm_bf16.cu", "sm_75") not in compiled
    assert ("mask_gemm_bf16.cu", "sm_80") in compiled


def test_device_parameter_types_equal_the_emulators(compiled, monkeypatch):
    """The device launcher reads parameter types from NVRTC's mangled names, the
    emulator from the compiled C++ signature: they must agree for every kernel."""
    from cusparseconv._emulate import EmulatedModule

    for path in SOURCES:
        text = path.read_text()
        names = nvrtc_check.parse_instantiations(text)
        arch = "sm_90"
        module = EmulatedModule(text, options=NVRTC_OPTIONS, name_expressions=names,
                                include_dirs=(kernel_dir(),))
        lowered = compiled[(path.name, arch)].lowered_names
        for name in names:
            device = params_from_mangled(lowered[name])
            emulated = [tuple(p) for p in module.get_function(name).params]
            assert device == emulated, (path.name, name, lowered[name])


def test_warnings_are_errors(nvrtc_ready, tmp_path):
    bad = tmp_path / "warns.cu"
    bad.write_text('#include "csc_common.cuh"\n'
                   'extern "C" __global__ void k(int* p) { int unused; p[0] = 1; }\n')
    with pytest.raises(nvrtc_check.NvrtcCompileError, match="never referenced"):
        nvrtc_check.compile_source(bad, "sm_90")


def test_compile_errors_are_reported(nvrtc_ready, tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text('#include "csc_common.cuh"\n'
                   "template <class T> __global__ void k(T* p) { p[0] = no_such_name; }\n"
                   "// csc-instantiate: k<float>\n")
    with pytest.raises(nvrtc_check.NvrtcCompileError, match="no_such_name"):
        nvrtc_check.compile_source(bad, "sm_80")


def test_headers_come_from_the_nvrtc_release(nvrtc_ready):
    report = nvrtc_check.cuda_headers()
    assert not report.problems
    lib_root = report.nvrtc_path.split(os.sep + "lib")[0]
    for include in report.include_dirs:
        versions = report.versions[include]
        assert versions and all(tuple(v) == tuple(report.nvrtc_version) for _, v in versions)
    assert report.include_dirs and lib_root


def _fake_toolkit(root, cudart_version):
    (root / "lib64").mkdir(parents=True)
    (root / "lib64" / "libnvrtc.so.13").write_bytes(b"")
    include = root / "include"
    (include / "crt").mkdir(parents=True)
    for name in ("cuda_fp16.h", "cuda_bf16.h", "mma.h", "crt/mma.h"):
        (include / name).write_text("// stand-in\n")
    (include / "cuda_runtime_api.h").write_text(f"#define CUDART_VERSION {cudart_version}\n")
    return str(root / "lib64" / "libnvrtc.so.13")


def test_toolkit_headers_must_match_the_nvrtc_version(tmp_path, monkeypatch):
    """A toolkit NVRTC (the GPU machine's image) takes that toolkit's headers; headers of
    another CUDA release are refused with the reason."""
    library = _fake_toolkit(tmp_path / "cuda-13.0", 13000)
    monkeypatch.setattr(nvrtc_check, "nvrtc_library", lambda: (library, (13, 0)))
    report = nvrtc_check.cuda_headers.__wrapped__()
    assert not report.problems
    assert report.include_dirs == [str(tmp_path / "cuda-13.0" / "include")]
    monkeypatch.setattr(nvrtc_check, "nvrtc_library", lambda: (library, (13, 5)))
    report = nvrtc_check.cuda_headers.__wrapped__()
    assert not report.include_dirs
    assert any("CUDA 13.0 headers" in p and "NVRTC is 13.5" in p for p in report.problems)
    (tmp_path / "cuda-13.0" / "include" / "crt" / "mma.h").unlink()
    monkeypatch.setattr(nvrtc_check, "nvrtc_library", lambda: (library, (13, 0)))
    report = nvrtc_check.cuda_headers.__wrapped__()
    assert any("crt/mma.h not found" in p for p in report.problems)


def test_pip_nvrtc_without_header_wheels_takes_only_a_matching_toolkit(tmp_path, monkeypatch):
    wheel_lib = tmp_path / "site" / "nvidia" / "cu13" / "lib" / "libnvrtc.so.13"
    wheel_lib.parent.mkdir(parents=True)
    wheel_lib.write_bytes(b"")
    _fake_toolkit(tmp_path / "toolkit", 13050)
    monkeypatch.setenv("CUDA_PATH", str(tmp_path / "toolkit"))
    monkeypatch.setattr(nvrtc_check, "nvrtc_library", lambda: (str(wheel_lib), (13, 5)))
    report = nvrtc_check.cuda_headers.__wrapped__()
    assert not report.problems and report.include_dirs == [str(tmp_path / "toolkit" / "include")]
    monkeypatch.setattr(nvrtc_check, "nvrtc_library", lambda: (str(wheel_lib), (13, 6)))
    report = nvrtc_check.cuda_headers.__wrapped__()
    assert str(tmp_path / "toolkit" / "include") not in report.include_dirs
    assert any("NVRTC is 13.6" in p for p in report.problems)
