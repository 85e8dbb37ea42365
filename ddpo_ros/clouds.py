"""Point clouds as numpy arrays: KITTI .bin reading, the range crop, the bundled sample frame.

(PointCloud2 <-> numpy, PLY and PCD join this module with the node and CLI issues.)
"""
from __future__ import annotations

import os
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
