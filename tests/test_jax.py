"""The JAX adapter: forward against the oracle, eager == jit, gradients against
central finite differences and against the PyTorch adapter, and a jitted
training step. GPU variants carry the ``gpu`` marker."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import oracle  # noqa: E402
from conftest import assert_close, assert_same_rows, random_coords  # noqa: E402

import cusparseconv as csc  # noqa: E402
import cusparseconv.jax as csj  # noqa: E402


@pytest.fixture
def x64():
    """float64 inside the test only (the README's JAX example runs in float32)."""
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:  # older jax
        from jax.experimental import enable_x64
    with enable_x64(True):
        yield


def make_case(rng, n=40, channels=3, c_out=4, n_k=27, low=-3, high=3):
    coords = random_coords(rng, n, 3, n_batch=2, low=low, high=high)
    feats = rng.standard_normal((n, channels))
    weight = rng.standard_normal((n_k, channels, c_out)) / np.sqrt(n_k * channels)
    bias = rng.standard_normal(c_out)
    return coords, feats, weight, bias


REGIMES = {
    "submanifold": {"kernel_size": 3},
    "strided": {"kernel_size": 2, "stride": 2},
    "generative": {"kernel_size": 3, "generative": True},
    "transposed_generative": {"kernel_size": 2, "stride": 2, "transposed": True,
                              "generative": True},
    "dilated": {"kernel_size": 3, "dilation": 2},
}


def expected_coords(name, coords, kwargs):
    offsets = oracle.kernel_offsets_oracle(kwargs["kernel_size"], kwargs.get("dilation", 1), 3)
    stride = kwargs.get("stride", 1)
    if name == "strided":
        return oracle.downsample_coords_oracle(coords, stride), offsets
    if name == "generative":
        return oracle.generative_coords_oracle(coords, offsets, stride), offsets
    if name == "transposed_generative":
        return oracle.transposed_generative_coords_oracle(coords, offsets, stride), offsets
    return coords, offsets


@pytest.mark.parametrize("name", list(REGIMES))
def test_forward_matches_oracle_eager_and_jit(name, rng, x64):
    kwargs = REGIMES[name]
    n_k = len(oracle.kernel_offsets_oracle(kwargs["kernel_size"], 1, 3))
    coords, feats, weight, bias = make_case(rng, n_k=n_k)
    out_coords, out = csj.sparse_conv(coords, feats, weight, bias=bias, **kwargs)
    ref_coords, offsets = expected_coords(name, coords, kwargs)
    ref = oracle.conv_oracle(coords, feats, weight, offsets, kwargs.get("stride", 1), ref_coords,
                             transposed=kwargs.get("transposed", False), bias=bias)
    assert out.dtype == jnp.float64
    assert_same_rows(out_coords, np.asarray(out), ref_coords, ref, 1e-10)
    jitted = jax.jit(lambda f, w, b: csj.sparse_conv(coords, f, w, bias=b, **kwargs)[1])
    assert np.array_equal(np.asarray(jitted(feats, weight, bias)), np.asarray(out))


def loss_of(coords, **kwargs):
    def loss(feats, weight, bias):
        _, out = csj.sparse_conv(coords, feats, weight, bias=bias, **kwargs)
        return jnp.sum(jnp.tanh(out) * jnp.arange(out.size).reshape(out.shape) / out.size)
    return loss


def directional_fd(loss, args, direction_index, rng, eps=1e-6):
    """Central finite difference of ``loss`` along a random direction of one argument."""
    direction = rng.standard_normal(np.shape(args[direction_index]))
    plus, minus = list(args), list(args)
    plus[direction_index] = args[direction_index] + eps * direction
    minus[direction_index] = args[direction_index] - eps * direction
    return (float(loss(*plus)) - float(loss(*minus))) / (2 * eps), direction


@pytest.mark.parametrize("name", list(REGIMES))
def test_grad_matches_finite_differences(name, rng, x64):
    kwargs = REGIMES[name]
    n_k = len(oracle.kernel_offsets_oracle(kwargs["kernel_size"], 1, 3))
    coords, feats, weight, bias = make_case(rng, n=30, n_k=n_k)
    loss = loss_of(coords, **kwargs)
    args = (feats, weight, bias)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    eager = jax.grad(loss, argnums=(0, 1, 2))(*args)
    for index in range(3):
        assert_close(np.asarray(grads[index]), np.asarray(eager[index]), 1e-12)
        numeric, direction = directional_fd(loss, args, index, rng)
        analytic = float(np.sum(np.asarray(grads[index]) * direction))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (index, numeric,
                                                                          analytic)


@pytest.mark.parametrize("variant", ["grouped", "depthwise", "no_bias"])
def test_grad_matches_torch_adapter(variant, rng, x64):
    torch = pytest.importorskip("torch")
    import cusparseconv.torch as cst

    coords, feats, _, bias = make_case(rng, c_out=4, channels=4)
    groups, shape = {"grouped": (2, (27, 2, 2, 2)), "depthwise": (4, (27, 4)),
                     "no_bias": (1, (27, 4, 4))}[variant]
    weight = rng.standard_normal(shape) / 6
    bias = None if variant == "no_bias" else bias
    grad_out = rng.standard_normal((len(coords), 4))

    def jax_loss(f, w, b):
        return jnp.sum(csj.sparse_conv(coords, f, w, groups=groups, bias=b)[1] * grad_out)

    argnums = (0, 1) if bias is None else (0, 1, 2)
    jax_grads = jax.grad(jax_loss, argnums=argnums)(feats, weight, bias)

    leaves = [torch.from_numpy(a).requires_grad_() for a in (feats, weight, bias)
              if a is not None]
    _, out = cst.sparse_conv(coords, leaves[0], leaves[1], groups=groups,
                             bias=leaves[2] if bias is not None else None)
    out.backward(torch.from_numpy(grad_out))
    for ours, theirs in zip(jax_grads, leaves):
        assert_close(np.asarray(ours), theirs.grad.numpy(), 1e-12)


@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
def test_pool_and_grad(mode, rng, x64):
    coords, feats, _, _ = make_case(rng, n=60)
    out_coords, out = csj.sparse_pool(coords, feats, 2, mode=mode)
    ref_coords = oracle.downsample_coords_oracle(coords, 2)
    offsets = oracle.kernel_offsets_oracle(2, 1, 3)
    assert_same_rows(out_coords, np.asarray(out),
                     ref_coords, oracle.pool_oracle(coords, feats, offsets, 2, ref_coords, mode),
                     1e-12)
    grad_out = rng.standard_normal(out.shape)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(csj.sparse_pool(coords, f, 2, mode=mode)[1]
                                              * grad_out)))(feats)
    ref_grad = oracle.pool_backward_oracle(grad_out, coords, feats, offsets, 2, out_coords, mode)
    assert_close(np.asarray(grad), ref_grad, 1e-12)


@pytest.mark.parametrize("mode", ["mean", "max", "sum"])
def test_global_pool_and_grad(mode, rng, x64):
    coords, feats, _, _ = make_case(rng, n=30)
    out_coords, out = csj.global_pool(coords, feats, mode)
    ref_coords, ref = oracle.global_pool_oracle(coords, feats, mode)
    assert np.array_equal(out_coords, ref_coords)
    assert_close(np.asarray(out), ref, 1e-12)
    loss = jax.jit(lambda f: jnp.sum(jnp.sin(csj.global_pool(coords, f, mode)[1])))
    numeric, direction = directional_fd(loss, (feats,), 0, rng)
    analytic = float(np.sum(np.asarray(jax.grad(loss)(feats)) * direction))
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric))


def test_cache_chains_strided_and_transposed(rng, x64):
    """Coordinates returned by one call, passed back with the same cache, stay on
    the same coordinate set: the transposed layer restores the finer set."""
    coords, feats, _, _ = make_case(rng, n=60, channels=2)
    cache = csc.CoordinateCache()
    w_down = rng.standard_normal((8, 2, 3))
    w_up = rng.standard_normal((8, 3, 2))
    coarse, hidden = csj.sparse_conv(coords, feats, w_down, 2, 2, cache=cache)
    fine, out = csj.sparse_conv(coarse, hidden, w_up, 2, 2, transposed=True, cache=cache)
    assert np.array_equal(fine, coords)
    ref_hidden = oracle.conv_oracle(coords, feats, w_down, oracle.kernel_offsets_oracle(2), 2,
                                    coarse)
    ref = oracle.conv_oracle(coarse, ref_hidden, w_up, oracle.kernel_offsets_oracle(2), 2,
                             coords, transposed=True)
    assert_close(np.asarray(out), ref, 1e-10)
    with pytest.raises(ValueError, match="no output coordinates"):
        csj.sparse_conv(np.array(coarse), hidden, w_up, 2, 2, transposed=True, cache=cache)


def test_jitted_training_step_lowers_the_loss(rng):
    coords = random_coords(rng, 200, 3, n_batch=2, low=-5, high=5)
    feats = jnp.asarray(rng.standard_normal((200, 3)), dtype=jnp.float32)
    w_true = jnp.asarray(rng.standard_normal((27, 3, 1)) / 9, dtype=jnp.float32)
    target = jnp.tanh(csj.sparse_conv(coords, feats, w_true)[1])
    params = {"w1": jnp.asarray(rng.standard_normal((27, 3, 8)) / 9, dtype=jnp.float32),
              "b1": jnp.zeros(8, jnp.float32),
              "w2": jnp.asarray(rng.standard_normal((27, 8, 1)) / 15, dtype=jnp.float32)}

    def loss(params):
        _, hidden = csj.sparse_conv(coords, feats, params["w1"], bias=params["b1"])
        _, out = csj.sparse_conv(coords, jax.nn.relu(hidden), params["w2"])
        return jnp.mean((out - target) ** 2)

    @jax.jit
    def step(params):
        value, grads = jax.value_and_grad(loss)(params)
        return value, jax.tree_util.tree_map(lambda p, g: p - 1.0 * g, params, grads)

    losses = []
    for _ in range(20):
        value, params = step(params)
        losses.append(float(value))
    assert losses[-1] < 0.5 * losses[0]
    assert params["w1"].dtype == jnp.float32


def test_vmap_over_feature_sets(rng):
    coords, feats, weight, _ = make_case(rng)
    batch = np.stack([feats, 2 * feats]).astype(np.float32)
    out = jax.vmap(lambda f: csj.sparse_conv(coords, f, weight.astype(np.float32))[1])(batch)
    assert_close(np.asarray(out[1]), 2 * np.asarray(out[0]), 1e-5)


def test_traced_coords_are_refused(rng):
    coords, feats, weight, _ = make_case(rng)
    with pytest.raises(TypeError, match="coords must be concrete"):
        jax.jit(lambda c, f: csj.sparse_conv(c, f, weight.astype(np.float32))[1])(
            coords, feats.astype(np.float32))
    with pytest.raises(TypeError, match="weight has dtype"):
        csj.sparse_conv(coords, jnp.asarray(feats, jnp.float32),
                        jnp.asarray(weight, jnp.bfloat16))


def test_bfloat16(rng):
    coords, feats, weight, _ = make_case(rng)
    f16 = jnp.asarray(feats, jnp.bfloat16)
    _, out = csj.sparse_conv(coords, f16, jnp.asarray(weight, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    ref = oracle.conv_oracle(coords, np.asarray(f16, np.float64),
                             np.asarray(jnp.asarray(weight, jnp.bfloat16), np.float64),
                             oracle.kernel_offsets_oracle(3), 1, coords)
    assert_close(np.asarray(out, np.float64), ref, 3e-2)
    grad = jax.grad(lambda f: jnp.sum(csj.sparse_conv(coords, f, jnp.asarray(
        weight, jnp.bfloat16))[1].astype(jnp.float32)))(f16)
    assert grad.dtype == jnp.bfloat16


@pytest.mark.gpu
def test_gpu_route(rng):
    """On a GPU the buffer route runs the CuPy backend on XLA's device buffers and stream
    (the host route where JAX has no buffer_callback); results must agree, gradients
    included."""
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        devices = []
    if not devices:
        pytest.skip("JAX sees no GPU (CPU-only jaxlib or no CUDA device)")
    coords, feats, weight, _ = make_case(rng)
    f = jax.device_put(feats.astype(np.float32), devices[0])
    w = jax.device_put(weight.astype(np.float32), devices[0])
    out = jax.jit(lambda f, w: csj.sparse_conv(coords, f, w)[1])(f, w)
    ref = oracle.conv_oracle(coords, feats, weight, oracle.kernel_offsets_oracle(3), 1, coords)
    assert_close(np.asarray(out), ref, 1e-4)
    grad_out = rng.standard_normal(ref.shape).astype(np.float32)
    grad_feats, grad_weight = jax.jit(jax.grad(
        lambda f, w: jnp.sum(csj.sparse_conv(coords, f, w)[1] * grad_out), argnums=(0, 1)))(f, w)
    pairs = oracle.kernel_map_oracle(coords, coords, oracle.kernel_offsets_oracle(3))
    assert_close(np.asarray(grad_feats),
                 oracle.conv_input_grad_oracle(grad_out, weight, pairs, len(coords)), 1e-4)
    assert_close(np.asarray(grad_weight),
                 oracle.conv_weight_grad_oracle(feats, grad_out, pairs, weight.shape), 1e-4)
