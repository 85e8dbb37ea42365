"""A trained model's completions under several sampler settings, on the oracle study's scenes.

Each variant is `sampler:guidance[:steps][:refine]` and goes through the real Completer with the
weights' own networks, without the refiner unless the variant ends in `:refine` (then the diffused
points are refined x up_factor, as `ddpo complete` does by default); the scenes, metrics and tables
are those of tools/oracle_study.py, so the rows sit next to the ideal denoiser's (bench/oracle.md)
and the scan's.

    python tools/sampler_sweep.py --weights ddpo_ros/weights/mini.safetensors --out bench/teacher_sweep \
        --variants ve-sde-dpmsolver++:1,ve-dpmsolver++:1,ve-sde-dpmsolver++:2,sde-dpmsolver++:1
    python tools/sampler_sweep.py --out bench/refiner --variants ve-sde-dpmsolver++:1,ve-sde-dpmsolver++:1:8:refine \
        --refiner runs/refine_mini/weights.safetensors    # another run's refiner behind the same teacher

`--start-t T` runs every variant from completion.start_t = T (`ref`: the reference's x_init + eps at T-1)
instead of the weights' own start; its rows are named "..., from t=T". The start of the bundled weights
was chosen on held-out synthetic scenes that no table scores (`--synthetic-start 100`):

    for s in ref 375 250 187 125 62 31 16; do python tools/sampler_sweep.py --out bench/start_t_tuning \
        --synthetic-start 100 --kitti-frames "" --start-t $s --variants ve-sde-dpmsolver++:1:8:refine; done

Writes OUT.jsonl (one line per completion, resumable; other variants add to it), OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # training/ and tools/ are not installed packages
from ddpo_ros.checkpoint import build_models, load_checkpoint  # noqa: E402
from ddpo_ros.datasets.ground_truth import partial_scan  # noqa: E402
from ddpo_ros.loading import load_completer, weights_path  # noqa: E402
from tools.oracle_study import _machine, markdown, scenes, summarise  # noqa: E402
from training.metrics import completion_metrics  # noqa: E402


def parse_variant(text: str, default_steps: int) -> tuple[str, float, int, bool]:
    """'sampler:guidance[:steps][:refine]' -> (sampler, guidance, steps, refine); the error names the variant."""
    parts = text.split(":")
    refine = parts[-1] == "refine"
    if refine:
        parts = parts[:-1]
    try:
        if len(parts) not in (2, 3):
            raise ValueError("expected sampler:guidance[:steps][:refine]")
        return parts[0], float(parts[1]), int(parts[2]) if len(parts) == 3 else default_steps, refine
    except ValueError as err:
        raise SystemExit(f"--variants: {text!r}: {err}") from None


def method_name(sampler: str, guidance: float, steps: int, refine: bool = False, start=None) -> str:
    return f"{sampler}, w {guidance:g}, {steps} steps" + (", refined" if refine else "") + \
        ("" if start is None else f", from t={start}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="ddpo_ros .safetensors (default: the bundled weights)")
    p.add_argument("--out", default="bench/teacher_sweep", help="OUT.jsonl, OUT.json, OUT.md")
    p.add_argument("--variants", default="ve-sde-dpmsolver++:1",
                   help="comma-separated sampler:guidance[:steps][:refine]")
    p.add_argument("--refiner", default=None, help="take the refiner from these weights (default: --weights' own)")
    p.add_argument("--steps", type=int, default=8, help="steps of variants that name none")
    p.add_argument("--synthetic", type=int, default=8, help="held-out synthetic scenes")
    p.add_argument("--synthetic-start", type=int, default=0, help="first held-out synthetic scene (tuning: 100)")
    p.add_argument("--start-t", default=None, help="completion.start_t of every variant (ref: T-1, the "
                   "reference's start; default: the weights' own)")
    p.add_argument("--kitti", default=str(REPO.parent / "shared" / "data" / "kitti_seq00_0_39"))
    p.add_argument("--kitti-frames", default="10,20,30")
    p.add_argument("--cache-dir", default="runs/maps")
    p.add_argument("--poses", default=None, help="poses file in the KITTI folder (default poses.txt; "
                   "poses_sova.txt: LiDAR-aligned, a sharper map)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    variants = [parse_variant(v, args.steps) for v in args.variants.split(",")]
    weights = weights_path(args.weights)
    completer = load_completer(weights, device=args.device)
    if args.refiner:
        completer.refiner = build_models(load_checkpoint(args.refiner), ["refiner"])["refiner"].eval().to(
            completer.device)
    if args.start_t is not None:
        completer.configure(start_t=None if args.start_t == "ref" else int(args.start_t))
    if any(v[3] for v in variants) and completer.refiner is None:
        raise SystemExit(f"--variants: ':refine' needs a refiner; {weights} has none (pass --refiner)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sink_path = out.with_suffix(".jsonl")
    done, poses = set(), args.poses or "poses.txt"
    if sink_path.exists():
        rows = [json.loads(line) for line in sink_path.read_text().splitlines()]
        if any(r.get("poses", "poses.txt") != poses for r in rows):
            raise SystemExit(f"{sink_path} holds rows scored against another --poses map; use another --out")
        done = {(r["key"], r["method"]) for r in rows}
    todo = scenes(args)
    with sink_path.open("a") as sink, tqdm(total=len(todo) * (1 + len(variants)), desc="sweep",
                                           file=sys.stderr) as bar:
        for n, (dataset, key, load) in enumerate(todo):
            scan = gt = None
            methods = [("scan", None)] + [(method_name(*v, start=args.start_t), v) for v in variants]
            for method, variant in methods:
                bar.update(1)
                if (key, method) in done:
                    continue
                if scan is None:
                    scan, gt = load()
                start = time.perf_counter()
                if variant is None:
                    pred = partial_scan(scan)
                else:
                    sampler, guidance, steps, refine = variant
                    completer.configure(sampler=sampler)
                    pred = completer.complete(scan, steps=steps, refine=refine, guidance_scale=guidance,
                                              seed=args.seed + n).points
                row = {"dataset": dataset, "key": key, "method": method, "weights": weights.name,
                       "refiner": args.refiner or weights.name, "poses": poses,
                       "seconds": time.perf_counter() - start, "points": len(pred),
                       "metrics": completion_metrics(pred, gt)}
                sink.write(json.dumps(row) + "\n")
                sink.flush()
    summary = summarise([json.loads(line) for line in sink_path.read_text().splitlines()])
    config = completer.config.completion
    facts = (f"{datetime.now(timezone.utc):%Y-%m-%d}, {_machine()}; {weights.name} ({completer.kind}) in the "
             f"Completer, {config.num_points:,} sampled scan points x {config.replication} diffused, refined only "
             f"where the method says so (refiner: {Path(args.refiner).name if args.refiner else 'its own'}); "
             f"KITTI ground truth from {poses}; F and IoU in %.")
    out.with_suffix(".json").write_text(json.dumps({"facts": facts, "weights": str(weights), "summary": summary},
                                                   indent=1))
    out.with_suffix(".md").write_text(markdown(summary, facts))
    print(markdown(summary, facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
