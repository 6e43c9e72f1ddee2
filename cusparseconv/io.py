"""Reading point files: :func:`read_points` for LAS/LAZ, PLY, PCD and NPY/NPZ.

``read_points(path)`` returns a :class:`PointCloud`: the xyz coordinates as
float64 in the file's units (LAS scale and offset applied) and the per-point
attributes the file holds (intensity, colour, classification, ...).

=================  ==========================================  ====================
suffix             reader                                      needs
=================  ==========================================  ====================
``.las``, ``.laz``  laspy (LAZ through its lazrs backend)       ``cusparseconv[io]``
``.ply``            a vectorised NumPy reader; plyfile for      ``cusparseconv[io]``
                    list properties in or before the vertex     for those layouts
                    element
``.pcd``            this module (ascii, binary,                 NumPy only
                    binary_compressed with LZF)
``.npy``, ``.npz``  NumPy (no pickles)                          NumPy only
any of these +      gzip, decompressed within the limit         Python's zlib
``.gz``
=================  ==========================================  ====================

Untrusted files are safe to read: every size a file declares (point counts,
compressed and decompressed sizes, header lengths) is checked against the
file's own size, the format's largest compression ratio (deflate 1032:1,
LZF 88:1) and ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`, 2 GiB of
decoded point data) *before* anything of that size is allocated, and every
malformed file raises :class:`FileFormatError`, a ``ValueError`` whose
message starts with the file's path.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import NamedTuple

import numpy as np

__all__ = ["read_points", "PointCloud", "FileFormatError", "DEFAULT_MAX_BYTES",
           "SUFFIXES"]

#: Largest decoded size (bytes) of the point data of one file that a reader
#: allocates: decompressed gzip/LZF/LAZ streams and point records. Pass
#: ``max_bytes=`` to :func:`read_points` to read larger files.
DEFAULT_MAX_BYTES = 2 ** 31

#: File suffixes :func:`read_points` reads (each also gzip-compressed, ``+ .gz``).
SUFFIXES = (".las", ".laz", ".ply", ".pcd", ".npy", ".npz")

_DEFLATE_MAX_RATIO = 1032      # deflate: at most 258 bytes from every 2 bits, plus headers
_LZF_MAX_RATIO = 88            # LZF: a 3-byte back-reference yields at most 264 bytes
_MAX_HEADER_BYTES = 1 << 20    # PLY and PCD text headers


class FileFormatError(ValueError):
    """A point file that cannot be read: malformed, truncated, or larger than allowed.

    The message starts with the file's path; ``.path`` holds it.
    """

    def __init__(self, path, message: str):
        super().__init__(f"{os.fspath(path)}: {message}")
        self.path = os.fspath(path)


class PointCloud(NamedTuple):
    """The points of a file.

    Attributes
    ----------
    xyz : ndarray of float64, shape (N, 3)
        Coordinates in the file's units (LAS: scale and offset applied).
    attributes : dict of str -> ndarray with N rows
        Per-point values in the file's types. Where present, under common
        names: ``"intensity"`` (N,), ``"colour"`` (N, 3) (LAS: uint16 as
        stored; PLY ``red``/``green``/``blue``: as stored; PCD packed
        ``rgb``/``rgba``: uint8), ``"classification"`` (N,); every other
        per-point field under its name in the file (LAS: laspy's dimension
        names, e.g. ``"return_number"``, ``"gps_time"``).
    """

    xyz: np.ndarray
    attributes: dict


def read_points(path, *, max_bytes: int | None = None) -> PointCloud:
    """Read the points of a LAS/LAZ, PLY, PCD or NPY/NPZ file (optionally gzipped).

    Parameters
    ----------
    path : str or path-like
        The suffix picks the format: ``.las``, ``.laz``, ``.ply``, ``.pcd``,
        ``.npy``, ``.npz``, each optionally followed by ``.gz``.

        - NPY: a numeric (N, 3) array (N, k > 3: columns 3.. become the
          attribute ``"extra"``), or a structured (N,) array with fields
          ``x``, ``y``, ``z``.
        - NPZ: an (N, 3) array named ``xyz`` or ``points``, or (N,) arrays
          ``x``, ``y``, ``z``; other arrays with N rows become attributes
          (arrays of another length are left out).
        - PCD: PCL's format, DATA ``ascii``, ``binary`` or
          ``binary_compressed``; organised clouds keep their NaN points.
    max_bytes : int, optional
        Largest decoded size of the point data to accept (default
        :data:`DEFAULT_MAX_BYTES`).

    Returns
    -------
    PointCloud
        ``(xyz, attributes)``: xyz float64 (N, 3); attributes a dict of
        arrays with N rows (see :class:`PointCloud`).

    Raises
    ------
    FileFormatError (a ValueError)
        The file is malformed, truncated, or decodes to more than
        ``max_bytes``; the message starts with the path.
    ModuleNotFoundError
        LAS/LAZ (and PLY files with list properties in or before the vertex
        element) need the ``io`` extra: ``pip install "cusparseconv[io]"``.
    FileNotFoundError, PermissionError, IsADirectoryError
        As raised by ``open``.
    """
    limit = DEFAULT_MAX_BYTES if max_bytes is None else _check_limit(max_bytes)
    name = os.fspath(path)
    if not isinstance(name, str):
        name = os.fsdecode(name)
    lower = name.lower()
    compressed = lower.endswith(".gz")
    suffix = os.path.splitext(lower[:-3] if compressed else lower)[1]
    if suffix not in SUFFIXES:
        raise ValueError(f"path must end in one of {', '.join(SUFFIXES)} (optionally + .gz), "
                         f"got {name!r}")
    if suffix in (".las", ".laz"):
        _require("laspy", f"{suffix} files")
    with open(name, "rb") as handle:
        data = handle.read()
    if compressed:
        data = _gunzip(name, data, limit)
    reader = {".las": _read_las, ".laz": _read_las, ".ply": _read_ply, ".pcd": _read_pcd,
              ".npy": _read_npy, ".npz": _read_npz}[suffix]
    xyz, attributes = reader(name, data, limit)
    return PointCloud(xyz, attributes)


# --------------------------------------------------------------------------- #
# shared helpers
# --------------------------------------------------------------------------- #

def _check_limit(max_bytes) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int, got {max_bytes!r}")
    return int(max_bytes)


def _require(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise ModuleNotFoundError(
            f"reading {what} needs {module}, which is not installed: "
            f'pip install "cusparseconv[io]"') from None


def _too_large(path, what: str, n_bytes: int, limit: int) -> FileFormatError:
    return FileFormatError(path, f"{what} would take {n_bytes:,} bytes, more than max_bytes = "
                                 f"{limit:,}; pass a larger max_bytes= to read_points if the "
                                 f"file is trusted")


def _gunzip(path, data: bytes, limit: int) -> bytes:
    """Decompress a gzip file (one member or several), never producing more than
    ``min(limit, 1032 * len(data))`` bytes; a single member's recorded size is
    checked before decompressing."""
    bound = min(limit, _DEFLATE_MAX_RATIO * len(data) + 65536)
    if len(data) < 18 or data[:2] != b"\x1f\x8b":
        raise FileFormatError(path, "not a gzip file (no 1f 8b magic)")
    recorded = int.from_bytes(data[-4:], "little")  # size mod 2**32 of the last member
    if recorded > bound:
        raise FileFormatError(path, f"the gzip trailer records {recorded:,} decompressed "
                                    f"bytes, more than {len(data):,} compressed bytes can "
                                    f"hold or max_bytes = {limit:,} allows (a truncated or "
                                    f"corrupt file, or a decompression bomb)")
    out = bytearray()
    pending = data
    while pending:
        decompressor = zlib.decompressobj(wbits=31)
        try:
            while True:
                out += decompressor.decompress(pending, bound + 1 - len(out))
                if len(out) > bound:
                    raise (_too_large(path, "the decompressed stream", len(out), limit)
                           if bound == limit else
                           FileFormatError(path, f"the gzip stream decompresses to more "
                                                 f"than {bound:,} bytes, beyond deflate's "
                                                 f"1032:1 ratio for {len(data):,} bytes"))
                if decompressor.eof:
                    pending = decompressor.unused_data
                    break
                pending = decompressor.unconsumed_tail
                if not pending:
                    raise FileFormatError(path, "the gzip stream is truncated")
        except zlib.error as error:
            raise FileFormatError(path, f"corrupt gzip stream: {error}") from None
        if pending and not pending.strip(b"\0"):  # trailing zero padding
            break
    return bytes(out)


def _attributes(path, fields: dict, n_points: int) -> tuple[np.ndarray, dict]:
    """xyz (N, 3) float64 and the remaining per-point fields (colour merged)."""
    missing = [axis for axis in "xyz" if axis not in fields]
    if missing:
        raise FileFormatError(path, f"no {', '.join(missing)} field (fields: "
                                    f"{', '.join(fields) or 'none'})")
    xyz = np.empty((n_points, 3), dtype=np.float64)
    for column, axis in enumerate("xyz"):
        values = fields.pop(axis)
        if values.ndim != 1:
            raise FileFormatError(path, f"field {axis!r} must hold one value per point, got "
                                        f"shape {values.shape}")
        xyz[:, column] = values
    if all(c in fields for c in ("red", "green", "blue")):
        fields["colour"] = np.stack([fields.pop(c) for c in ("red", "green", "blue")], axis=1)
    return xyz, fields


# --------------------------------------------------------------------------- #
# LAS / LAZ (laspy, lazrs)
# --------------------------------------------------------------------------- #

_LAS_SKIPPED = {"X", "Y", "Z", "red", "green", "blue"}


def _read_las(path, data: bytes, limit: int):
    laspy = _require("laspy", "LAS/LAZ files")
    count, record_length, compressed, point_offset = _check_las_header(path, data, limit)
    if compressed and not laspy.LazBackend.detect_available():
        raise ModuleNotFoundError(
            f"{path}: reading LAZ needs laspy's lazrs backend, which is not installed: "
            f'pip install "cusparseconv[io]"')
    try:
        with laspy.open(io.BytesIO(data)) as reader:
            if int(reader.header.point_count) != count:
                raise FileFormatError(path, "laspy reads another point count than the header "
                                            "holds")
            points = reader.read_points(count)
    except FileFormatError:
        raise
    except BaseException as error:  # laspy / lazrs errors, including lazrs' PanicException
        if not isinstance(error, Exception) and type(error).__name__ != "PanicException":
            raise
        raise FileFormatError(path, f"malformed LAS/LAZ data: {type(error).__name__}: "
                                    f"{error}") from None
    if len(points) != count:
        raise FileFormatError(path, f"the header declares {count:,} points but only "
                                    f"{len(points):,} could be read")
    fields = {"x": np.asarray(points.x, dtype=np.float64),
              "y": np.asarray(points.y, dtype=np.float64),
              "z": np.asarray(points.z, dtype=np.float64)}
    names = list(points.point_format.dimension_names)
    for name in names:
        if name not in _LAS_SKIPPED:
            fields[name] = np.asarray(points[name])
    if all(c in names for c in ("red", "green", "blue")):
        fields.update({c: np.asarray(points[c]) for c in ("red", "green", "blue")})
    return _attributes(path, fields, count)


def _check_las_header(path, data: bytes, limit: int):
    """Sizes of the public header block (LAS 1.0 to 1.4) against the file's size."""
    size = len(data)
    if size < 227 or data[:4] != b"LASF":
        raise FileFormatError(path, "not a LAS file (no LASF signature, or shorter than a "
                                    "header)")
    minor = data[25]
    header_size, point_offset, n_vlrs = struct.unpack_from("<HII", data, 94)
    point_format, record_length, legacy_count = struct.unpack_from("<BHI", data, 104)
    compressed = bool(point_format & 0xC0)
    count = legacy_count
    if minor >= 4:
        if size < 375:
            raise FileFormatError(path, "LAS 1.4 header truncated")
        first_evlr, n_evlrs, count = struct.unpack_from("<QIQ", data, 235)
        if n_evlrs and (first_evlr > size or n_evlrs * 60 > size - first_evlr):
            raise FileFormatError(path, f"{n_evlrs:,} extended VLRs from byte {first_evlr:,} "
                                        f"do not fit in the file's {size:,} bytes")
    if header_size < 227 or point_offset < header_size or point_offset > size:
        raise FileFormatError(path, f"header size {header_size} / offset to point data "
                                    f"{point_offset:,} do not fit in {size:,} bytes")
    if n_vlrs * 54 > point_offset - header_size:
        raise FileFormatError(path, f"{n_vlrs:,} VLRs do not fit between the header and the "
                                    f"point data ({point_offset - header_size:,} bytes)")
    if record_length == 0 and count:
        raise FileFormatError(path, "point data record length is 0")
    decoded = count * record_length
    if compressed:
        if decoded > limit:
            raise _too_large(path, f"{count:,} points of {record_length} bytes", decoded, limit)
        if count:
            if size < point_offset + 8:
                raise FileFormatError(path, "LAZ point data truncated before its chunk table "
                                            "offset")
            table = struct.unpack_from("<q", data, point_offset)[0]
            if table != -1 and not point_offset + 8 <= table <= size - 8:
                raise FileFormatError(path, f"LAZ chunk table offset {table:,} lies outside "
                                            f"the file ({size:,} bytes)")
            if table != -1:
                n_chunks = struct.unpack_from("<I", data, table + 4)[0]
                if n_chunks > min(count, table - point_offset) + 1:
                    raise FileFormatError(path, f"LAZ chunk table declares {n_chunks:,} chunks "
                                                f"for {count:,} points")
    elif decoded > size - point_offset:
        raise FileFormatError(path, f"the header declares {count:,} points of "
                                    f"{record_length} bytes ({decoded:,} bytes) but the file "
                                    f"holds {size - point_offset:,} bytes of point data")
    return count, record_length, compressed, point_offset


# --------------------------------------------------------------------------- #
# PLY
# --------------------------------------------------------------------------- #

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2",
              "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
              "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4", "double": "f8",
              "float64": "f8"}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def _text_header(path, data: bytes, end_marker: bytes, what: str):
    end = data.find(end_marker, 0, _MAX_HEADER_BYTES)
    if end < 0:
        raise FileFormatError(path, f"no {end_marker.decode()!r} line in the first "
                                    f"{_MAX_HEADER_BYTES:,} bytes: not a {what} file, or its "
                                    f"header is truncated")
    newline = data.find(b"\n", end)
    if newline < 0:
        raise FileFormatError(path, f"the {what} header ends without a newline")
    return data[:newline].decode("ascii", "replace").splitlines(), newline + 1


def _parse_ply_header(path, data: bytes):
    """(format, [(element, count, [(property, type or (count type, item type))])], body)."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise FileFormatError(path, "not a PLY file (no 'ply' magic line)")
    lines, body_start = _text_header(path, data, b"end_header", "PLY")
    fmt, elements = None, []
    for number, line in enumerate(lines[1:-1], 2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) == 3 and words[1] in _PLY_FORMATS:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif (words[0] == "property" and elements and len(words) == 5 and words[1] == "list"
              and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES
              and _PLY_TYPES[words[2]][0] in "iu"):
            elements[-1][2].append((words[4], (words[2], words[3])))
        elif words[0] == "property" and elements and len(words) == 3 \
                and words[1] in _PLY_TYPES:
            elements[-1][2].append((words[2], words[1]))
        else:
            raise FileFormatError(path, f"PLY header line {number} is not understood: "
                                        f"{line.strip()[:80]!r}")
    if fmt is None:
        raise FileFormatError(path, "the PLY header has no valid 'format' line")
    return fmt, elements, body_start


def _read_ply(path, data: bytes, limit: int):
    fmt, elements, body_start = _parse_ply_header(path, data)
    body_size = len(data) - body_start
    names = [name for name, _, _ in elements]
    if "vertex" not in names:
        raise FileFormatError(path, f"no 'vertex' element (elements: {names})")
    order = _PLY_FORMATS[fmt]
    # Lower bounds of the body's size, checked before anything is allocated.
    for name, count, props in elements:
        if order is None:  # every value takes a character and a separator
            least = max(count * 2 * max(len(props), 1) - 1, 0)
            unit = "characters"
        else:
            least = count * sum(np.dtype(_PLY_TYPES[t[0] if isinstance(t, tuple) else t])
                                .itemsize for _, t in props)
            unit = "bytes"
        if least > body_size:
            raise FileFormatError(path, f"element {name!r} declares {count:,} rows, at least "
                                        f"{least:,} {unit}, but the file holds {body_size:,} "
                                        f"after the header")
    index = names.index("vertex")
    _, count, props = elements[index]
    has_lists = any(isinstance(t, tuple) for _, t in props)
    lists_before = any(isinstance(t, tuple) for _, _, ps in elements[:index] for _, t in ps)
    scalar = [(p, t) for p, t in props if not isinstance(t, tuple)]
    if order is None and not has_lists:
        table = _ply_ascii_rows(path, data, body_start, sum(c for _, c, _ in elements[:index]),
                                count, len(scalar))
        fields = {p: table[:, j].astype(_PLY_TYPES[t]) for j, (p, t) in enumerate(scalar)}
    elif order is not None and not has_lists and not lists_before:
        offset = body_start + sum(c * sum(np.dtype(_PLY_TYPES[t]).itemsize for _, t in ps)
                                  for _, c, ps in elements[:index])
        record = np.dtype([(p, order + _PLY_TYPES[t]) for p, t in scalar])
        if offset + count * record.itemsize > len(data):
            raise FileFormatError(path, f"the vertex element ({count:,} rows of "
                                        f"{record.itemsize} bytes) runs past the end of the "
                                        f"file")
        table = np.frombuffer(data, dtype=record, count=count, offset=offset)
        fields = {p: table[p].astype(table[p].dtype.newbyteorder("=")) for p, _ in scalar}
    else:  # list properties in or before the vertex element: plyfile reads every layout
        fields = _ply_with_plyfile(path, data, scalar)
    return _attributes(path, fields, count)


def _ply_ascii_rows(path, data, body_start, skip_rows, count, n_columns):
    """The ``count`` rows after ``skip_rows`` lines of an ASCII PLY body, float64."""
    return _ascii_rows(path, data, body_start, skip_rows, count, n_columns, "vertex rows")


def _line_offset(data: bytes, start: int, n_lines: int) -> int:
    """Offset just after the ``n_lines``-th newline from ``start`` (or the end of data)."""
    chunk = 1 << 24
    position = start
    while n_lines > 0 and position < len(data):
        block = np.frombuffer(data, np.uint8, count=min(chunk, len(data) - position),
                              offset=position)
        newlines = int(np.count_nonzero(block == 10))
        if newlines >= n_lines:
            return position + int(np.flatnonzero(block == 10)[n_lines - 1]) + 1
        n_lines -= newlines
        position += block.size
    return len(data) if n_lines > 0 else position


def _ascii_rows(path, data, start, skip_rows, count, n_columns, what):
    """``count`` lines of ``n_columns`` numbers after ``skip_rows`` lines from ``start``,
    as float64 (count, n_columns); any other layout raises FileFormatError."""
    if count == 0:
        return np.zeros((0, n_columns))
    first = _line_offset(data, start, skip_rows)
    last = _line_offset(data, first, count)
    try:
        table = np.loadtxt(io.BytesIO(data[first:last]), dtype=np.float64, ndmin=2,
                           comments=None)
    except ValueError as error:
        raise FileFormatError(path, f"malformed ASCII {what}: {error}") from None
    if table.shape != (count, n_columns):
        raise FileFormatError(path, f"expected {count:,} {what} of {n_columns} values, found "
                                    f"{table.shape[0]:,} rows of "
                                    f"{table.shape[1] if table.ndim == 2 else 0}")
    return table


def _ply_with_plyfile(path, data, scalar):
    plyfile = _require("plyfile", f"{path} (list properties in or before its vertex element)")
    try:
        vertex = plyfile.PlyData.read(io.BytesIO(data))["vertex"].data
    except Exception as error:  # plyfile's parse errors, short reads
        raise FileFormatError(path, f"malformed PLY data: {error}") from None
    return {p: np.asarray(vertex[p]).astype(vertex[p].dtype.newbyteorder("="))
            for p, _ in scalar}


# --------------------------------------------------------------------------- #
# PCD (PCL)
# --------------------------------------------------------------------------- #

_PCD_KINDS = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2",
              ("I", 4): "i4", ("I", 8): "i8", ("U", 1): "u1", ("U", 2): "u2",
              ("U", 4): "u4", ("U", 8): "u8"}


def _pcd_header(path, data: bytes):
    """The header as {KEY: [values]} and the offset of the data."""
    header, pos = {}, 0
    while True:
        newline = data.find(b"\n", pos, _MAX_HEADER_BYTES)
        if newline < 0:
            raise FileFormatError(path, f"no DATA line in the first {_MAX_HEADER_BYTES:,} "
                                        f"bytes: not a PCD file, or its header is truncated")
        line = data[pos:newline].decode("ascii", "replace").strip()
        pos = newline + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            return header, pos


def _pcd_int(path, header, key, default=None) -> int:
    values = header.get(key)
    if values is None:
        if default is None:
            raise FileFormatError(path, f"the PCD header has no {key} line")
        return default
    if len(values) != 1 or not values[0].isdigit():
        raise FileFormatError(path, f"PCD {key} must be one non-negative integer, got "
                                    f"{' '.join(values)!r}")
    return int(values[0])


def _pcd_layout(path, header):
    """(names, dtypes, counts, n_points, mode) from a PCD header, all checked."""
    for key in ("FIELDS", "SIZE", "TYPE"):
        if key not in header:
            raise FileFormatError(path, f"the PCD header has no {key} line")
    names, sizes, types = header["FIELDS"], header["SIZE"], header["TYPE"]
    counts = header.get("COUNT", ["1"] * len(names))
    if not (len(names) == len(sizes) == len(types) == len(counts)) or not names:
        raise FileFormatError(path, f"PCD FIELDS, SIZE, TYPE and COUNT must list one entry "
                                    f"per field, got {len(names)}, {len(sizes)}, "
                                    f"{len(types)} and {len(counts)}")
    dtypes = []
    for name, size, kind, count in zip(names, sizes, types, counts):
        code = _PCD_KINDS.get((kind.upper(), int(size) if size.isdigit() else -1))
        if code is None or not count.isdigit() or int(count) < 1:
            raise FileFormatError(path, f"PCD field {name!r} has an unsupported SIZE {size} / "
                                        f"TYPE {kind} / COUNT {count}")
        dtypes.append(np.dtype("<" + code))
    counts = [int(c) for c in counts]
    width = _pcd_int(path, header, "WIDTH")
    height = _pcd_int(path, header, "HEIGHT", default=1)
    n_points = _pcd_int(path, header, "POINTS", default=width * height)
    if n_points != width * height:
        raise FileFormatError(path, f"PCD POINTS ({n_points:,}) is not WIDTH x HEIGHT "
                                    f"({width:,} x {height:,})")
    mode = header["DATA"][0].lower() if header["DATA"] else ""
    if mode not in ("ascii", "binary", "binary_compressed"):
        raise FileFormatError(path, f"PCD DATA {mode!r} is not supported (ascii, binary, "
                                    f"binary_compressed)")
    return names, dtypes, counts, n_points, mode


def _read_pcd(path, data: bytes, limit: int):
    header, pos = _pcd_header(path, data)
    names, dtypes, counts, n_points, mode = _pcd_layout(path, header)
    point_size = sum(dt.itemsize * c for dt, c in zip(dtypes, counts))
    available = len(data) - pos
    columns = {}
    if mode == "ascii":
        n_values = sum(counts)
        if n_points * n_values * 2 > available + 1:
            raise FileFormatError(path, f"{n_points:,} points of {n_values} values need at "
                                        f"least {n_points * n_values * 2 - 1:,} characters, "
                                        f"the file holds {available:,}")
        table = _pcd_ascii(path, data, pos, n_points, n_values)
        column = 0
        for name, dtype, count in zip(names, dtypes, counts):
            values = table[:, column:column + count]
            columns[name] = (values[:, 0] if count == 1 else values).astype(dtype)
            column += count
    elif mode == "binary":  # an array of structures
        if n_points * point_size > available:
            raise FileFormatError(path, f"{n_points:,} points of {point_size} bytes need "
                                        f"{n_points * point_size:,} bytes, the file holds "
                                        f"{available:,} after the header")
        record = np.dtype([(f"f{i}", dt, (c,)) if c > 1 else (f"f{i}", dt)
                           for i, (dt, c) in enumerate(zip(dtypes, counts))])
        table = np.frombuffer(data, dtype=record, count=n_points, offset=pos)
        columns = {name: np.array(table[f"f{i}"]) for i, name in enumerate(names)}
    else:  # binary_compressed: LZF of a structure of arrays
        if available < 8:
            raise FileFormatError(path, "binary_compressed data is missing its two sizes")
        compressed_size, raw_size = struct.unpack_from("<II", data, pos)
        if compressed_size > available - 8:
            raise FileFormatError(path, f"compressed size {compressed_size:,} exceeds the "
                                        f"{available - 8:,} bytes after the header")
        if raw_size != n_points * point_size:
            raise FileFormatError(path, f"decompressed size {raw_size:,} is not POINTS x point "
                                        f"size = {n_points:,} x {point_size}")
        if raw_size > _LZF_MAX_RATIO * compressed_size + 32:
            raise FileFormatError(path, f"{compressed_size:,} bytes of LZF cannot hold "
                                        f"{raw_size:,} bytes (at most 88:1)")
        if raw_size > limit:
            raise _too_large(path, "the decompressed points", raw_size, limit)
        raw = _lzf_decompress(path, data[pos + 8:pos + 8 + compressed_size], raw_size)
        offset = 0
        for name, dtype, count in zip(names, dtypes, counts):
            values = np.frombuffer(raw, dtype=dtype, count=n_points * count, offset=offset)
            columns[name] = values.copy() if count == 1 else values.reshape(n_points, count)
            offset += n_points * count * dtype.itemsize
    fields = {}
    for name, dtype, count in zip(names, dtypes, counts):
        values = columns[name]
        if name == "_":  # PCL's padding
            continue
        if name in ("rgb", "rgba") and count == 1 and dtype.itemsize == 4:
            packed = values.view(np.uint32) if dtype.kind == "f" else values.astype(np.uint32)
            fields["colour"] = np.stack([(packed >> 16) & 255, (packed >> 8) & 255,
                                         packed & 255], axis=1).astype(np.uint8)
            continue
        fields[name] = values.astype(dtype.newbyteorder("="), copy=False)
    return _attributes(path, fields, n_points)


def _pcd_ascii(path, data: bytes, start: int, n_points: int, n_values: int) -> np.ndarray:
    return _ascii_rows(path, data, start, 0, n_points, n_values, "point rows")


def _lzf_decompress(path, data: bytes, out_size: int) -> bytes:
    """liblzf's format: a control byte ``c < 32`` starts a literal run of ``c + 1``
    bytes; otherwise ``c >> 5`` (plus the next byte when it is 7) is the length
    minus 2 of a back-reference at distance ``((c & 31) << 8) + next + 1``, which
    may overlap the bytes it produces. ``out_size`` is allocated once; every
    run and reference is checked against both buffers."""
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
                raise FileFormatError(path, f"LZF literal run past the end of the data at "
                                            f"input byte {ip - 1:,}")
            out[op:op + run] = src[ip:ip + run]
            ip += run
            op += run
            continue
        length = ctrl >> 5
        if length == 7:
            if ip >= n_in:
                raise FileFormatError(path, "LZF stream truncated inside a back-reference")
            length += src[ip]
            ip += 1
        if ip >= n_in:
            raise FileFormatError(path, "LZF stream truncated inside a back-reference")
        ref = op - ((ctrl & 0x1F) << 8) - src[ip] - 1
        ip += 1
        length += 2
        if ref < 0 or op + length > out_size:
            raise FileFormatError(path, f"LZF back-reference outside the output at input "
                                        f"byte {ip:,}")
        distance = op - ref
        if distance >= length:
            out[op:op + length] = out[ref:ref + length]
        else:  # overlapping: the last `distance` bytes repeat
            pattern = bytes(out[ref:op])
            out[op:op + length] = (pattern * (length // distance + 1))[:length]
        op += length
    if op != out_size:
        raise FileFormatError(path, f"LZF stream decodes to {op:,} bytes, the header says "
                                    f"{out_size:,}")
    return bytes(out)


# --------------------------------------------------------------------------- #
# NPY / NPZ
# --------------------------------------------------------------------------- #

def _npy_array(path, data: bytes, limit: int, what: str = "the array") -> np.ndarray:
    """Parse .npy bytes after checking the declared shape against their length."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise FileFormatError(path, f"{what}: malformed NPY header: {error}") from None
    if dtype.hasobject:
        raise FileFormatError(path, f"{what} holds Python objects (pickles are never loaded)")
    n_items = 1
    for extent in shape:
        n_items *= int(extent)
    n_bytes = n_items * dtype.itemsize
    if n_bytes > limit:
        raise _too_large(path, f"{what} of shape {shape}", n_bytes, limit)
    if n_bytes > len(data) - stream.tell():
        raise FileFormatError(path, f"{what} of shape {shape} and dtype {dtype} needs "
                                    f"{n_bytes:,} bytes, the file holds "
                                    f"{len(data) - stream.tell():,}")
    flat = np.frombuffer(data, dtype=dtype, count=n_items, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def _read_npy(path, data: bytes, limit: int):
    array = _npy_array(path, data, limit)
    return _points_from_arrays(path, {"": array}, single=True)


def _read_npz(path, data: bytes, limit: int):
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise FileFormatError(path, f"not a valid NPZ (zip) archive: {error}") from None
    arrays, total = {}, 0
    for info in members:
        if not info.filename.endswith(".npy"):
            continue
        total += info.file_size
        if total > limit:
            raise _too_large(path, "the archive's arrays", total, limit)
        if info.compress_type != zipfile.ZIP_STORED and \
                info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 1024:
            raise FileFormatError(path, f"member {info.filename!r} declares {info.file_size:,} "
                                        f"bytes from {info.compress_size:,} compressed: beyond "
                                        f"deflate's 1032:1")
        try:
            with archive.open(info) as member:
                raw = member.read(info.file_size + 1)
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError,
                NotImplementedError) as error:
            raise FileFormatError(path, f"member {info.filename!r} cannot be read: "
                                        f"{error}") from None
        if len(raw) != info.file_size:
            raise FileFormatError(path, f"member {info.filename!r} holds {len(raw):,} bytes, "
                                        f"its directory entry says {info.file_size:,}")
        arrays[info.filename[:-4]] = _npy_array(path, raw, limit, f"array {info.filename!r}")
    return _points_from_arrays(path, arrays, single=False)


def _points_from_arrays(path, arrays: dict, single: bool):
    def numeric(array, name):
        if array.dtype.kind not in "iuf":
            raise FileFormatError(path, f"{name} must hold numbers, got dtype {array.dtype}")
        return array

    if single:
        array = arrays[""]
        if array.dtype.names:
            if array.ndim != 1:
                raise FileFormatError(path, f"a structured array must be 1-D (N,), got shape "
                                            f"{array.shape}")
            fields = {name: np.array(array[name]) for name in array.dtype.names}
            return _attributes(path, fields, array.shape[0])
        if array.ndim != 2 or array.shape[1] < 3:
            raise FileFormatError(path, f"expected an (N, 3) array (or (N, k > 3), or a "
                                        f"structured array with x, y, z), got shape "
                                        f"{array.shape}")
        numeric(array, "the array")
        fields = {"x": array[:, 0], "y": array[:, 1], "z": array[:, 2]}
        if array.shape[1] > 3:
            fields["extra"] = np.array(array[:, 3:])
        return _attributes(path, fields, array.shape[0])
    key = next((k for k in ("xyz", "points") if k in arrays), None)
    if key is not None:
        xyz = numeric(arrays.pop(key), f"array {key!r}")
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise FileFormatError(path, f"array {key!r} must have shape (N, 3), got "
                                        f"{xyz.shape}")
        fields = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}
    elif all(axis in arrays for axis in "xyz"):
        fields = {axis: numeric(arrays.pop(axis), f"array {axis!r}") for axis in "xyz"}
        lengths = {fields[axis].shape for axis in "xyz"}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise FileFormatError(path, f"arrays 'x', 'y', 'z' must have one shape (N,), got "
                                        f"{sorted(lengths)}")
    else:
        raise FileFormatError(path, f"no array named 'xyz' or 'points', nor 'x', 'y', 'z' "
                                    f"(arrays: {', '.join(arrays) or 'none'})")
    n_points = fields["x"].shape[0]
    for name, array in arrays.items():
        if array.ndim >= 1 and array.shape[0] == n_points:
            fields[name] = np.array(array)
    return _attributes(path, fields, n_points)
