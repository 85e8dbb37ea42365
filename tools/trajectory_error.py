"""A teacher's error against the ideal denoiser on its own sampling trajectory vs on training states.

    python tools/trajectory_error.py --weights ddpo_ros/weights/mini.safetensors --scenes 4 --out bench/trajectory_error

Per held-out synthetic scene the weights complete the scan as the Completer does (their sampler,
8 steps, w = 1, no refiner). At each of the sampler's calls, the squared error of the predicted
noise against the ideal denoiser's eps* (training/oracle.py) is taken twice:
- trajectory: at the state the sampler hands the network;
- training: at a training state of the same t, x_0 + sigma_t eps with x_0 the scene's ground truth
  cut to the training size (what the noise loss shows the network).
A network that is good on training states but not on its trajectory has an exposure problem
(training/rollout.py). Several weights can be given (name=path); writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ddpo_ros.checkpoint import build_models, load_checkpoint  # noqa: E402
from ddpo_ros.datasets.ground_truth import partial_scan  # noqa: E402
from ddpo_ros.diffusion import add_local_noise, schedule_from_config  # noqa: E402
from ddpo_ros.frontends.bench import machine_facts  # noqa: E402
from ddpo_ros.pipeline import Completer  # noqa: E402
from training.data.kitti import training_pair  # noqa: E402
from training.evaluate import held_out_synthetic  # noqa: E402
from training.metrics import completion_metrics  # noqa: E402
from training.oracle import OracleDenoiser  # noqa: E402


def measure(weights: str, scenes: int, steps: int, role: str = "teacher") -> dict:
    ckpt = load_checkpoint(weights)
    nets = build_models(ckpt, ["encoder", role])
    encoder, den = nets["encoder"].eval(), nets[role].eval()
    completer = Completer(encoder, den, None, ckpt.config, kind=role)
    schedule, c = schedule_from_config(ckpt.config.diffusion), ckpt.config.completion
    per_t: dict[int, dict[str, list[float]]] = {}
    cds = []
    for n, (key, load) in enumerate(tqdm(held_out_synthetic(scenes), desc=Path(weights).name, file=sys.stderr)):
        scan, gt = load()
        oracle = OracleDenoiser(gt, schedule)
        partial, _ = completer.preprocess(scan)
        item = training_pair(partial_scan(scan), gt, np.random.default_rng(n), c.num_points,
                             c.num_points * c.replication, False, key)
        with torch.no_grad():
            cond = encoder(torch.from_numpy(partial)[None])
        seen = []

        def denoise(x_t, t):
            with torch.no_grad():
                eps = den(x_t, cond, torch.tensor([t]))
            seen.append((t, x_t, eps))
            return eps
        result = completer.complete(scan, steps=steps, refine=False, guidance_scale=1.0, seed=n, denoise=denoise)
        cds.append(completion_metrics(result.points, gt, taus=(), voxels=())["cd"])
        g = torch.Generator().manual_seed(n)
        for t, x_t, eps in seen:
            noised = add_local_noise(schedule, item["gt"][None], torch.tensor([t]),
                                     torch.randn((1, *item["gt"].shape), generator=g))
            with torch.no_grad():
                eps_train = den(noised, cond, torch.tensor([t]))
            row = per_t.setdefault(t, {"trajectory": [], "training": []})
            row["trajectory"].append(float((eps - oracle(x_t, t)).pow(2).mean()))
            row["training"].append(float((eps_train - oracle(noised, t)).pow(2).mean()))
    return {"cd": float(np.mean(cds)),
            "per_t": {t: {k: float(np.mean(v)) for k, v in row.items()} for t, row in sorted(per_t.items())}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, help="path or name=path, one or more")
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--role", default="teacher", help="the denoiser role in the weights (teacher or student)")
    p.add_argument("--out", default="bench/trajectory_error")
    args = p.parse_args(argv)
    results = {}
    for spec in args.weights:
        name, _, path = spec.rpartition("=")
        results[name or path] = {"weights": path, **measure(path, args.scenes, args.steps, args.role)}
    machine = machine_facts("cpu", torch.get_num_threads(), [])
    facts = (f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine['cpu']}, {machine['cores']} cores; "
             f"{args.scenes} held-out synthetic scenes, "
             f"{args.steps} steps, w = 1, no refiner; squared error of the predicted noise against the ideal "
             "denoiser's, per coordinate")
    ts = sorted({t for r in results.values() for t in r["per_t"]}, reverse=True)
    md = [facts, "", "| weights | states | completion CD m | " + " | ".join(f"t={t}" for t in ts) + " |",
          "|---|---|---:|" + "---:|" * len(ts)]
    for name, r in results.items():
        for kind in ("training", "trajectory"):
            cells = " | ".join(f"{r['per_t'][t][kind]:.3f}" if t in r["per_t"] else "" for t in ts)
            md.append(f"| {name} | {kind} | {r['cd']:.3f} | {cells} |" if kind == "trajectory"
                      else f"| {name} | {kind} | | {cells} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"facts": facts, "results": results}, indent=1))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
