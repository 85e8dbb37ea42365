"""PLY point clouds: ascii and binary of either byte order in, binary little-endian out.

The vertex element's x, y, z (+ the first intensity-like property, see clouds.INTENSITY_NAMES) as
float32 (N, 3|4); writes go through ddpo_ros.atomic, so a reader never sees half a file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_open
from .columns import ascii_floats, rows_to_write, xyzi_columns

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_PLY_ORDER = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


def _ply_header(f, path: Path):
    """The format and the elements [(name, count, [(property, numpy type, or None for a list)])]."""
    if f.readline(16).rstrip(b"\r\n") != b"ply":  # bounded: a binary non-PLY file may have no newline
        raise ValueError(f"{path}: not a PLY file (the first line is not 'ply')")
    fmt, elements = None, []
    for line in iter(f.readline, b""):
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            if fmt not in _PLY_ORDER:
                raise ValueError(f"{path}: PLY format {fmt!r} is not one of {', '.join(_PLY_ORDER)}")
            return fmt, elements
        if words[0] == "format" and len(words) == 3 and words[2] == "1.0":
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) == 5 and words[1] == "list":
            elements[-1][2].append((words[4], None))
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in _PLY_TYPES:
            elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise ValueError(f"{path}: bad PLY header line {line.strip().decode('ascii', 'replace')!r}")
    raise ValueError(f"{path}: PLY header has no end_header line")


def read_ply(path: str | Path) -> np.ndarray:
    """The vertices of a PLY file (ascii or binary, either byte order) as float32 (N, 3|4).

    Elements after `vertex` (faces, ...) are not read; elements before it are skipped.
    """
    path = Path(path)
    with open(path, "rb") as f:
        fmt, elements = _ply_header(f, path)
        names = [e[0] for e in elements]
        if "vertex" not in names:
            raise ValueError(f"{path}: PLY file has no vertex element")
        _, n, props = elements[names.index("vertex")]
        before = elements[: names.index("vertex")]
        fields = [p for p, _ in props]
        if any(t is None for _, t in props):
            raise ValueError(f"{path}: list property in the vertex element is not supported")
        if len(set(fields)) != len(fields):
            raise ValueError(f"{path}: repeated vertex property name in {' '.join(fields)}")
        if fmt == "ascii":
            # one line per element: split off the lines before and of the vertices, leave the rest unsplit
            skip = sum(count for _, count, _ in before)
            lines = f.read().split(b"\n", skip + n)[skip: skip + n]
            vals = ascii_floats(b" ".join(lines).split(), n, len(props), path)
            return xyzi_columns({p: vals[:, k] for k, p in enumerate(fields)}, path)
        order = _PLY_ORDER[fmt]
        for name, count, eprops in before:
            if any(t is None for _, t in eprops):  # a list's length is in the data: can't seek past it
                raise ValueError(f"{path}: element {name!r} with a list property before vertex is not supported")
            f.seek(count * np.dtype([(p, order + t) for p, t in eprops]).itemsize, os.SEEK_CUR)
        row = np.dtype([(p, order + t) for p, t in props])
        buf = f.read(n * row.itemsize)
    if len(buf) < n * row.itemsize:
        raise ValueError(f"{path}: truncated data: {len(buf)} bytes for {n} vertices of {row.itemsize} bytes")
    v = np.frombuffer(buf, row)
    return xyzi_columns({p: v[p] for p in fields}, path)


def write_ply(path: str | Path, xyz: np.ndarray, intensity: np.ndarray | None = None) -> None:
    """A binary little-endian PLY with float32 vertex properties x, y, z (+ intensity)."""
    pts = rows_to_write(xyz, intensity, path)
    names = ["x", "y", "z", "intensity"][: pts.shape[1]]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by ddpo_ros\n"
        f"element vertex {len(pts)}\n" + "".join(f"property float {n}\n" for n in names) + "end_header\n"
    )
    with atomic_open(path) as f:
        f.write(header.encode("ascii"))
        f.write(pts.tobytes())
