"""Writers of point files for the tests, independent of cusparseconv.io.

PCD files are written here from PCL's format specification (header lines
VERSION, FIELDS, SIZE, TYPE, COUNT, WIDTH, HEIGHT, VIEWPOINT, POINTS, DATA;
``ascii`` rows, ``binary`` array of structures, ``binary_compressed`` LZF of a
structure of arrays preceded by the compressed and decompressed sizes) with a
brute-force LZF encoder; LAS/LAZ by laspy, PLY by plyfile.
"""

import struct

import numpy as np


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


_PCD_TYPE = {"f": "F", "i": "I", "u": "U"}


def lzf_literals(data: bytes) -> bytes:
    """A valid LZF stream of literal runs only (fast; no compression)."""
    out = bytearray()
    for start in range(0, len(data), 32):
        chunk = data[start:start + 32]
        out.append(len(chunk) - 1)
        out += chunk
    return bytes(out)


def pcd_bytes(fields: dict, mode: str, width=None, height=1, points=None,
              extra_header: str = "", lzf=lzf_compress) -> bytes:
    """A PCD file of ``fields`` (name -> (N,) or (N, count) array) in ``mode``;
    ``lzf`` encodes binary_compressed data."""
    names = list(fields)
    arrays = [np.asarray(fields[n]) for n in names]
    n = arrays[0].shape[0]
    counts = [1 if a.ndim == 1 else a.shape[1] for a in arrays]
    header = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
              f"FIELDS {' '.join(names)}\n"
              f"SIZE {' '.join(str(a.dtype.itemsize) for a in arrays)}\n"
              f"TYPE {' '.join(_PCD_TYPE[a.dtype.kind] for a in arrays)}\n"
              f"COUNT {' '.join(map(str, counts))}\n"
              f"WIDTH {n if width is None else width}\nHEIGHT {height}\n"
              f"VIEWPOINT 0 0 0 1 0 0 0\n{extra_header}"
              f"POINTS {n if points is None else points}\nDATA {mode}\n").encode()
    if mode == "ascii":
        rows = []
        for i in range(n):
            values = []
            for a in arrays:
                values.extend(np.atleast_1d(a[i]).tolist())
            rows.append(" ".join(repr(v) if isinstance(v, float) else str(v) for v in values))
        return header + ("\n".join(rows) + "\n").encode()
    if mode == "binary":
        record = np.dtype([(f"f{i}", a.dtype.newbyteorder("<"), (c,)) if c > 1 else
                           (f"f{i}", a.dtype.newbyteorder("<"))
                           for i, (a, c) in enumerate(zip(arrays, counts))])
        table = np.empty(n, record)
        for i, a in enumerate(arrays):
            table[f"f{i}"] = a
        return header + table.tobytes()
    raw = b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays)
    packed = lzf(raw)
    return header + struct.pack("<II", len(packed), len(raw)) + packed


def las_bytes(path, xyz, point_format=3, version="1.2", scale=0.001, offset=(0, 0, 0),
              **dims):
    """Write a LAS (or, for a .laz path, LAZ) file with laspy and return its bytes."""
    import laspy

    header = laspy.LasHeader(point_format=point_format, version=version)
    header.scales = np.full(3, scale)
    header.offsets = np.asarray(offset, dtype=np.float64)
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    for name, values in dims.items():
        las[name] = values
    las.write(str(path))
    return path.read_bytes()


def ply_bytes(path, vertices, text=False, byte_order="<", faces=None, faces_first=False):
    """Write a PLY file with plyfile (vertex element, optional face element)."""
    import plyfile

    elements = [plyfile.PlyElement.describe(vertices, "vertex")]
    if faces is not None:
        face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
        face["vertex_indices"] = faces
        element = plyfile.PlyElement.describe(face, "face")
        elements = [element] + elements if faces_first else elements + [element]
    plyfile.PlyData(elements, text=text, byte_order=byte_order).write(str(path))
    return path.read_bytes()
