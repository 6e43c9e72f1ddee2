"""Coming from spconv, MinkowskiEngine or TorchSparse: the errors that point to the
README's table, and the weight conversions the table gives.

The conversions are checked against independent references: torch's dense
``conv3d`` for torch's layout, and the brute-force oracle run with the peer's
own kernel enumeration (MinkowskiEngine / TorchSparse: first axis fastest)
for theirs.
"""

import copy
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import oracle  # noqa: E402
from conftest import assert_close, random_coords  # noqa: E402

import cusparseconv.torch as cst  # noqa: E402

SECTION = "Coming from spconv, MinkowskiEngine or TorchSparse"


@pytest.mark.parametrize("name, ours", [("SubMConv3d", "SparseConv3d"),
                                        ("SparseInverseConv3d", "SparseConvTranspose3d"),
                                        ("MinkowskiConvolution", "SparseConv("),
                                        ("MinkowskiGlobalMaxPooling", "SparseGlobalMaxPool"),
                                        ("GlobalAvgPool", "SparseGlobalAvgPool")])
def test_peer_class_names_point_to_ours(name, ours):
    with pytest.raises(AttributeError, match=SECTION) as info:
        getattr(cst, name)
    assert ours in str(info.value) and hasattr(cst, ours.rstrip("("))
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchLayer'$"):
        cst.NoSuchLayer


@pytest.mark.parametrize("layer, argument", [(cst.SparseConv3d, "indice_key"),
                                             (cst.SparseConv3d, "padding"),
                                             (cst.SparseConvTranspose3d, "dimension"),
                                             (cst.SparseDepthwiseConv3d, "algo"),
                                             (cst.SparseMaxPool3d, "padding")])
def test_peer_layer_arguments_are_clear_errors(layer, argument):
    positional = (4,) if layer is cst.SparseDepthwiseConv3d else (
        () if layer is cst.SparseMaxPool3d else (4, 8))
    with pytest.raises(TypeError, match=f"'{argument}'.*{SECTION}"):
        layer(*positional, **{argument: 1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'$"):
        layer(*positional, colour=1)


def test_reversed_constructor_arguments(rng):
    coords = random_coords(rng, 10, 3)
    feats = torch.from_numpy(rng.standard_normal((10, 4)))
    with pytest.raises(TypeError, match="arguments look reversed.*MinkowskiEngine"):
        cst.SparseTensor(feats, torch.from_numpy(coords))
    with pytest.raises(TypeError, match="arguments look reversed"):
        cst.SparseTensor(feats.numpy(), torch.from_numpy(coords))


def test_peer_tensor_attributes(rng):
    x = cst.SparseTensor(random_coords(rng, 10, 3), torch.zeros(10, 2))
    for name, ours in (("F", ".feats"), ("C", "units of its stride"), ("indices", ".coords"),
                       ("features", ".feats"), ("replace_feature", ".replace_feats")):
        with pytest.raises(AttributeError, match=SECTION) as info:
            getattr(x, name)
        assert ours in str(info.value)
    assert not hasattr(x, "colour")
    clone = copy.copy(x)                                  # __getattr__ stays out of the way
    assert clone.same_coords(x)


def dense_active(x_coords, feats, origin, spatial):
    dense = np.zeros((1, feats.shape[1]) + tuple(spatial))
    for row, (_, *site) in enumerate(x_coords.tolist()):
        dense[(0, slice(None)) + tuple(v - o for v, o in zip(site, origin))] = feats[row]
    return torch.from_numpy(dense)


def test_torch_conv3d_weight_conversion_against_dense_conv(rng):
    """README formula w.permute(2, 3, 4, 1, 0).reshape(K, C_in, C_out), checked with
    torch's own conv3d on the densified grid (submanifold = dense conv read at the
    active sites; stride 2 with padding 0 = our 2x2x2 strided conv)."""
    coords = random_coords(rng, 60, 3, n_batch=1, low=0, high=6)
    feats = torch.from_numpy(rng.standard_normal((60, 3)))
    dense = dense_active(coords, feats.numpy(), (0, 0, 0), (6, 6, 6))
    for kernel, stride, padding in ((3, 1, 1), (2, 2, 0)):
        torch_weight = torch.from_numpy(rng.standard_normal((5, 3) + (kernel,) * 3))
        ours = torch_weight.permute(2, 3, 4, 1, 0).reshape(kernel ** 3, 3, 5)
        out = cst.conv(cst.SparseTensor(coords, feats), ours, kernel, stride)
        reference = torch.nn.functional.conv3d(dense, torch_weight, stride=stride,
                                               padding=padding)
        at_sites = reference[0][(slice(None),) + tuple(out.coords[:, 1:].T.long())].T
        assert_close(out.feats.detach(), at_sites.numpy(), 1e-10)


def test_minkowski_and_torchsparse_kernel_order_conversion(rng):
    """Their (K, C_in, C_out) weights enumerate odd kernels with the first axis fastest
    (MinkowskiEngine's kernel_region iterator; TorchSparse's get_kernel_offsets for odd
    volumes): w.reshape(k, k, k, C_in, C_out).permute(2, 1, 0, 3, 4).reshape(K, ...)."""
    coords = random_coords(rng, 50, 3, n_batch=2, low=-3, high=3)
    feats = rng.standard_normal((50, 2))
    peer_offsets = np.array([[x, y, z] for z, y, x in itertools.product((-1, 0, 1),
                                                                          repeat=3)],
                            dtype=np.int32)
    peer_weight = torch.from_numpy(rng.standard_normal((27, 2, 4)))
    reference = oracle.conv_oracle(coords, feats, peer_weight.numpy(), peer_offsets, 1, coords)
    ours = peer_weight.reshape(3, 3, 3, 2, 4).permute(2, 1, 0, 3, 4).reshape(27, 2, 4)
    _, out = cst.sparse_conv(coords, torch.from_numpy(feats), ours)
    assert_close(out, reference, 1e-10)
    _, unconverted = cst.sparse_conv(coords, torch.from_numpy(feats), peer_weight)
    assert not np.allclose(unconverted.numpy(), reference)   # the trap the table warns of


@pytest.mark.parametrize("layout, shape, formula, convert", [
    ("spconv 2", (8, 3, 3, 3, 4), "w.permute(1, 2, 3, 4, 0).reshape(K, C_in, C_out)",
     lambda w: w.permute(1, 2, 3, 4, 0).reshape(27, 4, 8)),
    ("torch.nn.Conv3d", (8, 4, 3, 3, 3), "w.permute(2, 3, 4, 1, 0).reshape(K, C_in, C_out)",
     lambda w: w.permute(2, 3, 4, 1, 0).reshape(27, 4, 8)),
    ("spconv 1", (3, 3, 3, 4, 8), "w.reshape(K, C_in, C_out)",
     lambda w: w.reshape(27, 4, 8)),
])
def test_loading_a_peer_checkpoint_names_the_conversion(layout, shape, formula, convert):
    layer = cst.SparseConv3d(4, 8, 3)
    state = {"weight": torch.zeros(shape), "bias": torch.zeros(8)}
    with pytest.raises(RuntimeError, match="size mismatch") as info:
        layer.load_state_dict(state)
    assert layout in str(info.value) and formula in str(info.value)
    layer.load_state_dict(dict(state, weight=convert(state["weight"])))
