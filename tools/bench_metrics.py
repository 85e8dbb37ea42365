"""Time every metric of training/metrics.py on two 180,000-point clouds and print a Markdown table.

The clouds are KITTI seq 00 frames 0 and 1 (about 124k points each), topped up to 180k with
jittered copies of their own points (sigma 5 cm), so density and extent stay a real scan's.
Run: python tools/bench_metrics.py [DATA_DIR] [--points N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial.distance import jensenshannon

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ddpo_ros.clouds import find_kitti_frame  # noqa: E402
from ddpo_ros.datasets.ground_truth import nn_distances  # noqa: E402
from training.emd import sinkhorn, voxel_masses  # noqa: E402
from training.metrics import (chamfer, iou_counts, jsd_3d, jsd_bev, precision_recall_f,  # noqa: E402
                              scene_metrics)


def cloud(path: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    xyz = np.fromfile(path, np.float32).reshape(-1, 4)[:, :3].astype(np.float64)
    extra = xyz[rng.integers(0, len(xyz), max(0, n - len(xyz)))] + rng.normal(0, 0.05, (max(0, n - len(xyz)), 3))
    return np.concatenate([xyz, extra])[:n]


def timed(fn, repeat: int = 3):
    """Best of `repeat` wall-clock times and the last result."""
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def histogramdd_jsd(a: np.ndarray, b: np.ndarray) -> float:
    """The reference's way, for comparison: two dense 200^3 histograms and scipy over all 8M cells."""
    ha, hb = (np.histogramdd(p, bins=200, range=[[-50, 50]] * 3)[0] for p in (a, b))
    return float(jensenshannon((ha / ha.sum()).ravel(), (hb / hb.sum()).ravel()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="folder holding semantickitti_seq00_mini (default: ../shared/data)")
    ap.add_argument("--points", type=int, default=180_000)
    args = ap.parse_args()
    frame0 = find_kitti_frame(args.data)
    rng = np.random.default_rng(0)
    a, b = cloud(frame0, args.points, rng), cloud(frame0.with_name("000001.bin"), args.points, rng)
    (x, wa), (y, wb) = voxel_masses(a, 0.5), voxel_masses(b, 0.5)

    rows = [
        ("nn_distances (2 KD-trees, both ways)", lambda: nn_distances(a, b), None),
        ("chamfer", lambda: chamfer(a, b), "{:.4f} m"),
        ("precision_recall_f (100 taus)", lambda: precision_recall_f(a, b)["fscore"], "F {:.4f}"),
        ("jsd_3d", lambda: jsd_3d(a, b), "{:.4f}"),
        ("jsd_3d the reference's way (histogramdd)", lambda: histogramdd_jsd(a, b), "{:.4f}"),
        ("jsd_bev", lambda: jsd_bev(a, b), "{:.4f}"),
        *[(f"iou_counts {v} m{' legacy' if legacy else ''}", lambda v=v, legacy=legacy: iou_counts(a, b, v, legacy),
           "tp/fp/fn {}") for v in (0.5, 0.2, 0.1) for legacy in (False, True)],
        ("voxel_masses 0.5 m (both clouds)", lambda: (voxel_masses(a, 0.5), voxel_masses(b, 0.5)), None),
        (f"emd_sinkhorn ({len(wa):,} + {len(wb):,} voxels)", lambda: sinkhorn(x, y, wa, wb), "{0[0]:.4f} m, {0[1]} it"),
        ("scene_metrics (all of the above, once)", lambda: scene_metrics(a, b), None),
    ]
    print(f"{len(a):,} x {len(b):,} points (KITTI 00 frames 0 and 1), {len(wa) + len(wb):,} voxels at 0.5 m "
          f"(EMD skipped above 130,000)\n")
    print("| metric | seconds (best of 3; EMD and scene_metrics: 1 run) | value |\n|---|---:|---|")
    for name, fn, fmt in rows:
        secs, out = timed(fn, 1 if name.startswith(("emd", "scene")) else 3)
        print(f"| {name} | {secs:.3f} | {fmt.format(out) if fmt else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
