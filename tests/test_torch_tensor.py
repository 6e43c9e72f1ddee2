"""The torch SparseTensor's peer-style methods: dense(), to(), cpu(), cuda(), detach(),
batch_size, requires_grad_(), and cusparseconv.to_dense / from_dense with torch tensors.

The dense grid is checked against one written here element by element; its
gradient with gradcheck (float64 finite differences). CUDA variants carry the
``gpu`` marker.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle  # noqa: E402
from conftest import assert_close, random_coords  # noqa: E402

import cusparseconv as csc  # noqa: E402
import cusparseconv.torch as cst  # noqa: E402


def make_tensor(rng, n=25, ndim=3, channels=2, n_batch=2, dtype=torch.float64):
    coords = random_coords(rng, n, ndim, n_batch=n_batch, low=-3, high=3)
    feats = torch.from_numpy(rng.standard_normal((n, channels))).to(dtype)
    return cst.SparseTensor(coords, feats), coords, feats


def dense_by_hand(coords, feats, origin, spatial, batch, channels_last=False):
    """dense[b, :, x - origin] = feats[row], one row at a time."""
    channels = feats.shape[1]
    shape = (batch,) + tuple(spatial) + (channels,)
    out = np.zeros(shape, dtype=feats.dtype)
    for row, (b, *x) in enumerate(coords.tolist()):
        out[(b,) + tuple(int(v - o) for v, o in zip(x, origin))] = feats[row]
    return out if channels_last else np.moveaxis(out, -1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ndim", [2, 3])
def test_dense_matches_hand_scatter_and_is_differentiable(channels_last, ndim, rng):
    x, coords, feats = make_tensor(rng, ndim=ndim)
    x.requires_grad_()
    dense, origin = x.dense(channels_last=channels_last)
    low = coords[:, 1:].min(axis=0)
    spatial = coords[:, 1:].max(axis=0) - low + 1
    assert origin.dtype == torch.int64 and origin.tolist() == low.tolist()
    expected = dense_by_hand(coords, feats.detach().numpy(), low, spatial, x.batch_size,
                             channels_last)
    assert dense.shape == expected.shape and np.array_equal(dense.detach().numpy(), expected)
    # the gradient of a weighted sum is the weight read back at each row's site
    weight = torch.from_numpy(rng.standard_normal(dense.shape))
    (dense * weight).sum().backward()
    w = weight.numpy() if channels_last else np.moveaxis(weight.numpy(), 1, -1)
    for row, (b, *site) in enumerate(coords.tolist()):
        index = (b,) + tuple(int(v - o) for v, o in zip(site, low))
        assert np.array_equal(x.feats.grad[row].numpy(), w[index])


def test_dense_gradcheck_with_explicit_box(rng):
    x, coords, feats = make_tensor(rng, n=12, channels=2)
    feats = feats.clone().requires_grad_()

    def function(f):
        dense, _ = x.replace_feats(f).dense(spatial_shape=(7, 7, 7), origin=(-3, -3, -3),
                                            batch_size=3)
        return dense

    assert function(feats).shape == (3, 2, 7, 7, 7)
    assert torch.autograd.gradcheck(function, (feats,))


def test_core_to_dense_on_a_torch_tensor_goes_through_autograd(rng):
    """Issue 16 item 3: csc.to_dense(x_torch) with grad used to fail in numpy()."""
    x, coords, feats = make_tensor(rng)
    x.requires_grad_()
    dense, origin = csc.to_dense(x)
    assert isinstance(dense, torch.Tensor) and dense.requires_grad
    assert isinstance(origin, torch.Tensor)
    dense.sum().backward()
    assert torch.equal(x.feats.grad, torch.ones_like(feats))
    # without grad it is still a torch tensor, not a NumPy array outside autograd
    plain, _ = csc.to_dense(x.detach())
    assert isinstance(plain, torch.Tensor) and torch.equal(plain, dense.detach())


def test_dense_mask_round_trip_keeps_all_zero_rows(rng):
    x, coords, feats = make_tensor(rng, n=30, channels=3)
    zeroed = feats.clone()
    zeroed[::4] = 0                                     # rows a ReLU would zero out
    y = x.replace_feats(zeroed)
    dense, origin, mask = y.dense(return_mask=True)
    assert mask.dtype == torch.bool and tuple(mask.shape) == (dense.shape[0],) + dense.shape[2:]
    assert int(mask.sum()) == len(y)
    lossy = csc.from_dense(dense.numpy(), origin=origin.numpy())
    again = csc.from_dense(dense.numpy(), origin=origin.numpy(), mask=mask.numpy())
    assert len(lossy) == len(y) - len(range(0, len(y), 4)) and len(again) == len(y)
    order = np.lexsort(coords.T[::-1])
    assert np.array_equal(again.coords, coords[order])
    assert np.array_equal(again.feats, zeroed.numpy()[order])


def test_batch_size_detach_requires_grad(rng):
    x, coords, feats = make_tensor(rng, n_batch=3)
    assert x.batch_size == int(coords[:, 0].max()) + 1
    assert cst.SparseTensor(np.zeros((0, 4), np.int32), torch.zeros(0, 2)).batch_size == 0
    assert x.requires_grad_() is x and x.requires_grad and x.feats.requires_grad
    y = cst.SparseConv3d(2, 3).double()(x)
    detached = y.detach()
    assert not detached.requires_grad and detached.same_coords(y)
    assert torch.equal(detached.feats, y.feats.detach())
    x.requires_grad_(False)
    assert not x.feats.requires_grad


def test_to_dtype_and_cpu_keep_the_cache(rng):
    x, coords, feats = make_tensor(rng)
    assert x.cpu() is x and x.to("cpu") is x and x.to(torch.float64) is x
    y = x.to(torch.float32)
    assert y.dtype == torch.float32 and y.same_coords(x) and y.cache is x.cache
    feats.requires_grad_()
    z = cst.SparseTensor(coords, feats).to(dtype=torch.float32)
    z.feats.sum().backward()                              # .to is differentiable
    assert torch.equal(feats.grad, torch.ones_like(feats))
    with pytest.raises(ValueError, match="feats must stay on cpu"):
        x.replace_feats(torch.zeros(len(x), 2, device="meta"))


def test_sum_pool_2d_layer_matches_oracle(rng):
    coords = random_coords(rng, 40, 2, n_batch=2, low=-5, high=5)
    feats = torch.from_numpy(rng.standard_normal((40, 3)))
    layer = cst.SparseSumPool2d(2)
    y = layer(cst.SparseTensor(coords, feats))
    offsets = oracle.kernel_offsets_oracle(2, ndim=2)
    out_coords = y.coords.numpy()
    expected = oracle.pool_oracle(coords, feats.numpy(), offsets, (2, 2), out_coords, "sum")
    assert y.stride == (2, 2)
    assert_close(y.feats, expected, 1e-12)
    with pytest.raises(ValueError, match="expects a tensor with 2 spatial dimensions"):
        layer(make_tensor(rng)[0])


def test_global_pool_set_id_does_not_leak_through_arguments(rng):
    x, coords, feats = make_tensor(rng, n_batch=3)
    x.requires_grad_()
    pooled = cst.pool_global(x, "max")
    _, expected = oracle.global_pool_oracle(coords, feats.detach().numpy(), "max")
    assert_close(pooled.feats.detach(), expected, 1e-12)
    assert pooled.coords[:, 1:].abs().sum() == 0 and pooled.cache is x.cache
    pooled.feats.sum().backward()
    assert float(x.feats.grad.sum()) == pooled.feats.numel()


# --------------------------------------------------------------------------
# CUDA: skipped without a CUDA device and CuPy
# --------------------------------------------------------------------------

@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch (this torch build or machine is CPU-only)")
    pytest.importorskip("cupy")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.mark.gpu
def test_cuda_and_back_and_dense_on_the_device(cuda, rng):
    x, coords, feats = make_tensor(rng, dtype=torch.float32)
    on_gpu = x.cuda()
    assert on_gpu.device.type == "cuda" and on_gpu.coords.device.type == "cuda"
    assert on_gpu.cache is not x.cache and on_gpu.stride == x.stride
    dense, origin = on_gpu.requires_grad_().dense()
    assert dense.device.type == "cuda"
    assert torch.equal(dense.detach().cpu(), x.dense()[0])
    dense.sum().backward()
    assert torch.equal(on_gpu.feats.grad.cpu(), torch.ones_like(feats))
    back = on_gpu.cpu()
    assert back.device.type == "cpu" and torch.equal(back.coords, x.coords)
