"""The formulation's ceiling: completions driven by the ideal denoiser (training/oracle.py).

Every scene goes through the real Completer (farthest-point sampling, x_init, the configured
sampler, the r / z crop; no refiner, no guidance) with eps* of its own ground truth in place of
the networks, for each sampler and step count, next to the scan itself and the sampled scan
points the diffusion starts from. No teacher trained with LiDiff's loss can beat these numbers on
these scenes; they are the yardstick for the mini teacher.

    python tools/oracle_study.py --out bench/oracle --samplers sde-dpmsolver++,ve-sde-dpmsolver++ --steps 1,2,4,8
    python tools/oracle_study.py --out bench/oracle --samplers dpmsolver++,ve-dpmsolver++ --steps 8
    python tools/oracle_study.py --out bench/oracle --synthetic 2 --kitti-frames 20 --steps 50 \
        --samplers sde-dpmsolver++,ve-sde-dpmsolver++

(docs/mini-scale.md's tables: ~40, ~15 and ~25 min on 2 cores).

Writes OUT.jsonl (one line per completion, resumable: rerun to continue; runs with other samplers,
steps or scenes add to it), OUT.json (means per dataset and method over every row of OUT.jsonl)
and OUT.md (the tables of docs/mini-scale.md, "A completion model").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # training/ is not an installed package
from ddpo_ros.frontends.bench import machine_facts  # noqa: E402
from ddpo_ros.config import Config, load_config  # noqa: E402
from ddpo_ros.diffusion import schedule_from_config  # noqa: E402
from ddpo_ros.datasets.ground_truth import partial_scan  # noqa: E402
from ddpo_ros.pipeline import Completer  # noqa: E402
from training.evaluate import held_out_synthetic, kitti_scenes  # noqa: E402
from training.metrics import completion_metrics  # noqa: E402
from training.oracle import OracleDenoiser  # noqa: E402

SAMPLERS = ("sde-dpmsolver++", "dpmsolver++", "ve-sde-dpmsolver++", "ve-dpmsolver++")
COLUMNS = (("cd", "CD m"), ("accuracy", "acc m"), ("coverage", "cov m"), ("f@0.1", "F 0.1"), ("f@0.2", "F 0.2"),
           ("f@0.5", "F 0.5"), ("iou@0.5", "IoU 0.5"), ("iou@0.2", "IoU 0.2"))


def scenes(args) -> list[tuple[str, str, object]]:
    """(dataset, key, load) for the held-out synthetic scenes and the KITTI frames asked for."""
    first = getattr(args, "synthetic_start", 0)  # tools/sampler_sweep.py --synthetic-start
    out = [("synthetic", key, load) for key, load in held_out_synthetic(first + args.synthetic, first)]
    if args.kitti_frames:
        frames = [int(f) for f in args.kitti_frames.split(",")]
        todo = kitti_scenes(args.kitti, lambda n: frames, args.cache_dir, poses=args.poses)
        out += [("kitti", key, load) for key, load in todo]
    return out


def summarise(rows: list[dict]) -> dict:
    """Mean of every metric per (dataset, method), methods in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    return {f"{d}|{m}": {"dataset": d, "method": m, "scenes": len(rs),
                         **{k: float(np.mean([r["metrics"][k] for r in rs])) for k in rs[0]["metrics"]},
                         "seconds": float(np.mean([r.get("seconds", 0.0) for r in rs]))}
            for (d, m), rs in groups.items()}


def markdown(summary: dict, facts: str) -> str:
    lines = [facts, ""]
    for dataset in dict.fromkeys(v["dataset"] for v in summary.values()):
        rows = [v for v in summary.values() if v["dataset"] == dataset]
        lines += [f"{dataset}:", "",
                  "| method | scenes | " + " | ".join(h for _, h in COLUMNS) + " |",
                  "|---|---:|" + "---:|" * len(COLUMNS)]
        for v in rows:
            cells = [f"{v[k]:.3f}" if k in ("cd", "accuracy", "coverage") else f"{100 * v[k]:.1f}" for k, _ in COLUMNS]
            lines.append(f"| {v['method']} | {v['scenes']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/oracle", help="OUT.jsonl, OUT.json, OUT.md")
    p.add_argument("--config", default=str(REPO / "config" / "model" / "mini.yaml"),
                   help="model config whose completion section (points, crop) is used")
    p.add_argument("--synthetic", type=int, default=8, help="held-out synthetic scenes")
    p.add_argument("--kitti", default=str(REPO.parent / "shared" / "data" / "kitti_seq00_0_39"))
    p.add_argument("--kitti-frames", default="10,20,30")
    p.add_argument("--cache-dir", default="runs/maps")
    p.add_argument("--poses", default=None, help="poses file in the KITTI folder (default poses.txt; "
                   "poses_sova.txt: LiDAR-aligned, a sharper map)")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--steps", default="1,2,4,8,50")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-t", type=int, default=None,
                   help="completion.start_t: sample from x_init + sigma_t eps at this t (default: the reference start)")
    args = p.parse_args(argv)

    config = load_config(args.config, Config)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sink_path = out.with_suffix(".jsonl")
    done = {}
    if sink_path.exists():
        for line in sink_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["key"], row["method"])] = row
    schedule = schedule_from_config(config.diffusion)
    samplers, steps = args.samplers.split(","), [int(s) for s in args.steps.split(",")]
    todo = scenes(args)
    with sink_path.open("a") as sink, tqdm(total=len(todo) * (2 + len(samplers) * len(steps)),
                                           desc="oracle", file=sys.stderr) as bar:
        for n, (dataset, key, load) in enumerate(todo):
            scan = gt = oracle = None

            def emit(method, pred, seconds=0.0, **extra):
                row = {"dataset": dataset, "key": key, "method": method, "seconds": seconds,
                       "points": len(pred), "metrics": completion_metrics(pred, gt), **extra}
                sink.write(json.dumps(row) + "\n")
                sink.flush()
            late = "" if args.start_t is None else f", from t={args.start_t}"
            methods = [f"{s}, {k} steps{late}" for s in samplers for k in steps]
            for method in ["scan", "sampled scan points (x_init)", *methods]:
                if (key, method) in done:
                    bar.update(1)
                    continue
                if scan is None:
                    scan, gt = load()
                    oracle = OracleDenoiser(gt, schedule)
                if method == "scan":
                    emit(method, partial_scan(scan))
                elif method.startswith("sampled"):
                    partial, _ = Completer(None, None, None, config).preprocess(scan)
                    emit(method, partial)
                else:
                    sampler, k = method.split(", ")[:2]
                    cfg = replace(config, completion=replace(config.completion, sampler=sampler, start_t=args.start_t))
                    start = time.perf_counter()
                    result = Completer(None, None, None, cfg).complete(
                        scan, steps=int(k.split()[0]), refine=False, seed=args.seed + n, denoise=oracle)
                    # truncated: queries whose 4-sigma ball held more than max_neighbours points so far
                    emit(method, result.points, time.perf_counter() - start, truncated=oracle.truncated)
                bar.update(1)
    # Every row in the file, also those of earlier runs with other samplers, steps or scenes.
    summary = summarise([json.loads(line) for line in sink_path.read_text().splitlines()])
    facts = (f"{datetime.now(timezone.utc):%Y-%m-%d}, {_machine()}; oracle denoiser (training/oracle.py) in the "
             f"Completer, {config.completion.num_points:,} sampled scan points x {config.completion.replication} "
             f"= {config.completion.num_points * config.completion.replication:,} diffused, no refiner, no guidance; "
             f"F and IoU in %.")
    out.with_suffix(".json").write_text(json.dumps({"facts": facts, "config": args.config, "summary": summary},
                                                   indent=1))
    out.with_suffix(".md").write_text(markdown(summary, facts))
    print(markdown(summary, facts))
    return 0


def _machine() -> str:
    facts = machine_facts("cpu", torch.get_num_threads(), [])
    return f"{facts['cpu']}, {facts['cores']} cores"


if __name__ == "__main__":
    raise SystemExit(main())
