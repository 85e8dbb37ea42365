"""Schedule and samplers: equal to diffusers for the same noise, exact on an oracle, pure."""
from __future__ import annotations

import math

import pytest
import torch

from ddpo_ros.config import DiffusionConfig
from ddpo_ros.diffusion import (SAMPLERS, add_local_noise, data_prediction, dpmpp_update, guide, guided,
                                inference_timesteps, initial_state, make_schedule, sample_ddpm, sample_dpmpp,
                                schedule_from_config, start_noise_scale, unconditional_cloud)

diffusers = pytest.importorskip("diffusers")
SCHED = make_schedule()
REF = dict(num_train_timesteps=1000, beta_start=3.5e-5, beta_end=0.007, beta_schedule="linear")


def toy_eps(x: torch.Tensor, t) -> torch.Tensor:
    """A non-linear, time-dependent stand-in for the network (same numbers for int or tensor t)."""
    t = float(t)
    return 0.6 * torch.tanh(x) + 1e-3 * t * x.mean() + 0.1 * math.sin(t / 50.0)


def assert_equal_up_to_float32(ours, expected):
    """diffusers keeps its sigmas in float32, we keep the schedule in float64: rounding only."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5 * max(1.0, scale))


def x_T(seed=0, shape=(2, 500, 3)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def run_diffusers(scheduler, n, x, seed, timesteps=None):
    if timesteps is None:
        scheduler.set_timesteps(n)
    else:
        scheduler.set_timesteps(timesteps=timesteps)
    gen = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        x = scheduler.step(toy_eps(x, t), t, x, generator=gen).prev_sample
    return x, scheduler.timesteps


def test_schedule_matches_the_reference_numbers():
    assert float(SCHED.alphas_cumprod[0]) == pytest.approx(0.999965, abs=1e-7)
    assert float(SCHED.sigma(0)) == pytest.approx(0.00592, abs=1e-5)
    assert float(SCHED.alphas_cumprod[999]) == pytest.approx(0.02943, abs=1e-5)
    for t, s in ((100, 0.195), (250, 0.451), (500, 0.768), (750, 0.929)):
        assert float(SCHED.sigma(t)) == pytest.approx(s, abs=5e-4)
    assert torch.equal(schedule_from_config(DiffusionConfig()).betas, SCHED.betas)
    with pytest.raises(ValueError, match="cosine"):
        make_schedule(beta_schedule="cosine")


@pytest.mark.parametrize("n", [1, 2, 4, 8, 50, 999])
def test_timesteps_equal_diffusers(n):
    ref = diffusers.DPMSolverMultistepScheduler(**REF)
    ref.set_timesteps(n)
    assert inference_timesteps(SCHED, n).tolist() == ref.timesteps.tolist()
    assert inference_timesteps(SCHED, 1000).tolist() == list(range(999, -1, -1))  # no repeated step
    if n == 8:
        assert inference_timesteps(SCHED, 8).tolist() == [999, 874, 749, 624, 500, 375, 250, 125]
    with pytest.raises(ValueError):
        inference_timesteps(SCHED, 0)


def test_a_later_start_samples_the_end_of_the_same_grid():
    """completion.start_t: linspace(0, start, n + 1) as the reference's grid over 0..T-1; T-1 is the reference."""
    for n in (1, 8, 50):
        assert inference_timesteps(SCHED, n, 999).tolist() == inference_timesteps(SCHED, n).tolist()
    assert inference_timesteps(SCHED, 8, 125).tolist() == [125, 109, 94, 78, 62, 47, 31, 16]
    assert inference_timesteps(SCHED, 1, 250).tolist() == [250]
    assert inference_timesteps(SCHED, 126, 125).tolist() == list(range(125, -1, -1))  # no repeated step
    for n in (2, 4, 50, 125):
        steps = inference_timesteps(SCHED, n, 125).tolist()
        assert steps[0] == 125 and len(set(steps)) == n and steps == sorted(steps, reverse=True)
    with pytest.raises(ValueError, match=r"num_steps must be in 1..126 \(start 125\), got 127"):
        inference_timesteps(SCHED, 127, 125)
    with pytest.raises(ValueError, match="start must be in 0..999"):
        inference_timesteps(SCHED, 8, 1000)
    assert start_noise_scale(SCHED) == 1.0  # the reference's x_T = x_init + eps
    assert start_noise_scale(SCHED, 125) == pytest.approx(float((1 - SCHED.alphas_cumprod[125]).sqrt()))


@pytest.mark.parametrize("final", ["sigma_min", "zero"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("sde", [True, False], ids=["sde-dpmsolver++", "dpmsolver++"])
@pytest.mark.parametrize("n", [1, 2, 4, 8, 50])
def test_dpmpp_equals_diffusers_for_the_same_noise(n, sde, order, final):
    ref = diffusers.DPMSolverMultistepScheduler(
        **REF, algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++", solver_order=order,
        final_sigmas_type=final)
    x = x_T()
    expected, _ = run_diffusers(ref, n, x.clone(), seed=123)
    ours = sample_dpmpp(toy_eps, x.clone(), inference_timesteps(SCHED, n), SCHED, sde=sde, order=order,
                        final=final, generator=torch.Generator().manual_seed(123))
    assert_equal_up_to_float32(ours, expected)


@pytest.mark.parametrize("n", [1, 2, 8, 50])
def test_ddpm_equals_diffusers_on_respaced_steps(n):
    ref = diffusers.DDPMScheduler(**REF, clip_sample=False, variance_type="fixed_small")
    steps = inference_timesteps(SCHED, n)
    expected, _ = run_diffusers(ref, n, x_T(1), seed=7, timesteps=steps.tolist())
    ours = sample_ddpm(toy_eps, x_T(1), steps, SCHED, generator=torch.Generator().manual_seed(7))
    assert_equal_up_to_float32(ours, expected)


def test_ddpm_draws_no_noise_at_t0():
    """Steps [2, 1, 0] draw noise twice; at t = 0 the posterior is the clean estimate."""
    gen, probe = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    sample_ddpm(toy_eps, x_T(), torch.tensor([2, 1, 0]), SCHED, generator=gen)
    for _ in range(2):
        torch.randn(x_T().shape, generator=probe)
    assert torch.equal(gen.get_state(), probe.get_state())


def oracle(x0):
    """The perfect denoiser for a single clean sample x0 (VP view of the state)."""
    def eps(x, t):
        return (x - SCHED.alpha(t).item() * x0) / SCHED.sigma(t).item()
    return eps


@pytest.mark.parametrize("sampler", ["sde", "ode", "ddpm"])
@pytest.mark.parametrize("n", [1, 8])
def test_oracle_denoiser_recovers_the_sample(sampler, n):
    x0 = x_T(5) * 3.0
    gen = torch.Generator().manual_seed(0)
    steps = inference_timesteps(SCHED, n)
    start = SCHED.alpha(steps[0]).item() * x0 + SCHED.sigma(steps[0]).item() * x_T(6)
    if sampler == "ddpm":
        out = sample_ddpm(oracle(x0), start, steps, SCHED, generator=gen)
    else:
        out = sample_dpmpp(oracle(x0), start, steps, SCHED, sde=sampler == "sde", final="zero", generator=gen)
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
    if sampler != "ddpm":  # the reference end point keeps sigma_0 = 0.0059 of noise
        end = sample_dpmpp(oracle(x0), start, steps, SCHED, sde=sampler == "sde", generator=gen)
        residual = end - SCHED.alpha(0).item() * x0
        assert 0 < residual.std() < 0.01


def test_samplers_are_pure_and_seeded_by_the_caller():
    steps = inference_timesteps(SCHED, 8)
    a = sample_dpmpp(toy_eps, x_T(), steps, SCHED, generator=torch.Generator().manual_seed(1))
    b = sample_dpmpp(toy_eps, x_T(), steps, SCHED, generator=torch.Generator().manual_seed(1))
    c = sample_dpmpp(toy_eps, x_T(), steps, SCHED, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    sample_dpmpp(toy_eps, x_T(), steps, SCHED, sde=False, generator=gen)
    assert torch.equal(gen.get_state(), state)  # the ODE solver draws nothing
    seen = []
    sample_dpmpp(toy_eps, x_T(), steps, SCHED, callback=lambda i, t, x, x0: seen.append((i, t)))
    assert seen == list(enumerate(steps.tolist()))
    with pytest.raises(ValueError, match="order"):
        sample_dpmpp(toy_eps, x_T(), steps, SCHED, order=3)


@pytest.mark.parametrize("sde", [True, False])
def test_one_step_is_the_public_step_math_and_keeps_the_graph(sde):
    """A 1-step sample_dpmpp is dpmpp_update(x, data_prediction(x, eps)) (the student's training sample)."""
    x = x_T(shape=(1, 4, 3)).double().requires_grad_()
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype) if sde else None

    def step(v):
        return dpmpp_update(v, data_prediction(v, toy_eps(v, 999), 999, SCHED), 999, 0, SCHED, noise=z)
    ref = sample_dpmpp(toy_eps, x, torch.tensor([999]), SCHED, sde=sde, generator=torch.Generator().manual_seed(4))
    assert torch.equal(step(x), ref) and ref.requires_grad
    assert torch.autograd.gradcheck(step, (x,))


def test_local_noise_and_initial_state():
    x0, noise = x_T(0), x_T(1)
    t = torch.tensor([0, 999])
    xt = add_local_noise(SCHED, x0, t, noise)
    torch.testing.assert_close(xt[1], x0[1] + SCHED.sigma(999).item() * noise[1])  # no signal scaling
    torch.testing.assert_close(xt[0], x0[0] + 0.0059161 * noise[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(initial_state(x0, noise, 1.1), x0 + 1.1 * noise)  # DDPO Eq. 19


def test_classifier_free_guidance():
    c, u = torch.full((2, 3), 2.0), torch.full((2, 3), 1.0)
    assert torch.equal(guide(c, u, 3.5), torch.full((2, 3), 4.5))
    assert torch.equal(guide(c, u, 0.0), u) and torch.equal(guide(c, u, 1.0), c)
    calls = []

    def cond(x, t):
        calls.append("c")
        return x + 1

    def uncond(x, t):
        calls.append("u")
        return x
    x = torch.zeros(3)
    assert torch.equal(guided(cond, uncond, 6.0)(x, 10), torch.full((3,), 6.0)) and calls == ["c", "u"]
    calls.clear()
    guided(cond, uncond, 1.0)(x, 10)
    assert calls == ["c"]
    part = torch.randn(1, 18, 3)
    assert torch.equal(unconditional_cloud(part), torch.zeros(1, 18, 3))


def ve_oracle(x0):
    """The perfect denoiser for a single clean sample x0 under the training noise x_t = x0 + sigma_t eps."""
    def eps(x, t):
        return (x - x0) / SCHED.sigma(t).item()
    return eps


@pytest.mark.parametrize("sde", [True, False])
@pytest.mark.parametrize("n", [1, 8])
def test_ve_sampler_recovers_the_sample_of_the_training_noise(sde, n):
    """The VE parameterisation is the one the training noise implies: from x0 + sigma_T eps with
    the exact eps it lands on x0 (the VP view of the same state would scale x0 by 1 / alpha_t)."""
    x0 = x_T(5) * 3.0
    steps = inference_timesteps(SCHED, n)
    start = x0 + SCHED.sigma(steps[0]).item() * x_T(6)
    sample = SAMPLERS["ve-sde-dpmsolver++" if sde else "ve-dpmsolver++"]
    out = sample(ve_oracle(x0), start, steps, SCHED, final="zero", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
    vp = SAMPLERS["sde-dpmsolver++" if sde else "dpmsolver++"](
        ve_oracle(x0), start, steps, SCHED, final="zero", generator=torch.Generator().manual_seed(0))
    assert (vp - x0).abs().max() > 0.1  # the VP reading of the same denoiser scales x0 by 1 / alpha


def test_ve_first_order_step_is_ddim_ve():
    """First-order VE DPM-Solver++: x' = x0 + (sigma'/sigma)(x - x0) (ODE); the SDE form keeps
    (sigma'/sigma)^2 of the offset and adds sigma' sqrt(1 - (sigma'/sigma)^2) of fresh noise."""
    x, x0, z = x_T(1), x_T(2), x_T(3)
    s, s2 = SCHED.sigma(500).item(), SCHED.sigma(250).item()
    r = s2 / s
    torch.testing.assert_close(dpmpp_update(x, x0, 500, 250, SCHED, ve=True), x0 + r * (x - x0))
    torch.testing.assert_close(dpmpp_update(x, x0, 500, 250, SCHED, noise=z, ve=True),
                               x0 + r * r * (x - x0) + s2 * (1 - r * r) ** 0.5 * z)
    torch.testing.assert_close(data_prediction(x, x0, 500, SCHED, ve=True), x - s * x0)
