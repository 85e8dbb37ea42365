"""Point cloud files as numpy arrays: KITTI .bin, PLY, PCD and .npy, read and written.

`read_cloud` / `write_cloud` pick the format by suffix: .bin (KITTI velodyne), .ply (ascii and
binary of either byte order in, binary little-endian out), .pcd (ascii, binary and binary_compressed in;
ascii and binary out) and .npy. Readers return float32 (N, 3), or (N, 4) when the file has an
intensity-like field (see clouds.INTENSITY_NAMES); NaN rows are kept for the caller to drop.
Writers write a temporary file beside the target and rename it (ddpo_ros.atomic), so a reader never
sees half a file. The PLY and PCD codecs are in ply.py and pcd.py, re-exported here.
numpy only at import: `ddpo --help` imports SUFFIXES from here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_open
from ..clouds import read_kitti_bin
from .pcd import lzf_decompress, read_pcd, write_pcd
from .ply import read_ply, write_ply

__all__ = ["SUFFIXES", "lzf_decompress", "read_cloud", "read_pcd", "read_ply", "write_cloud", "write_pcd",
           "write_ply"]

SUFFIXES = (".bin", ".npy", ".pcd", ".ply")


def read_cloud(path: str | Path) -> np.ndarray:
    """A point cloud file as float32 (N, 3) or (N, 4), the format chosen by the suffix (see SUFFIXES)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        return read_kitti_bin(path)
    if suffix == ".ply":
        return read_ply(path)
    if suffix == ".pcd":
        return read_pcd(path)
    if suffix == ".npy":
        pts = np.load(path, allow_pickle=False)
        if pts.ndim != 2 or pts.shape[1] not in (3, 4):
            raise ValueError(f"{path}: a .npy cloud must be (N, 3) or (N, 4), got {pts.shape}")
        return pts.astype(np.float32, copy=False)
    raise ValueError(f"{path}: unknown point cloud suffix {suffix!r} (supported: {', '.join(SUFFIXES)})")


def write_cloud(path: str | Path, xyz: np.ndarray) -> None:
    """Write (N, 3) points, or (N, 4) with intensity, in the format chosen by the suffix (see SUFFIXES)."""
    path = Path(path)
    pts = np.asarray(xyz)
    if pts.ndim != 2 or pts.shape[1] not in (3, 4):
        raise ValueError(f"{path}: points must be (N, 3) or (N, 4), got {pts.shape}")
    intensity = pts[:, 3] if pts.shape[1] == 4 else None
    suffix = path.suffix.lower()
    if suffix == ".ply":
        write_ply(path, pts[:, :3], intensity)
    elif suffix == ".pcd":
        write_pcd(path, pts[:, :3], intensity)
    elif suffix == ".bin":
        kitti = np.zeros((len(pts), 4), "<f4")  # KITTI rows always have 4 floats: remission 0 if unknown
        kitti[:, : pts.shape[1]] = pts
        with atomic_open(path) as f:
            f.write(kitti.tobytes())
    elif suffix == ".npy":
        with atomic_open(path) as f:  # a file object, as np.save would add ".npy" to a temp name
            np.save(f, pts.astype(np.float32, copy=False))
    else:
        raise ValueError(f"{path}: unknown point cloud suffix {suffix!r} (supported: {', '.join(SUFFIXES)})")
