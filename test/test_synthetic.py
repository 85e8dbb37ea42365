"""Synthetic street scenes: an exact ray caster, the HDL-64E beam pattern and sensor model, and (scan, GT) samples."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ddpo_ros.datasets.ground_truth import partial_scan
from training.data.lidar import HDL64, Lidar, cast, ray_directions, scan_scene
from training.data.primitives import (BOX, BUILDING, CAR, CYLINDER, ELLIPSOID, GROUND, PLANE, SIDEWALK, Primitives,
                                      surface_gap)
from training.data.streets import drive_poses, make_scene
from training.data.synthetic import make_sample

EXACT = replace(HDL64, noise_sigma=0.0, dropout=0.0)
VOXEL_DIAGONAL = 0.1 * np.sqrt(3)
H = 1.73


def prims(*rows) -> Primitives:
    """Axis-aligned primitives from (kind, center, half) rows."""
    kind, center, half = zip(*rows)
    return Primitives(np.array(kind, np.int8), np.array(center, float), np.tile(np.eye(3), (len(rows), 1, 1)),
                      np.array(half, float), np.zeros(len(rows), np.int8))


def sensor_at(x=0.0, y=0.0, z=0.0) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, 3] = x, y, z
    return pose


def angles(lidar=HDL64):
    """Per ray (elevation, azimuth), beam-major like the caster."""
    el, az = np.meshgrid(lidar.elevations, lidar.azimuths, indexing="ij")
    return el.ravel(), az.ravel()


GROUND_PLANE = (PLANE, [0, 0, 0], [np.inf] * 3)


@pytest.fixture(scope="module")
def sample():
    return make_sample(7)


def test_same_seed_same_sample_other_seed_other_sample(sample):
    again = make_sample(7)
    for key in ("scan", "scan_labels", "ground_truth", "poses"):
        assert np.array_equal(sample[key], again[key]), key
    assert sample["scan"].dtype == sample["ground_truth"].dtype == np.float32
    other = make_sample(8)
    assert not np.array_equal(sample["poses"], other["poses"])
    assert len(sample["scan"]) != len(other["scan"]) or not np.array_equal(sample["scan"], other["scan"])


def test_ground_plane_ranges_are_exact_and_max_range_holds():
    ranges, owner = cast(prims(GROUND_PLANE), sensor_at(z=H), EXACT)
    el, _ = angles()
    with np.errstate(divide="ignore"):
        expected = np.where(el < 0, H / np.sin(-el), np.inf)
    expected[expected > EXACT.max_range] = np.inf   # beams just below the horizon land beyond 120 m
    assert np.isinf(expected).sum() > 4 * EXACT.azimuth_steps  # upward beams and the far ones
    np.testing.assert_allclose(ranges, expected, rtol=1e-12)
    assert ((owner == 0) == np.isfinite(expected)).all() and (owner[np.isinf(expected)] == -1).all()
    points = scan_scene(prims(GROUND_PLANE), sensor_at(z=H), None, EXACT)
    assert len(points) == np.isfinite(expected).sum()
    np.testing.assert_allclose(points[:, 2], -H, atol=1e-5)


def test_box_face_ranges_are_exact():
    wall = (BOX, [10.5, 0, 0], [0.5, 30, 30])            # its near face is the plane x = 10
    ranges, _ = cast(prims(wall), sensor_at(), EXACT)
    el, az = angles()
    t = 10 / (np.cos(az) * np.cos(el))
    on_face = (np.cos(az) > 0) & (np.abs(t * np.cos(el) * np.sin(az)) < 30) & (np.abs(t * np.sin(el)) < 30)
    np.testing.assert_allclose(ranges[on_face], t[on_face], rtol=1e-12)
    assert np.isinf(ranges[np.cos(az) < 0]).all()        # nothing behind the sensor


def test_cylinder_and_sphere_ranges_are_exact():
    el, az = angles()
    ranges, _ = cast(prims((CYLINDER, [5, 0, 0], [1, 1, 50])), sensor_at(), EXACT)
    # in the xy plane the ray meets the circle |p - (5, 0)| = 1 at 5 cos az - sqrt(1 - 25 sin^2 az)
    inside = (np.cos(az) > 0) & (25 * np.sin(az) ** 2 <= 1)
    t = (5 * np.cos(az) - np.sqrt(np.maximum(1 - 25 * np.sin(az) ** 2, 0))) / np.cos(el)
    grazing = np.abs(25 * np.sin(az) ** 2 - 1) < 1e-9
    np.testing.assert_allclose(ranges[inside & ~grazing], t[inside & ~grazing], rtol=1e-10)
    assert np.isinf(ranges[~inside]).all()

    c, r = np.array([8.0, 3.0, 0.5]), 2.0
    ranges, _ = cast(prims((ELLIPSOID, c, [r, r, r])), sensor_at(), EXACT)
    dirs = ray_directions(EXACT)
    along = dirs @ c
    hits = (along ** 2 - c @ c + r * r > 0) & (along > 0)  # passes within r of the centre, ahead
    np.testing.assert_allclose(ranges[hits], along[hits] - np.sqrt(along[hits] ** 2 - c @ c + r * r), rtol=1e-10)
    assert np.isinf(ranges[~hits]).all() and hits.sum() > 1000
    points = dirs[hits] * ranges[hits, None]
    np.testing.assert_allclose(np.linalg.norm(points - c, axis=1), r, atol=1e-9)


def test_nearest_hit_wins_and_misses_give_no_point():
    rows = [GROUND_PLANE, (BOX, [12, 0, 0], [0.5, 3, 1]), (BOX, [20, 0, 2], [4, 8, 4]),
            (ELLIPSOID, [11, 1, 1], [1, 1, 0.5]), (CYLINDER, [-6, 2, 0], [0.2, 0.2, 3])]
    pose = sensor_at(z=H)
    both, owner = cast(prims(*rows), pose, EXACT)
    alone = np.stack([cast(prims(row), pose, EXACT)[0] for row in rows])
    np.testing.assert_array_equal(both, alone.min(axis=0))
    hit = np.isfinite(both)
    np.testing.assert_array_equal(owner[hit], alone.argmin(axis=0)[hit])
    assert len(np.unique(owner[hit])) == len(rows)       # every primitive is somebody's nearest
    assert len(scan_scene(prims(*rows), pose, None, EXACT)) == hit.sum()


def test_culling_changes_nothing(monkeypatch):
    """Each primitive is tested only against the rays its bounding sphere can reach; all rays give the same."""
    from training.data import lidar
    scene = make_scene(np.random.default_rng(5))
    pose = drive_poses(scene, 3, step=4.0)[2]
    coarse = replace(EXACT, azimuth_steps=521)           # odd column positions, a quarter of the rays
    culled = cast(scene.prims, pose, coarse)
    monkeypatch.setattr(lidar, "_ray_block", lambda *args: None)
    brute = cast(scene.prims, pose, coarse)
    np.testing.assert_array_equal(culled[0], brute[0])
    np.testing.assert_array_equal(culled[1], brute[1])


def test_beam_pattern_has_64_elevations_and_hdl64_azimuth_step():
    room = [(BOX, [0, 0, 0], [40, 40, 0.5])] + [  # floor below and four walls around the sensor
        (BOX, [sx * 31, sy * 31, 0], [1 + 30 * abs(sy), 1 + 30 * abs(sx), 40])
        for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    xyz = scan_scene(prims(*room), sensor_at(z=H), None, EXACT).astype(np.float64)
    assert len(xyz) == EXACT.num_rays                     # closed room: every ray returns
    el = np.sort(np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))))
    jumps = np.diff(el) > 0.05                            # float32 points blur each beam by ~1e-5 deg
    assert jumps.sum() == 63                              # 64 distinct beams
    assert el[0] == pytest.approx(-24.9, abs=1e-3) and el[-1] == pytest.approx(2.0, abs=1e-3)
    assert np.diff(el)[jumps] == pytest.approx(26.9 / 63, abs=1e-3)
    az = np.sort(np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])))
    steps = np.diff(az)[np.diff(az) > 0.01]
    assert len(steps) == 2083 - 1 and steps == pytest.approx(360 / 2083, abs=1e-3)


def test_scan_lies_on_the_scene_surfaces():
    scene = make_scene(np.random.default_rng(3))
    pose = drive_poses(scene, 1)[0]
    xyz, ids = scan_scene(scene.prims, pose, None, EXACT, with_ids=True)
    world = xyz.astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
    gap, deepest = surface_gap(scene.prims, world)
    assert gap.max() < 1e-3              # on some surface (float32 points, up to 120 m away)
    assert deepest.min() > -1e-3         # and inside no solid: visible, not behind something
    labels = set(scene.prims.label[ids].tolist())
    assert {GROUND, SIDEWALK, BUILDING, CAR} <= labels
    assert ((xyz[:, 2] > -H - 0.5) | (scene.prims.label[ids] != GROUND)).all()


def test_ground_truth_contains_the_scan_and_is_denser():
    s = make_sample(11, lidar=EXACT)
    scan, gt = partial_scan(s["scan"], max_range=49.8, z_min=-3.8), s["ground_truth"]
    from scipy.spatial import cKDTree
    dist = cKDTree(gt).query(scan, distance_upper_bound=1.0)[0]
    assert dist.max() <= VOXEL_DIAGONAL + 1e-4
    voxels = [len(np.unique(np.floor(p / 0.1).astype(np.int64), axis=0)) for p in (scan, gt)]
    assert voxels[1] > 1.5 * voxels[0]
    assert np.linalg.norm(gt, axis=1).max() < 50 and gt[:, 2].min() > -4


def test_dropout_and_noise_match_the_lidar_on_a_flat_wall():
    wall = prims((BOX, [20.5, 0, 0], [0.5, 200, 200]))
    true_hits = np.isfinite(cast(wall, sensor_at(), EXACT)[0]).sum()
    lidar = replace(HDL64, noise_sigma=0.03, dropout=0.1)
    xyz = scan_scene(wall, sensor_at(), np.random.default_rng(0), lidar).astype(np.float64)
    assert 1 - len(xyz) / true_hits == pytest.approx(0.1, abs=0.005)
    r = np.linalg.norm(xyz, axis=1)
    noise = r - 20 * r / xyz[:, 0]                 # measured minus true range along the same ray
    assert noise.mean() == pytest.approx(0, abs=1e-3)
    assert noise.std() == pytest.approx(0.03, rel=0.03)


def test_errors_are_clear():
    wall = prims((BOX, [20.5, 0, 0], [0.5, 20, 20]))
    with pytest.raises(ValueError, match="needs an rng"):
        scan_scene(wall, sensor_at(), None, HDL64)
    with pytest.raises(ValueError, match="4x4"):
        cast(wall, np.eye(3))
    with pytest.raises(ValueError, match="half extents"):
        prims((BOX, [0, 0, 0], [1, 0, 1]))
    with pytest.raises(ValueError, match="dropout"):
        Lidar(dropout=1.0)
    with pytest.raises(TypeError, match="Generator"):
        make_scene(3)
    with pytest.raises(ValueError, match="scan_index"):
        make_sample(0, num_poses=2, scan_index=2)


def test_synthetic_pairs_are_training_pairs():
    from training.data.synthetic import SyntheticPairs

    ds = SyntheticPairs(3, seed=10, num_points=2000, gt_points=20000, augment=True)
    a, b = ds[1], ds[1]
    assert a["partial"].shape == (2000, 3) and a["gt"].shape == (20000, 3) and a["scan"] == "synthetic:11"
    assert torch.equal(a["partial"], b["partial"]) and torch.equal(a["gt"], b["gt"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["partial"], a["partial"])  # a new augmentation draw per epoch
    with pytest.raises(ValueError, match="length"):
        SyntheticPairs(0)
