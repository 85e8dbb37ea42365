"""What the point cloud file formats share: named columns to x, y, z (+ intensity), ascii values
parsed by numpy, and points checked and packed as little-endian float32 rows for writing.

A module of its own so that ply.py and pcd.py need not import cloud_files.py, which imports them; numpy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..clouds import INTENSITY_NAMES


def xyzi_columns(cols: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """Columns x, y, z (+ the first intensity-like one) of `cols` (name -> 1-D array) as float32 (N, 3|4)."""
    for axis in "xyz":
        if axis not in cols:
            raise ValueError(f"{path}: no {axis!r} field (fields: {' '.join(cols) or 'none'})")
    names = ["x", "y", "z"] + [n for n in cols if n.lower() in INTENSITY_NAMES][:1]
    # unsafe casting: doubles and integers are narrowed to float32 on purpose
    return np.stack([cols[n] for n in names], axis=1, dtype=np.float32, casting="unsafe")


def ascii_floats(tokens: list[bytes], rows: int, width: int, path: Path) -> np.ndarray:
    """Whitespace-split ascii values as a float64 (rows, width) array (numpy parses the tokens in C)."""
    if len(tokens) < rows * width:
        raise ValueError(f"{path}: truncated data: {len(tokens)} values for {rows} rows of {width}")
    try:
        return np.array(tokens[: rows * width], dtype=np.float64).reshape(rows, width)
    except ValueError as e:
        raise ValueError(f"{path}: bad ascii value: {e}") from None


def rows_to_write(xyz, intensity, path) -> np.ndarray:
    """x, y, z (+ intensity) as one C-contiguous little-endian float32 (N, 3|4) array for writing."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"{path}: xyz must be (N, 3), got {xyz.shape}")
    if intensity is None:
        return np.ascontiguousarray(xyz, dtype="<f4")
    intensity = np.asarray(intensity).reshape(-1)
    if len(intensity) != len(xyz):
        raise ValueError(f"{path}: {len(intensity)} intensities for {len(xyz)} points")
    return np.column_stack([xyz, intensity]).astype("<f4")
