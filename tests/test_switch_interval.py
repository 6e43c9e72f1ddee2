"""Python's switch interval while a CPU call of ours runs (cusparseconv._switch): short
during the call, the process's own value afterwards, shared by nested and concurrent
calls, left alone when already short or when changed meanwhile, and off on request.
Its effect beside a busy Python thread is measured in benchmarks/conditions.py
(part ``thread``), not timed here."""

import os
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
    assert _switch.calls_in_progress() == 0


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
    assert _switch.calls_in_progress() == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# the child only writes to a pipe and leaves: JAX's warning about forking a process
# with its threads does not apply
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_a_forked_child_gets_the_parent_interval_back(process_interval):
    """A fork made while another thread is inside a call of ours: the child (where that
    thread does not exist) has the parent's own interval; the parent keeps the short
    one until the call ends."""
    inside, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_switch.short_switch_interval(
        lambda: (inside.set(), release.wait(30))))
    thread.start()
    try:
        assert inside.wait(30)
        assert _interval_close(sys.getswitchinterval(), SHORT)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: report and leave at once
            os.write(write, repr((sys.getswitchinterval(),
                                  _switch.calls_in_progress())).encode())
            os._exit(0)
        os.close(write)
        child_interval, child_calls = eval(os.read(read, 200).decode())
        os.close(read)
        os.waitpid(pid, 0)
        assert _interval_close(child_interval, process_interval) and child_calls == 0
        assert _interval_close(sys.getswitchinterval(), SHORT)
    finally:
        release.set()
        thread.join(30)
    assert _interval_close(sys.getswitchinterval(), process_interval)


@pytest.mark.parametrize("microseconds", [86, 123, 21, 4999])
def test_the_process_interval_comes_back_to_the_microsecond(layer, microseconds):
    """CPython keeps whole microseconds and a plain round trip loses one for some
    values: the value put back is the one the process had, call after call."""
    kmap, feats, weight = layer
    _switch._set_microseconds(microseconds)
    before = sys.getswitchinterval()
    for _ in range(5):
        csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert sys.getswitchinterval() == before
    assert _switch._microseconds(before) == microseconds


def test_a_lowering_left_behind_is_put_back(layer, process_interval):
    """A call cut short in its bookkeeping (an asynchronous exception, e.g. Ctrl-C)
    leaves the interval short with no call in progress: the next call puts the
    process's value back when it ends, and so does turning the setting off."""
    kmap, feats, weight = layer
    for repair in ("next call", "turned off"):
        call = _switch._Call()
        _switch._enter(call)
        assert _interval_close(sys.getswitchinterval(), SHORT)
        del call                      # its frame gone without _exit: dropped from the set
        assert _switch.calls_in_progress() == 0
        assert _interval_close(sys.getswitchinterval(), SHORT)
        if repair == "next call":
            csc.conv_forward(feats, weight, kmap, algorithm="blocked")
        else:
            csc.config.set_short_switch_interval(False)
            csc.config.set_short_switch_interval(True)
        assert _interval_close(sys.getswitchinterval(), process_interval), repair


@pytest.mark.parametrize("function", [
    csc.conv_forward, csc.conv_input_grad, csc.conv_weight_grad, csc.conv_backward,
    csc.sparse_conv, csc.layer_kernel_map, csc.build_kernel_map, csc.reverse_kernel_map,
    csc.pair_mask, csc.pool_forward, csc.pool_backward, csc.sparse_pool, csc.global_pool,
    csc.global_pool_backward, csc.upsample_nearest, csc.upsample_parents, csc.voxelize,
    csc.devoxelize, csc.to_dense, csc.from_dense, csc.scatter_to_dense,
    csc.gather_from_dense, csc.SparseTensor.__init__,
    csc.CoordinateCache.register, csc.CoordinateCache.kernel_map,
    csc.CoordinateCache.downsample, csc.CoordinateCache.expand,
    csc.CoordinateCache.batch_rows,
    cpu.CpuBackend.conv_forward, cpu.CpuBackend.conv_input_grad,
    cpu.CpuBackend.conv_weight_grad, cpu.CpuBackend.conv_backward,
    cpu.CpuBackend.build_kernel_map, cpu.CpuBackend.reverse, cpu.CpuBackend.pair_mask,
    cpu.CpuBackend.pool_forward, cpu.CpuBackend.pool_backward,
    cpu.CpuBackend.segment_reduce,
], ids=lambda f: f.__qualname__)
def test_public_calls_run_with_the_short_interval(function):
    """Every public call that makes many NumPy calls is wrapped (the wrapper keeps the
    function's name, docstring and signature); the calls themselves are checked through
    conv_forward above and the layer below."""
    assert getattr(function, "__wrapped__", None) is not None
    assert function.__doc__ == function.__wrapped__.__doc__


def test_a_layer_from_coordinates_runs_short_throughout(monkeypatch, process_interval):
    """From a SparseTensor made of raw coordinates to the layer's output (map, plan,
    product), the blocked product's sums run with the short interval, and the
    process's value is back afterwards."""
    from cusparseconv.backends import _cpu_plan
    seen = []
    original = _cpu_plan.add_products

    def add_products(*args, **kwargs):
        seen.append(sys.getswitchinterval())
        return original(*args, **kwargs)

    monkeypatch.setattr(_cpu_plan, "add_products", add_products)
    monkeypatch.setattr(cpu, "add_products", add_products)
    rng = np.random.default_rng(4)
    coords = np.unique(rng.integers(0, 30, size=(3000, 3)), axis=0)
    coords = np.concatenate([np.zeros((len(coords), 1), np.int64), coords], 1)
    x = csc.SparseTensor(coords.astype(np.int32), rng.normal(size=(len(coords), 4)).astype(
        np.float32))
    y = csc.sparse_conv(x, rng.normal(size=(27, 4, 4)).astype(np.float32), 3)
    assert y.feats.shape == (len(coords), 4)
    assert seen and all(_interval_close(v, SHORT) for v in seen)
    assert _interval_close(sys.getswitchinterval(), process_interval)
