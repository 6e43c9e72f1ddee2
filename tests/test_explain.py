"""Seeing what ran: the DEBUG records of the products and ``cusparseconv.explain``.

On the CPU and the emulated GPU backend: every product run logs its algorithm
at DEBUG under ``cusparseconv.``; ``explain`` names the same algorithm for each
product before it runs, without running a product (the product functions and
kernel launches are made to fail during ``explain``) and without changing
what later calls choose; its kernel-map size matches the brute-force oracle.
No record is emitted and no reason is formatted when DEBUG is off. Small
inputs (about 60 rows): a submanifold and a 2x2x2 strided layer, whose CPU
forward takes the dense algorithm.
"""

import logging

import numpy as np
import pytest

import oracle
from conftest import random_coords

import cusparseconv as csc
from cusparseconv import tuning
from cusparseconv.backends import cpu as cpu_backend

LAYERS = {"submanifold": ({"kernel_size": 3}, (27, 3, 4)),
          "strided": ({"kernel_size": 2, "stride": 2}, (8, 3, 4)),
          "depthwise": ({"kernel_size": 3, "groups": 3}, (27, 3))}
PRODUCTS = ("forward", "input_grad", "weight_grad")


def make_case(rng, weight_shape):
    coords = random_coords(rng, 60, 3, n_batch=1, low=0, high=4)
    feats = rng.standard_normal((60, 3)).astype(np.float32)
    weight = rng.standard_normal(weight_shape).astype(np.float32)
    return coords, feats, weight


def run_products(x, weight, kwargs):
    """The three products of the layer, as an adapter's forward and backward run them."""
    kwargs = dict(kwargs)
    groups = kwargs.pop("groups", 1)
    kmap, _, _ = csc.layer_kernel_map(x, **kwargs)
    out = csc.conv_forward(x.feats, weight, kmap, groups)
    csc.conv_input_grad(np.ones_like(out), weight, kmap, groups)
    csc.conv_weight_grad(x.feats, np.ones_like(out), kmap, groups)


def logged_algorithms(caplog, backend_name):
    """product -> algorithm of the backend's DEBUG records (one per product run)."""
    logger = f"cusparseconv.backends.{'cpu' if backend_name == 'cpu' else 'cuda'}"
    found = {}
    for record in caplog.records:
        if record.name == logger and record.levelno == logging.DEBUG:
            assert record.algorithm in record.getMessage()
            found[record.product] = record.algorithm
    return found


@pytest.mark.backends("cpu", "cuda-emulated")
@pytest.mark.parametrize("layer", list(LAYERS))
def test_explain_names_the_algorithm_the_products_log(layer, backend, rng, caplog):
    kwargs, weight_shape = LAYERS[layer]
    n_k = weight_shape[0]
    coords, feats, weight = make_case(rng, weight_shape)
    x = csc.SparseTensor(coords, feats)
    report = csc.explain(x, weight, **kwargs)
    with caplog.at_level(logging.DEBUG, logger="cusparseconv"):
        run_products(x, weight, kwargs)
    logged = logged_algorithms(caplog, backend.name)
    assert set(logged) == set(PRODUCTS), caplog.text
    for product in PRODUCTS:
        assert getattr(report, product).algorithm == logged[product], (product, str(report))
    # the CPU's blocked/dense choice on the submanifold case comes from the cost model
    # calibrated on this machine: only the cases that do not depend on it are fixed here
    expected = ({"strided": "dense", "depthwise": "blocked"}
                if backend.name == "cpu" else {"depthwise": "depthwise"})
    if layer in expected:                                   # dense: occupancy 100% when strided
        assert report.forward.algorithm == expected[layer], str(report)

    offsets = oracle.kernel_offsets_oracle(kwargs["kernel_size"], 1, 3)
    stride = kwargs.get("stride", 1)
    out_coords = coords if stride == 1 else oracle.downsample_coords_oracle(coords, stride)
    n_pairs = sum(len(p) for p in oracle.kernel_map_oracle(coords, out_coords, offsets, stride))
    assert (report.backend, report.n_in, report.n_out, report.n_pairs) == (
        backend.name, len(coords), len(out_coords), n_pairs)
    assert report.occupancy == pytest.approx(n_pairs / (len(out_coords) * n_k))
    text = str(report)
    assert f"{n_pairs:,} pairs" in text and report.forward.algorithm in text


@pytest.mark.backends("cpu", "cuda-emulated")
def test_explain_runs_no_product_and_keeps_choices(backend, rng, monkeypatch):
    kwargs, weight_shape = LAYERS["submanifold"]
    coords, feats, weight = make_case(rng, weight_shape)
    x = csc.SparseTensor(coords, feats)
    csc.layer_kernel_map(x, **kwargs)             # the map exists before, as in a model
    memory_before = dict(tuning._memory)

    def refuse(*args, **kwargs):
        raise AssertionError("explain ran a product")

    if backend.name == "cpu":
        for name in ("gather_apply_scatter", "dense_product"):
            monkeypatch.setattr(cpu_backend, name, refuse)
        monkeypatch.setattr(cpu_backend, "parallel_for", refuse)   # the weight gradient's loop
    else:
        monkeypatch.setattr(backend.backend.launcher, "launch", refuse)
        monkeypatch.setattr(backend.backend.launcher, "launch_1d", refuse)
    report = csc.explain(x, weight, **kwargs, algorithm="explicit"
                         if backend.name != "cpu" else "blocked")
    assert report.forward.algorithm == report.input_grad.algorithm
    assert "forced" in report.forward.reason
    assert dict(tuning._memory) == memory_before


def test_explain_checks_its_arguments(rng):
    coords, feats, weight = make_case(rng, LAYERS["submanifold"][1])
    x = csc.SparseTensor(coords, feats)
    with pytest.raises(TypeError, match="weight has dtype"):
        csc.explain(x, weight.astype(np.float64))
    with pytest.raises(ValueError, match="algorithm for the forward product on the CPU"):
        csc.explain(x, weight, algorithm="mask")
    with pytest.raises(ValueError, match="weight must have shape"):
        csc.explain(x, weight, kernel_size=2)


@pytest.mark.backends("cuda-emulated")
def test_tuner_timings_are_logged_and_explained(backend, rng, caplog, monkeypatch, tmp_path):
    """With timing on, explain says the shape is not tuned yet; the product logs the
    measured times; afterwards explain names the remembered winner."""
    monkeypatch.setenv("CUSPARSECONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(backend.backend.launcher, "tune_under_emulation", True)
    tuning.clear_memory()
    try:
        kwargs, weight_shape = LAYERS["strided"]
        coords, feats, weight = make_case(rng, weight_shape)
        x = csc.SparseTensor(coords, feats)
        before = csc.explain(x, weight, **kwargs)
        assert before.forward.algorithm is None and "not tuned yet" in before.forward.reason
        assert "timed on first call" in str(before)
        kmap, _, _ = csc.layer_kernel_map(x, **kwargs)
        with caplog.at_level(logging.DEBUG, logger="cusparseconv"):
            csc.conv_forward(x.feats, weight, kmap)
        tuned = [r for r in caplog.records if r.name == "cusparseconv.tuning"]
        assert len(tuned) == 1 and " ms" in tuned[0].reason, caplog.text
        after = csc.explain(x, weight, **kwargs)
        assert after.forward.algorithm == tuned[0].algorithm
        assert after.forward.algorithm == logged_algorithms(caplog, backend.name)["forward"]
    finally:
        tuning.clear_memory()


def test_nothing_is_logged_or_formatted_at_the_default_level(rng, caplog, monkeypatch):
    """No handler of the library's own, no record below WARNING by default, and the
    reason is not even computed when DEBUG is off."""
    assert logging.getLogger("cusparseconv").handlers == []

    def refuse(*args):
        raise AssertionError("a DEBUG reason was formatted while DEBUG is off")

    monkeypatch.setattr(cpu_backend, "_choice_reason", refuse)
    kwargs, weight_shape = LAYERS["submanifold"]
    coords, feats, weight = make_case(rng, weight_shape)
    with caplog.at_level(logging.INFO):
        run_products(csc.SparseTensor(coords, feats), weight, kwargs)
    assert not [r for r in caplog.records if r.name.startswith("cusparseconv")]
