"""What Distillation-DPO's student gradient is made of: the winner's pull, the loser's push, and noise.

    python tools/ddpo_gradient.py --weights runs/distill/weights.safetensors --scenes 4 --draws 2

Eq. 18's gradient is the difference of two terms, grad_w = d/d eta (g_w . G_w) / omega (the
winner pulled towards the teacher) and grad_l = d/d eta (g_l . G_l) / omega (the loser pushed
away). The pair comes from ONE noise at lam 1 and lam (1.1), so the two samples, and the two
terms, are nearly the same: the update is what is left after they cancel. Per scene and noise
draw this measures, over the student's parameters:
  - |grad_w|, |grad_l| and their cosine;
  - |grad_w - grad_l| / |grad_w|: the fraction of one side that survives the cancellation, and the
    cosine of the update with grad_w (negative: the loser's push wins and drags the winner along);
  - across two independent draws for the same scene, the cosine of the DDPO updates (grad_w -
    grad_l) and of the one-sided updates (grad_w alone, score distillation's form): near 0 means
    the update direction is noise that another draw would not repeat.
--control adds the test of whether the student's training moved it anywhere useful: the one-step
sample's CD (lam 1, the same noises) of the teacher, of the student, and of the teacher moved in
a random direction by exactly the student's distance, tensor by tensor (BatchNorm statistics kept).
A student no better than that random move has learned nothing its optimiser's noise would not give.
It also scores the noise MSE of the teacher and the TAs on ground-truth scenes and on the student's
samples: a TA better than the teacher on the ground truth learned to denoise, not the student.
The weights need the roles encoder, teacher, student, ta_win and ta_lose: a `distill` stage's
checkpoint. Everything runs as the stage does (training/distill.student_pair; the student in the
mode distill.freeze_bn gives it). Writes OUT.json and OUT.md.
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
from torch.utils.data import default_collate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ddpo_ros.checkpoint import build_models, load_checkpoint  # noqa: E402
from ddpo_ros.diffusion import schedule_from_config  # noqa: E402
from training.config import load_train_config, parse_sets  # noqa: E402
from training.data.sets import build_sets  # noqa: E402
from training.distill import student_pair  # noqa: E402
from training.student import frozen_condition, trained_mode  # noqa: E402

ROLES = ["encoder", "teacher", "student", "ta_win", "ta_lose"]


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads if g is not None]).double()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def scene_gradients(cfg, nets: dict, batch: dict, generator: torch.Generator) -> dict:
    """The winner's and the loser's parameter gradients for one scene and one noise draw."""
    schedule = schedule_from_config(cfg.diffusion)
    student = nets["student"]
    partial, gt, cond = frozen_condition(nets["encoder"], [nets["teacher"]], batch, "cpu")
    x_init = partial.repeat(1, cfg.completion.replication, 1)
    trained_mode(student, cfg.distill.freeze_bn)
    real = nets.get("ta_real", nets["teacher"])  # distill.real_ta's checkpoints hold the real side's copy
    G_w, G_l, g_w, g_l, scores, lam_won = student_pair(cfg, schedule, student, real, nets["ta_win"],
                                                       nets["ta_lose"], cond, x_init, gt, generator)
    omega = cfg.distill.omega or float(G_w.numel())
    params = [p for p in student.parameters() if p.requires_grad]
    grad_w = _flat(torch.autograd.grad((g_w * G_w).sum() / omega, params, retain_graph=True, allow_unused=True))
    grad_l = _flat(torch.autograd.grad((g_l * G_l).sum() / omega, params, allow_unused=True))
    return {"grad_w": grad_w, "grad_l": grad_l, "winner_cd": float(scores[0, 0]), "loser_cd": float(scores[0, 1]),
            "lam_won": lam_won}


def random_move(reference: torch.nn.Module, moved: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """A copy of `reference` moved in a random direction by the L2 distance `moved` is from it, per tensor."""
    out = copy.deepcopy(reference)
    with torch.no_grad():
        for p, q in zip(out.parameters(), moved.parameters()):
            step = (q - p).norm()
            direction = torch.randn(p.shape, generator=generator)
            p.add_(direction * step / direction.norm().clamp_min(1e-30))
    return out


def one_step_cds(cfg, nets: dict, models: dict, scenes: list[dict], seed: int) -> dict[str, list[float]]:
    """CD of each model's one-step sample (lam 1) per scene, the same noises for every model."""
    from ddpo_ros.datasets.ground_truth import chamfer_distance
    from training.student import one_step_generate, uses_ve
    schedule = schedule_from_config(cfg.diffusion)
    out = {name: [] for name in models}
    with torch.no_grad():
        for i, batch in enumerate(scenes):
            _, gt, cond = frozen_condition(nets["encoder"], [nets["teacher"]], batch, "cpu")
            x_init = batch["partial"].repeat(1, cfg.completion.replication, 1)
            for name, model in models.items():
                g = torch.Generator().manual_seed(seed * 1000 + i)
                noise = torch.randn(x_init.shape, generator=g)
                trained_mode(model, cfg.distill.freeze_bn)
                sample = one_step_generate(model, cond, x_init, noise, 1.0, schedule, generator=g, ve=uses_ve(cfg))
                out[name].append(chamfer_distance(sample[0].numpy().astype(np.float64), gt[0].numpy()))
    return out


CONTROL_STEPS = (50, 250, 500, 750, 950)


def noise_mses(cfg, nets: dict, scenes: list[dict], seed: int) -> dict[str, dict[str, float]]:
    """Noise MSE of teacher and TAs on ground-truth scenes and on the student's one-step samples,
    the same t (CONTROL_STEPS) and noises for every network. A TA that beats the teacher on the
    ground truth too has learned to denoise better in general, not the student's distribution, and
    g = eps_teacher - eps_ta then carries that improvement, pointing the student away from it."""
    from ddpo_ros.diffusion import add_local_noise
    from training.student import one_step_generate, uses_ve
    schedule = schedule_from_config(cfg.diffusion)
    roles = tuple(r for r in ("teacher", "ta_real", "ta_win", "ta_lose") if r in nets)
    sums = {src: dict.fromkeys(roles, 0.0) for src in ("ground truth", "student samples")}
    with torch.no_grad():
        for i, batch in enumerate(scenes):
            _, gt, cond = frozen_condition(nets["encoder"], [nets[r] for r in roles], batch, "cpu")
            g = torch.Generator().manual_seed(seed * 1000 + i)
            x_init = batch["partial"].repeat(1, cfg.completion.replication, 1)
            trained_mode(nets["student"], cfg.distill.freeze_bn)
            sample = one_step_generate(nets["student"], cond, x_init, torch.randn(x_init.shape, generator=g), 1.0,
                                       schedule, generator=g, ve=uses_ve(cfg))
            for src, x0 in (("ground truth", gt), ("student samples", sample)):
                for t in CONTROL_STEPS:
                    n = torch.randn(x0.shape, generator=g)
                    steps = torch.full((len(x0),), t, dtype=torch.long)
                    x_t = add_local_noise(schedule, x0, steps, n)
                    for r in roles:
                        sums[src][r] += float((nets[r](x_t, cond, steps) - n).square().mean())
    count = len(scenes) * len(CONTROL_STEPS)
    return {src: {r: v / count for r, v in per.items()} for src, per in sums.items()}


def measure(cfg, nets: dict, scenes: list[dict], draws: int, seed: int) -> list[dict]:
    rows = []
    generator = torch.Generator().manual_seed(seed)
    for i, batch in enumerate(scenes):
        per_draw = [scene_gradients(cfg, nets, batch, generator) for _ in range(draws)]
        net = [d["grad_w"] - cfg.distill.loser_weight * d["grad_l"] for d in per_draw]
        row = {"scene": i, "draws": []}
        for d, update in zip(per_draw, net):
            row["draws"].append({"grad_w_norm": float(d["grad_w"].norm()), "grad_l_norm": float(d["grad_l"].norm()),
                                 "cos_w_l": _cos(d["grad_w"], d["grad_l"]),
                                 "surviving": float(update.norm() / d["grad_w"].norm().clamp_min(1e-300)),
                                 "cos_update_w": _cos(update, d["grad_w"]),
                                 "winner_cd": d["winner_cd"], "loser_cd": d["loser_cd"], "lam_won": d["lam_won"]})
        pairs = [(a, b) for a in range(draws) for b in range(a + 1, draws)]
        row["cos_between_draws_ddpo"] = [_cos(net[a], net[b]) for a, b in pairs]
        row["cos_between_draws_winner_only"] = [_cos(per_draw[a]["grad_w"], per_draw[b]["grad_w"]) for a, b in pairs]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    draws = [d for r in rows for d in r["draws"]]

    def stat(values) -> dict:
        return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
    out = {k: stat([d[k] for d in draws])
           for k in ("cos_w_l", "surviving", "cos_update_w", "grad_w_norm", "grad_l_norm")}
    for k in ("cos_between_draws_ddpo", "cos_between_draws_winner_only"):
        values = [c for r in rows for c in r[k]]
        if values:
            out[k] = stat(values)
    out["lam_won"] = float(np.mean([d["lam_won"] for d in draws]))
    return out


def write(out: Path, record: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    s = record["summary"]
    lines = [f"# Distillation-DPO's student gradient, winner against loser ({record['date']})", "",
             f"Weights `{record['weights']}`, {record['scenes']} training scenes x {record['draws']} noise draws, "
             f"{record['points']} points per sample, distill.g_weighting {record['g_weighting']}, "
             f"lam {record['lam']}, loser weight {record['loser_weight']}. "
             "`python tools/ddpo_gradient.py` (module docstring).", "",
             "| quantity | mean | min | max |", "|---|---|---|---|"]
    names = {"cos_w_l": "cosine(grad_w, grad_l)", "surviving": "abs(grad_w - grad_l) / abs(grad_w)",
             "cos_update_w": "cosine(update, grad_w): does the update follow the winner's pull?",
             "grad_w_norm": "abs(grad_w)", "grad_l_norm": "abs(grad_l)",
             "cos_between_draws_ddpo": "cosine of the DDPO update between two draws",
             "cos_between_draws_winner_only": "cosine of the winner-only update between two draws"}
    for key, name in names.items():
        if key in s:
            lines.append(f"| {name} | {s[key]['mean']:.4g} | {s[key]['min']:.4g} | {s[key]['max']:.4g} |")
    lines += ["", f"The lam sample won {100 * s['lam_won']:.0f}% of the pairs."]
    if "control" in record:
        lines += ["", "One-step sample (lam 1, the same noises), CD in m per scene:", "",
                  "| model | mean | per scene |", "|---|---:|---|"]
        for name, v in record["control"].items():
            lines.append(f"| {name} | {v['mean']:.4f} | {' '.join(f'{x:.3f}' for x in v['cd'])} |")
    if "noise_mse" in record:
        steps = ", ".join(map(str, CONTROL_STEPS))
        lines += ["", f"Noise MSE (t = {steps}; the same noises for every network):", "",
                  "| data | " + " | ".join(next(iter(record["noise_mse"].values()))) + " |",
                  "|---|" + "---:|" * len(next(iter(record["noise_mse"].values())))]
        for src, v in record["noise_mse"].items():
            lines.append(f"| {src} | " + " | ".join(f"{x:.4f}" for x in v.values()) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a distill checkpoint (roles " + ", ".join(ROLES) + ")")
    p.add_argument("--config", default=str(REPO / "config" / "train" / "distill_mini.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--control", action="store_true", help="also the random-move control (module docstring)")
    p.add_argument("--out", default="bench/ddpo_gradient")
    args = p.parse_args(argv)
    if args.draws < 1 or args.scenes < 1:
        p.error("--scenes and --draws must be >= 1")
    overrides = {"data.num_workers": 0, "data.augment": False, "distill.teacher": args.weights}
    try:
        overrides.update(parse_sets(args.set))  # YAML syntax, as train.py --set
    except ValueError as err:
        p.error(str(err))
    cfg = load_train_config(args.config, overrides)
    ckpt = load_checkpoint(args.weights)
    missing = [r for r in ROLES if r not in ckpt.state]
    if missing:
        sys.exit(f"{args.weights}: no role(s) {', '.join(missing)}: give a distill stage's checkpoint")
    nets = build_models(ckpt, ROLES + [r for r in ("ta_real",) if r in ckpt.state], device="cpu")
    for role in nets:
        nets[role].requires_grad_(role == "student")
    train_set, _ = build_sets(cfg)
    scenes = [default_collate([train_set[i]]) for i in range(min(args.scenes, len(train_set)))]
    torch.manual_seed(args.seed)  # entry point
    rows = measure(cfg, nets, scenes, args.draws, args.seed)
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "weights": str(args.weights),
              "scenes": len(scenes), "draws": args.draws,
              "points": cfg.completion.num_points * cfg.completion.replication,
              "g_weighting": cfg.distill.g_weighting, "lam": cfg.distill.lam,
              "loser_weight": cfg.distill.loser_weight, "summary": summary(rows), "rows": rows}
    if args.control:
        moved = random_move(nets["teacher"], nets["student"], torch.Generator().manual_seed(args.seed))
        models = {"teacher": nets["teacher"], "student": nets["student"], "random move": moved}
        cds = one_step_cds(cfg, nets, models, scenes, args.seed)
        record["control"] = {name: {"cd": v, "mean": float(np.mean(v))} for name, v in cds.items()}
        print(json.dumps({k: v["mean"] for k, v in record["control"].items()}), flush=True)
        record["noise_mse"] = noise_mses(cfg, nets, scenes, args.seed)
        print(json.dumps(record["noise_mse"]), flush=True)
    write(Path(args.out), record)
    print(json.dumps(record["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
