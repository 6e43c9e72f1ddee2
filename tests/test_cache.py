"""The coordinate cache: maps built once, U-Net decoders reuse encoder maps."""

import gc
import weakref

import numpy as np
import pytest

import cusparseconv as csc
import oracle
from conftest import assert_close, random_coords


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
    assert decoder_map is csc.reverse_kernel_map(encoder_map)
    assert csc.reverse_kernel_map(decoder_map) is encoder_map
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


# ---------------------------------------------------------------------------
# content deduplication, bounds and release (issue #14, item 12)
# ---------------------------------------------------------------------------



@pytest.mark.backends("cpu", "cuda-emulated")
def test_equal_rows_share_their_kernel_maps(backend):
    """The digest runs array-module generically: here on the CPU backend and on
    the GPU backend's own code (emulated), whose map has device tables."""
    rng = np.random.default_rng(3)
    coords = random_coords(rng, 80, 3, 2, -4, 4)
    cache = csc.CoordinateCache()
    first = csc.SparseTensor(coords, np.ones((80, 2)), cache=cache)
    again = csc.SparseTensor(coords.copy(), np.ones((80, 2)), cache=cache)
    assert csc.layer_kernel_map(first)[0] is csc.layer_kernel_map(again)[0]
    permuted = coords[rng.permutation(80)]
    other = csc.SparseTensor(permuted, np.ones((80, 2)), cache=cache)
    assert csc.layer_kernel_map(other)[0] is not csc.layer_kernel_map(first)[0]
    y = csc.sparse_conv(other, np.ones((27, 2, 1)))
    np.testing.assert_array_equal(y.coords, permuted)     # rows and order kept
    ref = oracle.conv_oracle(permuted, np.ones((80, 2)), np.ones((27, 2, 1)),
                             oracle.kernel_offsets_oracle(3), 1, permuted)
    assert_close(y.feats, ref, 1e-12)
    assert cache.stats()["rows"] == 2


def test_repeated_calls_on_the_same_coordinates_reuse_one_map():
    """JAX eager style: a fresh core tensor on the same rows at every call."""
    rng = np.random.default_rng(4)
    coords = random_coords(rng, 100, 3, 1, -5, 5)
    cache = csc.CoordinateCache()
    maps = set()
    for _ in range(100):
        x = csc.SparseTensor(coords, np.ones((100, 1)), cache=cache)
        maps.add(id(csc.layer_kernel_map(x)[0]))
    assert len(maps) == 1
    stats = cache.stats()
    assert stats["rows"] == 1 and stats["kernel_maps"] == 1


def test_explicit_queries_do_not_accumulate():
    rng = np.random.default_rng(5)
    x = csc.SparseTensor(random_coords(rng, 60, 3, 1, -4, 4), np.ones((60, 1)))
    for _ in range(500):
        query = random_coords(rng, 3, 3, 1, -4, 4)
        csc.sparse_conv(x, np.ones((27, 1, 1)), out_coords=query)
    stats = x.cache.stats()
    assert stats["sets"] <= 16 + 1 and stats["kernel_maps"] <= 16


def _unet_step(x, weights):
    """A two-level U-Net forward and backward with the core functions."""
    fine = csc.sparse_conv(x, weights["enc"])
    down = csc.sparse_conv(fine, weights["down"], kernel_size=2, stride=2)
    deep = csc.sparse_conv(down, weights["deep"])
    up = csc.sparse_conv(deep, weights["up"], kernel_size=2, stride=2, transposed=True)
    kmap = csc.layer_kernel_map(up)[0]
    csc.conv_input_grad(np.ones_like(up.feats), weights["deep"][:, :4, :4], kmap)
    return up


def test_training_loop_with_one_cache_stays_bounded():
    """New coordinates every step, one cache: what the cache holds stops growing."""
    rng = np.random.default_rng(6)
    weights = {"enc": rng.standard_normal((27, 3, 4)), "down": rng.standard_normal((8, 4, 4)),
               "deep": rng.standard_normal((27, 4, 4)), "up": rng.standard_normal((8, 4, 4))}
    cache = csc.CoordinateCache()
    history = []
    for step in range(60):
        coords = random_coords(rng, 400, 3, 2, -8, 8)
        up = _unet_step(csc.SparseTensor(coords, rng.standard_normal((400, 3)), cache=cache),
                        weights)
        assert np.array_equal(up.coords, coords)
        del up
        history.append(cache.stats())
    late = history[20:]
    assert max(s["sets"] for s in late) <= 16 + 2
    assert max(s["kernel_maps"] for s in late) <= max(s["kernel_maps"] for s in history[:20])
    assert max(s["bytes"] for s in late) <= 1.5 * max(s["bytes"] for s in history[:20])


def test_released_sets_take_their_maps_along():
    cache = csc.CoordinateCache(keep_recent=0)
    rng = np.random.default_rng(7)
    x = csc.SparseTensor(random_coords(rng, 50, 3, 1, -4, 4), np.ones((50, 1)), cache=cache)
    y = csc.sparse_conv(csc.sparse_conv(x, np.ones((8, 1, 1)), 2, 2), np.ones((27, 1, 1)))
    assert cache.stats()["kernel_maps"] == 2
    del x, y
    stats = cache.stats()
    assert stats["sets"] == 0 and stats["rows"] == 0 and stats["kernel_maps"] == 0


def test_holding_the_coordinates_keeps_the_set_and_its_history():
    """An adapter returns plain arrays: holding one keeps its set (and the finer
    set a transposed layer restores) even after every tensor is gone."""
    cache = csc.CoordinateCache(keep_recent=0)
    rng = np.random.default_rng(8)
    fine_coords = random_coords(rng, 50, 3, 1, -4, 4)
    coarse_coords = csc.sparse_pool(csc.SparseTensor(fine_coords, np.ones((50, 1)),
                                                     cache=cache), 2, 2).coords
    gc.collect()
    coarse = csc.SparseTensor(coarse_coords, np.ones((len(coarse_coords), 1)), cache=cache)
    up = csc.sparse_conv(coarse, np.ones((8, 1, 1)), 2, 2, transposed=True)
    np.testing.assert_array_equal(up.coords, fine_coords)
    copy = csc.SparseTensor(coarse_coords.copy(), np.ones((len(coarse_coords), 1)),
                            cache=cache)                  # equal rows, no history
    with pytest.raises(ValueError, match="no output coordinates"):
        csc.sparse_conv(copy, np.ones((8, 1, 1)), 2, 2, transposed=True)


def test_two_branches_downsampling_to_the_same_rows_restore_their_own_sets():
    cache = csc.CoordinateCache()
    a = np.array([[0, 0, 0, 0], [0, 2, 2, 2]], dtype=np.int32)
    b = np.array([[0, 1, 1, 1], [0, 3, 3, 3], [0, 3, 2, 3]], dtype=np.int32)
    down_a = csc.sparse_pool(csc.SparseTensor(a, np.ones((2, 1)), cache=cache), 2, 2)
    down_b = csc.sparse_pool(csc.SparseTensor(b, np.ones((3, 1)), cache=cache), 2, 2)
    np.testing.assert_array_equal(down_a.coords, down_b.coords)   # same rows...
    up_a = csc.upsample_nearest(down_a, 2)
    up_b = csc.upsample_nearest(down_b, 2)
    np.testing.assert_array_equal(up_a.coords, a)                 # ...own history
    np.testing.assert_array_equal(up_b.coords, b)


def test_kernel_map_count_is_bounded_by_the_lru(tensor):
    cache = csc.CoordinateCache(max_kernel_maps=4)
    x = csc.SparseTensor(tensor.coords, tensor.feats, cache=cache)
    first = csc.layer_kernel_map(x, dilation=1)[0]
    for dilation in range(2, 8):
        csc.layer_kernel_map(x, dilation=dilation)
    assert cache.stats()["kernel_maps"] == 4
    assert csc.layer_kernel_map(x, dilation=1)[0] is not first      # evicted, rebuilt


@pytest.mark.backends("cpu", "cuda-emulated")
def test_a_map_and_its_reverse_are_freed_without_the_cycle_collector(tensor, backend):
    gc.disable()
    try:
        kmap = csc.build_kernel_map(tensor.coords, tensor.coords, csc.kernel_offsets(2), 1)
        reverse = csc.reverse_kernel_map(kmap)
        assert csc.reverse_kernel_map(reverse) is kmap
        refs = weakref.ref(kmap), weakref.ref(reverse)
        del kmap, reverse
        assert refs[0]() is None and refs[1]() is None
    finally:
        gc.enable()


def test_cache_arguments_are_validated():
    with pytest.raises(ValueError, match="keep_recent"):
        csc.CoordinateCache(keep_recent=-1)
    with pytest.raises(ValueError, match="max_kernel_maps"):
        csc.CoordinateCache(max_kernel_maps=0)
    other = csc.CoordinateCache()
    x = csc.SparseTensor(np.zeros((1, 4), np.int32), np.ones((1, 1)))
    with pytest.raises(ValueError, match="not a coordinate set of this cache"):
        other.coords(x._coord_id)


def test_tensors_pickle_with_their_coordinates_and_history():
    """A DataLoader worker pickles the tensors it returns: rows and the finer set a
    decoder restores travel; the cache arrives empty and rebuilds its maps."""
    import pickle

    rng = np.random.default_rng(9)
    coords = random_coords(rng, 60, 3, 2, -4, 4)
    x = csc.SparseTensor(coords, rng.standard_normal((60, 2)))
    down = csc.sparse_conv(x, rng.standard_normal((8, 2, 3)), 2, 2)
    x_back, down_back = pickle.loads(pickle.dumps((x, down)))
    assert x_back.cache is down_back.cache and x_back.cache is not x.cache
    np.testing.assert_array_equal(x_back.coords, coords)
    up_weight = rng.standard_normal((8, 3, 2))
    up = csc.sparse_conv(down_back, up_weight, 2, 2, transposed=True)
    np.testing.assert_array_equal(up.coords, coords)
    expected = csc.sparse_conv(down, up_weight, 2, 2, transposed=True)
    np.testing.assert_allclose(up.feats, expected.feats, rtol=1e-12)
    assert csc.layer_kernel_map(x_back)[0].n_pairs == csc.layer_kernel_map(x)[0].n_pairs
