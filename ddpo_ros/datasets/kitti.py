"""KITTI odometry / SemanticKITTI sequence files as numpy arrays (no ROS, no torch).

Formats (KITTI odometry devkit): `times.txt` one time in seconds per line; `calib.txt` lines
`NAME: v1 ... v12` (3x4 row-major; `Tr` is velodyne -> cam0); `poses.txt` 12 numbers per line,
the 3x4 pose of cam0 of frame k in cam0 of frame 0; `labels/*.label` uint32 per point, low 16 bits
the semantic class. Every parse error names the file and the line.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..clouds import read_kitti_bin

NOMINAL_PERIOD = 0.1  # s; the HDL-64E spins at 10 Hz, used only when times.txt is missing


def _numbers(path: Path, width: int | None = None, *, named: bool = False):
    """Yield (line number, name or None, float64 row) for each non-blank line of a text file."""
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        name = None
        if named:
            name, sep, line = line.partition(":")
            if not sep:
                raise ValueError(f"{path} line {n}: expected 'NAME: numbers', got {name.strip()[:40]!r}")
            name = name.strip()
        try:
            row = np.array(line.split(), dtype=np.float64)
        except ValueError:
            raise ValueError(f"{path} line {n}: not a list of numbers: {line.strip()[:60]!r}") from None
        if width is not None and row.size != width:
            raise ValueError(f"{path} line {n}: expected {width} numbers, got {row.size}")
        if not np.isfinite(row).all():
            raise ValueError(f"{path} line {n}: NaN or infinite value")
        yield n, name, row


def read_times(path: str | Path) -> np.ndarray:
    """times.txt -> float64 (N,) seconds since the start of the sequence, strictly increasing."""
    rows = list(_numbers(path, 1))
    times = np.array([r[0] for _, _, r in rows], dtype=np.float64)
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        n = rows[bad[0] + 1][0]
        raise ValueError(f"{path} line {n}: time {times[bad[0] + 1]} does not increase "
                         f"(previous {times[bad[0]]})")
    return times


def read_calib(path: str | Path) -> dict[str, np.ndarray]:
    """calib.txt -> {name: (3, 4)} float64; "Tr" (velodyne -> cam0) as a 4x4 matrix."""
    calib = {}
    for n, name, row in _numbers(path, named=True):
        if row.size == 9:   # R0_rect in the KITTI object / raw layouts
            calib[name] = row.reshape(3, 3)
        elif row.size == 12:
            calib[name] = row.reshape(3, 4)
        else:
            raise ValueError(f"{path} line {n}: {name}: expected 12 numbers, got {row.size}")
    if "Tr" not in calib and "Tr_velo_to_cam" in calib:  # raw-data spelling of the same matrix
        calib["Tr"] = calib["Tr_velo_to_cam"]
    if "Tr" in calib:
        calib["Tr"] = np.vstack([calib["Tr"], [0.0, 0.0, 0.0, 1.0]])
    return calib


def read_poses(path: str | Path, *, tol: float = 1e-3) -> np.ndarray:
    """poses.txt -> (N, 4, 4) float64 cam0 poses; a rotation that is not orthonormal is an error."""
    rows = list(_numbers(path, 12))
    if not rows:
        raise ValueError(f"{path}: no poses")
    poses = np.zeros((len(rows), 4, 4))
    poses[:, :3, :] = np.stack([r for _, _, r in rows]).reshape(-1, 3, 4)
    poses[:, 3, 3] = 1.0
    # catches transposed, truncated-precision or wrong-column files before they smear a map
    rot = poses[:, :3, :3]
    err = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
    bad = np.flatnonzero(err > tol)
    if bad.size:
        raise ValueError(f"{path} line {rows[bad[0]][0]}: rotation is not orthonormal "
                         f"(|R R^T - I| = {err[bad[0]]:.2g})")
    return poses


def velodyne_poses(poses: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """Camera-frame poses (N, 4, 4) -> velodyne-frame poses inv(Tr) @ P @ Tr (SemanticKITTI)."""
    return np.linalg.inv(tr) @ np.asarray(poses, dtype=np.float64) @ tr


def read_labels(path: str | Path, num_points: int | None = None) -> np.ndarray:
    """SemanticKITTI .label -> uint16 (N,) semantic classes (the instance id is dropped)."""
    raw = np.fromfile(path, dtype="<u4")
    if Path(path).stat().st_size % 4:
        raise ValueError(f"{path}: {Path(path).stat().st_size} bytes is not a whole number of uint32 labels")
    if num_points is not None and raw.size != num_points:
        raise ValueError(f"{path}: {raw.size} labels for a scan of {num_points} points")
    return (raw & 0xFFFF).astype(np.uint16)


class KittiSequence:
    """One sequence folder: velodyne/*.bin plus times.txt, calib.txt and (optional) poses.

    Frame i is the i-th .bin in name order; its times/poses row is the number in its file name,
    so a folder holding frames 100-199 still gets the right rows. Poses come from `poses` if
    given, else poses.txt in the folder, else the KITTI tree's ../../poses/<seq>.txt, else none.
    """

    def __init__(self, seq_dir: str | Path, *, poses: str | Path | None = None):
        self.root = Path(seq_dir)
        self.scans = sorted((self.root / "velodyne").glob("*.bin"))
        if not self.scans:
            raise FileNotFoundError(f"{self.root}: no velodyne/*.bin scans")
        try:
            self.frames = np.array([int(p.stem) for p in self.scans])
        except ValueError:
            raise ValueError(f"{self.root / 'velodyne'}: scan names must be frame numbers "
                             f"like 000000.bin") from None
        last = int(self.frames.max())
        times = self.root / "times.txt"
        if times.exists():
            self.times = read_times(times)
            if last >= len(self.times):
                raise ValueError(f"{times}: {len(self.times)} lines, but scan {self.scans[-1].name} needs "
                                 f"line {last + 1}")
        else:
            warnings.warn(f"{times} missing: assuming {1 / NOMINAL_PERIOD:g} Hz scans", stacklevel=2)
            self.times = np.arange(last + 1) * NOMINAL_PERIOD
        calib = self.root / "calib.txt"
        self.calib = read_calib(calib) if calib.exists() else {}
        self.poses_path = self._find_poses(poses)
        self.camera_poses = read_poses(self.poses_path) if self.poses_path else None
        self.velodyne_poses = None
        if self.camera_poses is not None:
            if "Tr" not in self.calib:
                raise ValueError(f"{calib}: poses need the velodyne->camera matrix Tr, which is missing")
            if last >= len(self.camera_poses):
                raise ValueError(f"{self.poses_path}: {len(self.camera_poses)} poses, but scan "
                                 f"{self.scans[-1].name} needs line {last + 1}")
            self.velodyne_poses = velodyne_poses(self.camera_poses, self.calib["Tr"])

    def _find_poses(self, given) -> Path | None:
        if given is not None:
            if not Path(given).exists():
                raise FileNotFoundError(f"{given}: no such poses file")
            return Path(given)
        for cand in (self.root / "poses.txt", self.root.parent.parent / "poses" / f"{self.root.name}.txt"):
            if cand.exists():
                return cand
        return None

    def __len__(self) -> int:
        return len(self.scans)

    def scan(self, i: int) -> np.ndarray:
        """Scan i as float32 (N, 4): x, y, z, remission in the velodyne frame."""
        return read_kitti_bin(self.scans[i])

    def time(self, i: int) -> float:
        """Seconds since the sequence start (times.txt)."""
        return float(self.times[self.frames[i]])

    def pose(self, i: int) -> np.ndarray | None:
        """4x4 velodyne pose of scan i in the velodyne frame of frame 0, or None without poses."""
        return None if self.velodyne_poses is None else self.velodyne_poses[self.frames[i]]

    def labels(self, i: int) -> np.ndarray | None:
        """SemanticKITTI classes of scan i (uint16), or None when labels/<frame>.label is absent."""
        path = self.root / "labels" / f"{self.scans[i].stem}.label"
        if not path.exists():
            return None
        return read_labels(path, self.scans[i].stat().st_size // 16)
