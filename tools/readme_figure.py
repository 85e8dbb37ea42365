"""docs/kitti_pipeline_input.png: what the Completer feeds the denoiser, on the real KITTI frame.

Input scan (3.5-50 m), the 18,000 farthest-point samples, and x_T = x_init + eps (180,000 points,
the sampler's start). Seeded; rerun with `.venv/bin/python tools/readme_figure.py`.
"""
from pathlib import Path

import numpy as np

from ddpo_ros.clouds import crop_range, find_kitti_frame, read_kitti_bin
from ddpo_ros.fps import farthest_point_sample
from ddpo_ros.frontends.render import render_clouds

scan = crop_range(read_kitti_bin(find_kitti_frame())[:, :3])
partial = scan[farthest_point_sample(scan, 18000)]
x_init = np.tile(partial, (10, 1))
x_t = x_init + np.random.default_rng(0).standard_normal(x_init.shape).astype(np.float32)
out = Path(__file__).resolve().parents[1] / "docs" / "kitti_pipeline_input.png"
render_clouds(out, [("KITTI seq 00 frame 0, 3.5-50 m", scan), ("18,000 farthest-point samples", partial),
                    ("x_T = x_init + eps (sampler start)", x_t)], view="bev", z_range=(-2.5, 1.0))
print(out)
