"""Stage `diffusion-dpo`: Diffusion-DPO fine-tuning of the teacher from preference pairs (Eq. 10, Table 4).

The fine-tuned model starts as a copy of the teacher; the teacher itself, frozen, is the DPO
reference. Preference pairs are made on-policy from the reference: two one-step samples from
x_init + eps and x_init + lam eps (as Distillation-DPO's, Eq. 19), ranked by Chamfer distance to
the ground truth (or JSD). Both are noised with one shared t and noise n, and the loss is
-log sigmoid(-beta/2 [(e_w - e_w^ref) - (e_l - e_l^ref)]), with e = ||n - eps(x_t, t)||^2 per
sample (training/losses.py). The encoder stays frozen; policy and reference both run in eval
mode. The reference's own fine-tuning code is not released (reference section 4), so the pair
source and beta are our choices; see dpo.beta.
"""
from __future__ import annotations

import copy

import torch

from ddpo_ros.diffusion import schedule_from_config
from ddpo_ros.pipeline import Completer

from .common import load_teacher, make_optimizer
from .loop import Run, Stage, inference_config
from .losses import diffusion_dpo_loss
from .student import frozen_condition, noised_sample, pair_samples, uses_ve
from .validation import validator


def build(cfg, run: Run, train_set, val_set) -> Stage:
    nets = load_teacher(cfg, run.device)
    encoder, reference = nets["encoder"], nets["teacher"]
    for frozen in (encoder, reference):
        frozen.requires_grad_(False)
    model = copy.deepcopy(reference).requires_grad_(True)
    net = run.wrap(model)
    optimizer = make_optimizer(cfg, model.parameters())
    schedule = schedule_from_config(cfg.diffusion)
    d, g, reps, T = cfg.distill, run.generator, cfg.completion.replication, schedule.num_train_timesteps

    def errors(eps_net, x_t, cond, t, n):
        return ((eps_net(x_t, cond, t) - n) ** 2).flatten(1).mean(1)

    def step(batch) -> dict[str, float]:
        partial, gt, cond = frozen_condition(encoder, [reference], batch, run.device)
        with torch.no_grad():
            x_w, x_l, scores, lam_won = pair_samples(reference, cond, partial.repeat(1, reps, 1), gt, d.lam,
                                                     schedule, g, d.preference, uses_ve(cfg))
        t = torch.randint(0, T, (len(gt),), generator=g).to(run.device)
        n = torch.randn(x_w.shape, generator=g).to(run.device)
        far = cfg.completion.max_range
        x_wt, x_lt = noised_sample(schedule, x_w, t, n, far), noised_sample(schedule, x_l, t, n, far)
        with torch.no_grad():
            ref_w, ref_l = errors(reference, x_wt, cond, t, n), errors(reference, x_lt, cond, t, n)
        # The policy runs in the reference's mode (eval: BatchNorm on the teacher's running statistics),
        # so a policy equal to the reference has margin 0 and loss log 2 (Eq. 10's starting point);
        # in train mode batch statistics alone would make the margin non-zero before any update.
        model.eval()
        err_w, err_l = errors(net, x_wt, cond, t, n), errors(net, x_lt, cond, t, n)
        loss = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, cfg.dpo.beta)
        norm = run.optimise(optimizer, loss, model.parameters())
        return {"loss/dpo": loss.item(), "grad_norm/dpo": norm,
                "dpo/implicit_margin": ((ref_w - err_w) - (ref_l - err_l)).mean().item(),
                "preference/winner": scores[:, 0].mean().item(), "preference/loser": scores[:, 1].mean().item(),
                "preference/lam_sample_won": lam_won}

    def completer() -> Completer:
        return Completer(encoder, model, None, inference_config(cfg, refiner=False), kind="teacher",
                         device=run.device)

    # Saved as the "teacher" role: the fine-tuned model is a better teacher (LiDiff + DPO, as the
    # checkpoint Distillation-DPO distils from); the frozen reference is not needed afterwards.
    return Stage(models={"encoder": encoder, "teacher": model}, optimizers={"dpo": optimizer}, step=step,
                 validate=validator(cfg, run.out, val_set, completer), train_set=train_set)
