"""`python training/train.py evaluate`: the paper's Table 1/2 numbers for a weights file.

The protocol of the reference's eval_path.py (reference section 5): every scan of the split goes
into the Completer raw (it crops 3.5-50 m itself); the ground truth is the sequence map within
50 m of the pose, in the scan frame, -4 < z < 4.4, inside the 10 m cells of the raw scan. Each
scan's metrics go to results.jsonl as soon as they exist, so a long split can be stopped and
resumed; the summary (JSON and a markdown table) is rebuilt from that file at the end. The scan
itself is scored too, as the "no completion" baseline.
"""
from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from ddpo_ros.datasets.ground_truth import partial_scan, scan_ground_truth
from ddpo_ros.datasets.kitti import KittiSequence

from .data.kitti import SPLITS, find_sequences
from .data.maps import sequence_map
from .metrics import IOU_VOXELS, iou_counts, iou_from_counts, scene_metrics

MEAN_KEYS = ("cd", "accuracy", "coverage", "precision", "recall", "fscore", "jsd_3d", "jsd_bev", "emd")


def settings_of(args, completer) -> dict:
    """Everything that changes the numbers; a resumed run must match it."""
    weights = Path(args.weights)
    return {"weights": str(weights.resolve()), "weights_size": weights.stat().st_size, "kind": completer.kind,
            "steps": args.steps or completer.default_steps, "refine": not args.no_refine,
            "guidance_scale": completer.default_guidance if args.guidance is None else args.guidance,
            "seed": args.seed, "num_points": completer.config.completion.num_points,
            "replication": completer.config.completion.replication,
            # Only when not the default, so results made before the setting existed still resume.
            **({"precision": precision} if (precision := completer.config.completion.precision) != "fp32" else {}),
            **({"start_t": start} if (start := completer.config.completion.start_t) is not None else {}),
            **({"poses": args.poses} if args.poses else {})}  # another map is another ground truth


def held_out_synthetic(count: int, start: int = 0, every: int = 1) -> list[tuple[str, Callable]]:
    """(key, load) of held-out synthetic scenes: seeds from data.sets.HELD_OUT, never drawn in training."""
    from .data.sets import HELD_OUT
    from .data.synthetic import make_sample

    def synthetic(seed):
        sample = make_sample(seed)
        return sample["scan"], sample["ground_truth"]
    return [(f"synthetic:{HELD_OUT + i}", partial(synthetic, HELD_OUT + i)) for i in range(start, count, every)]


def kitti_scenes(root, frames=None, cache_dir=None, sequences=None, poses=None) -> list[tuple[str, Callable]]:
    """(key, load) per scan of the sequences under `root`: every frame, or the indices
    `frames(len(sequence))` gives. `poses`: the poses file's name in each sequence folder (default
    poses.txt; the bundled kitti_seq00_0_39 also has the LiDAR-aligned poses_sova.txt, see its SOURCE.md)."""
    try:
        seqs = [KittiSequence(p, poses=Path(p) / poses if poses else None)
                for p in find_sequences(root, sequences or SPLITS["val"])]
    except FileNotFoundError as err:  # KittiSequence names the file; say which option chose it
        raise FileNotFoundError(f"--poses {poses}: {err}" if poses else str(err)) from None
    maps: dict[str, np.ndarray] = {}

    def kitti(seq, i):
        if str(seq.root) not in maps:
            maps.clear()  # one sequence's map in memory at a time
            maps[str(seq.root)] = sequence_map(seq, cache_dir)[0]
        scan = seq.scan(i)[:, :3]
        raw = scan[np.linalg.norm(scan, axis=1) < 50.0]  # the viewpoint cells come from the raw scan
        return scan, scan_ground_truth(maps[str(seq.root)], seq.pose(i), raw, z_max=4.4)
    return [(str(seq.scans[i]), partial(kitti, seq, i)) for seq in seqs
            for i in (range(len(seq)) if frames is None else frames(len(seq)))]


def scans_of(args) -> list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]]:
    """(key, load) per scan to score; load() -> (raw scan (N, 3), ground truth in its frame).

    `--data synthetic:N` scores N held-out synthetic scenes (seeds from data.sets.HELD_OUT, the
    seeds training never draws); anything else is a KITTI folder.
    """
    if str(args.data).startswith("synthetic:"):
        todo = held_out_synthetic(int(str(args.data).split(":", 1)[1]), args.start, args.every)
    else:
        names = args.sequences.split(",") if args.sequences else SPLITS[args.split]
        todo = kitti_scenes(args.data, lambda n: range(args.start, n, args.every), args.cache_dir, names,
                            args.poses)
    return todo[: args.limit] if args.limit else todo


def metrics_or_empty(pred: np.ndarray, gt: np.ndarray) -> dict:
    """scene_metrics, or for an empty completion no distances and every ground-truth voxel missed."""
    if len(pred):
        return scene_metrics(pred, gt)
    counts = {str(v): [0, 0, iou_counts(gt, gt, v)[0]] for v in IOU_VOXELS}
    return {**dict.fromkeys(MEAN_KEYS), "iou_counts": counts, "empty": True}


def load_done(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["scan"]] = row
    return done


def summarise(rows: list[dict], key: str) -> dict:
    """Mean/std of the per-scan metrics under `key` ('completion' or 'scan'); IoU from summed counts."""
    out = {}
    for k in MEAN_KEYS:
        vals = [r[key][k] for r in rows if r[key].get(k) is not None]
        out[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)} if vals else None
    for v in IOU_VOXELS:
        counts = np.sum([r[key]["iou_counts"][str(v)] for r in rows], axis=0)
        out[f"iou_{v}"] = iou_from_counts(*counts)
    return out


def table(summary: dict) -> str:
    head = ("| | CD m | F % | JSD 3D | JSD BEV | EMD | IoU 0.5 % | IoU 0.2 % | IoU 0.1 % | s / scene | NFE |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(m, k, scale=1.0, fmt="{:.3f}"):
        return "-" if m.get(k) is None else fmt.format(m[k]["mean"] * scale)
    lines = [head]
    for name, m, secs, nfe in summary["rows"]:
        lines.append(f"| {name} | {cell(m, 'cd')} | {cell(m, 'fscore', 100, '{:.1f}')} | {cell(m, 'jsd_3d')} | "
                     f"{cell(m, 'jsd_bev')} | {cell(m, 'emd')} | "
                     + " | ".join(f"{m[f'iou_{v}'] * 100:.1f}" for v in IOU_VOXELS)
                     + f" | {secs} | {nfe} |")
    return "\n".join(lines)


def completer_of(args):
    """The Completer to score: the weights' own `completion:` settings, --precision and --start-t replacing
    theirs when given (--steps, --guidance and --seed go to each complete() call, see settings_of)."""
    from ddpo_ros.loading import load_completer

    overrides = {"precision": args.precision} if args.precision else {}
    if getattr(args, "start_t", None) is not None:
        overrides["start_t"] = None if args.start_t == "ref" else args.start_t
    return load_completer(args.weights, device=args.device, overrides=overrides)


def evaluate(args) -> int:
    from ddpo_ros.frontends.render import render_clouds

    completer = completer_of(args)
    settings = settings_of(args, completer)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_file, results = out / "run.json", out / "results.jsonl"
    if run_file.exists() and json.loads(run_file.read_text()) != settings:
        print(f"evaluate: {out} holds results made with other settings ({run_file}); use another --out",
              file=sys.stderr)
        return 2
    run_file.write_text(json.dumps(settings, indent=1))
    done = load_done(results)
    todo = scans_of(args)
    guided = settings["guidance_scale"] != 1.0
    nfe = settings["steps"] * (2 if guided else 1)
    with results.open("a") as sink:
        for n, (key, load) in enumerate(tqdm(todo, desc="evaluate", unit="scan", file=sys.stderr)):
            if key in done:
                continue
            scan, gt = load()
            seed = None if args.seed is None else args.seed + n
            start = time.perf_counter()
            result = completer.complete(scan, steps=settings["steps"], refine=settings["refine"],
                                        guidance_scale=settings["guidance_scale"], seed=seed)
            seconds = time.perf_counter() - start
            part = partial_scan(scan)
            row = {"scan": key, "seconds": seconds, "points": len(result.points),
                   "completion": metrics_or_empty(result.points, gt), "scan_only": scene_metrics(part, gt)}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            done[key] = row
            if n < args.renders:
                render_clouds(out / "renders" / f"{key.replace('/', '_').replace(':', '_')}.png",
                              [("scan", part), (f"{completer.kind}, {settings['steps']} steps", result.points),
                               ("ground truth", gt)], title=key, view="bev")
    rows = [done[key] for key, _ in todo]
    secs = f"{np.mean([r['seconds'] for r in rows]):.1f}"
    name = f"{completer.kind}, {settings['steps']} steps" + (" + refine" if settings["refine"] else "")
    summary = {"settings": settings, "scans": len(rows), "completion": summarise(rows, "completion"),
               "scan_only": summarise(rows, "scan_only")}
    summary["rows"] = [("scan (no completion)", summary["scan_only"], "-", 0),
                       (name, summary["completion"], secs, nfe)]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(table(summary) + "\n")
    print(table(summary))
    print(f"{len(rows)} scans; {out / 'summary.json'}, {out / 'summary.md'}")
    return 0
