"""The coordinate cache: maps built once, U-Net decoders reuse encoder maps."""

import numpy as np
import pytest

import cusparseconv as csc


@pytest.fixture
def tensor():
    rng = np.random.default_rng(0)
    coords = np.unique(rng.integers(-10, 10, size=(500, 4)), axis=0).astype(np.int32)
    coords[:, 0] = 0
    coords = np.unique(coords, axis=0)
    return csc.SparseTensor(coords, rng.standard_normal((len(coords), 4)))


def test_maps_are_built_once_per_geometry(tensor):
    w = np.ones((27, 4, 4))
    first = csc.layer_kernel_map(tensor)[0]
    y = csc.sparse_conv(tensor, w)
    z = csc.sparse_conv(y, w)                      # same coordinates, same geometry
    assert csc.layer_kernel_map(z)[0] is first
    assert csc.layer_kernel_map(z, dilation=2)[0] is not first
    assert y.cache is tensor.cache is z.cache


def test_decoder_reuses_the_encoder_map_and_coordinates(tensor):
    down = csc.sparse_conv(tensor, np.ones((8, 4, 4)), kernel_size=2, stride=2)
    encoder_map = csc.layer_kernel_map(tensor, kernel_size=2, stride=2)[0]
    decoder_map = csc.layer_kernel_map(down, kernel_size=2, stride=2, transposed=True)[0]
    assert decoder_map is encoder_map.reverse()
    assert decoder_map.reverse() is encoder_map
    up = csc.sparse_conv(down, np.ones((8, 4, 4)), kernel_size=2, stride=2, transposed=True)
    assert np.array_equal(up.coords, tensor.coords)


def test_downsampling_twice_gives_the_same_set(tensor):
    a = csc.sparse_conv(tensor, np.ones((8, 4, 1)), kernel_size=2, stride=2)
    b = csc.sparse_pool(tensor, 2, 2, "max")
    assert a.coords is b.coords


def test_tensors_own_read_only_coordinates(tensor):
    coords = tensor.coords.copy()
    x = csc.SparseTensor(coords, tensor.feats)
    coords[0, 1] = 99                              # the caller's array may change...
    assert x.coords[0, 1] != 99                    # ...the tensor's may not
    with pytest.raises(ValueError):
        x.coords[0, 1] = 5


def test_replace_feats_keeps_coordinates_and_cache(tensor):
    relu = tensor.replace_feats(np.maximum(tensor.feats, 0))
    assert relu.coords is tensor.coords and relu.cache is tensor.cache
    with pytest.raises(ValueError, match="feats"):
        tensor.replace_feats(np.ones((3, 4)))


def test_unrelated_tensors_need_out_coords_for_transposed(tensor):
    with pytest.raises(ValueError, match="out_coords"):
        csc.sparse_conv(tensor, np.ones((8, 4, 4)), kernel_size=2, stride=2, transposed=True)


def test_finite_checks_on_request(tensor):
    feats = tensor.feats.copy()
    feats[3, 1] = np.nan
    x = csc.SparseTensor(tensor.coords, feats)      # off by default
    with pytest.raises(ValueError, match="NaN or Inf"):
        x.assert_finite()
    with pytest.raises(ValueError, match="NaN or Inf"):
        csc.SparseTensor(tensor.coords, feats, check_finite=True)
