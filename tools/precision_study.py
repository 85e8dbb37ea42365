"""What `completion.precision: bf16` does to completions: the bundled mini weights on real KITTI frames.

For each frame the scene is completed in fp32 and in bf16 with the same seed, and in fp32 with a
second seed, which gives the scale of sample-to-sample variation the bf16 difference is read against
(the stochastic sampler turns any small perturbation into a different sample). Writes
bench/precision.json; the README's "bf16 accuracy" reading quotes it.

    python tools/precision_study.py [--frames 0 10 20 30] [--steps 8]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ddpo_ros.frontends.allocator import retain_freed_memory
from ddpo_ros.clouds import crop_range, read_kitti_bin
from ddpo_ros.datasets.ground_truth import chamfer_distance
from ddpo_ros.loading import load_completer
from ddpo_ros.pipeline import Completer

REPO = Path(__file__).resolve().parents[1]
SEQUENCE = Path("kitti_seq00_0_39/velodyne")


def complete(comp: Completer, scan: np.ndarray, precision: str, seed: int, steps: int):
    comp.config = replace(comp.config, completion=replace(comp.config.completion, precision=precision))
    start = time.perf_counter()
    points = comp.complete(scan, steps=steps, seed=seed).points
    return points, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[0, 10, 20, 30])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--data", default=os.environ.get("DDPO_DATA", REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=REPO / "bench" / "precision.json")
    args = p.parse_args()
    retain_freed_memory()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    comp = load_completer()  # the bundled mini weights
    rows = []
    for frame in args.frames:
        scan = read_kitti_bin(Path(args.data) / SEQUENCE / f"{frame:06d}.bin")
        visible = crop_range(scan[:, :3])
        fp32, t32 = complete(comp, scan, "fp32", frame, args.steps)
        bf16, t16 = complete(comp, scan, "bf16", frame, args.steps)
        other, _ = complete(comp, scan, "fp32", frame + 1000, args.steps)
        row = {"frame": frame, "seconds": {"fp32": round(t32, 2), "bf16": round(t16, 2)},
               "cd_fp32_bf16_same_seed": chamfer_distance(fp32, bf16),
               "cd_fp32_other_seed": chamfer_distance(fp32, other),
               "cd_to_scan": {"fp32": chamfer_distance(fp32, visible), "bf16": chamfer_distance(bf16, visible)}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    mean = lambda f: float(np.mean([f(r) for r in rows]))  # noqa: E731
    summary = {"cd_fp32_bf16_same_seed": mean(lambda r: r["cd_fp32_bf16_same_seed"]),
               "cd_fp32_other_seed": mean(lambda r: r["cd_fp32_other_seed"]),
               "cd_to_scan_fp32": mean(lambda r: r["cd_to_scan"]["fp32"]),
               "cd_to_scan_bf16": mean(lambda r: r["cd_to_scan"]["bf16"])}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    result = {"weights": "bundled mini", "steps": args.steps, "cpu": cpu, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "frames": rows, "mean": summary}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
