"""KITTI .bin reading, the range crop and locating the bundled frame."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA
from ddpo_ros.clouds import KITTI_FRAME, crop_range, find_kitti_frame, read_kitti_bin


def test_reads_the_real_frame():
    scan = read_kitti_bin(DATA / KITTI_FRAME)
    assert scan.shape == (124668, 4) and scan.dtype == np.float32  # SOURCE.md: 124668 points
    assert np.isfinite(scan).all() and 0 <= scan[:, 3].min() and scan[:, 3].max() <= 1


def test_truncated_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(np.zeros(7, np.float32).tobytes())
    with pytest.raises(ValueError, match=r"bad\.bin: 28 bytes"):
        read_kitti_bin(bad)


def test_crop_uses_xyz_only():
    pts = np.array([[1, 0, 0, 99], [4, 0, 0, 99], [0, 30, 40, 0], [0, 0, 49.9, 0], [3.5, 0, 0, 0]], np.float32)
    assert crop_range(pts).tolist() == [pts[1].tolist(), pts[3].tolist()]  # 50 m and 3.5 m are excluded


def test_find_frame_prefers_the_explicit_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPO_DATA", str(tmp_path))  # has no frame: falls through
    assert find_kitti_frame(DATA) == DATA / KITTI_FRAME
    with pytest.raises(FileNotFoundError, match="no KITTI frame"):
        monkeypatch.setattr("ddpo_ros.clouds.Path.exists", lambda self: False)
        find_kitti_frame(tmp_path)
