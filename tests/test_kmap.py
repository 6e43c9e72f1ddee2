"""Kernel-map search against a brute-force pair set, including its fast paths, on
every backend of ``conftest.BACKENDS`` (the CPU search's fast paths, the GPU
backend's hash-table search)."""

import numpy as np
import pytest

import cusparseconv as csc
from conftest import random_coords as _random_coords
from conftest import to_numpy
from cusparseconv.backends import cpu
from cusparseconv.coords import coordinate_range


def brute_pairs(in_coords, out_coords, offsets, stride, transposed):
    """Set of (k, in_row, out_row) from the docs/SPEC.md definition, with dictionaries."""
    stride = np.broadcast_to(np.asarray(stride), (offsets.shape[1],))
    in_index = {tuple(r): i for i, r in enumerate(in_coords.tolist())}
    out_index = {tuple(r): i for i, r in enumerate(out_coords.tolist())}
    pairs = set()
    coarse, fine_index = (in_coords, out_index) if transposed else (out_coords, in_index)
    for c_row, u in enumerate(coarse.tolist()):
        for k, off in enumerate(offsets.tolist()):
            v = (u[0],) + tuple(int(s) * a + o for s, a, o in zip(stride, u[1:], off))
            f_row = fine_index.get(v)
            if f_row is not None:
                pairs.add((k, c_row, f_row) if transposed else (k, f_row, c_row))
    return pairs


def map_pairs(kmap):
    pairs = set()
    for k in range(kmap.kernel_volume):
        in_rows, out_rows = (to_numpy(rows) for rows in kmap.pairs(k))
        pairs.update((k, int(i), int(o)) for i, o in zip(in_rows, out_rows))
    return pairs


def random_coords(rng, n, ndim, low=-6, high=6, batches=2, shuffle=True):
    return _random_coords(rng, n, ndim, batches, low, high, shuffle=shuffle)


def check_map(kmap, in_coords, out_coords, offsets, stride, transposed):
    assert kmap.in_rows.dtype == kmap.out_rows.dtype == np.int32
    assert map_pairs(kmap) == brute_pairs(in_coords, out_coords, offsets, stride, transposed)
    assert kmap.n_pairs == len(map_pairs(kmap))
    for k in range(kmap.kernel_volume):  # sorted by output row within each offset
        out_rows = to_numpy(kmap.pairs(k)[1])
        assert np.all(np.diff(out_rows) > 0)


def build(backend, in_coords, out_coords, *args, **kwargs):
    """build_kernel_map on the backend's arrays (the same array twice stays the same)."""
    in_arg = backend.put(in_coords)
    out_arg = in_arg if out_coords is in_coords else backend.put(out_coords)
    return csc.build_kernel_map(in_arg, out_arg, *args, **kwargs)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_submanifold_map_uses_symmetry_correctly(backend, ndim, shuffle):
    rng = np.random.default_rng(ndim)
    coords = random_coords(rng, 150 if ndim > 1 else 20, ndim, shuffle=shuffle)
    offsets = csc.kernel_offsets(3, 1, ndim)
    same = build(backend, coords, coords, offsets)
    check_map(same, coords, coords, offsets, 1, False)
    copy = build(backend, coords, coords.copy(), offsets)  # general search path
    assert map_pairs(copy) == map_pairs(same)


@pytest.mark.parametrize("dilation", [1, 2, 4, 5, 9])
def test_last_axis_stepping_and_search_fallback(backend, dilation):
    # gaps up to 4 are bridged by stepping, larger ones search again
    rng = np.random.default_rng(dilation)
    coords = random_coords(rng, 300, 3, low=-12, high=12)
    offsets = csc.kernel_offsets((3, 2, 5), dilation, 3)
    kmap = build(backend, coords, coords, offsets)
    check_map(kmap, coords, coords, offsets, 1, False)


def test_asymmetric_offsets_on_the_same_set(backend):
    rng = np.random.default_rng(3)
    coords = random_coords(rng, 200, 3)
    offsets = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0], [2, -1, 3]], dtype=np.int32)
    kmap = build(backend, coords, coords, offsets)
    check_map(kmap, coords, coords, offsets, 1, False)


@pytest.mark.parametrize("stride", [2, (1, 2, 3)])
@pytest.mark.parametrize("transposed", [False, True])
def test_strided_and_transposed_maps(backend, stride, transposed):
    rng = np.random.default_rng(7)
    fine = random_coords(rng, 250, 3)
    coarse = random_coords(rng, 120, 3, low=-3, high=3)
    offsets = csc.kernel_offsets(3, 1, 3)
    in_coords, out_coords = (coarse, fine) if transposed else (fine, coarse)
    kmap = build(backend, in_coords, out_coords, offsets, stride, transposed)
    check_map(kmap, in_coords, out_coords, offsets, stride, transposed)


def test_queries_leaving_the_packable_range_do_not_alias(backend):
    # Rows at the edge of the range: a +1 offset must not carry into the next field.
    low, high = coordinate_range(3)
    coords = np.array([[0, 0, 0, high - 1], [0, 0, 1, low], [0, 0, 0, high - 2],
                       [0, high - 1, 5, 5], [0, low, 6, 5], [1, 0, 0, 0]], dtype=np.int32)
    offsets = csc.kernel_offsets(3, 1, 3)
    kmap = build(backend, coords, coords, offsets)
    check_map(kmap, coords, coords, offsets, 1, False)
    kmap = build(backend, coords, coords[::-1].copy(), offsets)
    check_map(kmap, coords, coords[::-1], offsets, 1, False)


def test_reverse_table_and_pair_mask_encode_the_same_pairs(backend):
    rng = np.random.default_rng(11)
    coords = random_coords(rng, 200, 3)
    offsets = csc.kernel_offsets(5, 1, 3)  # 125 offsets: a 4-word pair mask
    kmap = build(backend, coords, coords, offsets)
    reverse = csc.reverse_kernel_map(kmap)
    assert {(k, o, i) for k, i, o in map_pairs(reverse)} == map_pairs(kmap)
    for k in range(reverse.kernel_volume):
        assert np.all(np.diff(to_numpy(reverse.pairs(k)[1])) > 0)
    assert csc.reverse_kernel_map(reverse) is kmap
    words, neighbour = (to_numpy(a) for a in csc.pair_mask(kmap))
    assert words.shape == (len(coords), 4) and words.dtype == np.uint32
    from_mask = set()
    for row in range(len(coords)):
        for k in range(125):
            active = bool(words[row, k // 32] >> np.uint32(k % 32) & np.uint32(1))
            assert active == (neighbour[row, k] >= 0)
            if active:
                from_mask.add((k, int(neighbour[row, k]), row))
    assert from_mask == map_pairs(kmap)


def test_empty_and_single_point_sets(backend):
    offsets = csc.kernel_offsets(3, 1, 3)
    empty = np.zeros((0, 4), dtype=np.int32)
    one = np.array([[0, 1, 2, 3]], dtype=np.int32)
    for a, b in [(empty, empty), (one, empty), (empty, one), (one, one)]:
        kmap = build(backend, a, b, offsets)
        assert kmap.pair_offsets.shape == (28,)
        assert kmap.n_pairs == (1 if len(a) and len(b) else 0)
    kmap = build(backend, one, one, offsets)
    assert to_numpy(kmap.pairs(13)[0]).tolist() == [0]  # the centre offset


def test_chunk_cuts_partition_the_pairs():
    rng = np.random.default_rng(5)
    coords = random_coords(rng, 400, 3)
    kmap = csc.build_kernel_map(coords, coords, csc.kernel_offsets(3, 1, 3))
    bounds, cuts = cpu.chunk_cuts(kmap, 37)      # the CPU products' blocks
    for k in range(kmap.kernel_volume):
        assert cuts[k, 0] == kmap.pair_offsets[k] and cuts[k, -1] == kmap.pair_offsets[k + 1]
        for i in range(len(bounds) - 1):
            rows = kmap.out_rows[cuts[k, i]:cuts[k, i + 1]]
            assert np.all((rows >= bounds[i]) & (rows < bounds[i + 1]))


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_unit_stride_between_sets_searches_from_the_smaller_one(backend, transposed, shuffle):
    # generative-style geometry: the output set is several times the input set
    rng = np.random.default_rng(17)
    small = random_coords(rng, 60, 3, low=-4, high=4, shuffle=shuffle)
    large = random_coords(rng, 400, 3, low=-6, high=6, shuffle=shuffle)
    offsets = csc.kernel_offsets((3, 2, 3))                 # asymmetric kernel
    for in_coords, out_coords in [(small, large), (large, small)]:
        kmap = build(backend, in_coords, out_coords, offsets, 1, transposed)
        check_map(kmap, in_coords, out_coords, offsets, 1, transposed)
