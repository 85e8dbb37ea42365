"""Stage `score-distill`: the score-distillation baseline of the paper's Table 6 (one teacher assistant).

Like Distillation-DPO without preferences: the student's one-step sample G(x_init + eps) is
all there is. The TA fits the student's samples (noise MSE), and the student's gradient is
(1/omega) (eps_teacher - eps_ta) . dG/d eta at x_t = G + sigma_t n (training/losses.py,
score_distill_surrogate). ScoreLiDAR's structural losses are not part of this baseline. The
one-step sample, BatchNorm mode (distill.freeze_bn) and drift logs are Distillation-DPO's; sample/cd
logs the one-step sample's CD to the ground truth, as distill's preference/* its pair's.
"""
from __future__ import annotations

import copy

import torch

from ddpo_ros.diffusion import schedule_from_config
from ddpo_ros.pipeline import Completer

from .common import drift, load_teacher, make_optimizer
from .loop import Run, Stage, inference_config
from .losses import dmd_normalise, noise_mse, score_distill_surrogate
from .student import frozen_condition, mean_cd, noised_sample, one_step_generate, trained_mode, uses_ve
from .validation import validator


def build(cfg, run: Run, train_set, val_set) -> Stage:
    nets = load_teacher(cfg, run.device)
    encoder, teacher = nets["encoder"], nets["teacher"]
    for frozen in (encoder, teacher):
        frozen.requires_grad_(False)
    student, ta = (copy.deepcopy(teacher).requires_grad_(True) for _ in range(2))
    g_student, g_ta = run.wrap(student), run.wrap(ta)
    opt_student = make_optimizer(cfg, student.parameters())
    opt_ta = make_optimizer(cfg, ta.parameters(), lr=cfg.distill.ta_lr)
    schedule = schedule_from_config(cfg.diffusion)
    d, g, reps, T = cfg.distill, run.generator, cfg.completion.replication, schedule.num_train_timesteps
    ve, freeze = uses_ve(cfg), cfg.distill.freeze_bn

    def sample(net, cond, x_init):
        eps = torch.randn(x_init.shape, generator=g).to(x_init.device)
        return one_step_generate(net, cond, x_init, eps, 1.0, schedule, generator=g, ve=ve)

    def noised(x0):
        t = torch.randint(0, T, (len(x0),), generator=g)
        n = torch.randn(x0.shape, generator=g)
        return noised_sample(schedule, x0, t, n, cfg.completion.max_range), t.to(run.device), n.to(run.device)

    def step(batch) -> dict[str, float]:
        partial, gt, cond = frozen_condition(encoder, [teacher], batch, run.device)
        x_init = partial.repeat(1, reps, 1)
        out = {}
        for _ in range(d.ta_steps):
            student.eval()
            with torch.no_grad():
                x0 = sample(student, cond, x_init)
            trained_mode(ta, freeze)
            x_t, t, n = noised(x0)
            loss_ta = noise_mse(g_ta(x_t, cond, t), n)
            out["grad_norm/ta"] = run.optimise(opt_ta, loss_ta, ta.parameters())
        trained_mode(student, freeze)
        G = sample(g_student, cond, x_init)
        with torch.no_grad():
            ta.eval()
            x_t, t, _ = noised(G.detach())
            eps_teacher = teacher(x_t, cond, t)
            grad = eps_teacher - ta(x_t, cond, t)
            if d.g_weighting == "dmd":
                grad = dmd_normalise(grad, G, x_t, eps_teacher, schedule.sigma(t.cpu()).to(run.device))
        loss = score_distill_surrogate(G, grad, d.omega or None)
        out["grad_norm/student"] = run.optimise(opt_student, loss, student.parameters())
        out.update({"loss/ta": loss_ta.item(), "loss/student_surrogate": loss.item(),
                    "g/norm": grad.norm().item(), "sample/cd": mean_cd(G, gt)})
        out.update({f"drift/student_{k}": v for k, v in drift(student, teacher).items()})
        return out

    def completer() -> Completer:
        return Completer(encoder, student, None, inference_config(cfg, refiner=False), kind="student",
                         device=run.device)

    return Stage(models={"encoder": encoder, "teacher": teacher, "student": student, "ta": ta},
                 optimizers={"student": opt_student, "ta": opt_ta}, step=step,
                 validate=validator(cfg, run.out, val_set, completer), train_set=train_set)
