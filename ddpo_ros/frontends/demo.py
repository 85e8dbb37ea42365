"""`ddpo demo`: the whole online path on the bundled real KITTI frames, on this machine's loopback.

1. the first `frames` scans of KITTI seq 00 become a rosbag2 (`ddpo kitti2bag`);
2. `completion_node` starts in its own process (CPU, the bundled mini weights);
3. the bag is replayed (`ddpo play`, at `rate` x real time, with /clock) while a recorder
   watches the node's input, output and /diagnostics;
4. a table of what came out (latency, points, dropped frames) and the Chamfer distance of the
   scan and of its completion to ground truth aggregated from all 40 scans; a PNG.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

SEQUENCE = "kitti_seq00_0_39"
NAMESPACE, INPUT = "/demo", "/velodyne_points"


def untrained_weights(path: Path) -> Path:
    """Random-initialised mini networks (config/model/mini.yaml) saved as a weights file."""
    import torch

    from ..checkpoint import save_checkpoint
    from ..config import load_config
    from ..models import build_denoiser, build_encoder, build_refiner
    from ..resources import config_path

    cfg = load_config(config_path("model/mini.yaml"))
    torch.manual_seed(0)
    nets = {"encoder": build_encoder(cfg.model), "student": build_denoiser(cfg.model),
            "refiner": build_refiner(cfg.model)}
    return save_checkpoint(path, nets, cfg)


def choose_weights(weights, out: Path, log) -> tuple[Path, bool]:
    """(weights file, trained?): the given file, else the bundled mini weights, else untrained ones."""
    from ..resources import default_weights

    if weights:
        return Path(weights), True
    if default_weights() is not None:
        log("NOTE: using the bundled mini-scale weights: a width-0.25 LiDiff teacher (4,000-point scans, 8 steps "
            "of the VE sampler from t = 125 (completion.start_t), no guidance) and a refiner trained on that "
            "teacher's own completions, both on procedural streets only. On 9 KITTI frames they never saw, the "
            "refined completion's Chamfer distance is ~27% below the scan's and it covers the ground truth ~41% "
            "better (held-out synthetic streets: 12% and 55%), but its points sit ~11-13 cm off the surfaces (the "
            "scan's: 4 cm); single frames vary (docs/mini-scale.md, 'Where sampling starts'). For paper-scale "
            "weights see the README's Training section.")
        return default_weights(), True
    log("NOTE: the bundled weights ddpo_ros/weights/mini.safetensors are missing from this install (the git "
        "checkout has them; config/train/teacher_mini.yaml trains them). The demo runs the real pipeline with "
        "randomly initialised mini-scale networks: timings are real, the completed scenes are noise.")
    return untrained_weights(out / "untrained_mini.safetensors"), False


def replay(bag: Path, env: dict, weights: Path, *, clouds: int, rate: float, params: dict, out: Path,
           timeout: float, log) -> dict:
    """Start the node, play the bag into it, wait until it has handled every cloud; what the recorder saw."""
    from .dds import LOOPBACK_KEYS
    from .player import play
    from .recorder import Recorder, start_node, stop_node

    os.environ.update({k: env[k] for k in LOOPBACK_KEYS if k in env})  # before rclpy.init
    node = start_node(env, namespace=NAMESPACE, input_topic=INPUT, log_path=out / "node.log",
                      params={"weights": weights, "device": "cpu", "use_sim_time": True,
                              "input.reliability": "reliable", "diagnostics.period": 0.25, **params})
    rec = Recorder(namespace=NAMESPACE, input_topic=INPUT)
    try:
        log("waiting for the node to load and warm up ...")
        if not rec.wait(lambda: rec.status.get("ready") == "yes" or node.poll() is not None, timeout):
            raise RuntimeError(f"the node did not become ready in {timeout:.0f} s (see {out / 'node.log'})")
        if node.poll() is not None:
            raise RuntimeError(f"the node exited with code {node.returncode} (see {out / 'node.log'})")
        start = time.monotonic()
        play(bag, rate=rate, clock=True, context=rec.context, wait_for_subscribers=10.0, log=log)
        if not rec.wait(lambda: rec.idle(clouds), timeout):
            raise RuntimeError(f"the node did not finish {clouds} clouds in {timeout:.0f} s: {rec.status}")
        rec.wait(lambda: len(rec.outputs) >= rec.count("processed"), 5.0)
        wall = time.monotonic() - start
    finally:
        code = stop_node(node)
        rec.close()
    return {"recorder": rec, "exit_code": code, "wall_s": wall}


def report(rec, seq, first_stamp_ns: int, times: np.ndarray, out: Path, trained: bool, log) -> dict:
    """Per-frame table, Chamfer distances against aggregated ground truth, PNG and JSON."""
    from ..datasets.ground_truth import MapBuilder, chamfer_distance, partial_scan, scan_ground_truth
    from .render import render_clouds

    world = MapBuilder()
    for i in range(len(seq)):
        world.add(seq.scan(i), seq.pose(i))
    rows, last = [], None
    for k, (stamp, arrived, points, _) in enumerate(rec.outputs):
        frame = int(np.argmin(np.abs(first_stamp_ns + times * 1e9 - stamp)))
        scan = seq.scan(frame)[:, :3]
        gt = scan_ground_truth(world.points, seq.pose(frame), scan)
        part = partial_scan(scan)
        last = (frame, part, points, gt)
        rows.append({"frame": frame, "points_in": len(scan), "points_out": len(points),
                     "processing_ms": rec.processing_ms[k] if k < len(rec.processing_ms) else float("nan"),
                     "end_to_end_ms": (arrived - rec.inputs.get(stamp, arrived)) * 1000,
                     "cd_scan_m": chamfer_distance(part, gt),
                     "cd_completion_m": chamfer_distance(points, gt) if len(points) else float("nan")})
    log(f"\n{'frame':>5} {'points in':>10} {'points out':>10} {'processing ms':>14} {'end-to-end ms':>14} "
        f"{'CD scan m':>10} {'CD completed m':>15}")
    for r in rows:
        log(f"{r['frame']:>5} {r['points_in']:>10,} {r['points_out']:>10,} {r['processing_ms']:>14.0f} "
            f"{r['end_to_end_ms']:>14.0f} {r['cd_scan_m']:>10.3f} {r['cd_completion_m']:>15.3f}")
    counts = {k: rec.count(k) for k in ("received", "processed", "dropped", "malformed", "skipped", "failed")}
    log("node: " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
        f"; latency mean {rec.status.get('latency mean ms')} ms (bag clock), peak memory "
        f"{rec.status.get('peak memory MiB')} MiB")
    if not trained:
        log("(untrained weights: a CD of the completion far above the scan's is expected)")
    png = None
    if last is not None:
        frame, part, points, gt = last
        png = render_clouds(out / "demo.png", [
            ("scan", part), ("completion" + ("" if trained else " (untrained)"), points),
            ("ground truth (40 scans)", gt)], title=f"KITTI seq 00 frame {frame}", view="bev")
        log(f"wrote {png}")
    result = {"frames": rows, "node": counts, "trained_weights": trained, "status": rec.status,
              "map_has_moving_objects": not world.labelled}
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def run_demo(data: Path, out: Path, *, frames: int = 12, rate: float = 0.05, weights=None, params=None,
             timeout: float = 600.0, log=print) -> dict:
    from .bags import KITTI_EPOCH_NS, kitti_to_bag
    from .dds import loopback_env
    from ..datasets.kitti import KittiSequence

    out.mkdir(parents=True, exist_ok=True)
    # LiDAR-aligned poses when bundled: KITTI's GT poses smear the first frames by up to 0.19 m
    # (SOURCE.md), and SemanticKITTI's own poses are LiDAR-based too
    sova = data / SEQUENCE / "poses_sova.txt"
    seq = KittiSequence(data / SEQUENCE, poses=sova if sova.exists() else None)
    bag = out / "kitti00_bag"
    if bag.exists():
        shutil.rmtree(bag)  # the demo's own output from an earlier run
    kitti_to_bag(seq.root, bag, limit=frames)
    weights, trained = choose_weights(weights, out, log)
    log(f"bag: {bag} ({frames} scans); weights: {weights}; replay at {rate:g}x real time")
    run = replay(bag, loopback_env(out), weights, clouds=frames, rate=rate, params=params or {}, out=out,
                 timeout=timeout, log=log)
    result = report(run["recorder"], seq, KITTI_EPOCH_NS, seq.times, out, trained, log)
    result.update(exit_code=run["exit_code"], wall_s=run["wall_s"])
    return result


def demo_cli(args) -> int:
    from ..clouds import find_kitti_frame

    data = find_kitti_frame(args.data).parents[4]  # .../semantickitti_seq00_mini/sequences/00/velodyne/x.bin
    params = {"completion.steps": args.steps} if args.steps else {}
    try:
        result = run_demo(data, Path(args.out), frames=args.frames, rate=args.rate, weights=args.weights,
                          params=params)
    except (RuntimeError, OSError, ValueError) as err:
        print(f"ddpo demo: {err}", file=sys.stderr)
        return 1
    return 0 if result["exit_code"] == 0 and result["frames"] else 1
