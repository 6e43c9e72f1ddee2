"""The JAX adapter's routes into the core, on the CPU.

Buffer route (``jax.experimental.buffer_callback``): the jaxpr of the jitted
forward and gradients holds the buffer callback and no ``pure_callback``,
results equal the brute-force oracle, and the core's products write into the
very buffers XLA handed to the callback (their addresses are recorded on both
sides) which are the buffers of the results. Host route: forced (as on a JAX
without buffer_callback), it still equals the oracle. ``vmap``: sequential,
equal to the oracle per element. One small strided case (2x2x2 kernel, stride
2, 40 rows) keeps the file fast.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import oracle  # noqa: E402
from conftest import assert_close, random_coords  # noqa: E402

import cusparseconv.jax as csj  # noqa: E402
from cusparseconv import _jax_callback  # noqa: E402
from cusparseconv.backends.cpu import CpuBackend  # noqa: E402

needs_buffer_route = pytest.mark.skipif(_jax_callback._buffer_callback is None,
                                        reason="this JAX has no buffer_callback (< 0.7)")
LAYER = {"kernel_size": 2, "stride": 2}
PRODUCTS = ("conv_forward", "conv_input_grad", "conv_weight_grad", "conv_backward")


def make_case(rng):
    coords = random_coords(rng, 40, 3, n_batch=2, low=-3, high=3)
    feats = rng.standard_normal((40, 3)).astype(np.float32)
    weight = (rng.standard_normal((8, 3, 4)) / 4).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    return coords, feats, weight, bias


def routed_case(route, rng, monkeypatch):
    """:func:`make_case` on the given route ("host": buffer_callback hidden, as on a JAX
    without it; "buffer": skipped where this JAX lacks it), with the output rows and
    an output gradient: (coords, feats, weight, bias, out_coords, grad_out)."""
    if route == "host":
        monkeypatch.setattr(_jax_callback, "_buffer_callback", None)
    elif _jax_callback._buffer_callback is None:
        pytest.skip("this JAX has no buffer_callback (< 0.7)")
    coords, feats, weight, bias = make_case(rng)
    out_coords, _ = csj.sparse_conv(coords, feats, weight, **LAYER)
    grad_out = rng.standard_normal((len(out_coords), 4)).astype(np.float32)
    return coords, feats, weight, bias, out_coords, grad_out


def oracle_results(coords, out_coords, feats, weight, bias, grad_out):
    """Forward, input gradient and weight gradient of ``sum(out * grad_out)`` by brute force."""
    offsets = oracle.kernel_offsets_oracle(2, 1, 3)
    pairs = oracle.kernel_map_oracle(coords, out_coords, offsets, 2)
    forward = oracle.conv_from_pairs_oracle(feats, weight, pairs, len(out_coords), bias=bias)
    grad_feats = oracle.conv_input_grad_oracle(grad_out, weight, pairs, len(coords))
    grad_weight = oracle.conv_weight_grad_oracle(feats, grad_out, pairs, weight.shape)
    return forward, grad_feats, grad_weight


def functions(coords, grad_out):
    def forward(feats, weight, bias):
        return csj.sparse_conv(coords, feats, weight, bias=bias, **LAYER)[1]

    def loss(feats, weight, bias):
        return jnp.sum(forward(feats, weight, bias) * grad_out)

    return forward, jax.grad(loss, argnums=(0, 1))


def record_addresses(monkeypatch):
    """Record the address of every output buffer XLA hands to a buffer callback
    (``handed``) and of every ``out=`` the CPU backend's products write into
    (``written[product]``), checking that each product returns its ``out``."""
    handed, written = [], {name: [] for name in PRODUCTS}
    real = _jax_callback._buffer_callback

    def address(array):
        return np.asarray(array).__array_interface__["data"][0]

    def spy(callback, result_shape, **options):
        def recording(ctx, out, *buffers):
            handed.extend(address(o) for o in (out if isinstance(out, tuple) else (out,)))
            return callback(ctx, out, *buffers)
        return real(recording, result_shape, **options)

    monkeypatch.setattr(_jax_callback, "_buffer_callback", spy)
    for name in PRODUCTS:
        def product(*args, _run=getattr(CpuBackend, name), _name=name, **kwargs):
            out = kwargs["out"]
            result = _run(*args, **kwargs)
            if isinstance(out, tuple):    # conv_backward: both gradients
                assert all(o is not None and r is o for r, o in zip(result, out)), _name
                written[_name].append(tuple(address(o) for o in out))
                return result
            assert out is not None and result is out, f"{_name} did not write into out="
            written[_name].append(address(out))
            return result
        monkeypatch.setattr(CpuBackend, name, staticmethod(product))
    return handed, written


@needs_buffer_route
def test_jaxpr_holds_the_buffer_callback(rng):
    coords, feats, weight, bias = make_case(rng)
    forward, grads = functions(coords, np.ones((1, 4), np.float32))
    assert csj.callback_route() == "buffer"
    for function in (forward, grads):
        jaxpr = str(jax.make_jaxpr(jax.jit(function))(feats, weight, bias))
        assert "buffer_callback" in jaxpr and "pure_callback" not in jaxpr, jaxpr
    # the backward pass: one callback for the input and weight gradients, one for the bias
    backward = str(jax.make_jaxpr(jax.grad(lambda f, w, b: jnp.sum(forward(f, w, b)),
                                           argnums=(0, 1, 2)))(feats, weight, bias))
    assert backward.count("buffer_callback[") == 3, backward   # forward + 2


@needs_buffer_route
def test_core_writes_into_xlas_output_buffers(rng, monkeypatch):
    coords, feats, weight, bias = make_case(rng)
    handed, written = record_addresses(monkeypatch)
    out_coords = oracle.downsample_coords_oracle(coords, 2)
    grad_out = rng.standard_normal((len(out_coords), 4)).astype(np.float32)
    forward, grads = functions(coords, grad_out)
    ref_forward, ref_grad_feats, ref_grad_weight = oracle_results(
        coords, csj.sparse_conv(coords, feats, weight, **LAYER)[0], feats, weight, bias,
        grad_out)
    handed.clear()
    for records in written.values():
        records.clear()

    out = jax.jit(forward)(feats, weight, bias)
    assert_close(np.asarray(out), ref_forward, 1e-5)
    assert written["conv_forward"] == handed == [out.unsafe_buffer_pointer()]

    handed.clear()
    grad_feats, grad_weight = jax.jit(grads)(feats, weight, bias)
    assert_close(np.asarray(grad_feats), ref_grad_feats, 1e-5)
    assert_close(np.asarray(grad_weight), ref_grad_weight, 1e-5)
    # both gradients in one conv_backward, written into the two buffers XLA handed over
    assert written["conv_input_grad"] == written["conv_weight_grad"] == []
    assert len(written["conv_backward"]) == 1, written
    assert set(written["conv_backward"][0]) <= set(handed), (written, handed)
    assert written["conv_backward"][0] == (grad_feats.unsafe_buffer_pointer(),
                                           grad_weight.unsafe_buffer_pointer())


def test_host_route_when_forced(rng, monkeypatch):
    """What a JAX without buffer_callback runs: pure_callback, the same results."""
    monkeypatch.setattr(_jax_callback, "_buffer_callback", None)
    assert csj.callback_route() == "host"
    coords, feats, weight, bias = make_case(rng)
    out_coords, _ = csj.sparse_conv(coords, feats, weight, **LAYER)
    grad_out = rng.standard_normal((len(out_coords), 4)).astype(np.float32)
    forward, grads = functions(coords, grad_out)
    for function in (forward, grads):
        jaxpr = str(jax.make_jaxpr(jax.jit(function))(feats, weight, bias))
        assert "pure_callback" in jaxpr and "buffer_callback" not in jaxpr, jaxpr
    ref_forward, ref_grad_feats, ref_grad_weight = oracle_results(
        coords, out_coords, feats, weight, bias, grad_out)
    assert_close(np.asarray(jax.jit(forward)(feats, weight, bias)), ref_forward, 1e-5)
    grad_feats, grad_weight = jax.jit(grads)(feats, weight, bias)
    assert_close(np.asarray(grad_feats), ref_grad_feats, 1e-5)
    assert_close(np.asarray(grad_weight), ref_grad_weight, 1e-5)


@pytest.mark.parametrize("route", ["buffer", "host"])
def test_vmap_runs_each_element(route, rng, monkeypatch):
    """vmap over feature sets and weights together (sequential): each element equals
    the oracle, and so do the per-element gradients."""
    coords, feats, weight, bias, out_coords, grad_out = routed_case(route, rng, monkeypatch)
    forward, grads = functions(coords, grad_out)
    batch_feats = np.stack([feats, -2 * feats, feats[::-1]])
    batch_weight = np.stack([weight, weight[::-1], 3 * weight])
    outs = jax.jit(jax.vmap(forward, in_axes=(0, 0, None)))(batch_feats, batch_weight, bias)
    grad_feats, grad_weight = jax.vmap(grads, in_axes=(0, 0, None))(batch_feats, batch_weight,
                                                                     bias)
    for i in range(3):
        ref = oracle_results(coords, out_coords, batch_feats[i], batch_weight[i], bias, grad_out)
        assert_close(np.asarray(outs[i]), ref[0], 1e-5)
        assert_close(np.asarray(grad_feats[i]), ref[1], 1e-5)
        assert_close(np.asarray(grad_weight[i]), ref[2], 1e-5)


@pytest.mark.parametrize("route", ["buffer", "host"])
@pytest.mark.parametrize("argnums, expected", [((1,), ["conv_weight_grad"]),
                                               ((0,), ["conv_input_grad"]),
                                               ((0, 1), ["conv_backward"])])
def test_only_the_needed_gradients_are_computed(rng, monkeypatch, route, argnums, expected):
    """The backward knows which arguments a gradient flows to (symbolic zeros): the
    weight's alone runs the weight gradient only, the features' alone the input
    gradient only, both run one conv_backward (XLA drops the forward of a linear
    loss); the gradients equal the oracle's."""
    coords, feats, weight, bias, out_coords, grad_out = routed_case(route, rng, monkeypatch)
    reference = oracle_results(coords, out_coords, feats, weight, bias, grad_out)
    calls = []
    for name in PRODUCTS:
        def product(*args, _run=getattr(CpuBackend, name), _name=name, **kwargs):
            calls.append(_name)
            return _run(*args, **kwargs)
        monkeypatch.setattr(CpuBackend, name, staticmethod(product))
    grads = jax.jit(jax.grad(
        lambda f, w: jnp.sum(csj.sparse_conv(coords, f, w, **LAYER)[1] * grad_out),
        argnums=argnums))(feats, weight)
    assert calls == expected
    for argnum, grad in zip(argnums, grads):
        assert_close(np.asarray(grad), reference[1 + argnum], 1e-5)
