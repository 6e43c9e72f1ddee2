"""The tiled kernel-map build (backends/_kmap_gpu.py, raw_kernels/kernel_map.cu) under emulation.

Reference: the CPU backend's ``cusparseconv.build_kernel_map`` (itself checked
against the brute-force oracle in test_kmap.py / test_conv_oracle.py): per
offset the same pairs (as sets), sorted by the query row within an offset, the
same CSR boundaries, neighbour tables and pair masks, positions that index
each pair within its offset, in both directions. Also: one host read per
build, the reverse tables of a submanifold map taken by symmetry (no second
search), and the hash tables' duplicate counts read in the same transfer.

Cases (small, a few tiles per launch, cooperative emulation): stride 1 on one
set (|K| = 27 and 125, D = 1..4), strided, transposed, even kernels and
explicit offsets that are not closed under negation, empty and one-point sets.
"""

import numpy as np
import pytest

import cusparseconv as csc
from cusparseconv.backends import _kmap_gpu as kg
from cusparseconv.coords import pack


# every test here runs the emulator in cooperative mode (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("cooperative")


def cloud(seed, n, ndim=3, low=-4, high=4, batches=2):
    rng = np.random.default_rng(seed)
    coords = np.hstack([rng.integers(0, batches, (n, 1)), rng.integers(low, high, (n, ndim))])
    coords = np.unique(coords, axis=0).astype(np.int32)
    return coords[rng.permutation(len(coords))]


def downsample(coords, stride):
    return np.unique(np.hstack([coords[:, :1], coords[:, 1:] // stride]), axis=0).astype(
        np.int32)


def table(launcher, coords):
    rows = np.arange(coords.shape[0], dtype=np.int64)
    return kg.insert_keys(launcher, pack(coords), rows)


def build(launcher, in_coords, out_coords, offsets, stride, transposed, same_set=False):
    in_table, in_dup = table(launcher, in_coords)
    out_table, out_dup = (None, None) if same_set else table(launcher, out_coords)
    reads = launcher.host_reads
    duplicates = (in_dup,) if same_set else (in_dup, out_dup)
    tables = kg.build_pair_tables(launcher, in_coords, out_coords, offsets, stride, transposed,
                                  in_table, out_table, same_set=same_set, duplicates=duplicates)
    assert launcher.host_reads - reads == 1, "one host read per new geometry"
    assert tables.duplicates == (0,) * len(duplicates)
    return tables


def assert_direction(tables, ref, n_query):
    """`tables` (query = ref's output rows) against the CPU map `ref`."""
    kernel_volume = ref.kernel_volume
    np.testing.assert_array_equal(tables.pair_offsets, ref.pair_offsets)
    assert tables.pair_offsets.dtype == np.int64
    np.testing.assert_array_equal(tables.pair_offsets_device, ref.pair_offsets)
    for array in (tables.neighbour, tables.mask, tables.query_rows, tables.partner_rows,
                  tables.position, tables.pair_offsets_device):
        assert array.flags.c_contiguous
    for k in range(kernel_volume):
        lo, hi = tables.pair_offsets[k], tables.pair_offsets[k + 1]
        query, partner = tables.query_rows[lo:hi], tables.partner_rows[lo:hi]
        ref_in, ref_out = ref.pairs(k)
        assert set(zip(partner.tolist(), query.tolist())) == set(zip(ref_in.tolist(),
                                                                     ref_out.tolist())), k
        assert (np.diff(query) > 0).all(), f"offset {k}: pairs not sorted by query row"
        np.testing.assert_array_equal(tables.position[query, k], np.arange(hi - lo))
    ref_mask, ref_neighbour = csc.pair_mask(ref)
    assert tables.neighbour.shape == (n_query, kernel_volume)
    np.testing.assert_array_equal(tables.neighbour, ref_neighbour)
    np.testing.assert_array_equal(tables.mask, ref_mask)
    np.testing.assert_array_equal(tables.position < 0, tables.neighbour < 0)


def check(launcher, in_coords, out_coords, offsets, stride=1, transposed=False,
          same_set=False):
    ndim = in_coords.shape[1] - 1
    stride = (stride,) * ndim if np.isscalar(stride) else tuple(stride)
    tables = build(launcher, in_coords, out_coords, offsets, stride, transposed, same_set)
    ref = csc.build_kernel_map(in_coords, in_coords if same_set else out_coords, offsets,
                               stride, transposed)
    assert_direction(tables.forward, ref, out_coords.shape[0])
    assert_direction(tables.reverse, csc.reverse_kernel_map(ref), in_coords.shape[0])
    return tables


@pytest.mark.parametrize("ndim,kernel_size,n", [(3, 3, 300), (3, 5, 200), (1, 3, 40),
                                                (2, 3, 120), (4, 3, 150)],
                         ids=["D3K27", "D3K125", "D1K3", "D2K9", "D4K81"])
def test_submanifold_takes_the_reverse_by_symmetry(launcher, ndim, kernel_size, n):
    coords = cloud(ndim * 10 + kernel_size, n, ndim)
    offsets = csc.kernel_offsets(kernel_size, 1, ndim)
    tables = check(launcher, coords, coords, offsets, same_set=True)
    assert tables.mirrored


@pytest.mark.parametrize("ndim", [2, 3])
def test_strided(launcher, ndim):
    coords = cloud(ndim, 250, ndim, -7, 7)
    stride = (2, 3) if ndim == 2 else 2
    out = downsample(coords, np.asarray(stride))
    tables = check(launcher, coords, out, csc.kernel_offsets(3, 1, ndim), stride)
    assert not tables.mirrored


def test_transposed(launcher):
    fine = cloud(5, 250, 3, -7, 7)
    coarse = downsample(fine, 2)
    check(launcher, coarse, fine, csc.kernel_offsets(2, 1, 3), 2, transposed=True)
    check(launcher, coarse, fine, csc.kernel_offsets(3, 1, 3), 2, transposed=True)


def test_transposed_same_set_stride_one(launcher):
    coords = cloud(6, 200)
    tables = check(launcher, coords, coords, csc.kernel_offsets(3), 1, transposed=True,
                   same_set=True)
    assert tables.mirrored


@pytest.mark.parametrize("offsets", [csc.kernel_offsets(2, 1, 3),
                                     np.array([[0, 0, 0], [1, 0, 0], [0, 2, -1]], np.int32)],
                         ids=["even", "explicit"])
def test_same_set_without_symmetry_searches_twice(launcher, offsets):
    coords = cloud(7, 200)
    tables = check(launcher, coords, coords, offsets, same_set=True)
    assert not tables.mirrored


def test_two_sets_with_the_same_rows(launcher):
    coords = cloud(8, 150)
    check(launcher, coords, coords.copy(), csc.kernel_offsets(3))


@pytest.mark.parametrize("n_in,n_out", [(0, 5), (5, 0), (0, 0), (1, 1), (1, 4)])
def test_empty_and_one_point_sets(launcher, n_in, n_out):
    coords = cloud(9, 20)
    in_coords, out_coords = coords[:n_in], coords[len(coords) - n_out:]
    check(launcher, in_coords, out_coords, csc.kernel_offsets(3))
    if n_in == n_out == 1:
        tables = check(launcher, in_coords, in_coords, csc.kernel_offsets(3), same_set=True)
        assert tables.forward.n_pairs == 1 and tables.mirrored


def test_rows_far_from_the_origin(launcher):
    """Offsets leave the packed range at the edges (no false pair), D = 4's 13-bit fields."""
    coords = cloud(10, 120, 4, 4090, 4096)  # 13-bit fields: [-4096, 4096)
    check(launcher, coords, coords, csc.kernel_offsets(3, 1, 4), same_set=True)


def test_duplicates_are_read_with_the_counts(launcher):
    coords = cloud(11, 60)
    repeated = np.vstack([coords, coords[:3]])
    in_table, in_dup = table(launcher, repeated)
    reads = launcher.host_reads
    tables = kg.build_pair_tables(launcher, repeated, repeated, csc.kernel_offsets(3), (1,) * 3,
                                  False, in_table, same_set=True, duplicates=(in_dup,))
    assert launcher.host_reads - reads == 1
    assert tables.duplicates == (3,)


def test_mirror_permutation():
    offsets = csc.kernel_offsets(3)
    mirror = kg.mirror_permutation(offsets)
    np.testing.assert_array_equal(offsets[mirror], -offsets)
    assert kg.mirror_permutation(csc.kernel_offsets(2)) is None
    assert kg.mirror_permutation(np.array([[0, 0], [0, 0]])) is None


def test_argument_errors(launcher):
    coords = cloud(12, 10)
    in_table, _ = table(launcher, coords)
    with pytest.raises(ValueError, match=r"in_coords must have shape \(N, 1 \+ D\)"):
        kg.build_pair_tables(launcher, coords[:, :1], coords, csc.kernel_offsets(3), (1,) * 3,
                             False, in_table, same_set=True)
    with pytest.raises(ValueError, match="offsets must have shape"):
        kg.build_pair_tables(launcher, coords, coords, csc.kernel_offsets(3, 1, 2), (1,) * 3,
                             False, in_table, same_set=True)
    with pytest.raises(ValueError, match="stride must hold 3 positive ints"):
        kg.build_pair_tables(launcher, coords, coords, csc.kernel_offsets(3), (1, 0, 1),
                             False, in_table, same_set=True)
    with pytest.raises(ValueError, match="out_table is required"):
        kg.build_pair_tables(launcher, coords, coords, csc.kernel_offsets(3), (1,) * 3,
                             False, in_table)


def test_threads_mode(launcher, monkeypatch):
    """One case with a thread per CUDA thread (the ballots and the scan's barriers
    truly interleave)."""
    monkeypatch.setenv("CUSPARSECONV_EMULATOR_MODE", "threads")
    coords = cloud(13, 150)
    check(launcher, coords, coords, csc.kernel_offsets(3), same_set=True)
    check(launcher, coords, downsample(coords, 2), csc.kernel_offsets(3), 2)
