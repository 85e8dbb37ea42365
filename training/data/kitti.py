"""(partial scan, ground truth) pairs from SemanticKITTI, as LiDiff's loader makes them (reference section 3).

- partial: the scan's static points (labels 1 < l < 252 when present), 3.5 < r < 50 m, z > -4,
  repeated ceil(n / N) times and farthest-point sampled to n (18,000 at paper scale);
- ground truth: the sequence map within 50 m of the pose, in the scan frame, z > -4, inside the
  partial's 10 m cells; shuffled, tiled and cut to exactly `gt_points` (180,000);
- training augmentation, applied to both: yaw U(0, 2 pi), a small rotation (sigma 0.06 rad,
  clipped at 0.18) about each axis, scale U(0.95, 1.05), y-flip with p = 0.5.

Randomness per item comes from numpy's Generator seeded with (seed, epoch, index), so an item is
the same whichever DataLoader worker makes it, and `set_epoch` gives a new draw per epoch.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.utils.data import DataLoader, Dataset

from ddpo_ros.fps import farthest_point_sample
from ddpo_ros.datasets.ground_truth import partial_scan, scan_ground_truth
from ddpo_ros.datasets.kitti import KittiSequence

from .maps import sequence_map

SPLITS = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{i:02d}" for i in range(11, 22)),  # no ground truth: no maps
}


def find_sequences(root: str | Path, names) -> list[Path]:
    """root/sequences/<name> (SemanticKITTI layout), or root itself if it is one sequence folder."""
    root = Path(root)
    if (root / "velodyne").is_dir():
        return [root]
    found = [root / "sequences" / n for n in names if (root / "sequences" / n / "velodyne").is_dir()]
    if not found:
        raise FileNotFoundError(f"{root}: none of the sequences {', '.join(names)} (looked for "
                                f"{root / 'sequences' / names[0] / 'velodyne'} and {root / 'velodyne'})")
    return found


def rotation(yaw: float, small: np.ndarray) -> np.ndarray:
    """Rz(yaw) after the small rotation about x, y, z (radians)."""
    return Rotation.from_euler("z", yaw).as_matrix() @ Rotation.from_euler("xyz", small).as_matrix()


def augment(partial: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One joint random transform of both clouds (LiDiff's training augmentation)."""
    yaw = rng.uniform(0, 2 * np.pi)
    m = rotation(yaw, np.clip(rng.normal(0, 0.06, 3), -0.18, 0.18)) * rng.uniform(0.95, 1.05)
    if rng.random() < 0.5:
        m = np.diag([1.0, -1.0, 1.0]) @ m
    return (partial @ m.T).astype(np.float32), (gt @ m.T).astype(np.float32)


def training_pair(part: np.ndarray, gt: np.ndarray, rng: np.random.Generator, num_points: int, gt_points: int,
                  do_augment: bool, name: str) -> dict:
    """Fixed-size tensors from a (partial, ground truth) pair: FPS, shuffle-and-tile, augmentation."""
    part = np.tile(part, (math.ceil(num_points / len(part)), 1))  # too few points: repeat (LiDiff)
    part = part[farthest_point_sample(part, num_points)]
    gt = np.tile(gt[rng.permutation(len(gt))], (math.ceil(gt_points / len(gt)), 1))[:gt_points]
    if do_augment:
        part, gt = augment(part, gt, rng)
    return {"partial": torch.from_numpy(np.ascontiguousarray(part, np.float32)),
            "gt": torch.from_numpy(np.ascontiguousarray(gt, np.float32)), "scan": name}


class ScanPairs(Dataset):
    """Every scan (with a pose) of the given sequences as a training or evaluation pair."""

    def __init__(self, sequences: list[str | Path], *, num_points: int = 18000, gt_points: int = 180000,
                 cache_dir: str | Path | None = None, augment: bool = False, seed: int = 0, max_range: float = 50.0):
        self.sequences = [KittiSequence(s) for s in sequences]
        for seq in self.sequences:
            if seq.velodyne_poses is None:
                raise ValueError(f"{seq.root}: no poses, so no ground truth (training needs poses.txt)")
        self.items = [(si, fi) for si, seq in enumerate(self.sequences) for fi in range(len(seq))]
        self.num_points, self.gt_points, self.max_range = num_points, gt_points, max_range
        self.cache_dir, self.augment, self.seed, self.epoch = cache_dir, augment, seed, 0
        self._map: tuple[int, np.ndarray] | None = None  # one sequence's map in memory at a time
        self.labelled: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def world_map(self, si: int) -> np.ndarray:
        if self._map is None or self._map[0] != si:
            points, labelled = sequence_map(self.sequences[si], self.cache_dir, progress=False)
            self.labelled[str(self.sequences[si].root)] = labelled
            self._map = (si, points)
        return self._map[1]

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(partial (num_points, 3), ground truth (gt_points, 3)) before augmentation."""
        si, fi = self.items[index]
        seq = self.sequences[si]
        part = partial_scan(seq.scan(fi), seq.labels(fi), max_range=self.max_range)
        gt = scan_ground_truth(self.world_map(si), seq.pose(fi), part, max_range=self.max_range)
        if len(part) == 0 or len(gt) == 0:
            raise ValueError(f"{seq.scans[fi]}: empty scan or ground truth after the crop")
        return part, gt

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        si, fi = self.items[index]
        return training_pair(*self.pair(index), rng, self.num_points, self.gt_points, self.augment,
                             name=str(self.sequences[si].scans[fi]))


def make_loader(dataset: ScanPairs, batch_size: int, *, shuffle: bool, num_workers: int = 2,
                seed: int = 0) -> DataLoader:
    """Batches of pairs; two workers keep two CPU cores busy; the order comes from `seed`.

    Workers are not persistent, so each epoch's workers see the dataset's current `epoch`.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), drop_last=shuffle)
