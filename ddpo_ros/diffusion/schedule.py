"""The noise schedule: the only place that builds betas and alpha-bar.

LiDiff adds *local* point noise without scaling the signal (LiDiff Eq. 1, DDPO Eq. 1):

    x_t = x_0 + sqrt(1 - abar_t) * eps,      abar_t = prod_{s <= t} (1 - beta_s)

with linear betas 3.5e-5 .. 0.007 over T = 1000 steps. At inference the sampler treats the
offset from the replicated scan as a VP diffusion state (alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t)), exactly as the reference does through diffusers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Schedule:
    """Immutable float64 schedule tensors on the CPU; index them with integer steps 0..T-1."""

    betas: Tensor
    alphas_cumprod: Tensor

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def alpha(self, t) -> Tensor:
        """sqrt(abar_t): the VP signal scale the sampler uses."""
        return self.alphas_cumprod[t].sqrt()

    def sigma(self, t) -> Tensor:
        """sqrt(1 - abar_t): the std of the local point noise at step t."""
        return (1.0 - self.alphas_cumprod[t]).sqrt()


def make_schedule(num_train_timesteps: int = 1000, beta_start: float = 3.5e-5, beta_end: float = 0.007,
                  beta_schedule: str = "linear") -> Schedule:
    """Linear betas (DDPM Sec. 4; LiDiff config.yaml: 3.5e-5 .. 0.007, T = 1000)."""
    if beta_schedule != "linear":
        raise ValueError(f"beta_schedule {beta_schedule!r} is not supported (only 'linear')")
    if num_train_timesteps < 1 or not 0 < beta_start < beta_end < 1:
        raise ValueError("need num_train_timesteps >= 1 and 0 < beta_start < beta_end < 1")
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return Schedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))


def schedule_from_config(cfg) -> Schedule:
    """Schedule of a `DiffusionConfig` (the config section `diffusion`)."""
    return make_schedule(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule)


def inference_timesteps(schedule: Schedule, num_steps: int, start: int | None = None) -> Tensor:
    """`num_steps` steps, linspace(0, start, n+1) rounded, reversed, last dropped (diffusers "linspace").

    start None is T-1, the reference: 8 steps are 999 874 749 624 500 375 250 125; the step after
    the last one is t = 0. A lower `start` samples only the end of the reverse process (SDEdit's
    partial diffusion; `completion.start_t`): 8 steps from 125 are 125 109 94 78 62 47 31 16. When
    n = start + 1 the rounding would repeat a step (diffusers does), so every step start .. 0 is taken.
    """
    t_max = schedule.num_train_timesteps
    top = t_max - 1 if start is None else int(start)
    if not 0 <= top <= t_max - 1:
        raise ValueError(f"start must be in 0..{t_max - 1}, got {start}")
    if not 1 <= num_steps <= top + 1:
        raise ValueError(f"num_steps must be in 1..{top + 1}" + (f" (start {top})" if start is not None else "")
                         + f", got {num_steps}")
    if num_steps == top + 1:
        return torch.arange(top, -1, -1)
    steps = np.linspace(0, top, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    return torch.from_numpy(steps.copy())


def start_noise_scale(schedule: Schedule, start: int | None = None) -> float:
    """The std of the noise the sampler's first state adds to x_init: 1 for the reference's
    x_T = x_init + eps (start None), sigma_start = sqrt(1 - abar_start) for a later start, the
    noise level at which the training noise x_0 + sigma_t eps meets the scan."""
    return 1.0 if start is None else float(schedule.sigma(int(start)))


def add_local_noise(schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = x_0 + sqrt(1 - abar_t) * eps for a batch (B, N, 3) with steps t (B,)  (Eq. 1)."""
    sigma = schedule.sigma(t.cpu()).to(device=x0.device, dtype=x0.dtype)
    return x0 + sigma.reshape(-1, *([1] * (x0.ndim - 1))) * noise


def initial_state(x_init: Tensor, noise: Tensor, scale: float = 1.0) -> Tensor:
    """x_T = x_init + lambda * eps: the replicated scan plus unit noise (DDPO Eq. 19 scales it by lambda)."""
    return x_init + scale * noise
