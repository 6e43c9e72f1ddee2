"""Every raw_kernels/*.cu compiles with NVRTC for sm_80 and sm_90, no GPU needed.

Each file is compiled with all the name expressions its ``// csc-instantiate:``
lines declare, warnings as errors, through CuPy's low-level NVRTC bindings and
the CUDA headers of the PyPI wheels (the ``test`` extra installs them). The
tests skip, with the reason, where CuPy or NVRTC is missing; in CI (``CI`` set)
a missing NVRTC is a failure instead, since the test extra installs it.
"""

import os

import pytest

from cusparseconv._emulate import nvrtc_check

SOURCES = nvrtc_check.kernel_sources()


@pytest.fixture(scope="module")
def nvrtc_ready():
    reason = nvrtc_check.nvrtc_unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"NVRTC compile check cannot run in CI: {reason}")
        pytest.skip(reason)


def test_sources_exist():
    assert any(p.name == "emulator_selftest.cu" for p in SOURCES)


def test_every_source_declares_its_instantiations():
    for path in SOURCES:
        text = path.read_text()
        assert '#include "csc_common.cuh"' in text, f"{path.name} must include csc_common.cuh"
        if "template" in text and "__global__" in text:
            assert nvrtc_check.parse_instantiations(text), (
                f"{path.name} defines kernel templates but no '// csc-instantiate:' line")


def test_parse_instantiations():
    text = ("// csc-instantiate: gather_rows<float>\n"
            "  //csc-instantiate:   kmap_search<3>  \n"
            "// csc-instantiate: gather_rows<float>\n"
            "// not an instantiation: foo<int>\n")
    assert nvrtc_check.parse_instantiations(text) == ["gather_rows<float>", "kmap_search<3>"]


@pytest.mark.parametrize("arch", nvrtc_check.ARCHS)
@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_source_compiles_with_nvrtc(nvrtc_ready, path, arch):
    result = nvrtc_check.compile_source(path, arch)
    names = nvrtc_check.parse_instantiations(path.read_text())
    assert result.cubin_bytes > 0
    assert set(result.lowered_names) == set(names)
    assert all(result.lowered_names.values())


def test_warnings_are_errors(nvrtc_ready, tmp_path):
    bad = tmp_path / "warns.cu"
    bad.write_text('#include "csc_common.cuh"\n'
                   'extern "C" __global__ void k(int* p) { int unused; p[0] = 1; }\n')
    with pytest.raises(nvrtc_check.NvrtcCompileError, match="never referenced"):
        nvrtc_check.compile_source(bad, "sm_90",
                                   include_dirs=[str(nvrtc_check.RAW_KERNELS)]
                                   + nvrtc_check.cuda_include_dirs())


def test_compile_errors_are_reported(nvrtc_ready, tmp_path):
    bad = tmp_path / "broken.cu"
    bad.write_text('#include "csc_common.cuh"\n'
                   "template <class T> __global__ void k(T* p) { p[0] = no_such_name; }\n"
                   "// csc-instantiate: k<float>\n")
    with pytest.raises(nvrtc_check.NvrtcCompileError, match="no_such_name"):
        nvrtc_check.compile_source(bad, "sm_80",
                                   include_dirs=[str(nvrtc_check.RAW_KERNELS)]
                                   + nvrtc_check.cuda_include_dirs())
