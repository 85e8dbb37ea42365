"""training/metrics.py: known answers, invariances, the reference's own formulas as oracles, real KITTI scans."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, jensenshannon

from conftest import kitti_scan
from ddpo_ros.datasets.ground_truth import chamfer_distance
from training.emd import sinkhorn, voxel_masses
from training.metrics import (chamfer, emd_exact, emd_sinkhorn, iou_counts, iou_from_counts, jsd_3d, jsd_bev,
                              precision_recall_f, scene_metrics, voxel_iou)

SQRT_LN2 = np.sqrt(np.log(2))


@pytest.fixture(scope="module")
def frames():
    """KITTI seq 00 frames 0 and 1 (float64 xyz), and a small crop of each for the O(n^2) checks."""
    a, b = (kitti_scan(f)[:, :3].astype(np.float64) for f in (0, 1))
    crop = [p[(np.abs(p - [10.0, 5.0, -1.0]) < 3).all(axis=1)] for p in (a, b)]
    return a, b, crop


def grid(spacing=1.0, n=8):
    axes = np.arange(n) * spacing
    return np.stack(np.meshgrid(axes, axes, axes, indexing="ij"), -1).reshape(-1, 3) - n * spacing / 2 + 0.3


def dense_reference_sinkhorn(x, y, a, b, eps, max_iter=3000, tol=1e-4):
    """The reference's dense Sinkhorn, written out from section 5 (oracle for the sparse one)."""
    c = cdist(x, y)
    k = np.exp(-c / eps) + 1e-9
    u, v = np.ones(len(a)), np.ones(len(b))
    for it in range(1, max_iter + 1):
        u_prev, u = u, a / (k @ v)
        v = b / (k.T @ u)
        if np.abs(u - u_prev).sum() < tol:
            break
    return float(np.sum(u[:, None] * k * v[None] * c)), it


def test_identical_clouds(frames):
    a, _, (small, _) = frames
    m = scene_metrics(a, a)
    assert m["cd"] == 0 and m["precision"] == m["recall"] == m["fscore"] == pytest.approx(1.0, abs=1e-12)
    assert m["jsd_3d"] == pytest.approx(0, abs=1e-7) and m["jsd_bev"] == pytest.approx(0, abs=1e-7)
    assert all(fp == fn == 0 and tp > 0 for tp, fp, fn in m["iou_counts"].values())
    # not 0: the kernel's 1e-9 floor sends a little mass across all ~11k x 11k voxel pairs (measured 3.5e-4 m)
    assert 0 < m["emd"] < 1e-3
    assert emd_exact(small, small) == pytest.approx(0, abs=1e-9)


def test_shifted_copies():
    one = np.zeros((1, 3))
    assert chamfer(one, one + [0.3, 0.4, 0]) == pytest.approx(0.5)
    g = grid()  # 1 m spacing: a shift below 0.5 m keeps every nearest neighbour the shifted twin
    for shift in (0.03, 0.07, 0.2):
        assert chamfer(g, g + [shift, 0, 0]) == pytest.approx(shift)
    assert precision_recall_f(g, g + [0.04, 0, 0])["fscore"] == pytest.approx(1.0)  # every tau > 0.04
    assert precision_recall_f(g, g + [0.11, 0, 0])["fscore"] == 0.0  # every tau < 0.11
    f = [precision_recall_f(g, g + [s, 0, 0])["fscore"] for s in (0.06, 0.075, 0.09)]
    assert 1 > f[0] > f[1] > f[2] > 0
    assert f[1] == pytest.approx(0.5, abs=0.02)  # half the taus in [0.05, 0.10] exceed 0.075


def test_disjoint_clouds():
    rng = np.random.default_rng(0)
    a = rng.uniform(-10, -5, (500, 3))
    b = rng.uniform(5, 10, (400, 3))
    assert jsd_3d(a, b) == pytest.approx(SQRT_LN2) and jsd_bev(a, b) == pytest.approx(SQRT_LN2)
    for v in (0.5, 0.2, 0.1):
        tp, fp, fn = iou_counts(a, b, v)
        assert tp == 0 and fp > 0 and fn > 0 and voxel_iou(a, b, v) == 0.0
    assert precision_recall_f(a, b) == {"precision": 0.0, "recall": 0.0, "fscore": 0.0}


def test_permutation_invariance(frames):
    _, _, (a, b) = frames
    rng = np.random.default_rng(1)
    m, mp = scene_metrics(a, b), scene_metrics(a[rng.permutation(len(a))], b[rng.permutation(len(b))])
    assert mp.pop("iou_counts") == m.pop("iou_counts")
    assert mp == pytest.approx(m, rel=1e-9)


def test_subset_prediction():
    gt = grid()  # 1 m apart: a gt point left out is >= 1 m from every predicted one
    pred = gt[np.random.default_rng(2).permutation(len(gt))[: int(0.3 * len(gt))]]
    frac = len(pred) / len(gt)
    pr = precision_recall_f(pred, gt)
    assert pr["precision"] == pytest.approx(1.0) and pr["recall"] == pytest.approx(frac)
    assert pr["fscore"] == pytest.approx(2 * frac / (1 + frac))


def test_legacy_iou_only_scores_the_inner_cube():
    rng = np.random.default_rng(3)
    near = rng.uniform(-4, 4, (2000, 3))
    far = rng.uniform(-4, 4, (2000, 3)) + [35.0, 0, 0]  # |x| > 25 m: outside every legacy cube
    gt, pred = np.concatenate([near, far]), near
    for v in (0.5, 0.2, 0.1):
        assert voxel_iou(pred, gt, v, legacy=True) == 1.0
        tp, fp, fn = iou_counts(pred, gt, v)
        assert fp == 0 and fn > 0 and voxel_iou(pred, gt, v) < 0.8
    # 0.1 m legacy cube is +-5 m: a point at 7 m is ignored there but scored at 0.5 m
    assert iou_counts([[7.0, 0, 0]], [[7.0, 0, 0]], 0.1, legacy=True) == (0, 0, 0)
    assert iou_counts([[7.0, 0, 0]], [[7.0, 0, 0]], 0.5, legacy=True) == (1, 0, 0)
    assert iou_from_counts(0, 0, 0) == 0.0


def _occupancy(points, vsize, extent):
    n = round(2 * extent / vsize)
    return np.histogramdd(points, bins=n, range=[[-extent, extent]] * 3)[0] > 0


@pytest.mark.parametrize("vsize,extent", [(0.5, 50.0), (0.1, 5.0)])
def test_iou_counts_match_the_reference_histograms(frames, vsize, extent):
    a, b, _ = frames
    for legacy in (False, True):
        ha, hb = (_occupancy(np.round(p / vsize) if legacy else p, vsize, extent) for p in (a, b))
        want = ((ha & hb).sum(), (ha & ~hb).sum(), (~ha & hb).sum())
        assert iou_counts(a, b, vsize, legacy=legacy, extent=extent) == want


def test_jsd_matches_the_reference_histograms(frames):
    a, b, _ = frames
    ha, hb = (np.histogramdd(p, bins=200, range=[[-50, 50]] * 3)[0] for p in (a, b))
    assert jsd_3d(a, b) == pytest.approx(jensenshannon((ha / ha.sum()).ravel(), (hb / hb.sum()).ravel()), rel=1e-12)
    ba, bb = (np.clip(h, 0, 1).sum(-1) for h in (ha, hb))
    assert jsd_bev(a, b) == pytest.approx(jensenshannon((ba / ba.sum()).ravel(), (bb / bb.sum()).ravel()), rel=1e-12)
    # points beyond the extent are ignored, as histogramdd ignores them
    assert jsd_3d(np.concatenate([a, a[:100] + 200]), a) == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("eps", [0.001, 0.05])
def test_sparse_sinkhorn_reproduces_the_dense_reference(frames, eps):
    _, _, (a, b) = frames
    (x, wa), (y, wb) = voxel_masses(a, 0.5), voxel_masses(b, 0.5)
    got, want = sinkhorn(x, y, wa, wb, eps), dense_reference_sinkhorn(x, y, wa, wb, eps)
    assert got[1] == want[1] and got[0] == pytest.approx(want[0], rel=1e-9)


def test_emd_exact_solvers_agree():
    """The transport LP against the assignment problem: equal counts, one point per voxel, uniform mass."""
    rng = np.random.default_rng(4)
    pts = [(np.stack(np.unravel_index(rng.choice(1000, 60, replace=False), (10, 10, 10)), -1) + 0.5) * 0.5
           for _ in range(2)]
    r, c = linear_sum_assignment(cdist(*pts))
    assert emd_exact(*pts) == pytest.approx(cdist(*pts)[r, c].mean(), rel=1e-7)


def test_sinkhorn_converges_to_exact_emd_with_a_small_eps_and_no_floor():
    rng = np.random.default_rng(5)
    pred = rng.uniform(0, [2, 2, 1], (300, 3))
    gt = pred + rng.normal(0, 0.25, pred.shape)
    (x, a), (y, b) = voxel_masses(pred, 0.5), voxel_masses(gt, 0.5)
    exact = emd_exact(pred, gt)
    assert sinkhorn(x, y, a, b, eps=0.02, max_iter=50_000, floor=0.0)[0] == pytest.approx(exact, rel=0.01)
    # the reference's kernel (eps 0.001 + 1e-9 floor) is blind to distance: measured 0.608 vs exact 0.255
    assert emd_sinkhorn(pred, gt) > 2 * exact


def test_emd_of_a_shifted_voxel_mass_is_the_shift():
    rng = np.random.default_rng(6)
    blob = rng.uniform(0.01, 0.49, (50, 3)) + 2.0  # every point in one 0.5 m voxel
    shift = np.array([1.0, 0.5, 0.0])
    assert emd_sinkhorn(blob, blob + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-9)
    assert emd_exact(blob, blob + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-7)


def test_reference_emd_is_far_from_exact_on_kitti(frames):
    """Measured on a 6 m KITTI crop (frame 0 vs 1, ~135 voxels each): reference 0.866 m, exact 0.342 m."""
    _, _, (a, b) = frames
    exact, ref = emd_exact(a, b), emd_sinkhorn(a, b)
    assert exact == pytest.approx(0.342, abs=0.002) and ref == pytest.approx(0.866, abs=0.002)
    assert emd_sinkhorn(a, b, max_voxels=100) is None


def test_kitti_frames(frames):
    a, b, _ = frames
    m = scene_metrics(a, b, emd=False)
    assert m["cd"] > 0 and m["cd"] == pytest.approx(chamfer(b, a)) and m["cd"] == pytest.approx(chamfer_distance(a, b))
    assert 0 < m["jsd_3d"] < SQRT_LN2 and 0 < m["jsd_bev"] < SQRT_LN2
    assert m["jsd_3d"] == pytest.approx(jsd_3d(b, a)) and m["emd"] is None
    assert all(0 < m[k] < 1 for k in ("precision", "recall", "fscore"))
    assert list(m["iou_counts"]) == ["0.5", "0.2", "0.1"]  # str keys: the same after a JSON round trip
    assert all(0 < iou_from_counts(*c) < 1 for c in m["iou_counts"].values())


@pytest.mark.parametrize("bad,match", [(np.zeros((0, 3)), "empty"), (np.zeros((5, 2)), "shape"),
                                       (np.zeros(3), "shape"), (np.full((2, 3), np.nan), "non-finite")])
def test_bad_input_names_the_argument(bad, match):
    ok = np.zeros((4, 3))
    for fn in (chamfer, precision_recall_f, jsd_3d, jsd_bev, emd_sinkhorn, emd_exact, scene_metrics):
        with pytest.raises(ValueError, match=f"pred .*{match}|pred is {match}"):
            fn(bad, ok)
        with pytest.raises(ValueError, match=f"gt .*{match}|gt is {match}"):
            fn(ok, bad)
    with pytest.raises(ValueError, match="pred .*shape"):
        iou_counts(np.zeros((5, 2)), ok, 0.5)


def test_bad_settings():
    ok = np.zeros((4, 3))
    with pytest.raises(ValueError, match="voxel 0.3"):
        iou_counts(ok, ok, 0.3)
    with pytest.raises(ValueError, match="taus"):
        precision_recall_f(ok, ok, taus=[0.1, 0.05])
    with pytest.raises(ValueError, match="pred has no points inside"):
        jsd_3d(ok + 100, ok)
