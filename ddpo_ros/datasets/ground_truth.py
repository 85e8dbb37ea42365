"""Ground truth for a scan, as LiDiff builds it: an aggregated, voxelised map cut to the scan.

Reference (map_from_scans.py and the SemanticKITTI loader, reference section 3):
- map: every scan's static points (labels 1 < l < 252 when labels exist), r > 3.5 m, moved to
  the world frame with the velodyne pose inv(Tr) P Tr, merged keeping the first point of each
  0.1 m voxel;
- per scan: map points within 50 m of the scan's pose, moved into the scan frame, z > -4, and
  only inside the 10 m cells that the scan itself occupies (the "viewpoint" filter).
Without labels the static filter cannot run: moving objects stay in the map (`MapBuilder.labelled`).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

STATIC = (1, 252)  # SemanticKITTI: 0 unlabeled, 1 outlier, >= 252 moving classes


def _voxel_keys(points: np.ndarray, voxel: float) -> np.ndarray:
    """One int64 key per point for its voxel (21 bits per axis: +-100 km at 0.1 m)."""
    v = np.floor(points / voxel).astype(np.int64) + (1 << 20)
    return (v[:, 0] << 42) | (v[:, 1] << 21) | v[:, 2]


class MapBuilder:
    """Incremental, memory-bounded map: a scan adds only points whose voxel is still empty.

    The occupied voxels are kept as a few sorted key blocks (a log-structured set): a scan is
    looked up in each block by binary search and becomes a new block; blocks of similar size are
    merged, so a 4,500-scan sequence costs O(n log n) in all and 20 bytes per map point.
    """

    def __init__(self, voxel: float = 0.1, min_range: float = 3.5):
        self.voxel, self.min_range = voxel, min_range
        self._blocks: list[np.ndarray] = []       # sorted, disjoint voxel keys; sizes decrease
        self._chunks: list[np.ndarray] = []
        self.labelled = True                      # False once a scan came without labels
        self.scans = 0

    def _occupied(self, keys: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(keys), bool)
        for block in self._blocks:
            pos = np.minimum(np.searchsorted(block, keys), len(block) - 1)
            hit |= block[pos] == keys
        return hit

    def _insert(self, keys: np.ndarray) -> None:
        self._blocks.append(keys)
        while len(self._blocks) > 1 and len(self._blocks[-2]) <= 2 * len(self._blocks[-1]):
            new = self._blocks.pop()
            self._blocks[-1] = np.sort(np.concatenate([self._blocks[-1], new]))

    def add(self, scan_xyz: np.ndarray, pose: np.ndarray, labels: np.ndarray | None = None) -> int:
        """Add one scan (sensor frame, (N, 3+)) with its 4x4 velodyne pose; returns points added."""
        xyz = np.asarray(scan_xyz, np.float64)[:, :3]
        keep = np.linalg.norm(xyz, axis=1) > self.min_range
        if labels is None:
            self.labelled = False
        else:
            sem = np.asarray(labels) & 0xFFFF
            keep &= (sem > STATIC[0]) & (sem < STATIC[1])
        # keys from the float32 points that are stored, so a stored point never sits in a neighbour's voxel
        world = (xyz[keep] @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
        keys, first = np.unique(_voxel_keys(world, self.voxel), return_index=True)  # first point per voxel
        new = ~self._occupied(keys)
        if new.any():
            self._insert(keys[new])
            self._chunks.append(world[np.sort(first[new])])
        self.scans += 1
        return int(new.sum())

    @property
    def points(self) -> np.ndarray:
        """(M, 3) float32 world-frame map."""
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.empty((0, 3), np.float32)


def scan_ground_truth(map_points: np.ndarray, pose: np.ndarray, scan_xyz: np.ndarray, *,
                      max_range: float = 50.0, z_min: float = -4.0, z_max: float = np.inf,
                      cell: float = 10.0) -> np.ndarray:
    """The map as the scan's ground truth, in the scan frame (float32).

    Training keeps z > -4 (z_max inf); the reference's evaluation keeps -4 < z < 4.4 and builds the
    viewpoint cells from the raw scan within max_range (pass that scan).
    """
    near = np.linalg.norm(map_points[:, :3] - pose[:3, 3], axis=1) < max_range
    local = (map_points[near, :3].astype(np.float64) - pose[:3, 3]) @ pose[:3, :3]  # inv(pose) applied
    local = local[(local[:, 2] > z_min) & (local[:, 2] < z_max)]
    scan = np.asarray(scan_xyz, np.float64)[:, :3]
    origin = scan.min(axis=0)  # the viewpoint grid starts at the scan's lower bound
    occupied = np.unique(_voxel_keys(scan - origin, cell))
    inside = np.isin(_voxel_keys(local - origin, cell), occupied)
    return local[inside].astype(np.float32)


def partial_scan(scan_xyz: np.ndarray, labels: np.ndarray | None = None, *, min_range: float = 3.5,
                 max_range: float = 50.0, z_min: float = -4.0) -> np.ndarray:
    """The model's input as the reference loader cuts it: static points, 3.5 < r < 50, z > -4."""
    xyz = np.asarray(scan_xyz)[:, :3]
    r = np.linalg.norm(xyz, axis=1)
    keep = (r > min_range) & (r < max_range) & (xyz[:, 2] > z_min)
    if labels is not None:
        sem = np.asarray(labels) & 0xFFFF
        keep &= (sem > STATIC[0]) & (sem < STATIC[1])
    return xyz[keep].astype(np.float32)


def nn_distances(pred: np.ndarray, gt: np.ndarray, workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest-neighbour distances both ways: (each pred point -> gt, each gt point -> pred).

    The per-point distances behind the paper's CD and precision / recall (reference section 5,
    Open3D `compute_point_cloud_distance` both ways); only the first three columns are used.
    """
    for name, cloud in (("pred", pred), ("gt", gt)):
        if np.ndim(cloud) != 2 or np.shape(cloud)[1] < 3:
            raise ValueError(f"{name} must be an (N, 3+) array, got shape {np.shape(cloud)}")
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError(f"nearest-neighbour distances need two non-empty clouds, got pred {len(pred)} "
                         f"and gt {len(gt)} points")
    d_pg = cKDTree(gt[:, :3]).query(pred[:, :3], workers=workers)[0]
    d_gp = cKDTree(pred[:, :3]).query(gt[:, :3], workers=workers)[0]
    return d_pg, d_gp


def chamfer_distance(pred: np.ndarray, gt: np.ndarray, workers: int = -1) -> float:
    """The paper's CD in metres: (mean NN distance pred -> gt + mean gt -> pred) / 2, Euclidean."""
    d_pg, d_gp = nn_distances(pred, gt, workers)
    return float((d_pg.mean() + d_gp.mean()) / 2)
