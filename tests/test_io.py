"""cusparseconv.io.read_points on files written by laspy, plyfile, NumPy and, for PCD,
by ``tests/point_files.py`` from the format's specification (ascii, binary and
binary_compressed). Expected values are the arrays the files were written from.
Malformed files and decompression bombs: ``tests/test_io_malformed.py``.
"""

import gzip
import io as pyio
import sys

import numpy as np
import pytest

from point_files import las_bytes, lzf_compress, lzf_literals, pcd_bytes, ply_bytes

from cusparseconv import io
from cusparseconv.io import FileFormatError, read_points


@pytest.fixture
def rng():
    return np.random.default_rng(16)


# --------------------------------------------------------------------------- #
# LAS / LAZ (written by laspy)
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("suffix", [".las", ".laz"])
def test_las_and_laz_scale_offset_and_attributes(tmp_path, suffix, rng):
    pytest.importorskip("laspy")
    n = 200
    offset = np.array([597_000.0, 244_000.0, 100.0])
    xyz = offset + rng.integers(0, 100_000, size=(n, 3)) * 0.001   # multiples of the scale
    intensity = rng.integers(0, 65535, size=n).astype(np.uint16)
    classification = rng.integers(0, 10, size=n).astype(np.uint8)
    rgb = rng.integers(0, 65535, size=(n, 3)).astype(np.uint16)
    path = tmp_path / f"tile{suffix}"
    las_bytes(path, xyz, offset=offset, intensity=intensity, classification=classification,
              red=rgb[:, 0], green=rgb[:, 1], blue=rgb[:, 2],
              return_number=np.full(n, 1, np.uint8))
    cloud = read_points(path)
    assert cloud.xyz.dtype == np.float64 and cloud.xyz.shape == (n, 3)
    np.testing.assert_allclose(cloud.xyz, xyz, rtol=0, atol=1e-6)
    attributes = cloud.attributes
    assert np.array_equal(attributes["intensity"], intensity)
    assert np.array_equal(attributes["classification"], classification)
    assert np.array_equal(attributes["colour"], rgb) and attributes["colour"].dtype == np.uint16
    assert np.array_equal(attributes["return_number"], np.ones(n))
    assert "X" not in attributes and "red" not in attributes


def test_las_14_point_format_6_without_colour(tmp_path, rng):
    pytest.importorskip("laspy")
    xyz = rng.integers(-5000, 5000, size=(50, 3)) * 0.01
    path = tmp_path / "scan.laz"
    las_bytes(path, xyz, point_format=6, version="1.4", scale=0.01,
              gps_time=np.arange(50, dtype=np.float64))
    cloud = read_points(path)
    np.testing.assert_allclose(cloud.xyz, xyz, atol=1e-9)
    assert "colour" not in cloud.attributes
    assert np.array_equal(cloud.attributes["gps_time"], np.arange(50))


def test_missing_io_extra_is_named(tmp_path, monkeypatch, rng):
    pytest.importorskip("laspy")
    path = tmp_path / "tile.las"
    las_bytes(path, rng.integers(0, 9, size=(5, 3)) * 1.0)
    monkeypatch.setitem(sys.modules, "laspy", None)
    with pytest.raises(ModuleNotFoundError, match=r'laspy.*pip install "cusparseconv\[io\]"'):
        read_points(path)


# --------------------------------------------------------------------------- #
# PLY (written by plyfile)
# --------------------------------------------------------------------------- #

def vertices(rng, n=40, extra=True):
    fields = [("x", "f4"), ("y", "f4"), ("z", "f8")]
    if extra:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("label", "i4")]
    table = np.empty(n, dtype=fields)
    for name in ("x", "y", "z"):
        table[name] = rng.integers(-64, 64, size=n) / 8
    if extra:
        for name in ("red", "green", "blue"):
            table[name] = rng.integers(0, 256, size=n)
        table["label"] = rng.integers(-1, 5, size=n)
    return table


@pytest.mark.parametrize("text, byte_order", [(True, "="), (False, "<"), (False, ">")])
@pytest.mark.parametrize("faces_first", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_ply_written_by_plyfile(tmp_path, rng, text, byte_order, faces_first, gz):
    pytest.importorskip("plyfile")
    table = vertices(rng)
    faces = rng.integers(0, len(table), size=(7, 3))
    path = tmp_path / "mesh.ply"
    data = ply_bytes(path, table, text=text, byte_order=byte_order, faces=faces,
                     faces_first=faces_first)
    if gz:
        path = tmp_path / "mesh.ply.gz"
        path.write_bytes(gzip.compress(data))
    cloud = read_points(path)
    expected = np.stack([table["x"], table["y"], table["z"]], axis=1).astype(np.float64)
    assert np.array_equal(cloud.xyz, expected)
    colour = np.stack([table[c] for c in ("red", "green", "blue")], axis=1)
    assert np.array_equal(cloud.attributes["colour"], colour)
    assert cloud.attributes["colour"].dtype == np.uint8
    assert np.array_equal(cloud.attributes["label"], table["label"])
    assert cloud.attributes["label"].dtype == np.int32


def test_ply_vertex_with_a_list_property_goes_through_plyfile(tmp_path, rng, monkeypatch):
    plyfile = pytest.importorskip("plyfile")
    n = 12
    table = np.empty(n, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("nbrs", "O")])
    for name in "xyz":
        table[name] = rng.integers(0, 9, size=n)
    for i in range(n):
        table["nbrs"][i] = np.arange(i % 4, dtype=np.int32)
    path = tmp_path / "graph.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(table, "vertex")]).write(str(path))
    cloud = read_points(path)
    assert np.array_equal(cloud.xyz, np.stack([table[a] for a in "xyz"], 1).astype(float))
    assert "nbrs" not in cloud.attributes
    monkeypatch.setitem(sys.modules, "plyfile", None)
    with pytest.raises(ModuleNotFoundError, match=r"plyfile.*cusparseconv\[io\]"):
        read_points(path)


# --------------------------------------------------------------------------- #
# PCD (written here from the specification)
# --------------------------------------------------------------------------- #

def pcd_fields(rng, n=60):
    rgb = rng.integers(0, 256, size=(n, 3)).astype(np.uint32)
    packed = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).astype(np.uint32)
    fields = {
        "x": (rng.integers(-20, 20, size=n) / 4).astype(np.float32),
        "y": (rng.integers(-20, 20, size=n) / 4).astype(np.float32),
        "z": (rng.integers(-20, 20, size=n) / 4).astype(np.float64),
        "intensity": rng.integers(0, 1000, size=n).astype(np.float32),
        "rgb": packed.view(np.float32),
        "normal": (rng.integers(-4, 4, size=(n, 3)) / 4).astype(np.float32),
        "label": rng.integers(0, 65535, size=n).astype(np.uint16),
        "_": np.zeros(n, np.uint8),
    }
    return fields, rgb.astype(np.uint8)


@pytest.mark.parametrize("mode", ["ascii", "binary", "binary_compressed"])
def test_pcd_every_encoding(tmp_path, rng, mode):
    fields, rgb = pcd_fields(rng)        # ascii: rgb as the packed float's exact repr
    path = tmp_path / "cloud.pcd"
    path.write_bytes(pcd_bytes(fields, mode))
    cloud = read_points(path)
    expected = np.stack([fields["x"], fields["y"], fields["z"]], axis=1).astype(np.float64)
    assert np.array_equal(cloud.xyz, expected)
    attributes = cloud.attributes
    assert np.array_equal(attributes["intensity"], fields["intensity"])
    assert np.array_equal(attributes["normal"], fields["normal"])
    assert attributes["normal"].shape == (60, 3)
    assert np.array_equal(attributes["label"], fields["label"])
    assert attributes["label"].dtype == np.uint16 and "_" not in attributes
    assert np.array_equal(attributes["colour"], rgb) and attributes["colour"].dtype == np.uint8


def test_pcd_organised_cloud_keeps_nan_points(tmp_path, rng):
    fields = {axis: rng.standard_normal(12).astype(np.float32) for axis in "xyz"}
    fields["x"][[2, 7]] = np.nan
    path = tmp_path / "organised.pcd"
    path.write_bytes(pcd_bytes(fields, "binary", width=4, height=3))
    cloud = read_points(path)
    assert cloud.xyz.shape == (12, 3) and np.isnan(cloud.xyz[[2, 7], 0]).all()
    path.write_bytes(pcd_bytes(fields, "ascii", width=4, height=3))
    assert np.isnan(read_points(path).xyz[[2, 7], 0]).all()


def test_lzf_handcrafted_streams():
    # literal "abc", then a back-reference of length 5 at distance 3 (overlapping)
    stream = bytes([2]) + b"abc" + bytes([(3 << 5) | 0, 2])
    assert io._lzf_decompress("s", stream, 8) == b"abcabcab"
    # run of one byte: distance 1, long length (7 + 10 + 2 = 19)
    stream = bytes([0]) + b"z" + bytes([(7 << 5) | 0, 10, 0])
    assert io._lzf_decompress("s", stream, 20) == b"z" * 20
    with pytest.raises(FileFormatError, match="^s: LZF stream decodes to 20 bytes"):
        io._lzf_decompress("s", stream, 21)
    with pytest.raises(FileFormatError, match="back-reference"):
        io._lzf_decompress("s", bytes([(1 << 5) | 0, 5]), 3)


def test_lzf_round_trip_with_independent_encoder(rng):
    words = [rng.bytes(int(n)) for n in rng.integers(1, 12, size=40)]
    data = b"".join(words[int(i)] for i in rng.integers(0, 40, size=200)) + bytes(300)
    compressed = lzf_compress(data)
    assert len(compressed) < len(data)
    assert io._lzf_decompress("s", compressed, len(data)) == data


# --------------------------------------------------------------------------- #
# NPY / NPZ
# --------------------------------------------------------------------------- #

def test_npy_plain_wide_structured_and_gzipped(tmp_path, rng):
    xyz = rng.standard_normal((30, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", xyz)
    assert np.array_equal(read_points(tmp_path / "a.npy").xyz, xyz.astype(np.float64))
    wide = rng.standard_normal((30, 5))
    np.save(tmp_path / "b.npy", np.asfortranarray(wide))
    cloud = read_points(tmp_path / "b.npy")
    assert np.array_equal(cloud.xyz, wide[:, :3]) and np.array_equal(cloud.attributes["extra"],
                                                                     wide[:, 3:])
    table = np.zeros(30, dtype=[("x", "<f8"), ("y", ">f4"), ("z", "<i2"), ("intensity", "u2")])
    table["x"], table["y"], table["z"] = xyz[:, 0], xyz[:, 1], np.arange(30)
    table["intensity"] = np.arange(30) * 3
    np.save(tmp_path / "c.npy", table)
    buffer = pyio.BytesIO()
    np.save(buffer, table)
    (tmp_path / "c.npy.gz").write_bytes(gzip.compress(buffer.getvalue()))
    for name in ("c.npy", "c.npy.gz"):
        cloud = read_points(tmp_path / name)
        assert np.array_equal(cloud.xyz[:, 2], np.arange(30))
        assert np.array_equal(cloud.xyz[:, 1], xyz[:, 1].astype(">f4").astype(np.float64))
        assert np.array_equal(cloud.attributes["intensity"], np.arange(30) * 3)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_named_arrays(tmp_path, rng, compressed):
    save = np.savez_compressed if compressed else np.savez
    xyz = rng.standard_normal((25, 3))
    save(tmp_path / "a.npz", xyz=xyz, intensity=np.arange(25), origin=np.zeros(3))
    cloud = read_points(tmp_path / "a.npz")
    assert np.array_equal(cloud.xyz, xyz)
    assert set(cloud.attributes) == {"intensity"}                    # origin is not per point
    save(tmp_path / "b.npz", x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2])
    assert np.array_equal(read_points(tmp_path / "b.npz").xyz, xyz)


def test_npy_refuses_pickles_and_bad_shapes(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileFormatError, match="objects.npy: .*Python objects"):
        read_points(tmp_path / "objects.npy")
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(FileFormatError, match=r"flat.npy: expected an \(N, 3\) array"):
        read_points(tmp_path / "flat.npy")
    np.savez(tmp_path / "none.npz", colours=np.zeros((4, 3)))
    with pytest.raises(FileFormatError, match="none.npz: no array named 'xyz'"):
        read_points(tmp_path / "none.npz")


def test_unknown_suffix_and_bad_limit(tmp_path):
    with pytest.raises(ValueError, match="path must end in one of .las"):
        read_points(tmp_path / "points.txt")
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int"):
        read_points(tmp_path / "points.npy", max_bytes=-1)
    with pytest.raises(FileNotFoundError):
        read_points(tmp_path / "absent.ply")


def test_max_bytes_is_honoured(tmp_path, rng):
    fields = {axis: rng.standard_normal(1000).astype(np.float32) for axis in "xyz"}
    path = tmp_path / "cloud.pcd"
    path.write_bytes(pcd_bytes(fields, "binary_compressed", lzf=lzf_literals))
    assert read_points(path, max_bytes=12_000).xyz.shape == (1000, 3)
    with pytest.raises(FileFormatError, match="12,000 bytes, more than max_bytes = 11,999"):
        read_points(path, max_bytes=11_999)
