"""The caller's idle GNU OpenMP threads (torch's) are ended before our workers run.

Checked by what the process holds, not by timings: a torch operation at two
threads leaves a libgomp worker thread in the process (spinning, then
sleeping); a multi-threaded call of ours ends it; disabled, it stays; in a
forked child nothing is paused (libgomp's inherited pool has no threads there:
a pause would wait for them forever).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from conftest import random_coords, run_in_forked_child
from oracle import conv_oracle

import cusparseconv as csc
from cusparseconv import _openmp

torch = pytest.importorskip("torch")
pytest.importorskip("threadpoolctl")

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"),
                                reason="counts threads in /proc/self/task (Linux)")


def _threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def _stable_threads(quiet=0.1, timeout=5.0) -> int:
    """The thread count once it has not changed for ``quiet`` seconds (retired workers of
    an earlier pool, ended OpenMP threads: all gone)."""
    deadline = time.monotonic() + timeout
    count = _threads_now()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _threads_now()
        if now == count:
            break
        count = now
    return count


def _settled_threads(expect_at_most=None, timeout=2.0) -> int:
    """The thread count once exiting threads are gone (waits up to ``timeout``)."""
    deadline = time.monotonic() + timeout
    count = _threads_now()
    while expect_at_most is not None and count > expect_at_most and time.monotonic() < deadline:
        time.sleep(0.01)
        count = _threads_now()
    return count


@pytest.fixture
def torch_two_threads():
    """torch at two threads, ours at two; the OpenMP release switched on; all restored."""
    torch_before, ours_before = torch.get_num_threads(), csc.get_num_threads()
    enabled_before = _openmp.is_release_openmp_threads()
    torch.set_num_threads(2)
    csc.set_num_threads(2)
    _openmp.release_openmp_threads(True)
    try:
        yield
    finally:
        torch.set_num_threads(torch_before)
        csc.set_num_threads(ours_before)
        _openmp.release_openmp_threads(enabled_before)


def _torch_parallel_op():
    """A torch operation big enough to run on its OpenMP team (two threads)."""
    torch.relu(torch.ones(200_000, 32))


def _layer(rng, n=20000, channels=16):
    """A submanifold layer whose forward runs on several blocks (so on both threads)."""
    coords = random_coords(rng, n, 3, 1, -20, 20)
    feats = rng.standard_normal((n, channels)).astype(np.float32)
    weight = rng.standard_normal((27, channels, channels)).astype(np.float32)
    kmap, _, _ = csc.layer_kernel_map(csc.SparseTensor(coords, feats[:, :1]), 3)
    return coords, feats, weight, kmap


def _gomp_team_threads():
    """Threads a torch parallel operation adds to the process (skip if none), from a
    start with no idle team (an earlier test may have left one)."""
    for pause in _openmp._pauses():
        pause(_openmp.OMP_PAUSE_SOFT)
    baseline = _stable_threads()
    _torch_parallel_op()
    added = _threads_now() - baseline
    if added < 1:
        pytest.skip("torch's operation added no OpenMP thread here (not libgomp, or one core)")
    return baseline, added


def test_torchs_gnu_openmp_runtime_is_found(torch_two_threads):
    _torch_parallel_op()
    paths = _openmp.paused_runtimes()
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch is not built with OpenMP here")
    assert any(os.path.basename(p).startswith("libgomp") for p in paths), paths


def test_a_parallel_call_ends_the_callers_idle_openmp_threads(torch_two_threads, rng,
                                                             monkeypatch):
    monkeypatch.setattr(_openmp, "_runnable_threads", lambda: 1)   # a quiet machine
    _, feats, weight, kmap = _layer(rng)
    expected = csc.conv_forward(feats, weight, kmap)
    baseline, added = _gomp_team_threads()
    # our workers exist already (built by the first call): only torch's go
    out = csc.conv_forward(feats, weight, kmap)
    assert _settled_threads(expect_at_most=baseline) == baseline
    np.testing.assert_array_equal(out, expected)   # only which threads exist changes
    # torch starts its team again on its next parallel operation and computes as before
    x = torch.linspace(-1, 1, 200_000 * 32).reshape(200_000, 32)
    assert torch.equal(torch.relu(x), x.clamp(min=0))
    assert _threads_now() >= baseline + added


def test_release_switched_off_leaves_openmp_threads(torch_two_threads, rng):
    _, feats, weight, kmap = _layer(rng)
    expected = csc.conv_forward(feats, weight, kmap)
    _openmp.release_openmp_threads(False)
    baseline, added = _gomp_team_threads()
    out = csc.conv_forward(feats, weight, kmap)
    time.sleep(0.05)
    assert _threads_now() == baseline + added
    np.testing.assert_array_equal(out, expected)


def test_a_busy_machine_pauses_nothing(torch_two_threads, rng, monkeypatch):
    """More runnable threads than cores: a new team would wait to be scheduled, so the
    idle threads stay."""
    _, feats, weight, kmap = _layer(rng)
    csc.conv_forward(feats, weight, kmap)
    monkeypatch.setattr(_openmp, "_runnable_threads", lambda: _openmp.usable_cpus() + 1)
    baseline, added = _gomp_team_threads()
    csc.conv_forward(feats, weight, kmap)
    time.sleep(0.05)
    assert _threads_now() == baseline + added


def test_runnable_threads_are_read_from_loadavg():
    if not os.path.exists("/proc/loadavg"):
        pytest.skip("no /proc/loadavg")
    runnable = _openmp._runnable_threads()
    assert isinstance(runnable, int) and runnable >= 1   # this thread runs


def test_single_threaded_calls_pause_nothing(torch_two_threads, rng):
    _, feats, weight, kmap = _layer(rng)
    csc.set_num_threads(1)
    baseline, added = _gomp_team_threads()
    csc.conv_forward(feats, weight, kmap)
    time.sleep(0.05)
    assert _threads_now() == baseline + added


def test_results_match_the_oracle_with_torch_threads_released(torch_two_threads, rng,
                                                              monkeypatch):
    monkeypatch.setattr(_openmp, "_runnable_threads", lambda: 1)   # a quiet machine
    coords, feats, weight, kmap = _layer(rng, channels=8)
    csc.conv_forward(feats, weight, kmap, algorithm="blocked")   # our workers started
    baseline, _ = _gomp_team_threads()
    out = csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert _settled_threads(expect_at_most=baseline) == baseline   # torch's team was ended
    expected = conv_oracle(coords, feats, weight, csc.kernel_offsets(3), 1, coords)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def _child_after_torch(queue):
    rng = np.random.default_rng(3)
    _, feats, weight, kmap = _layer(rng)
    out = csc.conv_forward(feats, weight, kmap)   # parallel: would pause if not guarded
    queue.put((float(out.sum()), _openmp.paused_runtimes()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_pauses_nothing_and_does_not_hang(torch_two_threads, monkeypatch):
    monkeypatch.setattr(_openmp, "_runnable_threads", lambda: 1)   # quiet: would pause
    rng = np.random.default_rng(3)
    _, feats, weight, kmap = _layer(rng)
    expected = float(csc.conv_forward(feats, weight, kmap).sum())
    _torch_parallel_op()   # the parent's libgomp pool now has a thread the child lacks
    total, paths = run_in_forked_child(
        _child_after_torch, "the forked child hung in a parallel convolution after the "
        "parent's torch operation")
    assert total == expected
    assert paths == ()


def test_release_openmp_threads_wants_a_bool():
    with pytest.raises(TypeError, match="enabled must be True or False"):
        _openmp.release_openmp_threads(1)
