"""docs/kitti_ground_truth.png: a real KITTI scan and the ground truth aggregated for it.

The map is all 40 bundled scans of seq 00 merged with the LiDAR-aligned poses_sova.txt (first point per
0.1 m voxel, r > 3.5 m; no labels here, so parked and moving objects stay in), cut to frame 20:
50 m around the pose, z > -4, the scan's 10 m cells. Run: python tools/gt_figure.py
"""
import sys
from pathlib import Path

from ddpo_ros.clouds import find_kitti_frame
from ddpo_ros.datasets.ground_truth import partial_scan, scan_ground_truth
from ddpo_ros.datasets.kitti import KittiSequence
from ddpo_ros.frontends.render import render_clouds
from training.data.maps import build_map

FRAME = 20
data = find_kitti_frame(sys.argv[1] if len(sys.argv) > 1 else None).parents[4]
seq = KittiSequence(data / "kitti_seq00_0_39", poses=data / "kitti_seq00_0_39" / "poses_sova.txt")
world, _ = build_map(seq)
scan = seq.scan(FRAME)[:, :3]
gt = scan_ground_truth(world, seq.pose(FRAME), scan)
out = Path(__file__).resolve().parents[1] / "docs" / "kitti_ground_truth.png"
render_clouds(out, [(f"scan (frame {FRAME})", partial_scan(scan)), ("ground truth: 40 scans merged", gt)],
              title="KITTI seq 00: one scan and its aggregated ground truth", view="both", size=(11, 10))
print(f"wrote {out}: scan {len(scan):,} points, map {len(world):,}, ground truth {len(gt):,}")
