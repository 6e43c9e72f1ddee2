"""The real-scan loaders of ``examples/real_scans.py`` and their two own readers.

The readers (VTK XML ImageData, Potree 1.4) are checked on small files this
module writes itself, in every encoding they accept (their malformed inputs:
``tests/test_io_malformed.py``). The real sources are read when
``benchmarks/fetch_data.sh`` has installed them; the pyvista wheel (2.7 MB)
is fetched here when absent, so that one real source is always exercised
(the test skips only when the registry cannot be reached).
"""

import base64
import json
import os
import struct
import sys
import zlib

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
import real_scans as io  # noqa: E402  (examples/real_scans.py)

# --------------------------------------------------------------------------- #
# helpers: independent writers
# --------------------------------------------------------------------------- #


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
