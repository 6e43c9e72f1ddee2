"""Readers of cusparseconv.io on files written here, and the real sources.

The format readers (VTK XML ImageData, PLY, PCD with LZF, Potree 1.4) are
checked on small files this module writes itself, in every encoding they
accept.  The real sources are read when ``benchmarks/fetch_data.sh`` has
installed them; the pyvista wheel (2.7 MB) is fetched here when absent, so
that one real source is always exercised (the test skips only when the
registry cannot be reached).
"""

import base64
import gzip
import json
import os
import struct
import zlib

import numpy as np
import pytest

from cusparseconv import io

# --------------------------------------------------------------------------- #
# helpers: independent writers
# --------------------------------------------------------------------------- #


def lzf_compress(data: bytes) -> bytes:
    """A brute-force LZF encoder (longest match in the 8 KiB window)."""
    out = bytearray()
    literal = bytearray()

    def flush():
        while literal:
            chunk = literal[:32]
            out.append(len(chunk) - 1)
            out.extend(chunk)
            del literal[:32]

    i = 0
    while i < len(data):
        best_len, best_dist = 0, 0
        for ref in range(max(0, i - 8192), i):
            length = 0
            while (i + length < len(data) and length < 264
                   and data[ref + length] == data[i + length]):
                length += 1
            if length > best_len:
                best_len, best_dist = length, i - ref
        if best_len >= 3:
            flush()
            stored, offset = best_len - 2, best_dist - 1
            if stored < 7:
                out.append((stored << 5) | (offset >> 8))
            else:
                out.append((7 << 5) | (offset >> 8))
                out.append(stored - 7)
            out.append(offset & 0xFF)
            i += best_len
        else:
            literal.append(data[i])
            i += 1
    flush()
    return bytes(out)


def write_vti(path, labels, fmt, compressed, header="UInt32", encoding="raw", block=40):
    """A (n_z, n_y, n_x) uint8 volume as a .vti in the requested encoding."""
    n_z, n_y, n_x = labels.shape
    payload = labels.tobytes()
    word = "<I" if header == "UInt32" else "<Q"

    def pack(values):
        return b"".join(struct.pack(word, v) for v in values)

    if compressed:
        blocks = [zlib.compress(payload[i:i + block]) for i in range(0, len(payload), block)]
        last = len(payload) - block * (len(blocks) - 1)
        head = pack([len(blocks), block, last] + [len(b) for b in blocks])
        body = b"".join(blocks)
    else:
        head, body = pack([len(payload)]), payload
    appended = b""
    if fmt == "ascii":
        text = " ".join(str(v) for v in labels.ravel())
    elif fmt == "binary":
        text = (base64.b64encode(head) + base64.b64encode(body)).decode()
    else:
        text = ""
        appended = (base64.b64encode(head) + base64.b64encode(body) if encoding == "base64"
                    else head + body)
    compressor = ' compressor="vtkZLibDataCompressor"' if compressed else ""
    extra = ' offset="0"' if fmt == "appended" else ""
    xml = (f'<?xml version="1.0"?>\n<VTKFile type="ImageData" version="0.1" '
           f'byte_order="LittleEndian" header_type="{header}"{compressor}>\n'
           f'<ImageData WholeExtent="0 {n_x - 1} 0 {n_y - 1} 0 {n_z - 1}" Origin="1 2 3" '
           f'Spacing="1 1 1.5">\n<Piece Extent="0 {n_x - 1} 0 {n_y - 1} 0 {n_z - 1}">\n'
           f'<PointData Scalars="labels"><DataArray type="UInt8" Name="labels" '
           f'format="{fmt}"{extra}>{text}</DataArray></PointData>\n<CellData></CellData>\n'
           f'</Piece>\n</ImageData>\n').encode()
    if fmt == "appended":
        xml += (f'<AppendedData encoding="{encoding}">\n_'.encode() + appended
                + b"\n</AppendedData>\n")
    xml += b"</VTKFile>\n"
    with open(path, "wb") as f:
        f.write(xml)


# --------------------------------------------------------------------------- #
# format readers
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("fmt, compressed, header, encoding", [
    ("ascii", False, "UInt32", "raw"),
    ("binary", False, "UInt32", "raw"),
    ("binary", True, "UInt32", "raw"),
    ("binary", True, "UInt64", "raw"),
    ("appended", False, "UInt32", "raw"),
    ("appended", True, "UInt64", "raw"),
    ("appended", True, "UInt32", "base64"),
])
def test_read_vti_every_encoding(tmp_path, fmt, compressed, header, encoding):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, size=(3, 5, 7)).astype(np.uint8)
    path = tmp_path / "volume.vti"
    write_vti(path, labels, fmt, compressed, header, encoding)
    image = io.read_vti(path)
    assert np.array_equal(image["point_data"]["labels"], labels)
    assert image["extent"] == [0, 6, 0, 4, 0, 2]
    assert image["origin"] == [1.0, 2.0, 3.0] and image["spacing"] == [1.0, 1.0, 1.5]


def test_lzf_handcrafted_streams():
    # literal "abc", then a back-reference of length 5 at distance 3 (overlapping)
    stream = bytes([2]) + b"abc" + bytes([(3 << 5) | 0, 2])
    assert io.lzf_decompress(stream, 8) == b"abcabcab"
    # run of one byte: distance 1, long length (7 + 10 + 2 = 19)
    stream = bytes([0]) + b"z" + bytes([(7 << 5) | 0, 10, 0])
    assert io.lzf_decompress(stream, 20) == b"z" * 20
    with pytest.raises(ValueError, match="expected"):
        io.lzf_decompress(stream, 21)
    with pytest.raises(ValueError, match="back-reference"):
        io.lzf_decompress(bytes([(1 << 5) | 0, 5]), 3)


def test_lzf_round_trip_with_independent_encoder():
    rng = np.random.default_rng(1)
    words = [rng.bytes(int(n)) for n in rng.integers(1, 12, size=40)]
    data = b"".join(words[int(i)] for i in rng.integers(0, 40, size=200)) + bytes(300)
    compressed = lzf_compress(data)
    assert len(compressed) < len(data)
    assert io.lzf_decompress(compressed, len(data)) == data


def _pcd_header(n, mode, fields="x y z label", size="4 4 4 2", types="F F F U",
                count="1 1 1 1"):
    return (f"# .PCD v0.7\nVERSION 0.7\nFIELDS {fields}\nSIZE {size}\nTYPE {types}\n"
            f"COUNT {count}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
            f"DATA {mode}\n").encode()


@pytest.mark.parametrize("mode", ["ascii", "binary", "binary_compressed"])
def test_read_pcd(tmp_path, mode):
    rng = np.random.default_rng(2)
    n = 50
    xyz = rng.integers(-20, 20, size=(n, 3)).astype(np.float32) / 4
    label = rng.integers(0, 3, size=n).astype(np.uint16)
    if mode == "ascii":
        body = "".join(f"{a} {b} {c} {d}\n" for (a, b, c), d in zip(xyz, label)).encode()
    elif mode == "binary":
        record = np.dtype([("xyz", "<f4", 3), ("label", "<u2")])
        table = np.empty(n, record)
        table["xyz"], table["label"] = xyz, label
        body = table.tobytes()
    else:
        raw = b"".join(xyz[:, i].tobytes() for i in range(3)) + label.astype("<u2").tobytes()
        packed = lzf_compress(raw)
        body = struct.pack("<II", len(packed), len(raw)) + packed
    path = tmp_path / "cloud.pcd"
    path.write_bytes(_pcd_header(n, mode) + body)
    fields = io.read_pcd(path)
    assert np.array_equal(np.stack([fields["x"], fields["y"], fields["z"]], axis=1), xyz)
    assert np.array_equal(fields["label"], label) and fields["label"].dtype == np.uint16


def _ply(fmt, vertices, faces=True):
    n = len(vertices)
    header = (f"ply\nformat {fmt} 1.0\ncomment test\nelement vertex {n}\nproperty float x\n"
              f"property float y\nproperty float z\nproperty uchar red\nproperty int label\n")
    if faces:
        header += "element face 2\nproperty list uchar int vertex_indices\n"
    header += "end_header\n"
    if fmt == "ascii":
        body = "".join(f"{v['x']} {v['y']} {v['z']} {v['red']} {v['label']}\n" for v in vertices)
        if faces:
            body += "3 0 1 2\n3 1 2 3\n"
        return header.encode() + body.encode()
    order = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4"),
                      ("red", "u1"), ("label", order + "i4")])
    body = vertices.astype(dtype).tobytes()
    if faces:  # a list element after the vertices is never read
        body += bytes([3]) + np.array([0, 1, 2], order + "i4").tobytes()
        body += bytes([3]) + np.array([1, 2, 3], order + "i4").tobytes()
    return header.encode() + body


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_ply(tmp_path, fmt, gz):
    rng = np.random.default_rng(3)
    vertices = np.empty(6, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"),
                                  ("label", "i4")])
    for name in "xyz":
        vertices[name] = rng.integers(-8, 8, size=6) / 2
    vertices["red"] = rng.integers(0, 256, size=6)
    vertices["label"] = rng.integers(-1, 3, size=6)
    data = _ply(fmt, vertices, faces=(fmt != "binary_big_endian"))
    path = tmp_path / ("cloud.ply.gz" if gz else "cloud.ply")
    path.write_bytes(gzip.compress(data) if gz else data)
    read = io.read_ply(path)
    assert read.dtype.names == ("x", "y", "z", "red", "label")
    for name in read.dtype.names:
        assert np.array_equal(read[name], vertices[name]), name


def test_read_ply_errors(tmp_path):
    path = tmp_path / "bad.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement face 1\n"
                     b"property list uchar int vertex_indices\nelement vertex 1\n"
                     b"property float x\nend_header\n" + bytes(20))
    with pytest.raises(ValueError, match="list properties"):
        io.read_ply(path)
    with pytest.raises(ValueError, match="no element 'edge'"):
        io.read_ply(path, element="edge")


def test_read_potree(tmp_path):
    """Two nodes: the root cube and its child 5 (upper half in x and z)."""
    box = {"lx": 10.0, "ly": 20.0, "lz": 30.0, "ux": 18.0, "uy": 28.0, "uz": 38.0}
    cloud = {"version": "1.4", "octreeDir": "data", "boundingBox": box,
             "pointAttributes": ["POSITION_CARTESIAN", "COLOR_PACKED"], "spacing": 1,
             "scale": 0.01, "hierarchy": [["r", 2], ["r5", 1]]}
    (tmp_path / "data").mkdir()
    (tmp_path / "cloud.js").write_text(json.dumps(cloud))
    record = np.dtype([("xyz", "<u4", (3,)), ("rgba", "u1", (4,))])
    root = np.zeros(2, record)
    root["xyz"] = [[0, 0, 0], [100, 250, 800]]
    root["rgba"] = [[255, 0, 0, 255], [0, 51, 0, 255]]
    child = np.zeros(1, record)
    child["xyz"] = [[1, 2, 3]]
    child["rgba"] = [[0, 0, 255, 255]]
    root.tofile(tmp_path / "data" / "r.bin")
    child.tofile(tmp_path / "data" / "r5.bin")
    points, colors = io.read_potree(tmp_path)
    expected = np.array([[10, 20, 30], [11, 22.5, 38], [14.01, 20.02, 34.03]])
    np.testing.assert_allclose(points, expected, atol=1e-9)
    np.testing.assert_allclose(colors, [[1, 0, 0], [0, 0.2, 0], [0, 0, 1]], atol=1e-7)


def test_missing_source_names_the_script(tmp_path):
    for loader, source in ((io.load_frog_tissues, "pyvista"), (io.load_cgal_b9, "cgal"),
                           (io.load_table_scene, "pcl"), (io.load_potree_vol_total, "potree"),
                           (io.load_stanford_dragon, "dragon")):
        with pytest.raises(FileNotFoundError, match=f"fetch_data.sh {source}"):
            loader(data_dir=tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CUSPARSECONV_DATA_DIR", str(tmp_path))
    assert io.default_data_dir() == str(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        io.load_frog_tissues()


# --------------------------------------------------------------------------- #
# real sources
# --------------------------------------------------------------------------- #

def _present(relative):
    return os.path.exists(os.path.join(io.default_data_dir(), relative))


def _needs(relative, source):
    return pytest.mark.skipif(
        not _present(relative),
        reason=f"{relative} absent: run `bash benchmarks/fetch_data.sh {source}`")


@pytest.fixture(scope="module")
def frog_data_dir():
    """The folder holding pyvista/frog_tissues.vti; fetches the pyvista wheel when absent."""
    if not _present(os.path.join("pyvista", "frog_tissues.vti")):
        try:
            io.fetch_data("pyvista")
        except (RuntimeError, FileNotFoundError) as exc:
            pytest.skip(f"could not fetch the pyvista wheel (registry unreachable?): {exc}")
    return io.default_data_dir()


def test_frog_tissues(frog_data_dir):
    coords, labels = io.load_frog_tissues(frog_data_dir)
    assert coords.shape == (1_154_287, 3) and coords.dtype == np.int32
    assert labels.min() == 1 and labels.max() <= 29 and len(np.unique(labels)) >= 20
    volume, spacing = io.load_frog_tissues(frog_data_dir, volume=True)
    assert volume.shape == (136, 470, 500) and volume.dtype == np.uint8
    assert spacing.tolist() == [1.0, 1.0, 1.5]
    x, y, z = coords.T
    assert np.array_equal(volume[z, y, x], labels) and np.count_nonzero(volume) == len(labels)


@_needs(os.path.join("cgal", "b9_training.ply"), "cgal")
def test_cgal_b9():
    points, colors, labels = io.load_cgal_b9()
    assert points.shape == (22_300, 3) and colors.shape == (22_300, 3)
    assert sorted(np.unique(labels).tolist()) == [-1, 0, 1, 2]
    assert (labels >= 0).sum() == 2_447
    extent = points.max(axis=0) - points.min(axis=0)
    assert 50 < extent[0] < 200 and 50 < extent[1] < 200 and extent[2] < 50
    assert 0 <= colors.min() and colors.max() <= 1


@_needs(os.path.join("pcl", "table_scene_lms400.pcd"), "pcl")
def test_table_scene():
    points, intensity = io.load_table_scene()
    assert points.shape == (460_400, 3) and intensity.shape == (460_400,)
    extent = points.max(axis=0) - points.min(axis=0)
    assert np.all(extent > 0.5) and np.all(extent < 3)      # a table, metres


@_needs(os.path.join("potree", "vol_total", "cloud.js"), "potree")
def test_potree_vol_total():
    points, colors = io.load_potree_vol_total()
    assert points.shape == (498_868, 3) and colors.shape == (498_868, 3)
    with open(os.path.join(io.default_data_dir(), "potree", "vol_total", "cloud.js")) as f:
        tight = json.load(f)["tightBoundingBox"]
    # wrong node offsets would put points metres outside the recorded tight box
    lo = np.array([tight["lx"], tight["ly"], tight["lz"]])
    hi = np.array([tight["ux"], tight["uy"], tight["uz"]])
    assert np.all(points >= lo - 0.02) and np.all(points <= hi + 0.02)


@_needs(os.path.join("stanford-dragon", "dragon_vrip.ply.gz"), "dragon")
def test_stanford_dragon():
    points = io.load_stanford_dragon()
    assert points.shape == (437_645, 3)
    extent = points.max(axis=0) - points.min(axis=0)
    assert 0.15 < extent.max() < 0.25
