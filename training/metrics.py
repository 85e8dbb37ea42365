"""Scene-completion metrics for one scan, as LiDiff / Distillation-DPO compute them (reference section 5).

Pure functions: two clouds in ((N, 3+) arrays, metres, scan frame; extra columns ignored), numbers
out. Precision, recall, F-score and IoU are fractions in [0, 1] (the reference prints percentages:
multiply by 100). IoU is global over a whole evaluation, so per scan only the confusion counts are
returned (`iou_counts`); sum them over scans and call `iou_from_counts`.
"""
from __future__ import annotations

import numpy as np
from scipy.integrate import simpson
from scipy.spatial.distance import jensenshannon

from ddpo_ros.datasets.ground_truth import nn_distances
from training.emd import sinkhorn, transport_lp, voxel_masses

TAUS = np.linspace(0.05, 0.10, 100)  # the reference's precision / recall thresholds, metres
IOU_VOXELS = (0.5, 0.2, 0.1)


def _cloud(points, name: str) -> np.ndarray:
    """(N, 3) float64 view of a cloud, or a ValueError naming the argument."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{name} must be an (N, 3+) array of points, got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{name} is empty: the metrics need at least one point")
    if not np.isfinite(arr[:, :3]).all():
        raise ValueError(f"{name} has non-finite coordinates")
    return arr[:, :3]


def chamfer(pred, gt, workers: int = -1) -> float:
    """The paper's Chamfer distance in metres: (mean NN pred -> gt + mean NN gt -> pred) / 2."""
    d_pg, d_gp = nn_distances(_cloud(pred, "pred"), _cloud(gt, "gt"), workers)
    return float((d_pg.mean() + d_gp.mean()) / 2)


def _pr_auc(d_pg: np.ndarray, d_gp: np.ndarray, taus: np.ndarray) -> dict:
    taus = np.asarray(taus, dtype=np.float64)
    if taus.ndim != 1 or len(taus) < 2 or not (np.diff(taus) > 0).all():
        raise ValueError(f"taus must be a 1-D increasing array of >= 2 thresholds, got {taus!r}")
    # fraction of distances strictly below each tau (the reference's `d < t`), via one sort each
    p = np.searchsorted(np.sort(d_pg), taus, side="left") / len(d_pg)
    r = np.searchsorted(np.sort(d_gp), taus, side="left") / len(d_gp)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p > 0) & (r > 0))
    perfect = simpson(np.ones_like(taus), x=taus)
    return {k: float(simpson(v, x=taus) / perfect) for k, v in (("precision", p), ("recall", r), ("fscore", f))}


def precision_recall_f(pred, gt, taus=TAUS, workers: int = -1) -> dict:
    """Precision, recall and F-score as fractions, each the normalised area under its curve over tau.

    Reference: precision(tau) = share of pred points whose NN in gt is closer than tau, recall(tau)
    the same from gt to pred, F(tau) = 2PR / (P + R) (0 where P or R is 0), for tau in
    linspace(0.05, 0.10, 100) m; each reported as Simpson AUC / AUC of the perfect predictor (1).
    """
    d_pg, d_gp = nn_distances(_cloud(pred, "pred"), _cloud(gt, "gt"), workers)
    return _pr_auc(d_pg, d_gp, taus)


def _bins(voxel: float, extent: float) -> int:
    """Bins per axis over [-extent, extent]; the cell size must tile the range exactly."""
    if not voxel > 0 or not extent > 0:
        raise ValueError(f"voxel ({voxel}) and extent ({extent}) must be positive")
    n = round(2 * extent / voxel)
    if abs(n * voxel - 2 * extent) > 1e-9 * extent:
        raise ValueError(f"voxel {voxel} does not tile [-{extent}, {extent}] into whole cells")
    return n


def _cells(xyz: np.ndarray, voxel: float, extent: float) -> np.ndarray:
    """Flat cell index (ix * n^2 + iy * n + iz) of each point inside [-extent, extent]^3.

    Cell i holds floor((p + extent) / voxel) = i, computed as np.histogramdd(bins=n,
    range=[[-extent, extent]] * 3) does (search in the same linspace edges), so points on a cell
    boundary land where the reference puts them: outside points are dropped, and a point exactly on
    the upper bound falls in the last cell.
    """
    n = _bins(voxel, extent)
    xyz = xyz[(np.abs(xyz) <= extent).all(axis=1)]
    edges = np.linspace(-extent, extent, n + 1)
    idx = np.minimum(np.searchsorted(edges, xyz, side="right") - 1, n - 1)
    return (idx[:, 0] * n + idx[:, 1]) * n + idx[:, 2]


def _js(cells_pred: np.ndarray, cells_gt: np.ndarray) -> float:
    """JS distance of two histograms given as cell indices, over the union of their occupied cells.

    Cells empty in both contribute 0 to the divergence, so this equals scipy's value over the full
    grid (200^3 = 8M cells) at a fraction of the cost.
    """
    cells, inv = np.unique(np.concatenate([cells_pred, cells_gt]), return_inverse=True)
    p = np.bincount(inv[:len(cells_pred)], minlength=len(cells)).astype(np.float64)
    q = np.bincount(inv[len(cells_pred):], minlength=len(cells)).astype(np.float64)
    return float(jensenshannon(p / p.sum(), q / q.sum()))


def _nonempty_cells(points, name: str, voxel: float, extent: float) -> np.ndarray:
    cells = _cells(_cloud(points, name), voxel, extent)
    if len(cells) == 0:
        raise ValueError(f"{name} has no points inside [-{extent}, {extent}]^3")
    return cells


def jsd_3d(pred, gt, bins: float = 0.5, extent: float = 50.0) -> float:
    """Jensen-Shannon *distance* (sqrt of the divergence, natural log) between 3-D point histograms.

    Reference: np.histogramdd over [-50, 50]^3 with 0.5 m cells, counts normalised to sum 1,
    scipy.spatial.distance.jensenshannon. 0 for identical histograms, sqrt(ln 2) = 0.8326 for
    disjoint ones. Points outside the extent are ignored.
    """
    return _js(_nonempty_cells(pred, "pred", bins, extent), _nonempty_cells(gt, "gt", bins, extent))


def jsd_bev(pred, gt, bins: float = 0.5, extent: float = 50.0) -> float:
    """Jensen-Shannon distance between bird's-eye-view histograms (DD's `jsd_bev`).

    Reference: the 3-D histogram of `jsd_3d` clipped to occupancy {0, 1}, summed over z (so a
    column counts its occupied cells), normalised, scipy's JS distance (natural log, sqrt).
    """
    n = _bins(bins, extent)
    # unique 3-D cells = occupancy; a flat cell index // n is its (x, y) column
    cols = [np.unique(_nonempty_cells(c, name, bins, extent)) // n for c, name in ((pred, "pred"), (gt, "gt"))]
    return _js(*cols)


def iou_counts(pred, gt, voxel: float, legacy: bool = False, extent: float = 50.0) -> tuple[int, int, int]:
    """Voxel-occupancy confusion (TP, FP, FN) of one scan, to be summed over scans for the global IoU.

    Corrected binning (LiDiff fix e5305f9): occupancy of the cells floor((p + 50) / voxel) inside
    [-50, 50]^3. `legacy=True` reproduces the old, buggy binning that DD and ScoreLiDAR still ship
    (histogram of the *indices* round(p / voxel) over [-50, 50] with 100 / voxel bins): only points
    with |round(p / voxel)| <= 50 on every axis count, i.e. a +-25 / 10 / 5 m cube at
    0.5 / 0.2 / 0.1 m. Use it only to compare with numbers published with that code.
    """
    pred, gt = _cloud(pred, "pred"), _cloud(gt, "gt")
    if legacy:  # the integer indices, histogrammed as if they were metres
        pred, gt = np.round(pred / voxel), np.round(gt / voxel)
    cp, cg = np.unique(_cells(pred, voxel, extent)), np.unique(_cells(gt, voxel, extent))
    tp = len(np.intersect1d(cp, cg, assume_unique=True))
    return tp, len(cp) - tp, len(cg) - tp


def iou_from_counts(tp, fp, fn) -> float:
    """IoU = TP / (TP + FP + FN); 0 when both clouds are empty in the range (the reference's +1e-15)."""
    union = tp + fp + fn
    return float(tp / union) if union > 0 else 0.0


def voxel_iou(pred, gt, voxel: float, legacy: bool = False, extent: float = 50.0) -> float:
    """Voxel-occupancy IoU of a single scan (see `iou_counts`; an evaluation sums counts instead)."""
    return iou_from_counts(*iou_counts(pred, gt, voxel, legacy, extent))


def emd_sinkhorn(pred, gt, voxel: float = 0.5, eps: float = 0.001, max_iter: int = 3000, tol: float = 1e-4,
                 max_voxels: int = 130_000) -> float | None:
    """DD's Sinkhorn EMD between the clouds' 0.5 m voxel masses, or None above `max_voxels` voxels in total.

    Reproduces the reference's number (see training/emd.py). With its eps = 0.001 the kernel is
    1 + 1e-9 on voxels both clouds occupy and 1e-9 elsewhere, so unmatched mass is spread with no
    regard to distance: the value is a (large) upper bound on the true EMD, not an estimate of it.
    """
    x, a = voxel_masses(_cloud(pred, "pred"), voxel)
    y, b = voxel_masses(_cloud(gt, "gt"), voxel)
    if len(a) + len(b) > max_voxels:
        return None
    return sinkhorn(x, y, a, b, eps, max_iter, tol)[0]


def emd_exact(pred, gt, voxel: float = 0.5) -> float:
    """Exact EMD (optimal transport, Euclidean cost) between the same voxel masses as `emd_sinkhorn`.

    A linear programme over every voxel pair: for checks on small clouds (<= 250,000 pairs).
    """
    x, a = voxel_masses(_cloud(pred, "pred"), voxel)
    y, b = voxel_masses(_cloud(gt, "gt"), voxel)
    return transport_lp(x, y, a, b)


def completion_metrics(pred, gt, taus=(0.1, 0.2, 0.5), voxels=(0.5, 0.2), workers: int = -1) -> dict:
    """What a completion gained over its scan, in plain terms (metres; fractions in [0, 1]):

    accuracy = mean NN distance pred -> gt, coverage = mean gt -> pred, cd = their mean (the
    paper's CD); precision / recall / F at single thresholds tau (share of pred (gt) points with a
    gt (pred) point closer than tau, F = 2PR / (P + R)); one scan's voxel IoU at each size.
    """
    pred, gt = _cloud(pred, "pred"), _cloud(gt, "gt")
    d_pg, d_gp = nn_distances(pred, gt, workers)
    out = {"cd": float((d_pg.mean() + d_gp.mean()) / 2), "accuracy": float(d_pg.mean()),
           "coverage": float(d_gp.mean())}
    for tau in taus:
        p, r = float((d_pg < tau).mean()), float((d_gp < tau).mean())
        out[f"f@{tau}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out[f"precision@{tau}"], out[f"recall@{tau}"] = p, r
    for v in voxels:
        out[f"iou@{v}"] = voxel_iou(pred, gt, v)
    return out


def scene_metrics(pred, gt, *, emd: bool = True, legacy_iou: bool = False, workers: int = -1) -> dict:
    """Every metric of one scan: cd (and its halves accuracy, coverage), precision, recall, fscore,
    jsd_3d, jsd_bev, emd (None when skipped) and iou_counts {"0.5": (tp, fp, fn), "0.2": ..., "0.1": ...}.

    The IoU keys are str(voxel), so a row reads the same before and after a JSON round trip.
    """
    pred, gt = _cloud(pred, "pred"), _cloud(gt, "gt")
    d_pg, d_gp = nn_distances(pred, gt, workers)  # shared by CD and precision / recall
    return {
        "cd": float((d_pg.mean() + d_gp.mean()) / 2),
        "accuracy": float(d_pg.mean()),   # mean NN distance pred -> gt
        "coverage": float(d_gp.mean()),   # mean NN distance gt -> pred
        **_pr_auc(d_pg, d_gp, TAUS),
        "jsd_3d": jsd_3d(pred, gt),
        "jsd_bev": jsd_bev(pred, gt),
        "emd": emd_sinkhorn(pred, gt) if emd else None,
        "iou_counts": {str(v): iou_counts(pred, gt, v, legacy_iou) for v in IOU_VOXELS},
    }
