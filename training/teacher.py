"""Stage `teacher`: train LiDiff's diffusion model (scan encoder + MinkUNetDiff) from scratch.

Per batch (reference sections 2 and 4): t ~ U{0..T-1} and eps ~ N(0, I) per sample; the local
point noise x_t = x_gt + sqrt(1 - abar_t) eps (no signal scaling); with probability uncond_prob the
whole batch is conditioned on the all-zero scan (classifier-free guidance dropout); the loss is
MSE(eps_hat, eps) + 5 ((mean eps_hat)^2 + (std eps_hat - 1)^2). Adam 1e-4, halved every 5 epochs.

`teacher.init` starts from existing weights instead (fine-tuning, e.g. the imported LiDiff teacher
on new data); the optimiser and the lr schedule start fresh.
"""
from __future__ import annotations

import torch

from ddpo_ros.diffusion import add_local_noise, schedule_from_config
from ddpo_ros.models import build_denoiser, build_encoder
from ddpo_ros.pipeline import Completer

from .checkpoints import load_roles
from .common import make_optimizer
from .loop import Run, Stage, inference_config
from .losses import lidiff_loss
from .validation import validator


def draw_steps(n: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """n steps t for one batch: one draw from each of n equal strata of 0..T-1, shuffled, so the
    batch always spans the noise levels (each t is still marginally uniform)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    t = ((torch.arange(n, dtype=torch.float64) + u) * num_train_timesteps / n).long()
    return t[torch.randperm(n, generator=generator)].clamp_(0, num_train_timesteps - 1)


def build(cfg, run: Run, train_set, val_set) -> Stage:
    if cfg.teacher.init:
        nets = load_roles(cfg.teacher.init, "teacher.init", cfg, ["encoder", "teacher"], run.device)
        encoder, denoiser = nets["encoder"], nets["teacher"]
    else:
        encoder = build_encoder(cfg.model).to(run.device)
        denoiser = build_denoiser(cfg.model).to(run.device)
    enc, den = run.wrap(encoder), run.wrap(denoiser)
    params = [*encoder.parameters(), *denoiser.parameters()]
    optimizer = make_optimizer(cfg, params)
    schedule = schedule_from_config(cfg.diffusion)
    g, c = run.generator, cfg.teacher

    def step(batch) -> dict[str, float]:
        encoder.train()
        denoiser.train()
        partial, gt = batch["partial"].to(run.device), batch["gt"].to(run.device)
        if c.noise_levels > 1:  # each scene several times, each copy at its own t
            partial = partial.repeat_interleave(c.noise_levels, 0)
            gt = gt.repeat_interleave(c.noise_levels, 0)
            t = draw_steps(len(gt), schedule.num_train_timesteps, g)
        else:
            t = torch.randint(0, schedule.num_train_timesteps, (len(gt),), generator=g)
        noise = torch.randn(gt.shape, generator=g)
        x_t = add_local_noise(schedule, gt, t.to(run.device), noise.to(run.device))
        # CFG dropout for the whole batch, as LiDiff. The all-zero scan is one voxel per sample at every
        # stride: train-mode BatchNorm on it divides by sqrt(eps) in every layer and the encoder's
        # gradient overflows. Its encoding carries no information anyway, so it is computed as the
        # Completer computes it at inference: encoder in eval mode, no gradient. The draw comes from
        # the generator all ranks share, so under DDP every rank skips the encoder together.
        if torch.rand((), generator=run.shared_generator) < c.uncond_prob:
            encoder.eval()
            with torch.no_grad():
                cond = encoder(torch.zeros_like(partial))
            encoder.train()
        else:
            cond = enc(partial)
        eps = den(x_t, cond, t.to(run.device))
        loss = lidiff_loss(eps, noise.to(run.device), c.reg_weight)
        norm = run.optimise(optimizer, loss, params)
        return {"loss/teacher": loss.item(), "grad_norm/teacher": norm, "eps/mean": eps.mean().item(),
                "eps/std": eps.std().item()}

    def completer() -> Completer:
        return Completer(encoder, denoiser, None, inference_config(cfg, refiner=False), kind="teacher",
                         device=run.device)

    return Stage(models={"encoder": encoder, "teacher": denoiser}, optimizers={"teacher": optimizer}, step=step,
                 validate=validator(cfg, run.out, val_set, completer), train_set=train_set)
