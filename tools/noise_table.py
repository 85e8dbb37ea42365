"""Noise MSE per t of a trained teacher, in eval and in train mode, next to the ideal denoiser's.

    python tools/noise_table.py --weights runs/teacher/weights.safetensors --scenes 4 --out bench/noise_mse

Per held-out synthetic scene and t: x_t = gt + sigma_t eps with the scene's ground truth cut to
the training size, and the error of the predicted noise (1.0 = predicting no noise):
- eval: BatchNorm with its running statistics, as the Completer runs it;
- train: BatchNorm with batch statistics of a training-like batch: the scene at `--levels`
  stratified t, one of them t (teacher.noise_levels; 1 is LiDiff's one t per batch);
- oracle: eps* of training/oracle.py for the same x_t, the floor no network can go below.
Writes OUT.json and OUT.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ddpo_ros.checkpoint import build_models, load_checkpoint  # noqa: E402
from ddpo_ros.diffusion import add_local_noise, schedule_from_config  # noqa: E402
from ddpo_ros.datasets.ground_truth import partial_scan  # noqa: E402
from training.data.kitti import training_pair  # noqa: E402
from training.evaluate import held_out_synthetic  # noqa: E402
from training.oracle import OracleDenoiser  # noqa: E402

TS = (5, 20, 50, 100, 200, 500, 800, 999)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--role", default="teacher")
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--levels", type=int, default=4, help="t per train-mode batch (teacher.noise_levels)")
    p.add_argument("--out", default="bench/noise_mse")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.weights)
    nets = build_models(ckpt, ["encoder", args.role])
    encoder, den = nets["encoder"].eval(), nets[args.role].eval()
    den_train = copy.deepcopy(den).train()  # train-mode passes move running statistics: never on `den`
    schedule = schedule_from_config(ckpt.config.diffusion)
    c = ckpt.config.completion
    rows = {t: {"eval": [], "train": [], "oracle": []} for t in TS}
    for n, (key, load) in enumerate(held_out_synthetic(args.scenes)):
        scan, gt = load()
        item = training_pair(partial_scan(scan), gt, np.random.default_rng(n), c.num_points,
                             c.num_points * c.replication, False, key)
        oracle = OracleDenoiser(gt, schedule)
        with torch.no_grad():
            cond = encoder(item["partial"][None])
            batch_conds = {1: cond}  # the scan's encoding for a train-mode batch of that many copies
            for t in TS:
                g = torch.Generator().manual_seed(1000 * n + t)
                spread = np.linspace(0, 999, args.levels + 1)[1:]
                others = [int(s) for s in spread if abs(s - t) > 100][:args.levels - 1]
                steps = torch.tensor([t, *others])
                noise = torch.randn((len(steps), *item["gt"].shape), generator=g)
                x_t = add_local_noise(schedule, item["gt"][None].expand(len(steps), -1, -1), steps, noise)
                rows[t]["eval"].append(float((den(x_t[:1], cond, steps[:1]) - noise[:1]).pow(2).mean()))
                if len(steps) not in batch_conds:
                    batch_conds[len(steps)] = encoder(item["partial"][None].expand(len(steps), -1, -1))
                eps = den_train(x_t, batch_conds[len(steps)], steps)
                rows[t]["train"].append(float((eps[:1] - noise[:1]).pow(2).mean()))
                rows[t]["oracle"].append(float((oracle(x_t[:1], t) - noise[:1]).pow(2).mean()))
        print(key, {t: {k: round(v[-1], 3) for k, v in rows[t].items()} for t in TS}, flush=True)
    mean = {t: {k: float(np.mean(v)) for k, v in rows[t].items()} for t in TS}
    facts = (f"{datetime.now(timezone.utc):%Y-%m-%d}; {args.weights} ({args.role}), {args.scenes} held-out synthetic "
             f"scenes, {c.num_points * c.replication:,} ground-truth points each; train mode: batches of "
             f"{args.levels} t")
    head = "| BatchNorm / denoiser | " + " | ".join(f"t={t}" for t in TS) + " |"
    md = [facts, "", head, "|---|" + "---:|" * len(TS)]
    for k, name in (("train", "teacher, train mode"), ("eval", "teacher, eval mode"), ("oracle", "ideal denoiser")):
        md.append(f"| {name} | " + " | ".join(f"{mean[t][k]:.3f}" for t in TS) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"facts": facts, "mse": mean}, indent=1))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
