"""Python's switch interval while a CPU call of ours runs (cusparseconv._switch): short
during the call, the process's own value afterwards, shared by nested and concurrent
calls, left alone when already short or when changed meanwhile, and off on request.
Its effect beside a busy Python thread is measured in benchmarks/conditions.py
(part ``thread``), not timed here."""

import sys
import threading

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv import _switch
from cusparseconv.backends import cpu

SHORT = _switch.SHORT_INTERVAL_S


@pytest.fixture(autouse=True)
def process_interval():
    """The test's process interval (4 ms: not Python's default, so that a restore to
    the default by mistake shows); put back after the test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    yield 0.004
    csc.config.set_short_switch_interval(True)
    sys.setswitchinterval(before)


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(3)
    coords = np.unique(rng.integers(0, 12, size=(600, 3)), axis=0)
    coords = np.concatenate([np.zeros((len(coords), 1), np.int64), coords], 1).astype(np.int32)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    feats = rng.normal(size=(len(coords), 4)).astype(np.float32)
    weight = rng.normal(size=(27, 4, 5)).astype(np.float32)
    return kmap, feats, weight


def _recording(monkeypatch, action=None):
    """Patch the blocked product (what conv_forward runs) to record the interval it
    sees, then run ``action`` (if any), then the product."""
    seen = []
    original = cpu.gather_multiply_reduce

    def product(*args, **kwargs):
        seen.append(sys.getswitchinterval())
        if action is not None:
            action()
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu, "gather_multiply_reduce", product)
    return seen


def _interval_close(value, expected):
    return abs(value - expected) <= 1e-6 * max(expected, 1e-6) + 1e-9


def test_short_during_a_cpu_call_then_the_process_value(layer, monkeypatch, process_interval):
    kmap, feats, weight = layer
    seen = _recording(monkeypatch)
    expected = csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert seen and all(_interval_close(v, SHORT) for v in seen)
    assert _interval_close(sys.getswitchinterval(), process_interval)
    monkeypatch.undo()
    np.testing.assert_array_equal(csc.conv_forward(feats, weight, kmap, algorithm="blocked"),
                                  expected)


def test_put_back_after_an_error(layer, monkeypatch, process_interval):
    kmap, feats, weight = layer

    def fail():
        raise RuntimeError("inside the product")

    _recording(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="inside the product"):
        csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert _interval_close(sys.getswitchinterval(), process_interval)
    assert _switch._state["depth"] == 0


def test_an_interval_already_short_is_left_alone(layer, monkeypatch):
    kmap, feats, weight = layer
    sys.setswitchinterval(SHORT / 2)
    already = sys.getswitchinterval()
    seen = _recording(monkeypatch)
    csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert seen and all(v == already for v in seen)
    assert sys.getswitchinterval() == already


def test_a_change_made_during_the_call_is_kept(layer, monkeypatch):
    kmap, feats, weight = layer
    _recording(monkeypatch, lambda: sys.setswitchinterval(0.003))
    csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert _interval_close(sys.getswitchinterval(), 0.003)


def test_turned_off(layer, monkeypatch, process_interval):
    kmap, feats, weight = layer
    assert csc.config.is_short_switch_interval()
    csc.config.set_short_switch_interval(False)
    assert not csc.config.is_short_switch_interval()
    seen = _recording(monkeypatch)
    csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert seen and all(_interval_close(v, process_interval) for v in seen)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        csc.config.set_short_switch_interval("no")


def test_concurrent_calls_share_one_count(layer, monkeypatch, process_interval):
    """Two threads inside calls at once: short while either runs; the process value
    once both have returned, whichever returns first."""
    kmap, feats, weight = layer
    barrier = threading.Barrier(2, timeout=30)
    seen = _recording(monkeypatch, barrier.wait)
    errors = []

    def call():
        try:
            csc.conv_forward(feats, weight, kmap, algorithm="blocked")
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(seen) == 2 and all(_interval_close(v, SHORT) for v in seen)
    assert _interval_close(sys.getswitchinterval(), process_interval)
    assert _switch._state["depth"] == 0


def test_a_forked_child_gets_the_parent_interval_back(process_interval):
    """The hook run in a fork's child while a call of ours ran in the parent."""
    _switch._enter()
    assert _interval_close(sys.getswitchinterval(), SHORT)
    _switch._after_fork_in_child()
    assert _interval_close(sys.getswitchinterval(), process_interval)
    assert _switch._state["depth"] == 0 and _switch._state["saved"] is None


@pytest.mark.parametrize("function", [
    csc.conv_forward, csc.conv_input_grad, csc.conv_weight_grad, csc.conv_backward,
    csc.sparse_conv, csc.layer_kernel_map, csc.build_kernel_map, csc.reverse_kernel_map,
    csc.pair_mask, csc.pool_forward, csc.pool_backward, csc.sparse_pool, csc.global_pool,
    csc.global_pool_backward, csc.upsample_nearest, csc.upsample_parents, csc.voxelize,
    csc.devoxelize, csc.to_dense, csc.from_dense, csc.scatter_to_dense,
    csc.gather_from_dense, csc.SparseTensor.__init__,
    csc.CoordinateCache.register, csc.CoordinateCache.kernel_map,
    cpu.CpuBackend.conv_forward, cpu.CpuBackend.conv_backward,
    cpu.CpuBackend.build_kernel_map,
], ids=lambda f: f.__qualname__)
def test_public_calls_run_with_the_short_interval(function):
    """Every public call that makes many NumPy calls is wrapped (the wrapper keeps the
    function's name, docstring and signature)."""
    assert getattr(function, "__wrapped__", None) is not None
    assert function.__doc__ == function.__wrapped__.__doc__
