"""The CPU products' plans (window or gathered rows per block and offset, one sparse sum
per block), the cost model's choices, and the shared work queue of the worker threads.

The cost model's constants are injected here (never measured), so that every
test is deterministic: the plans tested are chosen by the test, and each is
checked against a float64 brute force written below.
"""

import os
import threading
import time

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv import _threads
from cusparseconv.backends import _cpu_cost, _cpu_plan


def brute_force(coords, feats, weight, offsets):
    """Stride-1 convolution over dictionaries (float64)."""
    index = {tuple(r): i for i, r in enumerate(coords.tolist())}
    out = np.zeros((len(coords), weight.shape[-1]))
    for row, u in enumerate(coords.tolist()):
        for k, off in enumerate(offsets.tolist()):
            v = (u[0],) + tuple(a + o for a, o in zip(u[1:], off))
            if v in index:
                out[row] += feats[index[v]] @ weight[k]
    return out


@pytest.fixture(scope="module")
def mixed_scene():
    """~5,000 voxels, sorted: a filled slab (windows pay) and a scattered cloud (gathers
    pay), so that one offset is a window in some blocks and gathered in others."""
    grid = np.stack(np.meshgrid(np.arange(14), np.arange(14), np.arange(14), indexing="ij"),
                    -1).reshape(-1, 3)
    rng = np.random.default_rng(0)
    cloud = rng.integers(0, 60, size=(2600, 3)) + np.array([20, 0, 0])
    xyz = np.unique(np.concatenate([grid, cloud]), axis=0)
    coords = np.concatenate([np.zeros((len(xyz), 1), np.int64), xyz], axis=1).astype(np.int32)
    return coords


def _fixed_costs(monkeypatch, **values):
    base = dict(gemm_call=1e-6, gemm_row=20e-9, take_row=10e-9, reduce_entry=10e-9,
                dense_row=1e-3)
    base.update(values)
    fixed = _cpu_cost.Costs(**base)
    monkeypatch.setattr(_cpu_plan, "costs", lambda *args: fixed)
    monkeypatch.setattr(_cpu_plan, "_MIN_BLOCK_ROWS", 256)
    monkeypatch.setattr(_cpu_plan, "_BUFFER_BYTES", 256 * 14 * 4 * 4)  # 256-row blocks


def _windows_per_offset(plan, kernel_volume):
    modes = [set() for _ in range(kernel_volume)]
    for block in plan.blocks:
        for k, window, *_ in block.items:
            modes[k].add(window)
    return modes


@pytest.mark.parametrize("costs", [
    {"take_row": 1.0},           # gathering is dear: a window wherever rows are monotone
    {"take_row": 0.0},           # gathering is free: always gather
    {"take_row": 10e-9},         # in between: windows where they are dense enough
])
def test_every_plan_matches_the_oracle(mixed_scene, monkeypatch, costs):
    _fixed_costs(monkeypatch, **costs)
    rng = np.random.default_rng(1)
    offsets = csc.kernel_offsets(3)
    kmap = csc.build_kernel_map(mixed_scene, mixed_scene, offsets)
    feats = rng.normal(size=(len(mixed_scene), 4))
    weight = rng.normal(size=(27, 4, 3))
    plan = _cpu_plan.plan_for(kmap, 4, 3, np.float64)
    assert len(plan.blocks) > 4
    modes = _windows_per_offset(plan, 27)
    if costs["take_row"] == 1.0:
        assert all(m == {True} for m in modes if m)
    elif costs["take_row"] == 0.0:  # a window only where its rows are all paired
        for block in plan.blocks:
            for _, window, _, length, _, begin, end in block.items:
                assert not window or length == end - begin
    else:  # the case this test is for: one offset both ways
        assert any(m == {True, False} for m in modes)
    out = csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    np.testing.assert_allclose(out, brute_force(mixed_scene, feats, weight, offsets),
                               rtol=1e-12, atol=1e-12)
    grad_out = rng.normal(size=out.shape)
    grad_in = csc.conv_input_grad(grad_out, weight, kmap, algorithm="blocked")
    np.testing.assert_allclose(np.sum(feats * grad_in), np.sum(out * grad_out), rtol=1e-12)


def test_window_and_gather_plans_agree_to_rounding(mixed_scene, monkeypatch):
    """Same sums in the same order per output row whatever the plan (float32)."""
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(len(mixed_scene), 16)).astype(np.float32)
    weight = rng.normal(size=(27, 16, 16)).astype(np.float32)
    results = []
    for take_row in (1.0, 0.0, 10e-9):
        _fixed_costs(monkeypatch, take_row=take_row)
        kmap = csc.build_kernel_map(mixed_scene, mixed_scene, csc.kernel_offsets(3))
        results.append(csc.conv_forward(feats, weight, kmap, algorithm="blocked"))
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=2e-6, atol=2e-6)


def test_public_sparse_path_gives_the_same_bits(mixed_scene, monkeypatch):
    """SciPy's compiled loop called directly and scipy.sparse.csc_array agree exactly."""
    _fixed_costs(monkeypatch, take_row=10e-9)
    rng = np.random.default_rng(3)
    kmap = csc.build_kernel_map(mixed_scene, mixed_scene, csc.kernel_offsets(3))
    feats = rng.normal(size=(len(mixed_scene), 8)).astype(np.float32)
    weight = rng.normal(size=(27, 8, 8)).astype(np.float32)
    direct = csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    monkeypatch.setattr(_cpu_plan, "_csc_matvecs", None)
    public = csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    assert np.array_equal(direct, public)


def test_mixed_plan_is_bit_identical_at_1_2_3_threads(mixed_scene, monkeypatch):
    _fixed_costs(monkeypatch, take_row=10e-9)
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(len(mixed_scene), 32)).astype(np.float32)
    weight = rng.normal(size=(27, 32, 32)).astype(np.float32)
    kmap = csc.build_kernel_map(mixed_scene, mixed_scene, csc.kernel_offsets(3))
    before = csc.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            csc.set_num_threads(threads)
            results.append((csc.conv_forward(feats, weight, kmap),
                            csc.conv_input_grad(feats, weight, kmap),
                            csc.conv_weight_grad(feats, feats, kmap)))
    finally:
        csc.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_dense_is_chosen_by_predicted_time(mixed_scene, monkeypatch):
    kmap = csc.build_kernel_map(mixed_scene, mixed_scene, csc.kernel_offsets(3))
    _fixed_costs(monkeypatch, dense_row=1e-12)     # dense predicted (almost) free
    assert _cpu_plan.choose_dense(kmap, 4, 4, np.float32)
    _fixed_costs(monkeypatch, dense_row=1.0)       # dense predicted very slow
    kmap = csc.build_kernel_map(mixed_scene, mixed_scene, csc.kernel_offsets(3))
    assert not _cpu_plan.choose_dense(kmap, 4, 4, np.float32)


def test_measured_costs_are_positive_and_memoized():
    measured = _cpu_cost.costs(8, 8, 27, np.float32)
    for name in _cpu_cost.Costs.__slots__:
        value = getattr(measured, name)
        assert np.isfinite(value) and value >= 0, name
    assert measured.gemm_row > 0 and measured.dense_row > 0
    assert _cpu_cost.costs(8, 8, 27, np.float32) is measured


# --------------------------------------------------------------------------- threads

def test_parallel_for_runs_each_item_once_on_the_caller_and_workers():
    before = csc.get_num_threads()
    seen, lock = [], threading.Lock()
    try:
        csc.set_num_threads(3)
        caller = threading.get_ident()

        def record(item):
            time.sleep(0.005)
            with lock:
                seen.append((item, threading.get_ident()))

        _threads.parallel_for(record, range(30))
    finally:
        csc.set_num_threads(before)
    assert sorted(item for item, _ in seen) == list(range(30))
    assert caller in {ident for _, ident in seen}        # the caller works too
    assert len({ident for _, ident in seen}) > 1         # and so do the workers


def test_parallel_for_raises_the_first_error_after_every_thread_stopped():
    before = csc.get_num_threads()
    done = []
    try:
        csc.set_num_threads(2)

        def item(i):
            if i == 3:
                raise KeyError("item 3")
            done.append(i)

        with pytest.raises(KeyError, match="item 3"):
            _threads.parallel_for(item, range(50))
        count = len(done)
        assert count < 50
    finally:
        csc.set_num_threads(before)
    assert len(done) == count        # nothing ran after the call returned


def test_framework_threads_size_the_pool_unless_the_user_chose(monkeypatch):
    monkeypatch.setitem(_threads._state, "explicit", False)
    monkeypatch.setitem(_threads._state, "threads", 2)
    with _threads.framework_threads(1):
        assert csc.get_num_threads() == 1
        with _threads.framework_threads(3):
            assert csc.get_num_threads() == 3
        assert csc.get_num_threads() == 1
    assert csc.get_num_threads() == 2
    monkeypatch.setitem(_threads._state, "explicit", True)
    with _threads.framework_threads(1):
        assert csc.get_num_threads() == 2                # set_num_threads wins
    with pytest.raises(ValueError, match="positive"):
        with _threads.framework_threads(0):
            pass


def test_set_num_threads_none_goes_back_to_the_default(monkeypatch):
    """set_num_threads(None): the default count again (the variable's, else the usable
    CPUs), and a framework's count is followed again; with the variable set, it still
    wins over a framework's."""
    monkeypatch.setitem(_threads._state, "explicit", False)
    monkeypatch.setitem(_threads._state, "threads", _threads._state["threads"])
    monkeypatch.delenv("CUSPARSECONV_NUM_THREADS", raising=False)
    csc.set_num_threads(3)
    with _threads.framework_threads(1):
        assert csc.get_num_threads() == 3
    csc.set_num_threads(None)
    assert csc.get_num_threads() == _threads.usable_cpus()
    with _threads.framework_threads(1):
        assert csc.get_num_threads() == 1
    monkeypatch.setenv("CUSPARSECONV_NUM_THREADS", "5")
    csc.set_num_threads(None)
    assert csc.get_num_threads() == 5
    with _threads.framework_threads(1):
        assert csc.get_num_threads() == 5
    monkeypatch.delenv("CUSPARSECONV_NUM_THREADS")
    csc.set_num_threads(None)
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive int or None"):
            csc.set_num_threads(bad)


def test_torch_adapter_runs_the_core_with_torchs_thread_count(monkeypatch):
    torch = pytest.importorskip("torch")
    import cusparseconv.torch as cst
    from cusparseconv.backends import cpu

    monkeypatch.setitem(_threads._state, "explicit", False)
    seen = []
    original = cpu.parallel_for

    def recording(function, items):
        seen.append(csc.get_num_threads())
        return original(function, items)

    monkeypatch.setattr(cpu, "parallel_for", recording)
    coords = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=np.int32)
    x = cst.SparseTensor(coords, torch.ones(3, 2))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        cst.conv(x, torch.ones(27, 2, 2), 3)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


# --------------------------------------------------------------------------- maps

def brute_force_pairs(in_coords, out_coords, offsets, stride, transposed):
    """{k: sorted [(in_row, out_row)]} by enumeration (SPEC section 4)."""
    fine, coarse = (out_coords, in_coords) if transposed else (in_coords, out_coords)
    fine_index = {tuple(r): i for i, r in enumerate(fine.tolist())}
    pairs = {}
    for c_row, u in enumerate(coarse.tolist()):
        for k, off in enumerate(offsets.tolist()):
            v = (u[0],) + tuple(s * a + o for s, a, o in zip(stride, u[1:], off))
            if v in fine_index:
                pair = (c_row, fine_index[v]) if transposed else (fine_index[v], c_row)
                pairs.setdefault(k, []).append(pair)
    return {k: sorted(v, key=lambda p: p[1]) for k, v in pairs.items()}


def brute_force_forward(in_coords, out_coords, offsets, stride, transposed, x, weight):
    """The forward product over :func:`brute_force_pairs`, in float64."""
    expected = np.zeros((len(out_coords), weight.shape[2]))
    for k, pairs in brute_force_pairs(in_coords, out_coords, offsets, stride,
                                      transposed).items():
        for in_row, out_row in pairs:
            expected[out_row] += x[in_row].astype(np.float64) @ weight[k]
    return expected


@pytest.mark.parametrize("stride,offsets,transposed", [
    ((2, 2, 2), "k2", False), ((2, 2, 2), "k2", True),
    ((3, 2, 1), "cell", False), ((3, 2, 1), "cell", True),
    ((2, 2, 2), "partial", False),
])
def test_partition_maps_match_enumeration(stride, offsets, transposed):
    """Kernels inside one stride cell (each fine voxel has at most one coarse voxel, which
    the plans' windows rely on being monotone): negative and shuffled coordinates, several
    batches, output sets missing some parents."""
    rng = np.random.default_rng(5)
    fine = np.unique(np.concatenate([rng.integers(0, 3, (400, 1)),
                                     rng.integers(-9, 9, (400, 3))], axis=1), axis=0)
    fine = fine[rng.permutation(len(fine))].astype(np.int32)
    if offsets == "k2":
        offsets = csc.kernel_offsets(2)
    elif offsets == "cell":
        offsets = np.stack(np.meshgrid(*[np.arange(s) for s in stride], indexing="ij"),
                           -1).reshape(-1, 3).astype(np.int32)[::-1].copy()
    else:
        offsets = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=np.int32)
    coarse = np.unique(np.concatenate([fine[:, :1], fine[:, 1:] // np.array(stride)], axis=1),
                       axis=0)
    coarse = coarse[rng.permutation(len(coarse))[: len(coarse) * 3 // 4]].astype(np.int32)
    in_coords, out_coords = (coarse, fine) if transposed else (fine, coarse)
    kmap = csc.build_kernel_map(in_coords, out_coords, offsets, stride, transposed)
    expected = brute_force_pairs(in_coords, out_coords, offsets, stride, transposed)
    for k in range(len(offsets)):
        in_rows, out_rows = kmap.pairs(k)
        assert list(zip(in_rows.tolist(), out_rows.tolist())) == expected.get(k, []), k


@pytest.mark.parametrize("take_row", [1.0, 0.0])
def test_one_pair_per_output_maps_copy_their_products(mixed_scene, monkeypatch, take_row):
    """A transposed 2x2x2 stride-2 map pairs every output row once: each block's rows
    are copied from its products (windows with unpaired rows, or gathers), no sum
    layout is made and an ``out=`` full of NaN is overwritten; the forward and the
    input gradient of the stride-2 map (its reverse pairs every fine row once) against
    pairs enumerated by brute force, in float64."""
    _fixed_costs(monkeypatch, take_row=take_row)
    fine = mixed_scene
    coarse = np.unique(np.concatenate([fine[:, :1], fine[:, 1:] // 2], axis=1), axis=0)
    offsets = csc.kernel_offsets(2)
    up = csc.build_kernel_map(coarse, fine, offsets, stride=2, transposed=True)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(len(coarse), 6)).astype(np.float32)
    weight = rng.normal(size=(8, 6, 5)).astype(np.float32)
    expected = brute_force_forward(coarse, fine, offsets, (2, 2, 2), True, x, weight)
    out = np.full((len(fine), 5), np.nan, dtype=np.float32)
    got = csc.conv_forward(x, weight, up, algorithm="blocked", out=out)
    assert got is out
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    plan = _cpu_plan.plan_for(up, 6, 5, np.float32)
    assert len(plan.blocks) > 1 and plan._sums is None
    windows = [item[1] and item[3] != item[6] - item[5] for b in plan.blocks for item in b.items]
    assert any(windows) == (take_row == 1.0)    # windows with unpaired rows, or none
    assert plan.state_nbytes() >= sum(a.nbytes for a in plan._assignments)
    # the stride-2 map's input gradient runs over the same kind of map (its reverse)
    down = csc.build_kernel_map(fine, coarse, offsets, stride=2)
    grad_in = csc.conv_input_grad(x, weight.transpose(0, 2, 1).copy(), down, algorithm="blocked")
    np.testing.assert_allclose(grad_in, expected, rtol=1e-5, atol=1e-5)


def test_summed_products_zero_each_block_of_an_out_full_of_nan(mixed_scene, monkeypatch):
    """Each block zeroes its own output rows on its worker just before its sum: with
    output rows no pair reaches (whole blocks of them, and rows among paired ones), an
    ``out=`` full of NaN and a fresh result both equal the float64 brute force, for
    the forward and the input gradient."""
    _fixed_costs(monkeypatch)
    fine = mixed_scene
    far = fine[::3] + np.array([0, 500, 0, 0], dtype=np.int32)    # no input near them
    out_coords = np.unique(np.concatenate([fine[::2], far]), axis=0)
    offsets = csc.kernel_offsets(3)
    kmap = csc.build_kernel_map(fine, out_coords, offsets, stride=1)
    plan = _cpu_plan.plan_for(kmap, 6, 5, np.float32)
    empty_blocks = [b for b in plan.blocks if not b.items]
    assert len(plan.blocks) > 3 and len(empty_blocks) >= 2
    rng = np.random.default_rng(11)
    x = rng.normal(size=(len(fine), 6)).astype(np.float32)
    weight = rng.normal(size=(27, 6, 5)).astype(np.float32)
    expected = brute_force_forward(fine, out_coords, offsets, (1, 1, 1), False, x, weight)
    assert not expected[len(fine[::2]):].any()    # the far rows: no pair
    out = np.full((len(out_coords), 5), np.nan, dtype=np.float32)
    got = csc.conv_forward(x, weight, kmap, algorithm="blocked", out=out)
    assert got is out
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(csc.conv_forward(x, weight, kmap, algorithm="blocked"),
                               expected, rtol=1e-4, atol=1e-4)
    grad_out = rng.normal(size=(len(out_coords), 5)).astype(np.float32)
    expected_in = np.zeros((len(fine), 6))
    for k, pairs in brute_force_pairs(fine, out_coords, offsets, (1, 1, 1), False).items():
        for in_row, out_row in pairs:
            expected_in[in_row] += grad_out[out_row].astype(np.float64) @ weight[k].T
    out_in = np.full((len(fine), 6), np.nan, dtype=np.float32)
    got_in = csc.conv_input_grad(grad_out, weight, kmap, algorithm="blocked", out=out_in)
    assert got_in is out_in
    np.testing.assert_allclose(got_in, expected_in, rtol=1e-4, atol=1e-4)


def test_submanifold_input_gradient_reads_the_map_mirrored(mixed_scene, monkeypatch):
    """A submanifold map of a symmetric kernel is its own reverse with the offsets
    mirrored: the input gradient runs over it (no reverse table) and equals the
    gradient over the reverse table; other maps are not marked."""
    from cusparseconv.backends import cpu
    rng = np.random.default_rng(6)
    coords = mixed_scene[rng.permutation(len(mixed_scene))]
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3))
    mirror = _cpu_plan.mirror_of(kmap)
    assert mirror is not None and sorted(mirror.tolist()) == list(range(27))
    assert np.array_equal(csc.kernel_offsets(3)[mirror], -csc.kernel_offsets(3))
    weight = rng.normal(size=(27, 5, 3))
    grad_out = rng.normal(size=(len(coords), 3))
    monkeypatch.setattr(cpu, "reverse_map", lambda kmap: pytest.fail("reverse built"))
    mirrored = csc.conv_input_grad(grad_out, weight, kmap)
    grouped = csc.conv_input_grad(rng.normal(size=(len(coords), 4)),
                                  rng.normal(size=(27, 2, 2, 2)), kmap, groups=2)
    monkeypatch.undo()
    monkeypatch.setattr(cpu, "mirror_of", lambda kmap: None)
    np.testing.assert_allclose(mirrored, csc.conv_input_grad(grad_out, weight, kmap),
                               rtol=1e-12, atol=1e-12)
    assert grouped.shape == (len(coords), 4)
    down = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3), stride=2)
    assert _cpu_plan.mirror_of(down) is None


def test_in_monotone_flags_match_a_direct_check_per_offset(mixed_scene):
    """The plan's per-offset monotone flags (one cumulative pass over the table) on a map
    of shuffled rows (some offsets monotone, some not) and with empty offsets."""
    rng = np.random.default_rng(7)
    half = mixed_scene[:len(mixed_scene) // 2]
    shuffled = np.concatenate([half, mixed_scene[len(half):][rng.permutation(
        len(mixed_scene) - len(half))]])
    offsets = np.concatenate([csc.kernel_offsets(3), [[500, 0, 0], [0, 0, 900]]]).astype(
        np.int32)
    for coords in (mixed_scene, shuffled):
        kmap = csc.build_kernel_map(coords, coords, offsets)
        expected = []
        for k in range(kmap.kernel_volume):
            rows = kmap.in_rows[kmap.pair_offsets[k]:kmap.pair_offsets[k + 1]]
            expected.append(all(int(b) > int(a) for a, b in zip(rows[:-1], rows[1:])))
        flags = _cpu_plan.in_monotone(kmap)
        assert flags.tolist() == expected
    assert not all(expected) and any(expected)          # the shuffled map has both kinds


def test_blas_runs_one_thread_inside_items_and_gets_its_count_back():
    """The pin talks to threadpoolctl's per-library controllers: inside every item (on
    the caller and on the workers) NumPy's BLAS (the one the products call) reports one
    thread, after the call the count it had. (BLAS libraries other modules load later,
    e.g. a framework's, are not NumPy's and are left alone.)"""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))

    def blas_counts():
        return [d["num_threads"] for d in threadpoolctl.threadpool_info()
                if d["user_api"] == "blas" and d["filepath"].startswith(numpy_dir)
                and "numpy" in os.path.relpath(d["filepath"], numpy_dir).split(os.sep)[0]]

    before_counts = blas_counts()
    assert before_counts, "NumPy's BLAS not found by threadpoolctl"
    if max(before_counts) < 2:
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            _check_pin(blas_counts)
    else:
        _check_pin(blas_counts)
    assert blas_counts() == before_counts


def _check_pin(blas_counts):
    outside = blas_counts()
    assert max(outside) >= 2
    seen = []
    before = csc.get_num_threads()
    try:
        csc.set_num_threads(2)
        _threads.parallel_for(lambda item: seen.append(blas_counts()), range(6))
    finally:
        csc.set_num_threads(before)
    assert len(seen) == 6 and all(max(counts) == 1 for counts in seen)
    assert blas_counts() == outside


def test_wide_shapes_are_calibrated_at_bounded_sizes_and_scaled(monkeypatch):
    """A grouped layer of 65,536 channels once made the calibration allocate a
    65,536 x 65,536 weight (the process was killed for memory): wide shapes are
    measured at the bounds and their per-row costs scaled by the channels."""
    measured_shapes = []
    unit = _cpu_cost.Costs(1e-6, 1e-8, 2e-9, 3e-9, 4e-7)

    def fake_measure(c_in, c_out, kernel_volume, dtype):
        measured_shapes.append((c_in, c_out, kernel_volume))
        return unit

    monkeypatch.setattr(_cpu_cost, "_measure", fake_measure)
    monkeypatch.setattr(_cpu_cost, "_memo", {})
    wide = _cpu_cost.costs(65536, 2048, 27, np.float32)
    bound = _cpu_cost._MAX_CHANNELS
    volume = _cpu_cost._MAX_DENSE_DEPTH // bound
    assert measured_shapes == [(bound, bound, volume)]
    assert wide.gemm_call == unit.gemm_call
    np.testing.assert_allclose(wide.gemm_row, unit.gemm_row * (65536 / bound) * (2048 / bound))
    np.testing.assert_allclose(wide.take_row, unit.take_row * 65536 / bound)
    np.testing.assert_allclose(wide.reduce_entry, unit.reduce_entry * 2048 / bound)
    np.testing.assert_allclose(wide.dense_row, unit.dense_row * (65536 / bound) * (2048 / bound)
                               * 27 / volume)
    assert _cpu_cost.costs(65536, 2048, 27, np.float32) is wide
    narrow = _cpu_cost.costs(32, 64, 27, np.float32)       # in bounds: measured as it is
    assert narrow is unit and measured_shapes[-1] == (32, 64, 27)


def test_calibration_memory_is_bounded_for_wide_layers():
    """A grouped layer of 65,536 channels (or a 7^3 kernel at 1,024 channels) is
    calibrated at bounded sizes and scaled: the calibration once asked for a
    (65,536, 65,536) float64 weight (32 GiB)."""
    import tracemalloc

    from cusparseconv.backends import _cpu_cost
    tracemalloc.start()
    try:
        wide = _cpu_cost.costs(65536, 65536, 27, np.float64)
        deep = _cpu_cost.costs(1024, 1024, 343, np.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20, f"calibration peak {peak / 2**20:.0f} MiB"
    assert wide.gemm_row > 0 and deep.dense_row > 0


@pytest.mark.parametrize("part_pairs", [None, 1])
@pytest.mark.parametrize("take_row", [1.0, 10e-9, 0.0])
def test_whole_plan_sum_layouts_and_neighbours_match_a_per_pair_oracle(mixed_scene, monkeypatch,
                                                                        take_row, part_pairs):
    """The sums of all blocks (made whole-array, in one part or in several on the
    workers) and the map's neighbour table, against tables written pair by pair from
    the block items (windows with and without unpaired rows, gathers, blocks of 256
    rows)."""
    _fixed_costs(monkeypatch, take_row=take_row)
    if part_pairs is not None:
        monkeypatch.setattr(_cpu_plan, "_SUM_PART_PAIRS", part_pairs)
    kmap = csc.build_kernel_map(mixed_scene, mixed_scene, csc.kernel_offsets(3))
    plan = _cpu_plan.plan_for(kmap, 4, 3, np.float64)
    in_rows, out_rows = kmap.in_rows.tolist(), kmap.out_rows.tolist()
    holes = 0
    for block in plan.blocks:
        # product row -> the output rows it is added to, in the order of the pairs
        expected = [[] for _ in range(block.n_products)]
        for _, window, start, length, base, begin, end in block.items:
            holes += window and length != end - begin
            for pair in range(begin, end):
                row = base + (in_rows[pair] - start if window else pair - begin)
                expected[row].append(out_rows[pair] - block.first)
        column_starts, rows = plan.sum_layout(kmap, block)
        assert column_starts.dtype == rows.dtype == np.int32
        assert column_starts.shape == (block.n_products + 1,)
        got = [rows[column_starts[j]:column_starts[j + 1]].tolist()
               for j in range(block.n_products)]
        assert got == expected
    if take_row == 10e-9:
        assert holes > 0     # the case with unpaired window rows is exercised
    table = _cpu_plan.neighbours(kmap)
    oracle = np.full((kmap.n_out, 27), kmap.n_in, dtype=np.int32)
    for k in range(27):
        for pair in range(int(kmap.pair_offsets[k]), int(kmap.pair_offsets[k + 1])):
            oracle[out_rows[pair], k] = in_rows[pair]
    assert table.shape == (27, kmap.n_out) and np.array_equal(table.T, oracle)
    parts = plan.make_sums(kmap)
    assert len(parts) == (1 if part_pairs is None else min(4, len(plan.blocks)))
    assert plan.state_nbytes() >= sum(part[1].nbytes + part[2].nbytes for part in parts)


@pytest.mark.parametrize("group_rows", [None, 48])
def test_gathers_of_a_block_cover_its_gathered_items_in_order(mixed_scene, monkeypatch,
                                                             group_rows):
    """One index per block (the gathered items' input rows, item after item), cut into
    groups of about _BUFFER_BYTES of rows; the forward and input gradient through them
    (several groups per block with 48-row groups) against the float64 brute force."""
    _fixed_costs(monkeypatch, take_row=10e-9)
    channels = 8
    kmap = csc.build_kernel_map(mixed_scene, mixed_scene, csc.kernel_offsets(3))
    plan = _cpu_plan.plan_for(kmap, channels, channels, np.float32)
    row_bytes = channels * 4
    if group_rows is not None:   # after the plan: its blocks stay 256 rows
        monkeypatch.setattr(_cpu_plan, "_BUFFER_BYTES", group_rows * row_bytes)
    limit = _cpu_plan._BUFFER_BYTES // row_bytes
    several = 0
    for block in plan.blocks:
        index, groups = plan.gathers(kmap, block, row_bytes)
        gathered = [p for p, item in enumerate(block.items) if not item[1]]
        expected = [kmap.in_rows[block.items[p][2]:block.items[p][2] + block.items[p][3]]
                    for p in gathered]
        assert index.dtype == np.intp
        assert np.array_equal(index, np.concatenate(expected) if expected else [])
        assert [p for _, _, members in groups for p in members] == gathered
        ends = [0] + [last for _, last, _ in groups]
        assert [first for first, _, _ in groups] == ends[:-1] and ends[-1] == len(index)
        for first, last, members in groups[:-1]:
            assert last - first >= limit          # cut once a group holds the limit
            assert last - first - block.items[members[-1]][3] < limit
        several += len(groups) > 1
        again = plan.gathers(kmap, block, row_bytes)
        assert again[0] is index                   # kept
    assert (several > 0) == (group_rows is not None)
    assert plan.state_nbytes() >= sum(
        plan.gathers(kmap, b, row_bytes)[0].nbytes for b in plan.blocks)
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(len(mixed_scene), channels)).astype(np.float32)
    weight = rng.normal(size=(27, channels, channels)).astype(np.float32)
    offsets = csc.kernel_offsets(3)
    got = csc.conv_forward(feats, weight, kmap, algorithm="blocked")
    np.testing.assert_allclose(got, brute_force(mixed_scene, feats, weight, offsets),
                               rtol=1e-4, atol=1e-4)
    grad = csc.conv_input_grad(feats, weight, kmap, algorithm="blocked")
    mirrored = weight[::-1].transpose(0, 2, 1)    # kernel_offsets(3) is symmetric in order
    np.testing.assert_allclose(grad, brute_force(mixed_scene, feats, mirrored, offsets),
                               rtol=1e-4, atol=1e-4)
