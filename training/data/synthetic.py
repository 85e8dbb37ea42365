"""Synthetic (scan, ground truth) samples from procedural street scenes, unlimited and deterministic by seed.

A sample is one HDL-64E-like scan from the middle of a short drive plus its ground truth, built the
way LiDiff builds it from KITTI (ddpo_ros.datasets.ground_truth): the scans of every pose of the drive merged
into a map (first point per 0.1 m voxel, r > 3.5 m), then cut to the scan (50 m, z > -4, the scan's
10 m cells). So the ground truth holds only what the drive saw, like a real aggregated map. The map
is made from the exact hits of all rays (no noise, no dropout) unless `noisy_ground_truth`: the
target is the true surface, the scan is what the sensor reports.

    sample = make_sample(seed)      # scan (N, 3), scan_labels (N,), ground_truth (M, 3), poses, ...
    render_sample("docs/synthetic_scene.png", sample)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from torch.utils.data import Dataset

from ddpo_ros.datasets.ground_truth import MapBuilder, partial_scan, scan_ground_truth

from .lidar import HDL64, Lidar, cast, ray_directions, scan_scene, sense
from .primitives import CLASSES, surface_gap
from .streets import SyntheticScene, drive_poses, make_scene

__all__ = ["HDL64", "CLASSES", "Lidar", "SyntheticScene", "drive_poses", "make_sample", "make_scene",
           "render_sample", "scan_scene", "surface_gap", "SyntheticPairs"]


def make_sample(seed: int, num_poses: int = 5, step: float = 1.0, *, lidar: Lidar = HDL64,
                scan_index: int | None = None, noisy_ground_truth: bool = False) -> dict:
    """One sample from `seed` (same seed, byte-identical arrays).

    Returns dict(scan=(N, 3) float32 in the sensor frame of poses[scan_index] (default the middle
    pose), scan_labels=(N,) int8 class ids (see CLASSES), ground_truth=(M, 3) float32 in the same
    frame, poses=(num_poses, 4, 4) sensor -> world, scan_index=int, seed=int).
    """
    scan_index = num_poses // 2 if scan_index is None else scan_index
    if not 0 <= scan_index < num_poses:
        raise ValueError(f"scan_index must be in [0, {num_poses}), got {scan_index}")
    rng = np.random.default_rng(seed)
    scene = make_scene(rng)
    poses = drive_poses(scene, num_poses, step, lidar)
    builder = MapBuilder()
    dirs = ray_directions(lidar)
    for i, pose in enumerate(poses):
        ranges, owner = cast(scene.prims, pose, lidar)
        # Every pose draws its noise, so the scan of pose i does not depend on noisy_ground_truth.
        xyz, ids = sense(ranges, owner, lidar, rng, with_ids=True)
        if i == scan_index:
            scan, scan_labels = xyz, scene.prims.label[ids]
        if noisy_ground_truth:
            builder.add(xyz, pose)
        else:
            hit = np.isfinite(ranges)
            builder.add((dirs[hit] * ranges[hit, None]).astype(np.float32), pose)
    gt = scan_ground_truth(builder.points, poses[scan_index], scan)
    return dict(scan=scan, scan_labels=scan_labels, ground_truth=gt, poses=poses, scan_index=scan_index,
                seed=seed)


def render_sample(path: str | Path, sample: dict, *, title: str | None = None) -> Path:
    """PNG of the scan (3.5-50 m, as the model gets it) beside its ground truth: bird's-eye and 3-D."""
    from ddpo_ros.datasets.ground_truth import partial_scan
    from ddpo_ros.frontends.render import render_clouds

    scan, gt = partial_scan(sample["scan"]), sample["ground_truth"]
    title = title or (f"synthetic street, seed {sample['seed']}: scan of pose {sample['scan_index']} "
                      f"of {len(sample['poses'])}, ground truth from all of them")
    return render_clouds(path, [("scan, 3.5-50 m", scan), ("ground truth (aggregated map)", gt)],
                         title=title, view="both", z_range=(-2.5, 1.0))


class SyntheticPairs(Dataset):
    """`length` procedural street scenes as training pairs: item i is scene seed `seed + i`.

    The same sampling and augmentation as the KITTI pairs (training.data.kitti.training_pair), so
    a model can train on both; unlimited in principle, fixed by `length` for an epoch's size.
    """

    def __init__(self, length: int, *, seed: int = 0, num_points: int = 18000, gt_points: int = 180000,
                 augment: bool = False, num_poses: int = 5, step: float = 1.0):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length, self.seed, self.epoch = length, seed, 0
        self.num_points, self.gt_points, self.augment = num_points, gt_points, augment
        self.num_poses, self.step = num_poses, step

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        from .kitti import training_pair

        sample = make_sample(self.seed + index, self.num_poses, self.step)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return training_pair(partial_scan(sample["scan"]), sample["ground_truth"], rng, self.num_points,
                             self.gt_points, self.augment, name=f"synthetic:{self.seed + index}")
