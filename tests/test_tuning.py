"""The autotuner under emulation: workspace budget against a fake free-memory figure,
failed candidates dropped and remembered, no tuning during graph capture, defaults
when tuning is off, and tuning.json merged under a file lock by two processes."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv import tuning
from cusparseconv.backends import cpu
from cusparseconv.backends import _explicit
from cusparseconv.backends._launch import KernelUnavailableError, Launcher
from cusparseconv.backends.cuda import CudaBackend


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSPARSECONV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "cooperative")
    monkeypatch.delenv("CUSPARSECONV_ALGORITHM", raising=False)
    tuning.clear_memory()
    yield tmp_path
    tuning.clear_memory()
    tuning.set_deterministic(False)


def setup(rng, dtype=np.float32, n=80):
    launcher = Launcher(np, emulated=True)
    backend = CudaBackend(launcher)
    coords = np.unique(rng.integers(-5, 5, size=(n, 4)), axis=0).astype(np.int32)
    coords[:, 0] = 0
    coords = np.unique(coords, axis=0)
    offsets = csc.kernel_offsets(3)
    kmap = backend.build_kernel_map(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    reference = cpu.build_kernel_map(coords, coords, offsets, (1, 1, 1), False, same_set=True)
    feats = rng.standard_normal((len(coords), 6)).astype(dtype)
    weight = rng.standard_normal((27, 6, 4)).astype(dtype)
    return launcher, backend, kmap, reference, feats, weight


def spy(monkeypatch, backend, names, fail=None):
    calls = {name: 0 for name in names}
    for name in names:
        original = getattr(backend, f"_{name}")

        def wrapped(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            if fail is not None and _name in fail:
                raise fail[_name]
            return _original(*args, **kwargs)

        monkeypatch.setattr(backend, f"_{name}", wrapped)
    return calls


def test_workspace_budget_skips_large_candidates(fresh, monkeypatch):
    rng = np.random.default_rng(1)
    launcher, backend, kmap, reference, feats, weight = setup(rng)
    launcher.tune_under_emulation = True
    calls = spy(monkeypatch, backend, ["explicit", "implicit", "mask"])
    n_out, c_out = kmap.n_out, 4
    # the grouped explicit algorithm's gathered rows and products, and its accumulator
    explicit_bytes = (_explicit.workspace_bytes(kmap.pair_counts(), 6, c_out, np.float32)
                      + n_out * c_out * 4)
    assert explicit_bytes > 4 * n_out * c_out * 4          # far above implicit's and mask's
    # free memory such that explicit's workspace is above half of it, the others below
    launcher.emulated_free_bytes = explicit_bytes
    got = backend.conv_forward(feats, weight, kmap, "standard", 4)
    np.testing.assert_allclose(got, cpu.conv_forward(feats, weight, reference, "standard", 4),
                               rtol=1e-4, atol=1e-4)
    assert calls["explicit"] == 0 and calls["implicit"] > 1 and calls["mask"] > 1
    # with room, every candidate is timed
    tuning.clear_memory()
    (fresh / "cache" / "tuning.json").unlink()
    launcher.emulated_free_bytes = 1 << 34
    backend.conv_input_grad(feats[:, :4].copy(), weight, kmap, "standard", 6)
    assert calls["explicit"] > 1
    # nothing fits: the smallest workspace runs rather than nothing
    tuning.clear_memory()
    (fresh / "cache" / "tuning.json").unlink()
    launcher.emulated_free_bytes = 16
    before = sum(calls.values())
    backend.conv_forward(feats, weight, kmap, "standard", 4)
    assert sum(calls.values()) == before + 1 and calls["explicit"] < before


def test_failed_candidates_are_dropped_and_remembered(fresh, monkeypatch):
    rng = np.random.default_rng(2)
    launcher, backend, kmap, reference, feats, weight = setup(rng)
    launcher.tune_under_emulation = True
    calls = spy(monkeypatch, backend, ["explicit", "implicit", "mask"],
                fail={"explicit": MemoryError("out of memory allocating 2.8 GB"),
                      "mask": KernelUnavailableError("mask_gemm.cu", 80, 75)})
    got = backend.conv_forward(feats, weight, kmap, "standard", 4)
    np.testing.assert_allclose(got, cpu.conv_forward(feats, weight, reference, "standard", 4),
                               rtol=1e-4, atol=1e-4)
    bucket = tuning.shape_bucket("forward", kmap.n_in, kmap.n_out, kmap.n_pairs, 6, 4, 27,
                                 "float32", "emulated")
    # explicit_sorted runs _explicit too, so it fails with the same out-of-memory error
    assert tuning.failed(bucket) == {"explicit", "explicit_sorted", "mask"}
    stored = json.loads((fresh / "cache" / "tuning.json").read_text())
    assert stored[bucket] == "implicit"
    counts = dict(calls)
    backend.conv_forward(feats, weight, kmap, "standard", 4)
    assert calls["explicit"] == counts["explicit"] and calls["mask"] == counts["mask"]


def test_unavailable_heuristic_choice_falls_back_with_a_warning(fresh, monkeypatch):
    from cusparseconv.backends import cuda

    monkeypatch.setattr(cuda, "_WARNED", set())
    rng = np.random.default_rng(3)
    launcher, backend, kmap, reference, feats, weight = setup(rng, dtype=np.float16)
    calls = spy(monkeypatch, backend, ["tensor_core", "explicit"],
                fail={"tensor_core": KernelUnavailableError("tc_gemm.cu", 80, 75)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = backend.conv_forward(feats, weight, kmap, "standard", 4)
    expected = cpu.conv_forward(feats, weight, reference, "standard", 4)
    np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=3e-2,
                               atol=0.1)
    # the heuristic's tile shape failed: every shape of the algorithm is dropped, once
    assert sum("'tensor_core' forward algorithm is not available" in str(w.message)
               for w in caught) == 1
    assert calls == {"tensor_core": 1, "explicit": 2}
    with pytest.raises(KernelUnavailableError):          # forced: the user's call fails
        backend.conv_forward(feats, weight, kmap, "standard", 4, algorithm="tensor_core")


def test_no_tuning_while_capturing(fresh, monkeypatch):
    rng = np.random.default_rng(4)
    launcher, backend, kmap, reference, feats, weight = setup(rng)
    launcher.tune_under_emulation = True
    launcher.emulated_capturing = True
    calls = spy(monkeypatch, backend, ["explicit", "implicit", "mask"])
    backend.conv_forward(feats, weight, kmap, "standard", 4)
    assert sum(calls.values()) == 1 and calls["implicit"] == 1      # heuristic, run once
    assert not (fresh / "cache" / "tuning.json").exists()


def test_defaults_when_tuning_is_off(fresh, monkeypatch):
    rng = np.random.default_rng(5)
    launcher, backend, kmap, reference, feats, weight = setup(rng)
    calls = spy(monkeypatch, backend, ["explicit", "implicit", "mask", "tensor_core",
                                       "wgrad_explicit", "wgrad_splitk", "wgrad_tensor_core"])
    backend.conv_forward(feats, weight, kmap, "standard", 4)
    grad = rng.standard_normal((kmap.n_out, 4)).astype(np.float32)
    backend.conv_weight_grad(feats, grad, kmap, "standard", (27, 6, 4))
    # float32 (TF32 off): the SIMT kernels
    assert calls == {"explicit": 0, "implicit": 1, "mask": 0, "tensor_core": 0,
                     "wgrad_explicit": 0, "wgrad_splitk": 1, "wgrad_tensor_core": 0}
    # float16: the tensor cores, forward and weight gradient
    backend.conv_forward(feats.astype(np.float16), weight, kmap, "standard", 4)
    backend.conv_weight_grad(feats.astype(np.float16), grad.astype(np.float16), kmap,
                             "standard", (27, 6, 4))
    assert calls["tensor_core"] == 1 and calls["wgrad_tensor_core"] == 1
    assert calls["mask"] == 0 and calls["wgrad_splitk"] == 1
    tuning.set_deterministic(True)
    backend.conv_forward(feats, weight, kmap, "standard", 4)
    backend.conv_weight_grad(feats, grad, kmap, "standard", (27, 6, 4))
    assert calls["mask"] == 1 and calls["wgrad_explicit"] == 1


_WRITER = """
import sys
from cusparseconv import tuning
tag = sys.argv[1]
for i in range(200):
    tuning.record(f"{tag}|bucket{i}", "implicit" if i % 2 else "mask")
"""


def test_two_processes_merge_their_tuning_results(fresh):
    import os

    env = dict(os.environ, CUSPARSECONV_CACHE_DIR=str(fresh / "cache"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, tag], env=env)
               for tag in ("first", "second")]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    stored = json.loads((fresh / "cache" / "tuning.json").read_text())
    assert sum(k.startswith("first|") for k in stored) == 200
    assert sum(k.startswith("second|") for k in stored) == 200
