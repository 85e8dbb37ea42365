"""On-trajectory training states for the teacher: the ideal denoiser as the expert (DAgger).

The noise loss only ever shows the network x_t = x_0 + sigma_t eps with x_0 on the ground truth.
The sampler asks it about other states: those of its own trajectory from x_init (the scan,
tiled), which start off the ground truth and drift with every imperfect step. Measured on the
bundled mini teacher (3 held-out synthetic scenes, 8 VE steps; docs/mini-scale.md, "On its own trajectory"):
its squared error against the ideal denoiser is 0.02-0.05 on training states at every sampler
step, but grows along its own trajectory to 0.11 at t = 250 and 0.41 at t = 125.

The ideal denoiser eps*(x, t) = (x - E[x_0 | x_t = x]) / sigma_t (training/oracle.py) is defined at
every state: it is -sigma_t times the score of p_t(x) = mean over ground-truth points g of
N(x; g, sigma_t^2 I), the very function the noise loss is minimised by (Tweedie). Regressing it
at the trajectory's states teaches the same function where the noise loss never looks, as
DAgger (Ross et al. 2011) trains a policy on the states it visits with an expert's labels.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ddpo_ros.diffusion import SAMPLERS, Schedule, inference_timesteps, standard_noise, start_noise_scale

from .oracle import TARGET_ORACLE, OracleDenoiser


class _Reached(Exception):
    """Raised from inside the sampler once the last wanted call is reached (no network call then)."""


def trajectory_states(eps_fn: Callable[[Tensor, int], Tensor], x_init: Tensor, steps: int, schedule: Schedule,
                      sampler: str, calls: list[int], *, generator: torch.Generator | None = None,
                      final: str = "sigma_min", start: int | None = None) -> list[tuple[Tensor, int]]:
    """(state, t) that `sampler` hands the denoiser at each of its `calls` (0: the first call, the
    state x_init + eps at t = T-1) when completing from x_init in `steps` steps, as the Completer
    does: same start noise drawn from `generator` first, same offset state. eps_fn(x, t) sees the
    absolute state and runs max(calls) times: the sampler stops at the last wanted call. `start`:
    completion.start_t (the first state x_init + sigma_start eps at t = start)."""
    if not calls or min(calls) < 0 or max(calls) >= steps:
        raise ValueError(f"calls must lie in 0..{steps - 1}, got {calls}")
    last, found, made = max(calls), {}, [0]

    def denoise(offset: Tensor, t: int) -> Tensor:
        k, made[0] = made[0], made[0] + 1
        if k in calls:
            found[k] = (x_init + offset, int(t))
        if k == last:
            raise _Reached
        return eps_fn(x_init + offset, t)

    noise = standard_noise(x_init, generator)
    if start is not None:
        noise = noise * start_noise_scale(schedule, start)
    extra = {"final": final} if sampler != "ddpm" else {}
    try:
        SAMPLERS[sampler](denoise, noise, inference_timesteps(schedule, steps, start), schedule, generator=generator,
                          **extra)
    except _Reached:
        pass
    return [found[k] for k in calls]


def oracle_targets(gt: Tensor, states: list[tuple[Tensor, int]], schedule: Schedule) -> list[Tensor]:
    """eps* of ground truth `gt` (M, 3) at each (state, t): the regression target of a trajectory state."""
    oracle = OracleDenoiser(gt.detach().cpu().numpy(), schedule, **TARGET_ORACLE)
    return [oracle(x, t) for x, t in states]


__all__ = ["oracle_targets", "trajectory_states"]
