"""The PyTorch adapter: zero-copy exchange, autograd in every regime and variant,
pooling, layers, dtypes and autocast.

Forward results are compared with the brute-force oracle of ``tests/oracle.py``;
gradients with ``torch.autograd.gradcheck`` (float64 finite differences).
GPU variants carry the ``gpu`` marker and skip without CUDA and CuPy.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle  # noqa: E402
from conftest import assert_close, assert_same_rows, random_coords  # noqa: E402

import cusparseconv.torch as cst  # noqa: E402

CROSS = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                  [0, 0, -1]], dtype=np.int32)


def make_input(rng, n=30, ndim=3, channels=3, low=-2, high=2, dtype=torch.float64):
    coords = random_coords(rng, n, ndim, n_batch=2, low=low, high=high)
    feats = torch.from_numpy(rng.standard_normal((n, channels))).to(dtype)
    return coords, feats


def rand(rng, *shape, dtype=torch.float64):
    return torch.from_numpy(rng.standard_normal(shape) / math.sqrt(max(shape[0], 1))).to(dtype)


# --------------------------------------------------------------------------
# zero-copy conversion
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_conversion_shares_memory(dtype):
    tensor = torch.arange(12, dtype=torch.float32).reshape(4, 3).to(dtype)
    array = cst.to_array(tensor)
    assert array.__array_interface__["data"][0] == tensor.data_ptr()
    assert array.dtype.name == str(dtype).split(".")[1]
    assert array.astype(np.float64).tolist() == tensor.double().tolist()
    back = cst.from_array(array)
    assert back.data_ptr() == tensor.data_ptr() and back.dtype == dtype


def test_conversion_keeps_strides_and_detaches():
    base = torch.arange(12.0, requires_grad=True).reshape(3, 4)
    view = base.t()                                   # non-contiguous (4, 3)
    array = cst.to_array(view)
    assert array.shape == (4, 3) and array.strides == (8 // 2, 16)
    assert np.array_equal(array, base.detach().numpy().T)
    bf16 = base.detach().to(torch.bfloat16).t()
    assert np.array_equal(cst.to_array(bf16).astype(np.float32), base.detach().numpy().T)


def test_non_contiguous_feats_and_weight(rng):
    coords, feats = make_input(rng, channels=3)
    feats_t = feats.t().contiguous().t()              # same values, column-major
    weight = rand(rng, 27, 4, 3).transpose(1, 2)      # (27, 3, 4), non-contiguous
    assert not feats_t.is_contiguous() and not weight.is_contiguous()
    out_coords, out = cst.sparse_conv(coords, feats_t, weight)
    ref = oracle.conv_oracle(coords, feats.numpy(), weight.numpy(), oracle.kernel_offsets_oracle(3),
                             1, coords)
    assert np.array_equal(out_coords.numpy(), coords)
    assert_close(out.detach(), ref, 1e-10)


def test_coords_are_a_private_copy_of_the_cache(rng):
    coords, feats = make_input(rng)
    source = torch.from_numpy(coords.copy())
    x = cst.SparseTensor(source, feats)
    source[0, 1:] = 99                                # the argument was copied
    assert x.coords.dtype == torch.int32 and np.array_equal(x.coords.numpy(), coords)
    assert not x.cache.coords(x._coord_id).flags.writeable
    assert x.coords.data_ptr() != x.cache.coords(x._coord_id).__array_interface__["data"][0]
    assert x.coords is x.coords                       # one copy per tensor, not per access


@pytest.mark.parametrize("write", ["index", "view", "fill"])
def test_in_place_coordinate_write_is_refused_before_any_conv(write, rng):
    """Issue 14 item 2: a write into x.coords must never leave a conv computing on the
    old geometry while x reports the new one."""
    coords, feats = make_input(rng, channels=2)
    x = cst.SparseTensor(coords, feats)
    weight = rand(rng, 27, 2, 3)
    before = cst.conv(x, weight).feats.detach().clone()
    c = x.coords
    if write == "index":
        c[1, 1:] = torch.tensor([7, 7, 7], dtype=torch.int32)
    elif write == "view":
        c.view(-1)[5] += 3
    else:
        c[:, 1].fill_(0)
    assert np.array_equal(x.cache.coords(x._coord_id), coords)   # the geometry is intact
    for operation in (lambda: cst.conv(x, weight), lambda: cst.pool(x),
                      lambda: cst.pool_global(x), lambda: x.dense(),
                      lambda: x.replace_feats(x.feats * 2).dense()):
        with pytest.raises(ValueError, match="modified in place.*new SparseTensor"):
            operation()
    # a new tensor from the edited coordinates is the way: it computes on them
    edited = c.numpy()
    if len(np.unique(edited, axis=0)) == len(edited):
        y = cst.conv(cst.SparseTensor(c, feats), weight)
        ref = oracle.conv_oracle(edited, feats.numpy(), weight.numpy(),
                                 oracle.kernel_offsets_oracle(3), 1, edited)
        assert_close(y.feats.detach(), ref, 1e-10)
        assert not torch.equal(y.feats.detach(), before)


# --------------------------------------------------------------------------
# regimes: forward against the oracle, gradcheck in float64
# --------------------------------------------------------------------------

REGIMES = ["submanifold", "strided", "strided_per_axis", "generative", "generative_strided",
           "transposed_unit", "transposed_cache", "transposed_explicit",
           "transposed_generative", "explicit", "dilated", "even", "offsets", "two_d"]


def regime_case(name, rng, channels=3):
    """(x, conv kwargs, oracle kwargs) for one regime; x is a cst.SparseTensor."""
    ndim = 2 if name == "two_d" else 3
    coords, feats = make_input(rng, n=40 if ndim == 2 else 30, ndim=ndim, channels=channels,
                               low=-3 if ndim == 2 else -2, high=3 if ndim == 2 else 2)
    x = cst.SparseTensor(coords, feats)
    kwargs = {"kernel_size": 3}
    if name == "strided":
        kwargs = {"kernel_size": 2, "stride": 2}
    elif name == "strided_per_axis":
        kwargs = {"kernel_size": (3, 2, 1), "stride": (2, 1, 1)}
    elif name == "generative":
        kwargs = {"kernel_size": 3, "generative": True}
    elif name == "generative_strided":
        kwargs = {"kernel_size": 2, "stride": 2, "generative": True}
    elif name == "transposed_unit":
        kwargs = {"kernel_size": 3, "transposed": True}
    elif name == "transposed_cache":
        down = cst.conv(x, torch.zeros(8, channels, channels, dtype=feats.dtype), 2, 2)
        x = down.replace_feats(torch.from_numpy(rng.standard_normal((len(down), channels))))
        kwargs = {"kernel_size": 2, "stride": 2, "transposed": True}
    elif name == "transposed_explicit":
        fine = random_coords(rng, 30, 3, n_batch=2, low=-4, high=4)
        kwargs = {"kernel_size": 2, "stride": 2, "transposed": True, "out_coords": fine}
    elif name == "transposed_generative":
        kwargs = {"kernel_size": 2, "stride": 2, "transposed": True, "generative": True}
    elif name == "explicit":
        explicit = random_coords(rng, 12, 3, n_batch=2, low=-2, high=2)
        kwargs = {"kernel_size": 3, "out_coords": explicit}
    elif name == "dilated":
        kwargs = {"kernel_size": 3, "dilation": 2}
    elif name == "even":
        kwargs = {"kernel_size": 2}
    elif name == "offsets":
        kwargs = {"offsets": CROSS}
    return x, kwargs


def oracle_offsets(kwargs, ndim):
    if "offsets" in kwargs:
        return kwargs["offsets"]
    return oracle.kernel_offsets_oracle(kwargs.get("kernel_size", 3), kwargs.get("dilation", 1),
                                        ndim)


def expected_out_coords(name, x, kwargs, offsets):
    coords = x.coords.numpy()
    stride = kwargs.get("stride", 1)
    if "out_coords" in kwargs:
        return kwargs["out_coords"]
    if name == "transposed_cache":
        return x.cache.coords(x.cache.finer(x._coord_id, (2, 2, 2)))
    if name in ("strided", "strided_per_axis"):
        return oracle.downsample_coords_oracle(coords, stride)
    if name in ("generative", "generative_strided"):
        return oracle.generative_coords_oracle(coords, offsets, stride)
    if name == "transposed_generative":
        return oracle.transposed_generative_coords_oracle(coords, offsets, stride)
    return coords


@pytest.mark.parametrize("name", REGIMES)
def test_forward_matches_oracle(name, rng):
    x, kwargs = regime_case(name, rng)
    offsets = oracle_offsets(kwargs, x.ndim)
    weight, bias = rand(rng, len(offsets), 3, 4), rand(rng, 4)
    y = cst.conv(x, weight, bias=bias, **kwargs)
    ref_coords = expected_out_coords(name, x, kwargs, offsets)
    ref = oracle.conv_oracle(x.coords.numpy(), x.feats.numpy(), weight.numpy(), offsets,
                             kwargs.get("stride", 1), ref_coords,
                             transposed=kwargs.get("transposed", False), bias=bias.numpy())
    assert_same_rows(y.coords, y.feats.detach(), ref_coords, ref, 1e-10, err_msg=name)
    # the functional form gives the same (coords, feats)
    if name != "transposed_cache":
        out_coords, out_feats = cst.sparse_conv(x.coords, x.feats, weight, bias=bias, **kwargs)
        assert torch.equal(out_coords, y.coords) and torch.equal(out_feats, y.feats)


@pytest.mark.parametrize("name", REGIMES)
def test_gradcheck_regimes(name, rng):
    x, kwargs = regime_case(name, rng, channels=2)
    n_k = len(oracle_offsets(kwargs, x.ndim))
    feats = x.feats.clone().requires_grad_()
    weight = rand(rng, n_k, 2, 2).requires_grad_()
    bias = rand(rng, 2).requires_grad_()

    def run(feats, weight, bias):
        return cst.conv(x.replace_feats(feats), weight, bias=bias, **kwargs).feats

    assert torch.autograd.gradcheck(run, (feats, weight, bias))


VARIANTS = {
    # name: (weight shape after K, groups, C_in)
    "standard_no_bias": ((3, 2), 1, 3),
    "grouped": ((2, 2, 1), 2, 4),
    "grouped_wide": ((3, 1, 2), 3, 3),
    "depthwise": ((3,), 3, 3),
    "depthwise_as_groups": ((3, 1, 1), 3, 3),
}


@pytest.mark.parametrize("regime", ["submanifold", "strided", "transposed_cache",
                                    "transposed_generative"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_variants(variant, regime, rng):
    shape, groups, c_in = VARIANTS[variant]
    x, kwargs = regime_case(regime, rng, channels=c_in)
    n_k = len(oracle_offsets(kwargs, x.ndim))
    feats = x.feats.clone().requires_grad_()
    weight = rand(rng, n_k, *shape).requires_grad_()
    bias = None if variant == "standard_no_bias" else rand(rng, shape[-1] * (
        groups if len(shape) == 3 else 1)).requires_grad_()

    def run(feats, weight, bias=None):
        return cst.conv(x.replace_feats(feats), weight, groups=groups, bias=bias,
                        **kwargs).feats

    inputs = (feats, weight) if bias is None else (feats, weight, bias)
    assert torch.autograd.gradcheck(run, inputs)
    # forward against the oracle too
    y = run(*inputs)
    ref = oracle.conv_oracle(x.coords.numpy(), x.feats.numpy(), weight.detach().numpy(),
                             oracle_offsets(kwargs, 3), kwargs.get("stride", 1),
                             cst.conv(x, weight.detach(), groups=groups, **kwargs).coords.numpy(),
                             transposed=kwargs.get("transposed", False), groups=groups,
                             bias=None if bias is None else bias.detach().numpy())
    assert_close(y.detach(), ref, 1e-10)


def test_only_needed_gradients_are_computed(rng):
    coords, feats = make_input(rng)
    weight = rand(rng, 27, 3, 2).requires_grad_()
    _, out = cst.sparse_conv(coords, feats, weight)          # feats do not require grad
    out.sum().backward()
    assert feats.grad is None and weight.grad is not None


# --------------------------------------------------------------------------
# pooling, global pooling, upsampling
# --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["max", "avg", "sum"])
@pytest.mark.parametrize("kernel", ["strided", "unit"])
def test_pool_matches_oracle_and_gradcheck(mode, kernel, rng):
    coords, feats = make_input(rng, n=40, low=-3, high=3)
    kwargs = {"kernel_size": 2} if kernel == "strided" else {"kernel_size": 3, "stride": 1}
    out_coords, out = cst.sparse_pool(coords, feats, mode=mode, **kwargs)
    stride = kwargs.get("stride", kwargs["kernel_size"])
    offsets = oracle.kernel_offsets_oracle(kwargs["kernel_size"], 1, 3)
    ref_coords = oracle.downsample_coords_oracle(coords, stride) if stride != 1 else coords
    ref = oracle.pool_oracle(coords, feats.numpy(), offsets, stride, ref_coords, mode)
    assert_same_rows(out_coords, out, ref_coords, ref, 1e-10)

    x = cst.SparseTensor(coords, feats)
    leaf = feats.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f: cst.pool(x.replace_feats(f), mode=mode, **kwargs).feats, (leaf,))


def test_pool_with_offsets_defaults_to_stride_one(rng):
    coords, feats = make_input(rng, n=40, low=-3, high=3)
    out_coords, out = cst.sparse_pool(coords, feats, mode="max", offsets=CROSS)
    ref = oracle.pool_oracle(coords, feats.numpy(), CROSS, 1, coords, "max")
    assert np.array_equal(out_coords.numpy(), coords)
    assert_close(out, ref, 1e-12)


@pytest.mark.parametrize("mode", ["mean", "max", "sum"])
def test_global_pool(mode, rng):
    coords, feats = make_input(rng, n=30)
    out_coords, out = cst.global_pool(coords, feats, mode)
    ref_coords, ref = oracle.global_pool_oracle(coords, feats.numpy(), mode)
    assert np.array_equal(out_coords.numpy(), ref_coords)
    assert_close(out, ref, 1e-12)
    leaf = feats.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda f: cst.global_pool(coords, f, mode)[1], (leaf,))
    module_out = cst.SparseGlobalPool(mode)(cst.SparseTensor(coords, feats))
    assert torch.equal(module_out.feats, out)


def test_upsample_nearest(rng):
    coords, feats = make_input(rng, n=40, low=-4, high=4)
    x = cst.SparseTensor(coords, feats)
    coarse = cst.pool(x, 2, mode="avg")
    fine = cst.SparseUpsample(2)(coarse)
    assert torch.equal(fine.coords, x.coords) and fine.stride == (1, 1, 1)
    ref = oracle.upsample_nearest_oracle(coords, coarse.coords.numpy(), coarse.feats.numpy(), 2)
    assert_close(fine.feats, ref, 1e-12)
    leaf = coarse.feats.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f: cst.upsample_nearest(coarse.replace_feats(f), 2).feats, (leaf,))


# --------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------

def test_layer_weight_shapes():
    assert cst.SparseConv3d(4, 8).weight.shape == (27, 4, 8)
    assert cst.SparseConv3d(4, 8, kernel_size=2, stride=2).weight.shape == (8, 4, 8)
    assert cst.SparseConv2d(4, 8).weight.shape == (9, 4, 8)
    assert cst.SparseConv3d(4, 8, groups=2).weight.shape == (27, 2, 2, 4)
    assert cst.SparseDepthwiseConv3d(6).weight.shape == (27, 6)
    assert cst.SparseConv3d(4, 8, offsets=CROSS).weight.shape == (7, 4, 8)
    assert cst.SparseConvTranspose3d(8, 4).weight.shape == (8, 8, 4)
    assert cst.SparseConv3d(4, 8, bias=False).bias is None
    with pytest.raises(ValueError, match="groups"):
        cst.SparseConv3d(4, 6, groups=4)


def test_layer_init_like_torch_conv3d():
    """Uniform in +-1/sqrt(fan_in), fan_in = K * C_in / G, as torch.nn.Conv3d."""
    torch.manual_seed(0)
    layer = cst.SparseConv3d(16, 32, kernel_size=3, groups=2)
    reference = torch.nn.Conv3d(16, 32, kernel_size=3, groups=2)
    bound = 1 / math.sqrt(27 * 8)
    with torch.no_grad():
        for ours, theirs in ((layer.weight, reference.weight), (layer.bias, reference.bias)):
            assert float(ours.abs().max()) <= bound and float(theirs.abs().max()) <= bound
            assert float(ours.abs().max()) > 0.9 * bound
        uniform_std = bound / math.sqrt(3)
        assert abs(float(layer.weight.std()) - uniform_std) < 0.05 * uniform_std
        assert abs(float(reference.weight.std()) - uniform_std) < 0.05 * uniform_std


def test_state_dict_round_trip(rng):
    coords, feats = make_input(rng, dtype=torch.float32)
    model = torch.nn.Sequential(cst.SparseConv3d(3, 8), cst.SparseBatchNorm(8), cst.SparseReLU(),
                                cst.SparseConv3d(8, 8, 2, stride=2, groups=2),
                                cst.SparseConvTranspose3d(8, 4), cst.SparseLinear(4, 2))
    model.eval()
    state = model.state_dict()
    assert {"0.weight", "0.bias", "1.running_mean", "5.weight"} <= set(state)
    clone = torch.nn.Sequential(cst.SparseConv3d(3, 8), cst.SparseBatchNorm(8), cst.SparseReLU(),
                                cst.SparseConv3d(8, 8, 2, stride=2, groups=2),
                                cst.SparseConvTranspose3d(8, 4), cst.SparseLinear(4, 2))
    clone.load_state_dict(state)
    clone.eval()
    x = cst.SparseTensor(coords, feats)
    assert torch.equal(model(x).feats, clone(x).feats)


def test_rowwise_helpers_and_residuals(rng):
    coords, feats = make_input(rng, dtype=torch.float32)
    x = cst.SparseTensor(coords, feats)
    y = cst.SparseConv3d(3, 3)(x)
    summed = x + y
    assert torch.equal(summed.feats, x.feats + y.feats) and summed.same_coords(x)
    joined = cst.cat(x, y)
    assert joined.feats.shape == (len(x), 6)
    norm = cst.SparseBatchNorm(3)(x)
    assert torch.allclose(norm.feats.mean(0), torch.zeros(3), atol=1e-5)
    assert cst.SparseRowwise(torch.nn.Tanh())(x).feats.abs().max() < 1
    down = cst.SparseConv3d(3, 3, 2, stride=2)(x)
    with pytest.raises(ValueError, match="same coordinate set"):
        x + down


class TinyUNet(torch.nn.Module):
    """Two levels: strided convs down, transposed convs up (reusing the encoder's
    maps and restoring its coordinates), skips by concatenation."""

    def __init__(self, c_in=3, c_out=2, width=8):
        super().__init__()
        self.enc0 = torch.nn.Sequential(cst.SparseConv3d(c_in, width), cst.SparseReLU())
        self.down1 = torch.nn.Sequential(cst.SparseConv3d(width, 2 * width, 2, stride=2),
                                         cst.SparseBatchNorm(2 * width), cst.SparseReLU())
        self.down2 = torch.nn.Sequential(cst.SparseConv3d(2 * width, 2 * width, 2, stride=2),
                                         cst.SparseReLU())
        self.up2 = cst.SparseConvTranspose3d(2 * width, 2 * width)
        self.up1 = cst.SparseConvTranspose3d(4 * width, width)
        self.head = cst.SparseConv3d(2 * width, c_out, kernel_size=1)

    def forward(self, x):
        e0 = self.enc0(x)
        e1 = self.down1(e0)
        e2 = self.down2(e1)
        d1 = cst.cat(self.up2(e2), e1)
        d0 = cst.cat(self.up1(d1), e0)
        return self.head(d0)


def test_unet_trains_and_reuses_encoder_geometry(rng):
    torch.manual_seed(0)
    coords = random_coords(rng, 300, 3, n_batch=2, low=-6, high=6)
    feats = torch.from_numpy(rng.standard_normal((300, 3))).float()
    target = torch.stack([feats[:, 0] * feats[:, 1], feats[:, 2].abs()], dim=1)
    model = TinyUNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        x = cst.SparseTensor(coords, feats)
        out = model(x)
        loss = torch.nn.functional.mse_loss(out.feats, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert torch.equal(out.coords, x.coords) and out.stride == (1, 1, 1)
    assert losses[-1] < 0.7 * losses[0]
    # the decoder restored the encoder's sets: the input and its two downsamplings only
    assert x.cache.stats()["sets"] == 3


def test_transposed_without_coarse_history_is_a_clear_error(rng):
    coords, feats = make_input(rng, dtype=torch.float32)
    with pytest.raises(ValueError, match="no output coordinates"):
        cst.sparse_conv(coords, feats, torch.zeros(8, 3, 2), kernel_size=2, stride=2,
                        transposed=True)


def test_errors_name_the_argument(rng):
    coords, feats = make_input(rng, dtype=torch.float32)
    with pytest.raises(TypeError, match="weight has dtype torch.float64"):
        cst.sparse_conv(coords, feats, torch.zeros(27, 3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight must have shape"):
        cst.sparse_conv(coords, feats, torch.zeros(8, 3, 2))
    with pytest.raises(ValueError, match="expected 30 rows"):
        cst.SparseTensor(coords, feats[:10])
    with pytest.raises(ValueError, match="spatial dimensions"):
        cst.SparseConv2d(3, 2)(cst.SparseTensor(coords, feats))
    with pytest.raises(TypeError, match="torch.Tensor"):
        cst.SparseTensor(coords, feats.numpy())


# --------------------------------------------------------------------------
# dtypes and autocast (CPU)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 2e-2),
                                        (torch.bfloat16, 3e-2)])
def test_low_precision_forward_and_backward(dtype, rtol, rng):
    coords, feats64 = make_input(rng, n=60, low=-3, high=3)
    weight64, bias64 = rand(rng, 27, 3, 4), rand(rng, 4)
    grad64 = torch.from_numpy(rng.standard_normal((60, 4)))

    def run(feats, weight, bias):
        feats, weight, bias = (t.clone().requires_grad_() for t in (feats, weight, bias))
        _, out = cst.sparse_conv(coords, feats, weight, bias=bias)
        out.backward(grad64.to(out.dtype))
        return out, feats.grad, weight.grad, bias.grad

    ref = run(feats64, weight64, bias64)
    got = run(feats64.to(dtype), weight64.to(dtype), bias64.to(dtype))
    for value, expected in zip(got, ref):
        assert value.dtype == dtype
        assert_close(value.detach().double(), expected.detach().numpy(), rtol)


def test_cpu_autocast_bfloat16(rng):
    coords, feats = make_input(rng, n=60, low=-3, high=3, dtype=torch.float32)
    layer = cst.SparseConv3d(3, 4)
    x = cst.SparseTensor(coords, feats.requires_grad_())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        pooled = cst.SparsePool(2, mode="max")(y)
    assert y.feats.dtype == torch.bfloat16 and pooled.feats.dtype == torch.bfloat16
    pooled.feats.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and feats.grad.dtype == torch.float32
    reference = layer(cst.SparseTensor(coords, feats.detach()))
    assert_close(y.feats.detach().double(), reference.feats.detach().double().numpy(), 3e-2)


# --------------------------------------------------------------------------
# GPU (CuPy backend): skipped without a CUDA device and CuPy
# --------------------------------------------------------------------------

@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch (this torch build or machine is CPU-only)")
    try:
        import cupy  # noqa: F401
    except ImportError:
        pytest.skip("CuPy is not installed")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.mark.gpu
def test_gpu_conv_matches_cpu_and_shares_memory(cuda, rng):
    coords, feats = make_input(rng, n=200, low=-5, high=5, dtype=torch.float32)
    weight, bias = rand(rng, 27, 3, 4, dtype=torch.float32), rand(rng, 4, dtype=torch.float32)
    cpu = [t.clone().requires_grad_() for t in (feats, weight, bias)]
    gpu = [t.to(cuda).requires_grad_() for t in (feats, weight, bias)]
    _, out_cpu = cst.sparse_conv(coords, *cpu[:2], bias=cpu[2])
    out_coords, out_gpu = cst.sparse_conv(torch.from_numpy(coords).to(cuda), *gpu[:2],
                                          bias=gpu[2])
    assert out_gpu.device == cuda and out_coords.device == cuda
    assert_close(out_gpu.detach().cpu(), out_cpu.detach().numpy(), 1e-4)
    out_cpu.square().sum().backward()
    out_gpu.square().sum().backward()
    for c, g in zip(cpu, gpu):
        assert_close(g.grad.cpu(), c.grad.numpy(), 1e-4)
    assert cst.to_array(gpu[0]).data.ptr == gpu[0].data_ptr()


@pytest.mark.gpu
def test_gpu_runs_on_torch_current_stream(cuda, rng):
    coords, feats = make_input(rng, n=200, low=-5, high=5, dtype=torch.float32)
    weight = rand(rng, 27, 3, 4, dtype=torch.float32)
    _, expected = cst.sparse_conv(coords, feats, weight)
    stream = torch.cuda.Stream(cuda)
    with torch.cuda.stream(stream):
        f = feats.to(cuda, non_blocking=True) * 1.0          # queued on the side stream
        _, out = cst.sparse_conv(torch.from_numpy(coords).to(cuda), f, weight.to(cuda))
        result = out.cpu()
    assert_close(result, expected.numpy(), 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_autocast(cuda, dtype, rng):
    coords, feats = make_input(rng, n=200, low=-5, high=5, dtype=torch.float32)
    layer = cst.SparseConv3d(3, 4).to(cuda)
    x = cst.SparseTensor(torch.from_numpy(coords).to(cuda), feats.to(cuda))
    with torch.autocast("cuda", dtype=dtype):
        y = layer(x)
    assert y.feats.dtype == dtype
    y.feats.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    assert_close(y.feats.detach().double().cpu(), layer(x).feats.detach().double().cpu().numpy(),
                 3e-2)


def test_core_import_does_not_import_frameworks():
    import subprocess
    import sys

    code = ("import sys, cusparseconv; "
            "print(sorted(m for m in ('torch', 'jax') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
