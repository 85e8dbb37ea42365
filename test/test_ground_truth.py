"""Ground truth from the real KITTI frames: an aggregated map cut to one scan, and the Chamfer distance."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from conftest import DATA
from ddpo_ros.datasets.ground_truth import MapBuilder, chamfer_distance, partial_scan, scan_ground_truth
from ddpo_ros.datasets.kitti import KittiSequence

VOXEL_DIAGONAL = 0.1 * np.sqrt(3)


@pytest.fixture(scope="module")
def seq():
    return KittiSequence(DATA / "kitti_seq00_0_39")


@pytest.fixture(scope="module")
def world_map(seq):
    builder = MapBuilder()
    for i in range(0, len(seq), 2):
        builder.add(seq.scan(i), seq.pose(i))
    return builder


def test_map_keeps_one_point_per_voxel(world_map):
    pts = world_map.points
    keys = np.floor(pts / 0.1).astype(np.int64)
    assert len(np.unique(keys, axis=0)) == len(pts) > 300_000
    assert world_map.labelled is False  # these frames have no labels: moving objects stay in


def test_a_scan_already_in_the_map_adds_nothing(seq, world_map):
    before = len(world_map.points)
    assert world_map.add(seq.scan(0), seq.pose(0)) == 0
    assert len(world_map.points) == before


def test_ground_truth_covers_the_scan_it_was_cut_for(seq, world_map):
    frame = 20
    scan = seq.scan(frame)[:, :3]
    gt = scan_ground_truth(world_map.points, seq.pose(frame), scan)
    part = partial_scan(scan)
    # The map holds frame 20 itself, so every kept scan point shares a 0.1 m voxel with a map point.
    d, _ = cKDTree(gt).query(part)
    assert d.max() <= VOXEL_DIAGONAL + 1e-4
    r = np.linalg.norm(gt, axis=1)
    assert gt.dtype == np.float32 and (r < 50 + 1e-3).all() and (gt[:, 2] > -4).all()
    assert len(gt) > 1.5 * len(part)  # 20 aggregated scans are denser than one
    assert 0.0 < chamfer_distance(part, gt) < 0.5


def test_viewpoint_filter_drops_cells_the_scan_does_not_see(seq, world_map):
    scan = seq.scan(20)[:, :3]
    half = scan[scan[:, 0] > 0]  # pretend the scan only saw ahead
    gt = scan_ground_truth(world_map.points, seq.pose(20), half)
    assert (gt[:, 0] > half[:, 0].min() - 1e-3).all()


def test_static_filter_with_labels():
    scan = np.array([[5, 0, 0], [6, 0, 0], [7, 0, 0], [8, 0, 0]], np.float32)
    labels = np.array([0, 1, 40 | (7 << 16), 253], np.uint32)  # unlabeled, outlier, road (instance 7), moving car
    builder = MapBuilder()
    assert builder.add(scan, np.eye(4), labels) == 1 and builder.labelled
    np.testing.assert_allclose(builder.points, [[7, 0, 0]])
    assert partial_scan(scan, labels).tolist() == [[7, 0, 0]]


def test_chamfer_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3)).astype(np.float32)
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, a[rng.permutation(500)]) == 0.0
    one, far = np.zeros((1, 3)), np.array([[3.0, 4.0, 0.0]])
    assert chamfer_distance(one, far) == pytest.approx(5.0)
    # asymmetric: {0} vs {0, 2}: pred->gt 0, gt->pred (0 + 2)/2 = 1 -> CD 0.5
    assert chamfer_distance(one, np.array([[0, 0, 0], [2.0, 0, 0]])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-empty"):
        chamfer_distance(np.zeros((0, 3)), a)


def test_blocks_stay_few_and_lookups_exact():
    """The log-structured voxel set: many small scans, every voxel kept once, few blocks."""
    rng = np.random.default_rng(0)
    builder = MapBuilder(min_range=0.0)
    seen = set()
    for _ in range(300):
        pts = rng.uniform(-20, 20, (200, 3))
        builder.add(pts, np.eye(4))
        seen |= set(map(tuple, np.floor(pts.astype(np.float32) / 0.1).astype(np.int64)))
    assert len(builder.points) == len(seen) and builder.scans == 300
    assert len(builder._blocks) <= 12  # ~log2(300)
    keys = np.concatenate(builder._blocks)
    assert len(np.unique(keys)) == len(keys) == len(seen)


def test_evaluation_z_band():
    pts = np.array([[5, 0, -5], [5, 0, 0], [5, 0, 5]], np.float32)
    gt = scan_ground_truth(pts, np.eye(4), pts, z_max=4.4)
    assert gt.tolist() == [[5, 0, 0]]
