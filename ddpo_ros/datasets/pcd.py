"""PCL .pcd point clouds: DATA ascii, binary and binary_compressed (LZF) in; ascii and binary out.

x, y, z (+ the first intensity-like field, see clouds.INTENSITY_NAMES) as float32 (N, 3|4);
writes go through ddpo_ros.atomic, so a reader never sees half a file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_open
from .columns import ascii_floats, rows_to_write, xyzi_columns

_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
_PCD_SIZES = {"F": (4, 8), "I": (1, 2, 4, 8), "U": (1, 2, 4, 8)}


def _pcd_header(f, path: Path) -> dict[str, list[str]]:
    """The header lines up to and including DATA, as {KEY: [values]} ('#' lines are comments)."""
    header = {}
    for line in iter(f.readline, b""):
        words = line.decode("ascii", "replace").split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() not in _PCD_KEYS or len(words) < 2:
            raise ValueError(f"{path}: not a PCD header line: {line.strip()[:60].decode('ascii', 'replace')!r}")
        header[words[0].upper()] = words[1:]
        if words[0].upper() == "DATA":
            return header
    raise ValueError(f"{path}: PCD header has no DATA line")


def _pcd_layout(header: dict[str, list[str]], path: Path):
    """(points, row bytes, [(field, numpy type, count, byte offset in a row, value offset in a row)])."""
    def ints(key, default=None):
        if key not in header and default is not None:
            return default
        if key not in header:
            raise ValueError(f"{path}: PCD header has no {key} line")
        if not all(w.isdigit() for w in header[key]):
            raise ValueError(f"{path}: PCD {key} must be non-negative integers: {' '.join(header[key])}")
        return [int(w) for w in header[key]]

    fields = header.get("FIELDS") or []
    sizes, counts = ints("SIZE"), ints("COUNT", [1] * len(fields))
    types = [t.upper() for t in header.get("TYPE", [])]
    for key, values in (("SIZE", sizes), ("TYPE", types), ("COUNT", counts)):
        if len(values) != len(fields):
            raise ValueError(f"{path}: PCD {key} has {len(values)} entries for {len(fields)} FIELDS")
    named = [name for name in fields if name != "_"]
    if len(set(named)) != len(named):
        raise ValueError(f"{path}: repeated PCD field name in FIELDS {' '.join(fields)}")
    width, height = ints("WIDTH")[0], ints("HEIGHT", [1])[0]
    points = ints("POINTS", [width * height])[0]
    layout, nbytes, nvalues = [], 0, 0
    for name, size, kind, count in zip(fields, sizes, types, counts):
        if size not in _PCD_SIZES.get(kind, ()):
            raise ValueError(f"{path}: field {name!r} has unsupported TYPE {kind} SIZE {size}")
        layout.append((name, np.dtype(f"<{kind.lower()}{size}"), count, nbytes, nvalues))
        nbytes, nvalues = nbytes + size * count, nvalues + count
    return points, nbytes, layout


def read_pcd(path: str | Path) -> np.ndarray:
    """A PCL .pcd file (v0.6/v0.7; DATA ascii, binary or binary_compressed) as float32 (N, 3|4).

    Fields named '_' are padding and are skipped; of a field with COUNT > 1 the first value is used.
    """
    path = Path(path)
    with open(path, "rb") as f:
        header = _pcd_header(f, path)
        points, row, layout = _pcd_layout(header, path)
        data = header["DATA"][0].lower()
        fields = [(name, t, c, b, v) for name, t, c, b, v in layout if name != "_"]
        if data == "ascii":
            vals = ascii_floats(f.read().split(), points, sum(c for _, _, c, _, _ in layout), path)
            return xyzi_columns({name: vals[:, v] for name, _, _, _, v in fields}, path)
        if data == "binary":
            buf = f.read(points * row)
            if len(buf) < points * row:
                raise ValueError(f"{path}: truncated data: {len(buf)} bytes for {points} points of {row} bytes")
            # a record dtype with explicit offsets: padding bytes simply belong to no field
            rec = np.dtype({
                "names": [name for name, *_ in fields], "formats": [(t, (c,)) for _, t, c, _, _ in fields],
                "offsets": [b for _, _, _, b, _ in fields], "itemsize": row,
            })
            v = np.frombuffer(buf, rec)
            return xyzi_columns({name: v[name][:, 0] for name, *_ in fields}, path)
        if data == "binary_compressed":
            sizes = f.read(8)
            if len(sizes) < 8:
                raise ValueError(f"{path}: truncated data: no binary_compressed size words")
            packed, unpacked = (int(s) for s in np.frombuffer(sizes, "<u4"))
            if unpacked != points * row:
                raise ValueError(f"{path}: binary_compressed size {unpacked} != {points} points * {row} bytes")
            buf = f.read(packed)
            if len(buf) < packed:
                raise ValueError(f"{path}: truncated data: {len(buf)} of {packed} compressed bytes")
            try:
                raw = lzf_decompress(buf, unpacked)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            # column-wise: all of field 1's values, then all of field 2's, ...; a field starts at
            # `points` times its offset in a row
            return xyzi_columns({
                name: np.frombuffer(raw, t, points * c, points * b).reshape(points, c)[:, 0]
                for name, t, c, b, _ in fields
            }, path)
    raise ValueError(f"{path}: unknown PCD DATA {data!r} (ascii, binary or binary_compressed)")


def lzf_decompress(data: bytes, size: int) -> bytes:
    """LZF (liblzf, as PCL's binary_compressed uses it) -> exactly `size` bytes.

    Each control byte c starts either a literal run (c < 32: the next c + 1 bytes) or a back-reference:
    length c >> 5 (7 means "add the next byte"), plus 2; distance ((c & 31) << 8 | next byte) + 1
    back from the output's end. A reference may overlap the bytes it produces (distance < length).
    """
    src, out = memoryview(data), bytearray(size)
    ip = op = 0
    while ip < len(src):
        ctrl = src[ip]
        ip += 1
        if ctrl < 32:
            length = ctrl + 1
            if ip + length > len(src) or op + length > size:
                raise ValueError(f"corrupt LZF data: literal run of {length} at input byte {ip - 1}")
            out[op: op + length] = src[ip: ip + length]
            ip += length
        else:
            length = ctrl >> 5
            if ip + (length == 7) >= len(src):
                raise ValueError(f"corrupt LZF data: back-reference cut off at input byte {ip - 1}")
            if length == 7:
                length += src[ip]
                ip += 1
            length += 2
            dist = ((ctrl & 31) << 8 | src[ip]) + 1
            ip += 1
            if dist > op or op + length > size:
                raise ValueError(
                    f"corrupt LZF data: back-reference ({dist} back, {length} long) at output byte {op}")
            # an overlapping reference (dist < length) repeats its first `dist` bytes: copy that period
            # whole times plus a part, not byte by byte; otherwise the period is the whole reference
            period = out[op - dist: op - dist + min(dist, length)]
            out[op: op + length] = (period * (length // dist + 1))[:length]
        op += length
    if op != size:
        raise ValueError(f"corrupt LZF data: {op} bytes decompressed, {size} expected")
    return bytes(out)


def write_pcd(
    path: str | Path, xyz: np.ndarray, intensity: np.ndarray | None = None, data: str = "binary"
) -> None:
    """A PCD v0.7 file with float32 fields x, y, z (+ intensity); `data` is "ascii" or "binary"."""
    if data not in ("ascii", "binary"):
        raise ValueError(f"{path}: PCD data must be 'ascii' or 'binary', not {data!r}")
    pts = rows_to_write(xyz, intensity, path)
    k, n = pts.shape[1], len(pts)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(['x', 'y', 'z', 'intensity'][:k])}\nSIZE {' '.join(['4'] * k)}\n"
        f"TYPE {' '.join(['F'] * k)}\nCOUNT {' '.join(['1'] * k)}\nWIDTH {n}\nHEIGHT 1\n"
        f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n"
    )
    with atomic_open(path) as f:
        f.write(header.encode("ascii"))
        if data == "binary":
            f.write(pts.tobytes())
        else:
            np.savetxt(f, pts, fmt="%.9g")  # 9 significant digits give back every float32 exactly
