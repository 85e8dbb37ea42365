"""SemanticKITTI pairs on the real bundled frames: maps, caching, sampling, augmentation, loaders."""
from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from conftest import DATA
from ddpo_ros.datasets.kitti import KittiSequence
from training.data import maps
from training.data.kitti import SPLITS, ScanPairs, augment, find_sequences, make_loader

FLAT = DATA / "kitti_seq00_0_39"
SEMKITTI = DATA / "semantickitti_seq00_mini"


def test_splits_and_layouts():
    assert SPLITS["val"] == ("08",) and "08" not in SPLITS["train"] and len(SPLITS["train"]) == 10
    assert find_sequences(SEMKITTI, ("00",)) == [SEMKITTI / "sequences" / "00"]
    assert find_sequences(FLAT, SPLITS["val"]) == [FLAT]  # a sequence folder is taken as it is
    with pytest.raises(FileNotFoundError, match="none of the sequences 08"):
        find_sequences(SEMKITTI, SPLITS["val"])


def test_map_cache_is_reused_and_rebuilt_when_stale(tmp_path, monkeypatch):
    seq = KittiSequence(SEMKITTI / "sequences" / "00")
    with pytest.warns(UserWarning, match="static-class filter was skipped"):
        built, labelled = maps.sequence_map(seq, tmp_path, progress=False)
    assert len(list(tmp_path.glob("map_00_*.npy"))) == 1 and labelled is False  # frames 1-5 have no labels
    monkeypatch.setattr(maps, "build_map", lambda *a, **k: pytest.fail("cache not used"))
    again, _ = maps.sequence_map(seq, tmp_path, progress=False)
    assert np.array_equal(built, again)
    meta = next(tmp_path.glob("map_00_*.json"))
    meta.write_text(meta.read_text().replace('"voxel": 0.1', '"voxel": 0.2'))
    monkeypatch.setattr(maps, "build_map", lambda *a, **k: (built[:10], True))
    assert len(maps.sequence_map(seq, tmp_path, progress=False)[0]) == 10  # stale sidecar: rebuilt


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return ScanPairs([FLAT], num_points=4000, gt_points=40000, cache_dir=tmp_path_factory.mktemp("maps"), seed=3)


def test_pairs_have_the_configured_sizes_and_come_from_the_scan(pairs):
    item = pairs[5]
    part, gt = item["partial"].numpy(), item["gt"].numpy()
    assert part.shape == (4000, 3) and gt.shape == (40000, 3) and part.dtype == np.float32
    scan = KittiSequence(FLAT).scan(5)[:, :3]
    assert cKDTree(scan).query(part)[0].max() == 0.0  # every sampled point is a scan point
    assert len(np.unique(part, axis=0)) == 4000       # farthest-point samples are distinct
    full_gt = pairs.pair(5)[1]  # before the shuffle-and-cut to 40,000
    assert cKDTree(full_gt).query(part)[0].max() <= 0.1 * np.sqrt(3) + 1e-4  # the map holds the scan
    assert cKDTree(full_gt).query(gt)[0].max() == 0.0 and len(full_gt) > 40000
    r = np.linalg.norm(part, axis=1)
    assert r.min() > 3.5 and r.max() < 50 and part[:, 2].min() > -4 and gt[:, 2].min() > -4
    assert item["scan"].endswith("000005.bin")


def test_items_are_reproducible_per_seed_epoch_and_index(pairs):
    pairs.augment = True
    try:
        a, b = pairs[2], pairs[2]
        assert torch.equal(a["partial"], b["partial"]) and torch.equal(a["gt"], b["gt"])
        pairs.set_epoch(1)
        c = pairs[2]
        assert not torch.equal(a["partial"], c["partial"])
    finally:
        pairs.augment, pairs.epoch = False, 0


def test_augmentation_is_one_similarity_transform_of_both_clouds():
    rng = np.random.default_rng(0)
    part, gt = rng.normal(size=(500, 3)) * 10, rng.normal(size=(800, 3)) * 10
    for seed in range(20):
        pa, ga = augment(part, gt, np.random.default_rng(seed))
        m, *_ = np.linalg.lstsq(part, pa, rcond=None)  # pa = part @ m
        np.testing.assert_allclose(ga, gt @ m, atol=1e-3)
        scale = np.sqrt(np.linalg.eigvalsh(m.T @ m))
        assert np.ptp(scale) < 1e-4 and 0.95 <= scale[0] <= 1.05
        tilt = np.degrees(np.arccos(np.clip((m / scale[0])[2, 2], -1, 1)))
        assert tilt < np.degrees(0.18 * np.sqrt(2)) + 1e-6  # yaw is free; the tilt stays small


def test_labels_filter_the_partial_scan(tmp_path):
    seq = KittiSequence(SEMKITTI / "sequences" / "00")
    labels = seq.labels(0)
    ds = ScanPairs([seq.root], num_points=2000, gt_points=5000, cache_dir=tmp_path)
    part, _ = ds.pair(0)
    xyz = seq.scan(0)[:, :3]
    r = np.linalg.norm(xyz, axis=1)
    static = (labels > 1) & (labels < 252)
    assert len(part) == int(((r > 3.5) & (r < 50) & (xyz[:, 2] > -4) & static).sum()) < int((r > 3.5).sum())


def test_two_workers_give_the_same_batches_as_none(pairs):
    def first_two(workers):
        return [b["partial"] for b in islice(make_loader(pairs, 2, shuffle=True, num_workers=workers, seed=1), 2)]
    one, two = first_two(0), first_two(2)
    assert all(torch.equal(x, y) for x, y in zip(one, two)) and one[0].shape == (2, 4000, 3)
