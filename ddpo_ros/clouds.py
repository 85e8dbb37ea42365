"""Point clouds as numpy arrays: KITTI .bin scans, the range crop, the bundled frame, PointCloud2.

`read_pointcloud2` / `make_pointcloud2` convert sensor_msgs/PointCloud2 from and to numpy. They are
duck-typed: the same code serves rclpy messages (data an array('B')) and rosbags typestore dataclasses
(data a uint8 array), so this module imports numpy only. File formats are in cloud_files.
"""
from __future__ import annotations

import array
import dataclasses
import operator
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# SemanticKITTI seq 00 frame 0, in the shared data folder beside the repository (CC BY-NC-SA 3.0).
KITTI_FRAME = Path("semantickitti_seq00_mini/sequences/00/velodyne/000000.bin")


def read_kitti_bin(path: str | Path) -> np.ndarray:
    """A KITTI velodyne .bin file: float32 little-endian rows (x, y, z, remission) -> (N, 4)."""
    raw = np.fromfile(path, dtype="<f4")
    if raw.size % 4:
        raise ValueError(f"{path}: {raw.size * 4} bytes is not a whole number of 16-byte KITTI points")
    return raw.reshape(-1, 4)


def crop_range(xyz: np.ndarray, r_min: float = 3.5, r_max: float = 50.0) -> np.ndarray:
    """Points with r_min < |xyz| < r_max (LiDiff's crop; the range uses x, y, z only)."""
    r = np.linalg.norm(xyz[:, :3], axis=1)
    return xyz[(r > r_min) & (r < r_max)]


def find_kitti_frame(data: str | Path | None = None) -> Path:
    """The bundled KITTI frame under `data`, $DDPO_DATA or ../shared/data (first that has it)."""
    candidates = [data, os.environ.get("DDPO_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / KITTI_FRAME).exists():
            return Path(c) / KITTI_FRAME
    raise FileNotFoundError(f"no KITTI frame {KITTI_FRAME} under --data, $DDPO_DATA or ../shared/data")


# Field names taken as the 4th column; the first of them (in file or message order) wins.
INTENSITY_NAMES = ("intensity", "remission", "reflectance", "i")


# ---------------------------------------------------------------- PointCloud2

class CloudError(ValueError):
    """A malformed PointCloud2; the message names the field or size at fault."""


@dataclass
class DecodedCloud:
    points: np.ndarray  # (N, 3|4) float32 x, y, z[, intensity]: finite, no all-zero xyz rows (drop_invalid)
    total: int  # width * height: the points in the message
    dropped: int  # rows removed for a non-finite x/y/z or x = y = z = 0 (0 without drop_invalid)


# sensor_msgs/PointField datatype codes -> numpy types (byte order added per message)
_DATATYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
_FLOAT32 = 7
_UINT32_MAX = 2**32 - 1  # the message's sizes are uint32


def _uint(obj, attr: str, what: str) -> int:
    """obj.attr as a Python int within uint32; a missing or odd value is a CloudError naming `what`."""
    value = getattr(obj, attr, None)
    try:
        value = operator.index(value)  # numpy integers pass, floats and None do not
    except TypeError:
        raise CloudError(f"{what} must be an integer, not {type(value).__name__}") from None
    if not 0 <= value <= _UINT32_MAX:
        raise CloudError(f"{what} {value} is outside 0..{_UINT32_MAX}")
    return value


def _named_fields(msg, intensity: bool) -> dict:
    """{"x", "y", "z", "i"} -> the first PointField of that role; fields we do not read are not checked."""
    try:
        fields = list(msg.fields)
    except (AttributeError, TypeError):
        raise CloudError("fields must be a list of PointField") from None
    found = {}
    for f in fields:
        name = getattr(f, "name", None)
        if not isinstance(name, str):
            continue
        role = name if name in ("x", "y", "z") else "i" if intensity and name.lower() in INTENSITY_NAMES else None
        if role and role not in found:
            found[role] = f
    return found


def _column(field, point_step: int, order: str) -> tuple[int, np.dtype]:
    """(byte offset in a point, numpy type) of a field, checked to lie inside point_step."""
    name = getattr(field, "name", "?")
    code = _uint(field, "datatype", f"field {name!r} datatype")
    if code not in _DATATYPES:
        raise CloudError(f"field {name!r} has unknown datatype {code} (PointField types are 1..8)")
    dtype = np.dtype(order + _DATATYPES[code])
    offset = _uint(field, "offset", f"field {name!r} offset")
    count = _uint(field, "count", f"field {name!r} count")
    nbytes = dtype.itemsize * max(count, 1)  # count 0 is read as 1: some writers leave it unset
    if offset + nbytes > point_step:
        raise CloudError(f"field {name!r} (offset {offset}, {nbytes} bytes) exceeds point_step {point_step}")
    return offset, dtype


def _buffer(data) -> np.ndarray:
    """The message's data as a flat uint8 array, without copying bytes-like data."""
    try:
        if isinstance(data, np.ndarray):  # rosbags: uint8 already
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        try:
            return np.frombuffer(data, np.uint8)  # bytes, bytearray, array('B'), memoryview
        except TypeError:
            return np.asarray(data, np.uint8).reshape(-1)  # a plain list of byte values
    except (TypeError, ValueError, OverflowError, BufferError):
        raise CloudError(f"data must be bytes, not {type(data).__name__}") from None


def read_pointcloud2(msg, *, intensity: bool = True, max_points: int | None = None,
                     drop_invalid: bool = True) -> DecodedCloud:
    """x, y, z (+ the first intensity-like field) of any PointCloud2 layout as float32 rows.

    Rows with a non-finite x/y/z or x = y = z = 0 (many drivers' "no return") are dropped whatever
    is_dense says (`valid_rows`), unless `drop_invalid` is False: the completion path leaves them to
    the Completer, which filters and counts them once. A non-finite intensity becomes 0 (the point
    itself is fine).
    """
    width, height = _uint(msg, "width", "width"), _uint(msg, "height", "height")
    point_step, row_step = _uint(msg, "point_step", "point_step"), _uint(msg, "row_step", "row_step")
    total = width * height
    if max_points is not None and total > max_points:
        raise CloudError(f"{total} points > max_points {max_points}")
    found = _named_fields(msg, intensity)
    roles = ["x", "y", "z"] + (["i"] if "i" in found else [])
    if total == 0:  # an empty cloud is valid, even one with no fields (a default-constructed message)
        return DecodedCloud(np.empty((0, len(roles)), np.float32), 0, 0)
    missing = [axis for axis in "xyz" if axis not in found]
    if missing:
        names = " ".join(str(getattr(f, "name", "?")) for f in msg.fields) or "none"
        raise CloudError(f"no {missing[0]!r} field (fields: {names})")
    if point_step == 0:
        raise CloudError(f"point_step is 0 for {total} points")
    order = ">" if getattr(msg, "is_bigendian", False) else "<"
    columns = [_column(found[role], point_step, order) for role in roles]
    if row_step < width * point_step:
        raise CloudError(f"row_step {row_step} < width {width} * point_step {point_step}")
    buf = _buffer(getattr(msg, "data", None))
    need = (height - 1) * row_step + width * point_step  # the last row needs no padding
    if buf.size < need:
        raise CloudError(f"data has {buf.size} bytes, the layout needs {need} "
                         f"((height - 1) * row_step + width * point_step)")

    out = np.empty((height, width, len(roles)), np.float32)
    # float64 beyond float32's range becomes inf (dropped below): no overflow warning for that
    with np.errstate(over="ignore", invalid="ignore"):
        for k, (offset, dtype) in enumerate(columns):
            # a strided view straight into the bytes: rows at row_step, points at point_step
            out[:, :, k] = np.ndarray((height, width), dtype, buf, offset, (row_step, point_step))
    points = out.reshape(total, len(roles))
    if len(roles) == 4:
        points[~np.isfinite(points[:, 3]), 3] = 0.0
    if not drop_invalid:
        return DecodedCloud(points, total, 0)
    points, dropped = valid_rows(points)
    return DecodedCloud(points, total, dropped)


def valid_rows(points: np.ndarray) -> tuple[np.ndarray, int]:
    """The rows with a finite x, y, z that is not x = y = z = 0 (many drivers' "no return"), and
    how many were removed. The one filter of invalid points: the PointCloud2 decoder and the
    Completer's input check both use it."""
    # column by column: a reduction along the short axis 1 of an (N, 3) array is ~5x slower
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    keep = np.isfinite(x)
    keep &= np.isfinite(y)
    keep &= np.isfinite(z)
    keep &= (x != 0) | (y != 0) | (z != 0)
    kept = int(np.count_nonzero(keep))
    return (points if kept == len(points) else points[keep]), len(points) - kept


def make_pointcloud2(points: np.ndarray, header, cloud_cls, field_cls):
    """A PointCloud2 of float32 x, y, z (+ intensity for 4 columns) for rclpy or rosbags classes.

    `header` is built by the caller with the same library as `cloud_cls` and `field_cls`.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] not in (3, 4):
        raise ValueError(f"points must be (N, 3) or (N, 4), got shape {pts.shape}")
    n, k = pts.shape
    raw = np.array(pts, dtype="<f4", order="C").reshape(-1).view(np.uint8)  # a copy: the message owns it
    fields = [field_cls(name=name, offset=4 * j, datatype=_FLOAT32, count=1)
              for j, name in enumerate(("x", "y", "z", "intensity")[:k])]
    # is_dense is honest: a caller may pass NaN rows through
    dense = bool(np.isfinite(pts[:, :3]).all())
    sizes = dict(height=1, width=n, fields=fields, is_bigendian=False, point_step=4 * k,
                 row_step=4 * k * n, is_dense=dense)
    if dataclasses.is_dataclass(cloud_cls):  # rosbags: every field through the constructor
        return cloud_cls(header=header, data=raw, **sizes)
    msg = cloud_cls(header=header, **sizes)
    # rclpy keeps an array('B') as it is; bytes or a list would be checked or copied element-wise (~100 ms)
    data = array.array("B")
    data.frombytes(raw)
    msg.data = data
    return msg
