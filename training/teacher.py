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
from .rollout import oracle_targets, trajectory_states
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

    @torch.no_grad()
    def on_trajectory(partial, gt, x_t, t, target) -> list[int]:
        """Replace the last rollout_levels copies of each scene by states of the networks' own
        trajectory (eval mode, as the Completer runs them) with eps* targets; the rows replaced."""
        levels, k = c.noise_levels, c.rollout_levels
        encoder.eval(), denoiser.eval()
        rows = []
        for first in range(0, len(gt), levels):
            cond = encoder(partial[first:first + 1])

            def eps_fn(x, s, cond=cond):
                return denoiser(x, cond, torch.full((1,), s, dtype=torch.long, device=run.device))
            x_init = partial[first:first + 1].repeat(1, cfg.completion.replication, 1)
            calls = torch.randperm(c.rollout_steps, generator=g)[:k].tolist()  # distinct calls
            states = trajectory_states(eps_fn, x_init, c.rollout_steps, schedule, cfg.completion.sampler, calls,
                                       generator=g, final=cfg.completion.final_sigma,
                                       start=cfg.completion.start_t)
            for j, ((x, s), eps) in enumerate(zip(states, oracle_targets(gt[first], states, schedule))):
                row = first + levels - k + j
                x_t[row], t[row], target[row] = x[0], s, eps[0]
                rows.append(row)
        encoder.train(), denoiser.train()
        return rows

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
        target = noise.to(run.device)
        rows = on_trajectory(partial, gt, x_t, t, target) if c.rollout_levels else []
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
        loss = lidiff_loss(eps, target, c.reg_weight)
        norm = run.optimise(optimizer, loss, params)
        logs = {"loss/teacher": loss.item(), "grad_norm/teacher": norm, "eps/mean": eps.mean().item(),
                "eps/std": eps.std().item()}
        if rows:  # the error against eps* on trajectory states, against drawn noise on the others
            per_row = (eps.detach() - target).pow(2).mean((1, 2))
            noised = [r for r in range(len(per_row)) if r not in rows]
            logs["loss/trajectory"] = per_row[rows].mean().item()
            if noised:
                logs["loss/noise"] = per_row[noised].mean().item()
        return logs

    def completer() -> Completer:
        return Completer(encoder, denoiser, None, inference_config(cfg, refiner=False), kind="teacher",
                         device=run.device)

    return Stage(models={"encoder": encoder, "teacher": denoiser}, optimizers={"teacher": optimizer}, step=step,
                 validate=validator(cfg, run.out, val_set, completer), train_set=train_set)
