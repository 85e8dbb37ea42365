"""Stage `distill`: Distillation-DPO, as the paper writes it (DESIGN.md), not as the released code does.

Networks, all initialised from the teacher checkpoint: the scan encoder (frozen), the teacher
(frozen), the student G (trained) and two teacher assistants ta_win and ta_lose (trained).
Per batch, `ta_steps` TA updates then one student update:

TA update (Eq. 20). The student, without gradient, makes two one-step samples from the same
noise, G(x_init + eps) and G(x_init + lam eps) (Eq. 19). Chamfer distance to the ground truth
(or JSD, Table 5) picks the winner. Each TA takes a plain noise-MSE step on its own sample, with
its own t and noise.

Student update (Eq. 18). Fresh samples are drawn, now with gradient. The winner and the loser are
noised with one shared t and noise. Without gradient, g_w = eps_teacher - eps_ta_win at the
winner and g_l = eps_teacher - eps_ta_lose at the loser. The surrogate's gradient is exactly
(1/omega)[g_w . dG_w - g_l . dG_l] (training/losses.py explains the sign). The released code
multiplies by (x_t - x_0) instead, whose gradient is zero, so its student never learns.

train.optimizer for both optimisers (the reference: SGD, lr 1e-5, global grad norm clipped at 0.05, section 4).
The student samples in one step while training, and validation uses 8 steps with CFG 3.5. The
one-step sample takes the parameterisation of completion.sampler (VP, or VE for ve-*), and with
distill.freeze_bn (default) student and TAs normalise with the teacher's running statistics.
distill.real_ta takes the real score from a teacher copy fine-tuned on the ground truth alongside the
TAs (role ta_real), so that what a TA learns about denoising in general cancels in g.
distill.g_weighting "dmd" re-weights g in clean-cloud units per sample (DMD; losses.dmd_normalise),
distill.loser_weight scales Eq. 18's loser term, and distill.pair_noise "independent" draws the
pair from two noises (docs/mini-scale.md, "Why the students get worse", measures all three).
distill.gt_weight adds a structure term, the winner's squared Chamfer distance to the ground truth.
distill.oracle_real takes the real score from the ideal denoiser of the batch's ground truth (IdealScore).
Logged: |g| per side and the student's drift from the teacher (parameters apart from BatchNorm
buffers), so a student that only moved its statistics shows as one.
"""
from __future__ import annotations

import copy

import torch

from ddpo_ros.diffusion import schedule_from_config
from ddpo_ros.pipeline import Completer

from .common import drift, load_teacher, make_optimizer
from .loop import Run, Stage, inference_config
from .losses import chamfer_squared, dmd_normalise, noise_mse, student_surrogate
from .oracle import TARGET_ORACLE, OracleDenoiser
from .student import frozen_condition, noised_sample, pair_samples, trained_mode, uses_ve
from .validation import validator


class IdealScore:
    """The real score as the ideal denoiser of each scene's ground truth: called like the teacher,
    (x_t (B, N, 3), cond, t (B,)) -> eps*, with eps* = (x_t - E[x_0 | x_t]) / sigma_t (training/oracle.py)."""

    def __init__(self, gt, schedule):
        self.oracles = [OracleDenoiser(g.detach().cpu().numpy(), schedule, **TARGET_ORACLE) for g in gt]

    def eval(self) -> "IdealScore":
        return self

    def __call__(self, x_t, cond, t):
        return torch.stack([oracle(x, int(s)) for oracle, x, s in zip(self.oracles, x_t, t)])


def student_pair(cfg, schedule, student, teacher, ta_win, ta_lose, cond, x_init, gt, generator):
    """Eq. 18's ingredients: the ranked pair (G_w, G_l) with the graph to the student, and g per side
    (no graph) at one shared t and noise; plus the pair's scores and whether the lam sample won.
    `teacher` is the real score (the frozen teacher, or ta_real with distill.real_ta). The TAs run in
    eval mode; the student in whatever mode the caller put it."""
    teacher.eval()
    d = cfg.distill
    G_w, G_l, scores, lam_won = pair_samples(student, cond, x_init, gt, d.lam, schedule, generator, d.preference,
                                             uses_ve(cfg), d.pair_noise == "independent")
    t = torch.randint(0, schedule.num_train_timesteps, (len(gt),), generator=generator)
    n = torch.randn(G_w.shape, generator=generator)
    with torch.no_grad():
        ta_win.eval()
        ta_lose.eval()
        far = cfg.completion.max_range
        x_wt, x_lt = noised_sample(schedule, G_w.detach(), t, n, far), noised_sample(schedule, G_l.detach(), t, n, far)
        td = t.to(x_wt.device)
        e_w, e_l = teacher(x_wt, cond, td), teacher(x_lt, cond, td)
        g_w, g_l = e_w - ta_win(x_wt, cond, td), e_l - ta_lose(x_lt, cond, td)
        if d.g_weighting == "dmd":
            sigma = schedule.sigma(t).to(x_wt.device)
            g_w, g_l = dmd_normalise(g_w, G_w, x_wt, e_w, sigma), dmd_normalise(g_l, G_l, x_lt, e_l, sigma)
    return G_w, G_l, g_w, g_l, scores, lam_won


def build(cfg, run: Run, train_set, val_set) -> Stage:
    nets = load_teacher(cfg, run.device)
    encoder, teacher = nets["encoder"], nets["teacher"]
    for frozen in (encoder, teacher):
        frozen.requires_grad_(False)
    student, ta_win, ta_lose = (copy.deepcopy(teacher).requires_grad_(True) for _ in range(3))
    g_student, g_win, g_lose = run.wrap(student), run.wrap(ta_win), run.wrap(ta_lose)
    opt_student = make_optimizer(cfg, student.parameters())
    ta_real = copy.deepcopy(teacher).requires_grad_(True) if cfg.distill.real_ta else None
    g_real = run.wrap(ta_real) if ta_real is not None else None
    real = ta_real if ta_real is not None else teacher  # the real score of g
    ta_params = [*ta_win.parameters(), *ta_lose.parameters(), *(ta_real.parameters() if ta_real else [])]
    opt_ta = make_optimizer(cfg, ta_params, lr=cfg.distill.ta_lr)
    schedule = schedule_from_config(cfg.diffusion)
    d, g, reps = cfg.distill, run.generator, cfg.completion.replication
    T, ve, freeze = schedule.num_train_timesteps, uses_ve(cfg), cfg.distill.freeze_bn

    def noised(x0, t, noise):
        return noised_sample(schedule, x0, t, noise, cfg.completion.max_range)

    def step(batch) -> dict[str, float]:
        partial, gt, cond = frozen_condition(encoder, [teacher], batch, run.device)
        x_init = partial.repeat(1, reps, 1)
        out = {}
        for _ in range(d.ta_steps):  # Eq. 20: each TA fits its own sample
            student.eval()
            with torch.no_grad():
                x_w, x_l, scores, lam_won = pair_samples(student, cond, x_init, gt, d.lam, schedule, g,
                                                         d.preference, ve, d.pair_noise == "independent")
            trained_mode(ta_win, freeze)
            trained_mode(ta_lose, freeze)
            t_w, t_l = torch.randint(0, T, (len(gt),), generator=g), torch.randint(0, T, (len(gt),), generator=g)
            n_w, n_l = torch.randn(x_w.shape, generator=g), torch.randn(x_l.shape, generator=g)
            loss_ta = (noise_mse(g_win(noised(x_w, t_w, n_w), cond, t_w.to(run.device)), n_w.to(run.device))
                       + noise_mse(g_lose(noised(x_l, t_l, n_l), cond, t_l.to(run.device)), n_l.to(run.device)))
            if ta_real is not None:  # the real side keeps pace: the same training, on the ground truth
                trained_mode(ta_real, freeze)
                t_r, n_r = torch.randint(0, T, (len(gt),), generator=g), torch.randn(gt.shape, generator=g)
                eps_real = g_real(noised(gt, t_r, n_r), cond, t_r.to(run.device))
                loss_ta = loss_ta + noise_mse(eps_real, n_r.to(run.device))
            out["grad_norm/ta"] = run.optimise(opt_ta, loss_ta, ta_params)
        out["loss/ta"] = loss_ta.item()

        trained_mode(student, freeze)  # the reference samples in train mode (batch statistics)
        G_w, G_l, g_w, g_l, scores, lam_won = student_pair(cfg, schedule, g_student,
                                                           IdealScore(gt, schedule) if d.oracle_real else real,
                                                           ta_win, ta_lose, cond, x_init, gt, g)
        loss = student_surrogate(G_w, G_l, g_w, g_l, d.omega or None, d.loser_weight)
        if d.gt_weight:  # skipped at 0, so the paper's loss runs exactly as without the option
            structure = chamfer_squared(G_w, gt.to(G_w.device))
            loss = loss + d.gt_weight * structure
            out["loss/gt_chamfer"] = structure.item()
        out["grad_norm/student"] = run.optimise(opt_student, loss, student.parameters())
        out.update({"loss/student_surrogate": loss.item(), "preference/winner": scores[:, 0].mean().item(),
                    "preference/loser": scores[:, 1].mean().item(),
                    "preference/margin": (scores[:, 1] - scores[:, 0]).mean().item(),
                    "preference/lam_sample_won": lam_won, "g/winner_norm": g_w.norm().item(),
                    "g/loser_norm": g_l.norm().item()})
        out.update({f"drift/student_{k}": v for k, v in drift(student, teacher).items()})
        out.update({f"drift/ta_win_{k}": v for k, v in drift(ta_win, teacher).items() if k != "buffers"})
        return out

    def completer() -> Completer:
        return Completer(encoder, student, None, inference_config(cfg, refiner=False), kind="student",
                         device=run.device)

    models = {"encoder": encoder, "teacher": teacher, "student": student, "ta_win": ta_win, "ta_lose": ta_lose}
    if ta_real is not None:
        models["ta_real"] = ta_real
    return Stage(models=models,
                 optimizers={"student": opt_student, "ta": opt_ta}, step=step,
                 validate=validator(cfg, run.out, val_set, completer), train_set=train_set)
