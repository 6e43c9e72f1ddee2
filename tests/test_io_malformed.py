"""Malformed files and decompression bombs (issue 14, item 11).

A corpus generated here (truncations, lying counts and sizes, bad headers,
corrupt streams, paths out of the data set's folder) for every reader of
``cusparseconv.io.read_points`` and for the two readers of
``examples/real_scans.py``: each file must raise ``FileFormatError`` (a
ValueError) whose message names the file, never a bare IndexError, KeyError,
zlib.error or MemoryError.

The bombs run in one subprocess under ``resource.setrlimit(RLIMIT_AS)`` with
256 MiB of headroom: a reader that allocated what the file declares (up to
4.2 GB) would die with MemoryError there; the test requires the
FileFormatError instead, i.e. the check comes before the allocation.
"""

import gzip
import io as pyio
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from point_files import las_bytes, lzf_literals, pcd_bytes, ply_bytes

from cusparseconv.io import FileFormatError, read_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
import real_scans  # noqa: E402


def xyz_fields(n=20):
    rng = np.random.default_rng(14)
    return {axis: rng.standard_normal(n).astype(np.float32) for axis in "xyz"}


def replace_line(data: bytes, prefix: bytes, line: bytes) -> bytes:
    start = data.index(prefix)
    end = data.index(b"\n", start)
    return data[:start] + line + data[end:]


def pcd_corpus():
    corpus = {}
    for mode in ("ascii", "binary", "binary_compressed"):
        lzf = lzf_literals
        good = pcd_bytes(xyz_fields(), mode, lzf=lzf)
        body = good.index(b"DATA")
        corpus[f"{mode}-truncated-half"] = good[:body + (len(good) - body) // 2]
        corpus[f"{mode}-header-only"] = good[:good.index(b"\n", body) + 1]
        corpus[f"{mode}-points-lie"] = replace_line(
            replace_line(good, b"POINTS", b"POINTS 350000000"), b"WIDTH", b"WIDTH 350000000")
        corpus[f"{mode}-points-not-width-height"] = replace_line(good, b"POINTS", b"POINTS 19")
        corpus[f"{mode}-no-x"] = replace_line(good, b"FIELDS", b"FIELDS a y z")
    good = pcd_bytes(xyz_fields(), "binary")
    corpus["no-width-with-points"] = replace_line(good, b"WIDTH", b"")    # was KeyError 'WIDTH'
    corpus["no-fields"] = replace_line(good, b"FIELDS", b"")
    corpus["size-count-mismatch"] = replace_line(good, b"SIZE", b"SIZE 4 4")
    corpus["float16"] = replace_line(good, b"SIZE", b"SIZE 2 4 4")
    corpus["type-x"] = replace_line(good, b"TYPE", b"TYPE X F F")
    corpus["count-zero"] = replace_line(good, b"COUNT", b"COUNT 0 1 1")
    corpus["points-negative"] = replace_line(good, b"POINTS", b"POINTS -5")
    corpus["data-lzma"] = replace_line(good, b"DATA", b"DATA binary_lzma")
    corpus["no-data-line"] = good[:good.index(b"DATA")]
    corpus["endless-header"] = b"# " + b"x" * (1 << 20) + b"\n"
    ascii_good = pcd_bytes(xyz_fields(), "ascii")
    data_end = ascii_good.index(b"\n", ascii_good.index(b"DATA")) + 1
    corpus["ascii-word"] = ascii_good[:data_end] + b"1 2 word\n" + ascii_good[data_end:]
    last = ascii_good.rstrip(b"\n").rindex(b"\n")
    corpus["ascii-short-row"] = ascii_good[:last] + b"\n1 2\n"
    compressed = pcd_bytes(xyz_fields(), "binary_compressed", lzf=lzf_literals)
    start = compressed.index(b"\n", compressed.index(b"DATA")) + 1
    sizes = struct.unpack_from("<II", compressed, start)
    corpus["lzf-compressed-size-lies"] = (compressed[:start] + struct.pack("<II", 10 ** 6,
                                          sizes[1]) + compressed[start + 8:])
    corpus["lzf-raw-size-lies"] = (compressed[:start] + struct.pack("<II", sizes[0], 12)
                                   + compressed[start + 8:])
    corpus["lzf-backreference-outside"] = (compressed[:start] + struct.pack("<II", 3, sizes[1])
                                           + bytes([0xE0, 0xFF, 0x00]))
    corpus["lzf-truncated-stream"] = (compressed[:start] + struct.pack("<II", sizes[0] - 10,
                                                                        sizes[1])
                                      + compressed[start + 8:-10])
    corpus["lzf-sizes-missing"] = compressed[:start + 5]
    return {f"pcd-{name}.pcd": data for name, data in corpus.items()}


def ply_corpus(tmp_path):
    pytest.importorskip("plyfile")
    table = np.zeros(20, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    table["x"] = np.arange(20)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    corpus = {}
    for kind, text in (("ascii", True), ("binary", False)):
        good = ply_bytes(tmp_path / "good.ply", table, text=text, faces=faces)
        end = good.index(b"end_header\n") + 11
        corpus[f"{kind}-truncated"] = good[:end + 30]
        corpus[f"{kind}-count-lies"] = good.replace(b"element vertex 20",
                                                    b"element vertex 1000000000")
        corpus[f"{kind}-no-end-header"] = good[:end - 11]
        corpus[f"{kind}-bad-type"] = good.replace(b"property float x", b"property float128 x")
        corpus[f"{kind}-count-word"] = good.replace(b"element vertex 20", b"element vertex lots")
        corpus[f"{kind}-no-vertex"] = good.replace(b"element vertex", b"element point")
        corpus[f"{kind}-no-x"] = good.replace(b"property float x", b"property float w")
        corpus[f"{kind}-list-float-count"] = good.replace(b"list uchar int",
                                                          b"list float int")
    ascii_good = ply_bytes(tmp_path / "good.ply", table, text=True, faces=faces)
    end = ascii_good.index(b"end_header\n") + 11
    corpus["ascii-word"] = ascii_good[:end] + b"1 2 word\n" + ascii_good[end:]
    corpus["ascii-short-row"] = ascii_good[:end] + b"1 2\n" + ascii_good[end:]
    corpus["no-format"] = ascii_good.replace(b"format ascii 1.0\n", b"")
    corpus["not-ply"] = b"PLY\n" + ascii_good[4:]
    # faces first: plyfile reads it; its errors are wrapped too
    first = ply_bytes(tmp_path / "good.ply", table, faces=faces, faces_first=True)
    corpus["plyfile-truncated"] = first[:first.index(b"end_header\n") + 20]
    corpus["plyfile-count-lies"] = first.replace(b"element face 2", b"element face 900000000")
    return {f"ply-{name}.ply": data for name, data in corpus.items()}


def npy_corpus():
    buffer = pyio.BytesIO()
    np.save(buffer, np.zeros((20, 3)))
    good = buffer.getvalue()
    lying = good.replace(b"(20, 3)", b"(10**9,3)".replace(b"10**9", b"999999999"))
    corpus = {"npy-truncated.npy": good[:100], "npy-shape-lies.npy": lying,
              "npy-bad-magic.npy": b"\x93NUMPX" + good[6:],
              "npy-header-garbage.npy": good[:10] + b"{'descr': <f8'" + good[24:]}
    archive = pyio.BytesIO()
    np.savez_compressed(archive, xyz=np.zeros((200, 3)))
    zipped = archive.getvalue()
    corpus["npz-not-zip.npz"] = b"PK\x03\x04" + bytes(40)
    corpus["npz-truncated.npz"] = zipped[:len(zipped) // 2]
    flipped = bytearray(zipped)
    flipped[60] ^= 0xFF                                   # inside the deflate stream
    corpus["npz-corrupt.npz"] = bytes(flipped)
    inner = pyio.BytesIO()
    np.save(inner, np.zeros((20, 3)))
    stored = pyio.BytesIO()
    import zipfile
    with zipfile.ZipFile(stored, "w") as handle:
        handle.writestr("xyz.npy", inner.getvalue().replace(b"(20, 3)", b"(99999999, 3)"))
    corpus["npz-member-shape-lies.npz"] = stored.getvalue()
    return corpus


def las_corpus(tmp_path):
    pytest.importorskip("laspy")
    xyz = np.arange(60, dtype=np.float64).reshape(20, 3)
    corpus = {}
    for suffix in (".las", ".laz"):
        good = las_bytes(tmp_path / f"good{suffix}", xyz)
        kind = suffix[1:]
        corpus[f"{kind}-truncated-header{suffix}"] = good[:100]
        corpus[f"{kind}-signature{suffix}"] = b"LASX" + good[4:]
        corpus[f"{kind}-count-lies{suffix}"] = good[:107] + struct.pack("<I", 10 ** 9) \
            + good[111:]
        corpus[f"{kind}-vlrs-lie{suffix}"] = good[:100] + struct.pack("<I", 4 * 10 ** 9) \
            + good[104:]
        corpus[f"{kind}-offset-past-end{suffix}"] = good[:96] + struct.pack("<I", 10 ** 7) \
            + good[100:]
        corpus[f"{kind}-truncated-points{suffix}"] = good[:len(good) - 40]
    laz = las_bytes(tmp_path / "good.laz", xyz)
    offset = struct.unpack_from("<I", laz, 96)[0]
    corpus["laz-chunk-table-outside.laz"] = laz[:offset] + struct.pack("<q", 10 ** 12) \
        + laz[offset + 8:]
    return corpus


def gz_corpus():
    good = gzip.compress(pcd_bytes(xyz_fields(), "binary"))
    return {"gz-not-gzip.pcd.gz": b"\x1f\x8c" + good[2:],
            "gz-truncated.pcd.gz": good[:len(good) // 2],
            "gz-corrupt.pcd.gz": good[:20] + bytes(20) + good[40:],
            "gz-size-lies.pcd.gz": good[:-4] + struct.pack("<I", 0xFFFFFFF0),
            "gz-trailing-garbage.pcd.gz": good + b"garbage!" * 4}


def test_read_points_corpus(tmp_path):
    corpus = {**pcd_corpus(), **ply_corpus(tmp_path), **npy_corpus(), **las_corpus(tmp_path),
              **gz_corpus()}
    assert len(corpus) >= 70
    failures = []
    for name, data in corpus.items():
        path = tmp_path / name
        path.write_bytes(data)
        try:
            read_points(path)
        except FileFormatError as error:
            if str(path) not in str(error):
                failures.append(f"{name}: message does not name the file: {error}")
        except Exception as error:  # noqa: BLE001 - the test reports any other kind
            failures.append(f"{name}: {type(error).__name__}: {error}")
        else:
            failures.append(f"{name}: read without an error")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- #
# the readers of examples/real_scans.py
# --------------------------------------------------------------------------- #

def vti_text(data_array: str, extent="0 3 0 2 0 1", appended=b"", compressor="",
             header="UInt32", prefix=""):
    compressor = f' compressor="{compressor}"' if compressor else ""
    xml = (f'{prefix}<?xml version="1.0"?>\n<VTKFile type="ImageData" version="0.1" '
           f'byte_order="LittleEndian" header_type="{header}"{compressor}>\n'
           f'<ImageData WholeExtent="{extent}" Origin="0 0 0" Spacing="1 1 1">\n'
           f'<Piece Extent="{extent}"><PointData>{data_array}</PointData></Piece>\n'
           f'</ImageData>\n').encode()
    if appended:
        xml += b'<AppendedData encoding="raw">\n_' + appended + b"\n</AppendedData>\n"
    return xml + b"</VTKFile>\n"


def vti_corpus():
    n = 4 * 3 * 2
    payload = bytes(range(n))
    raw = struct.pack("<I", n) + payload

    def array(fmt, text="", extra=""):
        return (f'<DataArray type="UInt8" Name="labels" format="{fmt}"{extra}>{text}'
                f'</DataArray>')

    import base64
    blocks = zlib.compress(payload)
    compressed_head = struct.pack("<IIII", 1, n, n, len(blocks))
    b64 = (base64.b64encode(compressed_head) + base64.b64encode(blocks)).decode()
    corpus = {
        "doctype": vti_text(array("ascii", " ".join("1" * n)),
                            prefix='<!DOCTYPE x [<!ENTITY a "aaaa">]>'),
        "not-xml": b"<VTKFile><ImageData",
        "wrong-type": vti_text(array("ascii", "1")).replace(b'"ImageData"', b'"PolyData"', 1),
        "extent-garbage": vti_text(array("ascii", "1"), extent="0 3 0 x 0 1"),
        "extent-huge": vti_text(array("ascii", "1"), extent="0 999999 0 999999 0 999999"),
        "extent-empty": vti_text(array("ascii", "1"), extent="0 -1 0 2 0 1"),
        "ascii-short": vti_text(array("ascii", " ".join("1" * (n - 3)))),
        "ascii-word": vti_text(array("ascii", " ".join(["1"] * (n - 1) + ["x"]))),
        "bad-type": vti_text(array("ascii", "1").replace("UInt8", "Quad8")),
        "bad-format": vti_text(array("hex", "1")),
        "base64-invalid": vti_text(array("binary", "!!!!" * 10)),
        "raw-size-lies": vti_text(array("appended", extra=' offset="0"'),
                                  appended=struct.pack("<I", 10 ** 9) + payload),
        "raw-truncated": vti_text(array("appended", extra=' offset="0"'),
                                  appended=raw[:10]),
        "offset-outside": vti_text(array("appended", extra=' offset="999"'), appended=raw),
        "blocks-lie": vti_text(array("binary", (base64.b64encode(
            struct.pack("<IIII", 10 ** 8, n, n, 5))).decode()),
            compressor="vtkZLibDataCompressor"),
        "block-size-lies": vti_text(array("binary", b64.replace(
            base64.b64encode(compressed_head).decode(),
            base64.b64encode(struct.pack("<IIII", 1, 10 ** 9, 10 ** 9,
                                         len(blocks))).decode())),
            compressor="vtkZLibDataCompressor"),
        "block-corrupt": vti_text(array("binary", (base64.b64encode(compressed_head)
                                                   + base64.b64encode(bytes(len(blocks))))
                                        .decode()), compressor="vtkZLibDataCompressor"),
        "compressor-lzma": vti_text(array("ascii", "1"), compressor="vtkLZMADataCompressor"),
    }
    return corpus


def test_read_vti_corpus(tmp_path):
    failures = []
    for name, data in vti_corpus().items():
        path = tmp_path / f"{name}.vti"
        path.write_bytes(data)
        try:
            real_scans.read_vti(path)
        except FileFormatError as error:
            if str(path) not in str(error):
                failures.append(f"{name}: message does not name the file: {error}")
        except Exception as error:  # noqa: BLE001
            failures.append(f"{name}: {type(error).__name__}: {error}")
        else:
            failures.append(f"{name}: read without an error")
    assert not failures, "\n".join(failures)


def potree_cloud(folder, **changes):
    cloud = {"version": "1.4", "octreeDir": "data", "scale": 0.01,
             "boundingBox": {"lx": 0, "ly": 0, "lz": 0, "ux": 8, "uy": 8, "uz": 8},
             "pointAttributes": ["POSITION_CARTESIAN", "COLOR_PACKED"],
             "hierarchy": [["r", 2], ["r5", 1]]}
    cloud.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "r.bin").write_bytes(bytes(32))
    (folder / "data" / "r5.bin").write_bytes(bytes(16))
    (folder / "cloud.js").write_text(json.dumps(cloud))
    return folder


def test_read_potree_corpus(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "r.bin").write_bytes(bytes(16))
    cases = {
        "absolute-octree-dir": dict(octreeDir=str(outside)),
        "escaping-octree-dir": dict(octreeDir="../outside"),
        "duplicate-nodes": dict(hierarchy=[["r", 2]] * 20_000),
        "node-name-escapes": dict(hierarchy=[["r", 2], ["../../outside/r", 1]]),
        "missing-node": dict(hierarchy=[["r", 2], ["r7", 1]]),
        "missing-keys": dict(boundingBox={"lx": 0}),
        "attributes": dict(pointAttributes=["POSITION_CARTESIAN", "INTENSITY"]),
        "hierarchy-not-list": dict(hierarchy={"r": 2}),
    }
    failures = []
    for name, change in cases.items():
        folder = potree_cloud(tmp_path / name, **change)
        try:
            real_scans.read_potree(folder)
        except FileFormatError as error:
            if str(folder) not in str(error):
                failures.append(f"{name}: message does not name the cloud: {error}")
        except Exception as error:  # noqa: BLE001
            failures.append(f"{name}: {type(error).__name__}: {error}")
        else:
            failures.append(f"{name}: read without an error")
    linked = potree_cloud(tmp_path / "linked")
    (linked / "data" / "r5.bin").unlink()
    (linked / "data" / "r5.bin").symlink_to(outside / "r.bin")
    with pytest.raises(FileFormatError, match="outside the point cloud's folder"):
        real_scans.read_potree(linked)
    odd = potree_cloud(tmp_path / "odd")
    (odd / "data" / "r5.bin").write_bytes(bytes(15))
    with pytest.raises(FileFormatError, match="r5.bin: size 15 is not a multiple"):
        real_scans.read_potree(odd)
    (tmp_path / "not-json").mkdir()
    (tmp_path / "not-json" / "cloud.js").write_text("{'octreeDir':")
    with pytest.raises(FileFormatError, match="not-json.*malformed cloud.js"):
        real_scans.read_potree(tmp_path / "not-json")
    assert not failures, "\n".join(failures)
    points, _ = real_scans.read_potree(potree_cloud(tmp_path / "fine"))
    assert points.shape == (3, 3)


# --------------------------------------------------------------------------- #
# bombs: the error must come before the allocation (a memory limit proves it)
# --------------------------------------------------------------------------- #

BOMB_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[2])
import numpy, cusparseconv.io as cio, real_scans
try:
    import laspy  # noqa: F401  (imported before the limit, like numpy)
except ImportError:
    pass
cases = json.loads(sys.argv[1])
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
results = {}
try:
    bytearray(1 << 30)
    results["control"] = "allocated 1 GiB: the limit is not active"
except MemoryError:
    results["control"] = "MemoryError"
for name, (reader, path, kwargs) in cases.items():
    function = {"read_points": cio.read_points, "read_vti": real_scans.read_vti,
                "read_potree": real_scans.read_potree}[reader]
    try:
        function(path, **kwargs)
        results[name] = "read without an error"
    except cio.FileFormatError as error:
        results[name] = "FileFormatError: " + str(error)
    except BaseException as error:
        results[name] = type(error).__name__ + ": " + str(error)
print(json.dumps(results))
"""


def write_bombs(folder):
    """Each bomb: (reader, path, keyword arguments), and the words its error must hold."""
    folder.mkdir()
    bombs = {}
    # 130-byte PCD, binary_compressed, sizes claiming 4.2 GB
    header = (b"VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
              b"WIDTH 350000000\nHEIGHT 1\nPOINTS 350000000\nDATA binary_compressed\n")
    (folder / "lying.pcd").write_bytes(header + struct.pack("<II", 4, 4_200_000_000)
                                       + bytes(4))
    bombs["pcd-lying-sizes"] = (("read_points", "lying.pcd", {}), "cannot hold")
    # LZF back-references: 1.2 MB expanding to 105 MB, with max_bytes = 16 MiB
    n_refs = 400_000
    stream = b"\x00\x00" + b"\xe0\xff\x00" * n_refs
    raw_size = 1 + 264 * n_refs
    n_points = raw_size // 4
    header = (f"VERSION 0.7\nFIELDS x\nSIZE 4\nTYPE F\nCOUNT 1\nWIDTH {n_points}\nHEIGHT 1\n"
              f"POINTS {n_points}\nDATA binary_compressed\n").encode()
    (folder / "backrefs.pcd").write_bytes(header + struct.pack("<II", len(stream),
                                                               n_points * 4) + stream)
    bombs["lzf-backreferences"] = (("read_points", "backrefs.pcd", {"max_bytes": 16 << 20}),
                                   "max_bytes")
    # gzipped PLY: 400 gzip members of 1 MiB of zeros each (400 MiB), max_bytes = 16 MiB
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    ply_header = b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n"
    (folder / "bomb.ply.gz").write_bytes(gzip.compress(ply_header) + member * 400)
    bombs["gzip-members"] = (("read_points", "bomb.ply.gz", {"max_bytes": 16 << 20}),
                             "max_bytes")
    # one gzip member recording 4 GiB
    (folder / "recorded.pcd.gz").write_bytes(member[:-4] + struct.pack("<I", 0xFFFFFFF0))
    bombs["gzip-recorded-size"] = (("read_points", "recorded.pcd.gz", {}), "records")
    # LAS / LAZ / NPY / PLY headers declaring a billion points
    bombs["npy-shape"] = (("read_points", "shape.npy", {}), "max_bytes")
    buffer = pyio.BytesIO()
    np.save(buffer, np.zeros((4, 3)))
    (folder / "shape.npy").write_bytes(buffer.getvalue().replace(b"(4, 3)", b"(999999999, 3)"))
    (folder / "count.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex "
                                       b"1000000000\nproperty float x\nproperty float y\n"
                                       b"property float z\nend_header\n" + bytes(64))
    bombs["ply-count"] = (("read_points", "count.ply", {}), "declares")
    try:
        import laspy  # noqa: F401
    except ImportError:
        pass
    else:
        xyz = np.zeros((4, 3))
        for suffix in (".las", ".laz"):
            good = las_bytes(folder / f"good{suffix}", xyz)
            (folder / f"count{suffix}").write_bytes(good[:107] + struct.pack("<I", 10 ** 9)
                                                    + good[111:])
            bombs[f"{suffix[1:]}-count"] = (("read_points", f"count{suffix}", {}),
                                            "points of" if suffix == ".las" else "max_bytes")
    # VTI: a 100 MB extent from one zlib block, max_bytes = 16 MiB
    extent = "0 999 0 999 0 99"
    block = zlib.compress(bytes(1 << 20))
    head = struct.pack("<IIII", 1, 100_000_000, 100_000_000, len(block))
    (folder / "bomb.vti").write_bytes(vti_text(
        '<DataArray type="UInt8" Name="l" format="appended" offset="0"></DataArray>',
        extent=extent, appended=head + block, compressor="vtkZLibDataCompressor"))
    bombs["vti-extent"] = (("read_vti", "bomb.vti", {"max_bytes": 16 << 20}), "max_bytes")
    (folder / "bomb2.vti").write_bytes(vti_text(
        '<DataArray type="UInt8" Name="l" format="appended" offset="0"></DataArray>',
        extent=extent, appended=head + block, compressor="vtkZLibDataCompressor"))
    bombs["vti-zlib-ratio"] = (("read_vti", "bomb2.vti", {}), "1032:1")
    # Potree: one 160 KB node named 20,000 times
    cloud = potree_cloud(folder / "potree", hierarchy=[["r", 10_000]] * 20_000)
    (cloud / "data" / "r.bin").write_bytes(bytes(160_000))
    bombs["potree-repeated-node"] = (("read_potree", "potree", {}), "more than once")
    return bombs


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_bombs_fail_before_allocating(tmp_path):
    bombs = write_bombs(tmp_path / "bombs")
    cases = {name: (reader, str(tmp_path / "bombs" / path), kwargs)
             for name, ((reader, path, kwargs), _) in bombs.items()}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    result = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, json.dumps(cases), EXAMPLES],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcomes.pop("control") == "MemoryError"
    failures = []
    for name, (_, words) in bombs.items():
        outcome = outcomes[name]
        if not outcome.startswith("FileFormatError: ") or words not in outcome \
                or cases[name][1].rsplit("/", 1)[-1] not in outcome:
            failures.append(f"{name}: {outcome[:300]}")
    assert not failures, "\n".join(failures)
