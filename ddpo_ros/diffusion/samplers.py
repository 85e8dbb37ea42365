"""Samplers as pure functions of (denoise, x_T, timesteps, schedule, generator).

`denoise(x, t)` returns the predicted noise epsilon for state x at integer step t; the state is
whatever the caller diffuses (the pipeline passes the offset from the replicated scan, as the
reference does). Multistep history is a loop-local variable, never object state, so two chains
can interleave and the same generator gives bit-identical results.

- `sample_dpmpp`: DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095) in its SDE form (Eq. for
  "sde-dpmsolver++", the reference sampler) or as the deterministic 2M ODE solver; orders 1 and 2
  (midpoint), lower-order final steps. Equal to diffusers' DPMSolverMultistepScheduler with
  algorithm_type "sde-dpmsolver++" / "dpmsolver++", solver_order 1 or 2, for the same noise.
- `sample_ddpm`: ancestral DDPM (Ho et al. 2020, Eq. 7 posterior; DDPO Eq. 2) on respaced steps.

Parameterisation. The reference trains with local noise x_t = x_0 + sigma_t eps (no signal
scaling: a variance-*exploding* process) but samples the offset from x_init as a variance-
*preserving* state (alpha_t = sqrt(abar_t)), so every data prediction (x - sigma eps) / alpha is
scaled up by 1 / alpha_t (5.8x at t = 999). `ve=True` runs the same DPM-Solver++ with alpha = 1,
lambda = -log sigma: the sampler the training noise implies (first order it is DDIM-VE,
x' = x0 + (sigma'/sigma)(x - x0); the SDE form is its ancestral version). The SAMPLERS names
"ve-sde-dpmsolver++" and "ve-dpmsolver++" select it.

`data_prediction` and `dpmpp_update` are the step math of `sample_dpmpp`, public so that the
Distillation-DPO student's one-step training sample (training/student.py) runs the very same
update with its autograd graph and an explicit noise tensor.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor

from .schedule import Schedule

Denoise = Callable[[Tensor, int], Tensor]
Callback = Callable[[int, int, Tensor, Tensor], None]  # (step index, t, new state, predicted x0)


def _vp(schedule: Schedule, t: int | None, ve: bool = False) -> tuple[float, float, float]:
    """(alpha, sigma, lambda = log alpha - log sigma) at step t; t=None is the clean end (sigma 0).
    VP: alpha = sqrt(abar_t); VE (the training noise, no signal scaling): alpha = 1."""
    if t is None:
        return 1.0, 0.0, math.inf
    abar = float(schedule.alphas_cumprod[t])
    alpha, sigma = (1.0 if ve else math.sqrt(abar)), math.sqrt(1.0 - abar)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def standard_noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) shaped like x, drawn on the generator's device (CPU draws are device-independent)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def data_prediction(x: Tensor, eps: Tensor, t: int, schedule: Schedule, *, ve: bool = False) -> Tensor:
    """x0_hat = (x - sigma_t eps) / alpha_t: the data prediction of a noise prediction (DPM-Solver++ Eq. 9)."""
    alpha, sigma, _ = _vp(schedule, t, ve)
    return (x - sigma * eps) / alpha


def dpmpp_update(x: Tensor, d: Tensor, t: int, t_next: int | None, schedule: Schedule, *,
                 noise: Tensor | None = None, ve: bool = False) -> Tensor:
    """One DPM-Solver++ update of state x from step t to t_next (None: the clean end) given the
    data prediction d (x0_hat, or the second-order midpoint combination).

    With `noise` it is the SDE form (sde-dpmsolver++, reference section 2):
        x' = (sigma'/sigma) e^-h x + alpha' (1 - e^-2h) d + sigma' sqrt(1 - e^-2h) z,
    without it the ODE form x' = (sigma'/sigma) x - alpha' (e^-h - 1) d, h = lambda' - lambda.
    Plain tensor arithmetic on Python floats, so the autograd graph through x and d is kept
    (the student's one-step sample needs it).
    """
    alpha_s, sigma_s, lambda_s = _vp(schedule, t, ve)
    alpha_t, sigma_t, lambda_t = _vp(schedule, t_next, ve)
    h = lambda_t - lambda_s
    e_h, e_2h = math.exp(-h), math.exp(-2.0 * h)
    if noise is not None:
        return (sigma_t / sigma_s * e_h) * x + (alpha_t * (1.0 - e_2h)) * d \
            + (sigma_t * math.sqrt(max(0.0, 1.0 - e_2h))) * noise
    return (sigma_t / sigma_s) * x - (alpha_t * (e_h - 1.0)) * d


def sample_dpmpp(denoise: Denoise, x: Tensor, timesteps: Tensor, schedule: Schedule, *,
                 sde: bool = True, order: int = 2, lower_order_final: bool = True,
                 final: Literal["sigma_min", "zero"] = "sigma_min", ve: bool = False,
                 generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """DPM-Solver++ from x at timesteps[0] down to t = 0.

    final="sigma_min" ends at t = 0 (sigma 0.0059, the reference's diffusers 0.18 behaviour);
    final="zero" lands on the clean prediction. Orders above 2 are not implemented. ve=True: the
    variance-exploding parameterisation (module docstring).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if final not in ("sigma_min", "zero"):
        raise ValueError(f"final must be 'sigma_min' or 'zero', got {final!r}")
    steps = [int(t) for t in timesteps]
    n = len(steps)
    targets = steps[1:] + [0 if final == "sigma_min" else None]
    prev_x0, prev_lambda = None, None
    for i, (t, t_next) in enumerate(zip(steps, targets)):
        lambda_s, lambda_t = _vp(schedule, t, ve)[2], _vp(schedule, t_next, ve)[2]
        x0 = data_prediction(x, denoise(x, t), t, schedule, ve=ve)
        noise = standard_noise(x, generator) if sde else None
        last = i == n - 1 and ((lower_order_final and n < 15) or final == "zero")
        d = x0  # D0 (+ D1/2 at second order: the midpoint correction)
        if order == 2 and prev_x0 is not None and not last:
            r0 = (lambda_s - prev_lambda) / (lambda_t - lambda_s)
            d = x0 + (0.5 / r0) * (x0 - prev_x0)
        x = dpmpp_update(x, d, t, t_next, schedule, noise=noise, ve=ve)
        prev_x0, prev_lambda = x0, lambda_s
        if callback is not None:
            callback(i, t, x, x0)
    return x


def sample_ddpm(denoise: Denoise, x: Tensor, timesteps: Tensor, schedule: Schedule, *,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Ancestral DDPM on the given (possibly respaced) steps, ending clean.

    x_prev = posterior mean(x0_hat, x_t) + sqrt(beta_tilde) z with beta_tilde =
    (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev) (DDPM Eq. 6-7, "fixed_small").
    """
    steps = [int(t) for t in timesteps]
    for i, t in enumerate(steps):
        abar_t = float(schedule.alphas_cumprod[t])
        abar_prev = float(schedule.alphas_cumprod[steps[i + 1]]) if i + 1 < len(steps) else 1.0
        alpha_step = abar_t / abar_prev
        beta_step = 1.0 - alpha_step
        x0 = (x - math.sqrt(1.0 - abar_t) * denoise(x, t)) / math.sqrt(abar_t)
        mean = (math.sqrt(abar_prev) * beta_step / (1.0 - abar_t)) * x0 \
            + (math.sqrt(alpha_step) * (1.0 - abar_prev) / (1.0 - abar_t)) * x
        if t > 0:  # no noise is drawn at t = 0 (as diffusers' DDPMScheduler)
            variance = max((1.0 - abar_prev) / (1.0 - abar_t) * beta_step, 1e-20)
            mean = mean + math.sqrt(variance) * standard_noise(x, generator)
        x = mean
        if callback is not None:
            callback(i, t, x, x0)
    return x


SAMPLERS = {
    "sde-dpmsolver++": lambda denoise, x, ts, sched, **kw: sample_dpmpp(denoise, x, ts, sched, sde=True, **kw),
    "dpmsolver++": lambda denoise, x, ts, sched, **kw: sample_dpmpp(denoise, x, ts, sched, sde=False, **kw),
    "ddpm": sample_ddpm,
    "ve-sde-dpmsolver++": lambda denoise, x, ts, sched, **kw: sample_dpmpp(denoise, x, ts, sched, sde=True, ve=True,
                                                                           **kw),
    "ve-dpmsolver++": lambda denoise, x, ts, sched, **kw: sample_dpmpp(denoise, x, ts, sched, sde=False, ve=True, **kw),
}
