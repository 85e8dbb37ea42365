"""Ground-truth maps per sequence, built once and cached (LiDiff's map_from_scans.py, reference section 3).

A map is every scan of the sequence merged in the world frame (ddpo_ros.datasets.ground_truth.MapBuilder:
static labels when present, r > 3.5 m, first point per 0.1 m voxel). Building one for a
4,500-scan sequence takes minutes, so it is written to `cache_dir` as .npy plus a JSON sidecar
that records what it was built from; a cache that does not match its sequence is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ddpo_ros.atomic import atomic_open
from ddpo_ros.datasets.ground_truth import MapBuilder
from ddpo_ros.datasets.kitti import KittiSequence


def build_map(seq: KittiSequence, *, voxel: float = 0.1, progress: bool = True) -> tuple[np.ndarray, bool]:
    """(world-frame map (M, 3) float32, whether every scan had labels)."""
    if seq.velodyne_poses is None:
        raise ValueError(f"{seq.root}: a ground-truth map needs poses (poses.txt), and this sequence has none")
    builder = MapBuilder(voxel=voxel)
    for i in tqdm(range(len(seq)), desc=f"map {seq.root.name}", unit="scan", file=sys.stderr, disable=not progress):
        builder.add(seq.scan(i), seq.pose(i), seq.labels(i))
    if not builder.labelled:
        warnings.warn(f"{seq.root}: some scans have no labels/*.label, so the static-class filter was skipped "
                      "for them: parked and moving objects stay in the ground-truth map", stacklevel=2)
    return builder.points, builder.labelled


def _identity(seq: KittiSequence, voxel: float) -> dict:
    """What a cached map was built from: the folder, its scans (names and sizes) and the voxel size."""
    h = hashlib.sha1()
    for scan in seq.scans:
        h.update(f"{scan.name}:{scan.stat().st_size};".encode())
    if seq.poses_path is not None:
        h.update(Path(seq.poses_path).read_bytes())
    return {"sequence": str(seq.root.resolve()), "scans": len(seq), "voxel": voxel, "digest": h.hexdigest()}


def sequence_map(seq: KittiSequence, cache_dir: str | Path | None, *, voxel: float = 0.1,
                 progress: bool = True) -> tuple[np.ndarray, bool]:
    """The sequence's map from the cache, or built now (and cached when cache_dir is given)."""
    if cache_dir is None:
        return build_map(seq, voxel=voxel, progress=progress)
    ident = _identity(seq, voxel)
    stem = Path(cache_dir) / f"map_{seq.root.name}_{ident['digest'][:12]}"
    meta_path, npy_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if meta_path.exists() and npy_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in ident} == ident:
            return np.load(npy_path), bool(meta["labelled"])
    points, labelled = build_map(seq, voxel=voxel, progress=progress)
    # Both atomic: a killed build leaves no half map, and no torn sidecar (its JSON would fail the next
    # run instead of rebuilding).
    with atomic_open(npy_path) as f:  # a file object: np.save would add ".npy" to a temporary name
        np.save(f, points)
    with atomic_open(meta_path, "w") as f:
        f.write(json.dumps({**ident, "labelled": labelled, "points": len(points)}, indent=1))
    return points, labelled
