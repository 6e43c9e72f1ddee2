"""``python -m benchmarks.run --quick`` runs and writes its JSON, table and chart.

A smoke run of the benchmark suite (small synthetic scene, few repeats); it
checks the files and their structure, never the times.  spconv is used when
importable (or from benchmarks/.venv-peers); otherwise its columns must say
"not installed".
"""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out-dir",
                           str(out_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out_dir, proc.stdout


def test_quick_run_writes_json_and_table(quick_run):
    out_dir, stdout = quick_run
    (path,) = glob.glob(os.path.join(out_dir, "run-*-quick.json"))
    with open(path) as f:
        report = json.load(f)
    assert os.path.exists(path[:-5] + ".md")
    env = report["environment"]
    assert env["quick"] is True and env["machine"] in os.path.basename(path)
    results = report["results"]
    layers = {e["layer"] for e in results}
    assert {"subm3", "down2", "up2", "gen3"} <= layers
    for entry in results:
        for op in ("fwd", "fwdbwd") + (("map",) if entry["layer"] != "unet" else ()):
            assert entry["ours"][op]["median_s"] > 0, (entry["workload"], entry["layer"], op)
        if env["spconv"] is None:
            assert "not installed" in entry["spconv"]["skipped"] or \
                entry["spconv"]["skipped"] == "--no-spconv"
        else:
            assert entry["spconv"]["fwd"]["median_s"] > 0
        for peer, agreement in entry["agreement"].items():
            assert agreement["agree"], (entry["workload"], entry["layer"], peer, agreement)
    if env["torch"] is not None:
        assert "unet" in layers
        assert any("fwd" in e["dense"] for e in results)   # the small grid fits
    assert "# total" in stdout


def test_quick_run_writes_chart(quick_run):
    pytest.importorskip("matplotlib")
    out_dir, _ = quick_run
    (png,) = glob.glob(os.path.join(out_dir, "run-*-quick.png"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rows_index():
    import numpy as np
    sys.path.insert(0, ROOT)
    from benchmarks.run import rows_index
    reference = np.array([[0, 1, 2, 3], [0, 5, 5, 5], [1, 1, 2, 3]])
    query = np.array([[1, 1, 2, 3], [0, 9, 9, 9], [0, 1, 2, 3]])
    assert rows_index(reference, query).tolist() == [2, -1, 0]


def test_quick_run_rows_carry_occupancy_and_sgemm_fraction(quick_run):
    out_dir, _ = quick_run
    (path,) = glob.glob(os.path.join(out_dir, "run-*-quick.json"))
    with open(path) as f:
        report = json.load(f)
    assert report["environment"]["sgemm_gflops_start"] > 0
    for entry in report["results"]:
        if entry["layer"] == "unet":
            continue
        assert 0 < entry["occupancy"] <= 1
        assert entry["sgemm_gflops"] > 0 and entry["skinny_gemm_gflops"] > 0
        assert set(entry["ours"]["sgemm_fraction"]) == {"fwd", "fwdbwd"}
        assert set(entry["ours"]["skinny_gemm_fraction"]) == {"fwd", "fwdbwd"}
        if entry["layer"] != "up2":
            assert entry["ours"]["mapfwd"]["median_s"] > 0


def test_targets_summary_of_the_quick_run(quick_run, tmp_path):
    from benchmarks import targets
    out_dir, _ = quick_run
    (path,) = glob.glob(os.path.join(out_dir, "run-*-quick.json"))
    summary = tmp_path / "summary.md"
    assert targets.main([path, "--before", path, "--out", str(summary)]) == 0
    text = summary.read_text()
    assert "## Layers" in text and "| motorcycle-2cm | suite | subm3 |" in text
    assert "strided forward <= 1.0 x spconv" in text


@pytest.mark.parametrize("layer_name", ["subm3", "gen3"])
def test_oracle_forward_error_tells_a_right_forward_from_a_wrong_one(layer_name, monkeypatch):
    """run.oracle_forward_error (what a spconv disagreement is checked against): ours is
    right to rounding; a forward off in one row is caught."""
    import numpy as np
    import cusparseconv as csc
    sys.path.insert(0, ROOT)
    from benchmarks import run
    rng = np.random.default_rng(3)
    xyz = np.unique(rng.integers(0, 12, (300, 3)), axis=0)
    coords = np.concatenate([np.zeros((len(xyz), 1), xyz.dtype), xyz], 1).astype(np.int32)
    layer = run.Layer(csc, layer_name, coords, 4, 0)
    assert run.oracle_forward_error(layer) < 1e-5
    right = layer.fwd()
    wrong = right.copy()
    wrong[len(wrong) // 2] += 1.0
    monkeypatch.setattr(layer, "fwd", lambda: wrong)
    assert run.oracle_forward_error(layer) > 1e-3


def test_targets_do_not_count_rows_whose_outputs_differ():
    """A row where spconv's output differs from ours is shown with the side the
    brute-force forward found right, and counts for no target."""
    from benchmarks import targets
    timing = {"median_s": 0.01, "times_s": [0.01]}
    base = {"workload": "w", "group": "suite", "layer": "subm3", "channels": 32,
            "occupancy": 0.4, "ours": {op: timing for op in ("mapfwd", "fwd", "fwdbwd")},
            "spconv": {op: {"median_s": 0.1, "times_s": [0.1]}
                       for op in ("mapfwd", "fwd", "fwdbwd")}}
    agreeing = {**base, "agreement": {"spconv": {"agree": True}}}
    wrong_peer = {**base, "workload": "v", "agreement": {
        "spconv": {"agree": False, "fwd": 0.73}, "oracle": {"fwd": 1e-7, "agree": True}}}
    swept = {**agreeing, "workload": "u", "group": "sweep",
             "ours": {op: {"median_s": 0.09, "times_s": [0.09]} for op in ("mapfwd", "fwd",
                                                                          "fwdbwd")}}
    lines, tallies = targets.layer_table([agreeing, wrong_peer, swept])
    assert tallies["suite"]["mapfwd"] == [1, 1] and tallies["suite"]["fwdbwd"] == [1, 1]
    assert tallies["sweep"]["mapfwd"] == [0, 1]     # each group counted apart
    assert targets._total(tallies)["mapfwd"] == [1, 2]
    row = next(line for line in lines if line.startswith("| v |"))
    assert "spconv's output wrong" in row and "not counted" in row
    wrong_ours = {**wrong_peer, "agreement": {
        "spconv": {"agree": False, "fwd": 0.73}, "oracle": {"fwd": 0.5, "agree": False}}}
    assert "ours differs" in targets._disagreement(wrong_ours)


def test_load_generator_runs_and_stops():
    from benchmarks.load import busy
    with busy(1) as load:
        processes = list(load._processes)
        assert all(p.is_alive() for p in processes)
    report = load.report()
    assert report["procs"] == 1 and report["iterations_per_s_per_proc"] >= 0
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(ValueError, match="procs"):
        with busy(-1):
            pass


def test_busy_python_thread_runs_and_stops():
    import threading
    import time

    from benchmarks.load import busy_python_thread
    with busy_python_thread() as thread:
        time.sleep(0.05)
        assert any(t.name == "busy-python" for t in threading.enumerate())
    report = thread.report()
    assert report["python_threads"] == 1 and report["iterations_per_s"] > 0
    assert not any(t.name == "busy-python" for t in threading.enumerate())


def test_conditions_thread_part_times_both_switch_settings(monkeypatch, tmp_path):
    """conditions.part_thread on a small synthetic layer (no spconv): ours with the
    short switch interval and without it, beside a busy Python thread and without;
    the setting is back on afterwards; the Markdown has the section."""
    import cusparseconv as csc
    from benchmarks import conditions
    from benchmarks import workloads as wl
    small = wl.synthetic_workload("surface", 3000)
    monkeypatch.setattr(wl, "real_workload", lambda name: small)
    plan = {"thread_layers": [("small", "subm3", 8)], "thread_repeats": 2}
    seen = []
    original = conditions.with_long_switch_interval

    def recording(csc_module, fn):
        def call():
            seen.append(csc_module.config.is_short_switch_interval())
            return fn()
        return original(csc_module, call)

    monkeypatch.setattr(conditions, "with_long_switch_interval", recording)
    (entry,) = conditions.part_thread(plan, csc, None, {})
    keys = {"ours.mapfwd", "ours_long.mapfwd", "ours.fwdbwd", "ours_long.fwdbwd"}
    assert set(entry["slowdown"]) == keys
    for part in ("quiet", "busy_thread"):
        assert all(len(entry[part][k]) == 2 and min(entry[part][k]) > 0 for k in keys)
    assert entry["thread"]["iterations_per_s"] > 0
    assert set(entry["thread_share"]) == keys
    assert all(v > 0 for v in entry["thread_share"].values())
    assert seen and not any(seen)                  # ours_long ran with it off
    assert csc.config.is_short_switch_interval()   # and it is on again
    path = tmp_path / "c.md"
    conditions.write_markdown(str(path), {"date": "d", "cpu": "c", "cpu_count": 2,
                                          "cusparseconv_threads": 2, "torch_threads": 2,
                                          "spconv": None, "thread_environment": {}},
                              {"thread": [entry]})
    text = path.read_text()
    assert "running Python without pause" in text and "| small | subm3 | 8 | mapfwd |" in text


def test_spconv_is_compared_at_its_faster_torch_setting():
    """The row's spconv time of an operation is the faster of the torch thread settings
    it ran at (per operation), recorded with the setting, and the paired ratios use the
    runs of that setting."""
    import argparse
    from benchmarks import run
    args = argparse.Namespace(spconv_torch_threads=None, threads=2)
    assert run.spconv_settings(args) == {"spconv_t1": 1, "spconv_t2": 2}
    assert run.spconv_settings(argparse.Namespace(spconv_torch_threads=0, threads=4)) == \
        {"spconv_t4": 4}
    entry = {"ours": {"fwd": run.timing_summary([1.0, 1.0, 1.0]),
                      "fwdbwd": run.timing_summary([3.0, 3.0, 3.0])},
             "spconv": {}, "dense": {},
             "spconv_t1": {"fwd": run.timing_summary([2.0, 2.2, 2.4]),
                           "fwdbwd": run.timing_summary([4.0, 4.0, 4.0])},
             "spconv_t2": {"fwd": run.timing_summary([1.6, 1.5, 1.7]),
                           "fwdbwd": run.timing_summary([6.0, 6.0, 6.0])}}
    run.pick_spconv_setting(entry, {"spconv_t1": 1, "spconv_t2": 2})
    assert entry["spconv"]["fwd"]["torch_threads"] == 2
    assert entry["spconv"]["fwdbwd"]["torch_threads"] == 1
    run.add_ratios(entry)
    assert entry["paired_ours_over_spconv"]["fwd"] == pytest.approx(1 / 1.6)
    assert entry["paired_ours_over_spconv"]["fwdbwd"] == pytest.approx(0.75)


def test_a_spconv_setting_with_wrong_results_is_not_picked():
    """spconv is timed only at the settings whose results agree with ours: a faster
    setting that computed a wrong forward is skipped for every operation but the map
    (when its pairs equal the one-thread ones); with no agreeing setting an operation
    has no spconv time."""
    from benchmarks import run
    fast, slow = run.timing_summary([1.0, 1.0, 1.0]), run.timing_summary([2.0, 2.0, 2.0])
    entry = {"ours": {op: run.timing_summary([1.5] * 3) for op in ("map", "fwd")},
             "spconv": {}, "dense": {},
             "spconv_t1": {"map": slow, "fwd": slow}, "spconv_t2": {"map": fast, "fwd": fast},
             "agreement": {"spconv_t1": {"agree": True, "map_agree": True},
                           "spconv_t2": {"agree": False, "map_agree": True, "fwd": 0.4}}}
    run.pick_spconv_setting(entry, {"spconv_t1": 1, "spconv_t2": 2})
    assert entry["spconv"]["fwd"]["torch_threads"] == 1     # the faster one was wrong
    assert entry["spconv"]["map"]["torch_threads"] == 2     # its pairs were right
    entry["agreement"]["spconv_t1"]["agree"] = False
    entry["spconv"] = {}
    run.pick_spconv_setting(entry, {"spconv_t1": 1, "spconv_t2": 2})
    assert "fwd" not in entry["spconv"]
    run.add_ratios(entry)
    assert "fwd" not in entry.get("paired_ours_over_spconv", {})


def test_load_generator_stays_finite():
    """The busy processes' arrays stay finite (an overflow once turned the load into
    arithmetic on infinities)."""
    import multiprocessing
    from benchmarks import load
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    import time
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load._burn(time.time() + 5.0, counter, os.getppid())   # overflowed after ~2.4 s
    assert counter.value >= 1


def test_network_forward_per_layer_timer():
    """The suite's network forward with the per-layer timer of unet_layers: one time per
    convolution of the plan, and the same logits as without the timer."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from benchmarks import run
    from benchmarks.unet_layers import timed_layers
    rng = np.random.default_rng(0)
    xyz = np.unique(rng.integers(0, 24, (3000, 3)), axis=0)
    coords = np.concatenate([np.zeros((len(xyz), 1), xyz.dtype), xyz], 1).astype(np.int32)
    inputs = run.UNetInputs(coords, 4, (8, 16), 5, 0)
    net = run.OursUNet(torch, inputs)
    times = {}
    with torch.no_grad():
        _, plain = net.forward()
        _, timed = net.forward(timed_layers(times, __import__("time").perf_counter))
    convs = [i for i, (kind, *_rest) in enumerate(inputs.plan) if kind in ("subm", "down", "up")]
    assert sorted(times) == convs and all(len(v) == 1 and v[0] > 0 for v in times.values())
    assert torch.equal(plain, timed)


def test_breakdown_row_times_the_backends_own_loop(tmp_path, monkeypatch):
    """benchmarks/breakdown.py on a small scene: its forward loop is the backend's blocked
    product bit for bit (a wrong loop is refused), phases add up to the total, counts
    are the map's, the Markdown names every row; torch's loop too when torch imports."""
    import numpy as np
    import cusparseconv as csc
    from benchmarks import breakdown, workloads
    rng = np.random.default_rng(0)
    xyz = np.unique(rng.integers(2, 30, (4000, 3)), axis=0)
    coords = np.concatenate([np.zeros((len(xyz), 1), xyz.dtype), xyz], 1).astype(np.int32)
    scene = workloads.Workload("tiny", "synthetic", "test scene", coords)
    try:
        import torch
    except ImportError:
        torch = None
    row = breakdown.breakdown_row(csc, torch, scene, 8, 2, rounds=1)
    fwd = row["ours"]["forward"]
    assert fwd["sum_entries"] == row["n_pairs"] and fwd["gemm_rows"] >= row["n_pairs"]
    assert abs(fwd["gather_ms"] + fwd["gemm_ms"] + fwd["sum_ms"] + fwd["rest_ms"]
               - fwd["total_ms"]) < 1e-9
    assert set(row["ours"]["weight_grad"]) >= {"total_ms", "gather_ms", "gemm_ms", "rest_ms"}
    bwd = row["ours"]["backward"]
    assert bwd["wgemm_rows"] == bwd["sum_entries"] == row["n_pairs"]
    assert abs(bwd["gather_ms"] + bwd["gemm_ms"] + bwd["wgemm_ms"] + bwd["sum_ms"]
               + bwd["rest_ms"] - bwd["total_ms"]) < 1e-9
    if torch is not None:
        assert set(row["torch"]["forward"]) >= {"gather_ms", "gemm_ms", "sum_ms"}
    env = {"date": "2026-11-28T00:00:00", "cpu": "test", "rounds": 1, "thread_env": {}}
    path = tmp_path / "b.md"
    breakdown.write_markdown(str(path), env, [row])
    assert path.read_text().count("| tiny |") == (5 if torch is not None else 3)

    with monkeypatch.context() as patch:
        patch.setattr(breakdown.OursForward, "run", lambda self, **kw: self.out + 1)
        with pytest.raises(AssertionError, match="not the backend"):
            breakdown.breakdown_row(csc, None, scene, 8, 1, rounds=1)
    # the backward loop is checked against conv_backward's fused pass as well
    monkeypatch.setattr(breakdown.OursBackward, "run",
                        lambda self, **kw: (self.out + 1, self.terms.sum(axis=0)))
    with pytest.raises(AssertionError, match="fused pass"):
        breakdown.breakdown_row(csc, None, scene, 8, 1, rounds=1)


def test_conditions_table_counts_the_target_like_for_like_and_in_time():
    """The busy-machine summary: the slowdown target (ours at its default against
    spconv), ours at one thread against spconv, and the time under load, each counted
    per (layer, load, op); rows without an agreeing spconv time count for none."""
    from benchmarks import targets

    def times(ms):
        return [ms / 1e3] * 3

    quiet = {"ours.mapfwd": times(10), "ours_t1.mapfwd": times(16), "spconv.mapfwd": times(30)}
    busy = {"ours.mapfwd": times(15), "ours_t1.mapfwd": times(17), "spconv.mapfwd": times(33)}
    report = {"load": [{"workload": "w", "layer": "subm3", "channels": 32, "by_load": {
        "0": {**quiet, "slowdown": {k: 1.0 for k in quiet}},
        "1": {**busy, "slowdown": {"ours.mapfwd": 1.5, "ours_t1.mapfwd": 17 / 16,
                                   "spconv.mapfwd": 1.1}},
        "2": {"ours.fwdbwd": times(9), "slowdown": {"ours.fwdbwd": 3.0}}}}]}
    text = "\n".join(targets.conditions_tables(report))
    assert "| w subm3 C32 | 1 | mapfwd | 1.50 | 1.06 | 1.10 | ✗ | ✓ | 0.45 |" in text
    assert ("slowdown no worse than spconv's: 0 of 1; ours at one thread: 1 of 1; ours "
            "faster than spconv under load: 1 of 1") in text


def test_spconv_net_check_tells_a_thread_dependent_net_from_a_steady_one():
    """conditions.check_spconv_net: a net whose logits change with torch's thread count
    (as spconv 2.3.8's did at two threads) is found wrong; a steady one agrees."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from benchmarks import conditions

    class Net:
        def __init__(self, wrong):
            self.wrong = wrong
            self.stem = [torch.nn.Linear(conditions.C_IN, 4)]
            self.params = list(self.stem[0].parameters())

        def logits(self, coords, feats):
            out = self.stem[0](feats)
            if self.wrong and torch.get_num_threads() > 1:
                out = out * 1.3
            return out

    coords = np.array([[0, 1, 2, 3], [0, 2, 2, 3], [0, 5, 1, 0]], np.int32)
    target = torch.tensor([0, 1, 3])
    steady = conditions.check_spconv_net(torch, Net(False), coords, target, 2)
    wrong = conditions.check_spconv_net(torch, Net(True), coords, target, 2)
    assert steady["agree"] and steady["logits_rel_err"] < 1e-6
    assert not wrong["agree"] and wrong["logits_rel_err"] > 0.1


def test_trainer_takes_turns_where_it_stopped():
    """conditions.Trainer: the steps of successive calls go on through the crops with
    one optimizer (the nets of the training part take turns), torch's thread count is
    set for a call and restored after it, and the loss goes down on a fixed target."""
    torch = pytest.importorskip("torch")
    import numpy as np
    from benchmarks import conditions
    rng = np.random.default_rng(0)
    crops = [np.concatenate([np.zeros((20, 1), np.int32), rng.integers(0, 9, (20, 3))], 1)
             .astype(np.int32) for _ in range(3)]
    targets = [np.zeros(20, dtype=np.int64)] * 3
    net = conditions.TorchMLP(torch)
    trainer = conditions.Trainer(torch, net, crops, targets)
    before = torch.get_num_threads()
    feats = conditions._features(torch, crops[0])
    first_loss = float(net.loss(crops[0], feats, trainer.targets[0]).detach())
    assert len(trainer.steps(4, torch_threads=1)) == 4 and trainer.done == 4
    assert torch.get_num_threads() == before
    assert len(trainer.steps(5)) == 5 and trainer.done == 9
    import cusparseconv
    default = cusparseconv.get_num_threads()
    trainer.steps(1, torch_threads=1, ours_threads=3)
    assert cusparseconv.get_num_threads() == default and torch.get_num_threads() == before
    net.net.eval()
    assert float(net.loss(crops[0], feats, trainer.targets[0]).detach()) < first_loss


def test_targets_read_each_conditions_part_from_the_last_file_that_has_it(quick_run, tmp_path):
    """targets --conditions A B: the training part of B replaces A's, A's load part
    stays."""
    from benchmarks import targets
    out_dir, _ = quick_run
    (run_path,) = glob.glob(os.path.join(out_dir, "run-*-quick.json"))

    def times(ms):
        return [ms / 1e3] * 3

    def step(ms):
        return {"median_ms": ms, "p90_ms": ms, "p90_over_median": 1.0, "max_ms": ms,
                "min_ms": ms, "times_s": times(ms)}

    got = {"ours.mapfwd": times(10), "spconv.mapfwd": times(20)}
    first = {"environment": {"date": "A"}, "train": {"by_load": {"0": {"ours": step(111)}}},
             "load": [{"workload": "w", "layer": "subm3", "channels": 32, "by_load": {
                 "0": {**got, "slowdown": {"ours.mapfwd": 1.0, "spconv.mapfwd": 1.0}},
                 "1": {**got, "slowdown": {"ours.mapfwd": 1.0, "spconv.mapfwd": 1.0}}}}]}
    second = {"environment": {"date": "B"}, "train": {"by_load": {"0": {"ours": step(222)}}}}
    paths = []
    for name, report in (("a.json", first), ("b.json", second)):
        paths.append(str(tmp_path / name))
        with open(paths[-1], "w") as f:
            json.dump(report, f)
    summary = tmp_path / "summary.md"
    assert targets.main([run_path, "--conditions", *paths, "--out", str(summary)]) == 0
    text = summary.read_text()
    assert "| 0 | ours | 222.0 |" in text and "111.0" not in text
    assert "| w subm3 C32 | 1 | mapfwd |" in text and "load, train: A; train: B" in text
