"""Shared test fixtures: real data location, deterministic seeds."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DDPO_DATA", REPO.parent / "shared" / "data"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)


def kitti_scan(frame: int = 0) -> np.ndarray:
    """A real KITTI seq 00 scan (N, 4) float32: x, y, z, remission."""
    path = DATA / "semantickitti_seq00_mini" / "sequences" / "00" / "velodyne" / f"{frame:06d}.bin"
    if not path.exists():
        pytest.fail(f"real test data missing: {path} (set DDPO_DATA to the shared data folder)")
    return np.fromfile(path, np.float32).reshape(-1, 4)


@pytest.fixture
def scan_xyz() -> np.ndarray:
    """Frame 0 cropped to the pipeline's 3.5 m < r < 50 m."""
    xyz = kitti_scan(0)[:, :3]
    r = np.linalg.norm(xyz, axis=1)
    return xyz[(r > 3.5) & (r < 50)]
