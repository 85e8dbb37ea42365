"""Training losses and the student's one-step sample: known values, exact gradients, the zero-gradient bug.

The key check: the Distillation-DPO student surrogate's autograd gradient equals Eq. 18 computed
independently from the generator's Jacobians (explicit on a hand-made generator, vector-Jacobian
products and finite differences on the real tiny MinkUNetDiff), and the released code's loss has
exactly zero gradient on the same case.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from ddpo_ros.config import Config, ModelConfig
from ddpo_ros.diffusion import make_schedule, sample_dpmpp
from ddpo_ros.models import build_denoiser, build_encoder
from training.losses import (chamfer_squared, diffusion_dpo_loss, dmd_normalise, lidiff_loss, noise_mse,
                             released_code_student_loss, score_distill_surrogate, student_surrogate)
from training.student import one_step_generate, preference

SCHED = make_schedule()
TINY = Config(model=ModelConfig(width=0.125))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- plain losses --------------------------------------------------------------------------------
def test_lidiff_loss_known_value():
    pred, eps = torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2)
    # MSE 5; mean 2; unbiased std sqrt(2): 5 + 5 (4 + (sqrt2 - 1)^2)
    assert float(lidiff_loss(pred, eps)) == pytest.approx(5 + 5 * (4 + (math.sqrt(2) - 1) ** 2), rel=1e-6)
    assert float(lidiff_loss(pred, eps, reg_weight=0.0)) == pytest.approx(5.0)
    assert float(noise_mse(pred, eps)) == pytest.approx(5.0)
    standard = torch.tensor([[-1.0, 1.0]]) / math.sqrt(2.0)  # mean 0, unbiased std 1: no regulariser
    assert float(lidiff_loss(standard, standard)) == pytest.approx(0.0, abs=1e-12)


def brute_chamfer(a, b):
    d = ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)
    return (d.min(2).values.mean(1) + d.min(1).values.mean(1)).mean()


def test_chamfer_squared_equals_brute_force():
    a = torch.randn(2, 37, 3, generator=gen(0), dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 53, 3, generator=gen(1), dtype=torch.float64)
    ours, ref = chamfer_squared(a, b), brute_chamfer(a, b)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    grad_ours, = torch.autograd.grad(ours, a)
    grad_ref, = torch.autograd.grad(ref, a)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-10, atol=1e-14)
    for block in (1, 7, 53, 1000):  # the GPU's distance blocks (1 row, odd sizes, whole): same as the k-d tree
        assert torch.equal(chamfer_squared(a, b, block=block, kdtree=False), ours)
    perm_a, perm_b = torch.randperm(37, generator=gen(2)), torch.randperm(53, generator=gen(3))
    torch.testing.assert_close(chamfer_squared(a[:, perm_a], b[:, perm_b]), ours, rtol=1e-12, atol=0)
    assert float(chamfer_squared(b, b)) == 0.0
    with pytest.raises(ValueError):
        chamfer_squared(a[0], b[0])


def test_chamfer_squared_is_exact_far_from_the_origin():
    # cm-scale distances 50 m out: the matmul form of cdist would lose them in float32.
    a = torch.rand(1, 400, 3, generator=gen(4)) + torch.tensor([48.0, -30.0, 1.0])
    b = a + 0.01 * torch.randn(a.shape, generator=gen(5))
    ref = brute_chamfer(a.double(), b.double())
    torch.testing.assert_close(chamfer_squared(a, b).double(), ref, rtol=1e-4, atol=0)


def test_diffusion_dpo_loss_values_sign_and_gradient():
    e = torch.tensor([0.3, 0.7])
    assert float(diffusion_dpo_loss(e, e, e, e)) == pytest.approx(math.log(2.0))
    ref_w, ref_l = torch.tensor([0.5]), torch.tensor([0.5])
    better = diffusion_dpo_loss(torch.tensor([0.49]), torch.tensor([0.5]), ref_w, ref_l, beta=100.0)
    worse = diffusion_dpo_loss(torch.tensor([0.51]), torch.tensor([0.5]), ref_w, ref_l, beta=100.0)
    assert float(better) < math.log(2.0) < float(worse)
    # inside = -beta/2 (-0.01) = 0.5 at beta 100
    assert float(better) == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), rel=1e-6)
    err_w, err_l = torch.tensor([0.5], requires_grad=True), torch.tensor([0.5], requires_grad=True)
    diffusion_dpo_loss(err_w, err_l, ref_w, ref_l).backward()
    assert float(err_w.grad) > 0 > float(err_l.grad)  # descent lowers the winner's error, raises the loser's


# -- the student's sample ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def case():
    """Tiny real networks and one scene of 300 points (100 scan points x 3)."""
    torch.manual_seed(0)
    encoder = build_encoder(TINY.model)
    student, teacher, ta_win, ta_lose = (build_denoiser(TINY.model) for _ in range(4))
    partial = (torch.rand(1, 100, 3, generator=gen(6)) - 0.5) * torch.tensor([10.0, 10.0, 2.0])
    with torch.no_grad():
        cond = encoder(partial)
    for net in (teacher, ta_win, ta_lose):
        net.eval().requires_grad_(False)
    return dict(student=student.train(), teacher=teacher, ta_win=ta_win, ta_lose=ta_lose, cond=cond,
                x_init=partial.repeat(1, 3, 1), noise=torch.randn(1, 300, 3, generator=gen(7)))


@pytest.mark.parametrize("ve, lam", [(False, 1.1), (True, 1.0)])
def test_one_step_generate_equals_one_sampler_step(case, ve, lam):
    """With a ve-* completion.sampler the student trains on the sample that sampler makes."""
    den, cond, x_init, noise = case["student"].eval(), case["cond"], case["x_init"], case["noise"]
    try:
        def denoise(offset, t):
            return den(x_init + offset, cond, torch.full((1,), t, dtype=torch.long))
        with torch.no_grad():
            ref = x_init + sample_dpmpp(denoise, lam * noise, torch.tensor([999]), SCHED, generator=gen(8), ve=ve)
            ours = one_step_generate(den, cond, x_init, noise, lam, SCHED, generator=gen(8), ve=ve)
            z = torch.randn(noise.shape, generator=gen(8))
            explicit = one_step_generate(den, cond, x_init, noise, lam, SCHED, z=z, ve=ve)
            other = one_step_generate(den, cond, x_init, noise, lam, SCHED, generator=gen(8), ve=not ve)
        assert torch.equal(ours, ref) and torch.equal(explicit, ref)
        assert (ours - other).abs().max() > 0.1  # VP divides the data prediction by alpha_999 (~0.17)
    finally:
        den.train()


def test_one_step_generate_keeps_the_graph_to_the_student(case):
    den = case["student"]
    den.zero_grad()
    sample = one_step_generate(den, case["cond"], case["x_init"], case["noise"], 1.0, SCHED, generator=gen(9))
    assert sample.requires_grad and sample.shape == (1, 300, 3)
    sample.square().sum().backward()
    grads = [p.grad for p in den.parameters()]
    assert all(g is not None for g in grads) and all(bool(g.abs().sum() > 0) for g in grads)
    den.zero_grad()


def student_pair(c, seed: int = 10):
    """G_w, G_l (with graph) and g = eps_teacher - eps_ta at x_t = G + sigma_t n (shared t, n; no grad)."""
    z_w, z_l, n = (torch.randn(1, 300, 3, generator=gen(seed + k)) for k in range(3))
    args = (c["student"], c["cond"], c["x_init"], c["noise"])
    g_w_sample = one_step_generate(*args, 1.0, SCHED, z=z_w)
    g_l_sample = one_step_generate(*args, 1.1, SCHED, z=z_l)
    t, sigma = 500, float(SCHED.sigma(500))
    steps = torch.full((1,), t, dtype=torch.long)
    with torch.no_grad():
        x_wt, x_lt = g_w_sample + sigma * n, g_l_sample + sigma * n
        g_w = c["teacher"](x_wt, c["cond"], steps) - c["ta_win"](x_wt, c["cond"], steps)
        g_l = c["teacher"](x_lt, c["cond"], steps) - c["ta_lose"](x_lt, c["cond"], steps)
    return (z_w, z_l), g_w_sample, g_l_sample, g_w, g_l, sigma * n


def shifted_params(params, u: torch.Tensor, h: float) -> list[torch.Tensor]:
    """params + h u, u a flat direction over all of them."""
    out, offset = [], 0
    for p in params:
        out.append(p + h * u[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    return out


@pytest.fixture
def student_mode(case, request):
    """The case's student in train or eval mode, back in train mode afterwards."""
    den = case["student"].train(request.param == "train")
    yield request.param
    den.train()


@pytest.mark.parametrize("student_mode", ["train", "eval"], indirect=True)
def test_student_gradient_equals_eq18_on_the_real_network(case, student_mode):
    """autograd of the surrogate == (1/omega)[J_w^T g_w - J_l^T g_l] from per-sample VJPs, != 0.

    Train mode is what the released student uses (BN batch statistics). There G is strongly
    curved along the gradient, so the finite-difference cross-check runs in eval mode only.
    """
    den = case["student"]
    (z_w, z_l), sample_w, sample_l, g_w, g_l, _ = student_pair(case)
    names = [n for n, _ in den.named_parameters()]
    params = tuple(p for _, p in den.named_parameters())
    grads = torch.autograd.grad(student_surrogate(sample_w, sample_l, g_w, g_l), params)

    def generator_of(lam, z):
        return lambda *p: one_step_generate(lambda *a: functional_call(den, dict(zip(names, p)), a),
                                            case["cond"], case["x_init"], case["noise"], lam, SCHED, z=z)
    detached = tuple(p.detach() for p in params)
    _, jt_g_w = torch.autograd.functional.vjp(generator_of(1.0, z_w), detached, g_w)
    _, jt_g_l = torch.autograd.functional.vjp(generator_of(1.1, z_l), detached, g_l)
    omega = sample_w.numel()
    flat = torch.cat([g.flatten() for g in grads])
    eq18 = torch.cat([((a_w - a_l) / omega).flatten() for a_w, a_l in zip(jt_g_w, jt_g_l)])
    scale = float(eq18.abs().max())
    assert scale > 0 and float((flat - eq18).abs().max()) < 1e-5 * scale  # float32 summation order only
    if student_mode == "eval":
        # d/dh [(g_w . G_w - g_l . G_l) / omega](eta + h u) along u = grad / |grad| is |grad|.
        u = flat / flat.norm()
        with torch.no_grad():
            value = [((g_w * generator_of(1.0, z_w)(*shifted_params(detached, u, h))).sum()
                      - (g_l * generator_of(1.1, z_l)(*shifted_params(detached, u, h))).sum()) for h in (1e-2, -1e-2)]
        slope = float(value[0] - value[1]) / (2e-2 * omega)
        assert slope == pytest.approx(float(flat.norm()), rel=2e-3)


def test_released_code_student_loss_has_exactly_zero_gradient(case):
    den = case["student"]
    den.zero_grad()
    _, sample_w, sample_l, g_w, g_l, noise = student_pair(case)
    x_wt, x_lt = sample_w + noise, sample_l + noise  # with graph, as the released code builds them
    teacher_w, teacher_l = g_w + 1.0, g_l + 1.0  # any no-grad eps: eps_T - eps_TA = g
    loss = released_code_student_loss(teacher_w, teacher_w - g_w, x_wt, sample_w, teacher_l, teacher_l - g_l,
                                      x_lt, sample_l)
    assert float(loss.detach()) != 0.0  # the loss has a value, just no gradient
    loss.backward()
    assert all(p.grad is None or not bool(p.grad.any()) for p in den.parameters())
    den.zero_grad()


# -- Eq. 18 on a hand-made generator with explicit Jacobians ---------------------------------------
def test_student_gradient_equals_eq18_with_explicit_jacobians():
    """G(eta) = M eta + 0.5 sin(M eta): J = diag(1 + 0.5 cos(M eta)) M, written out by hand."""
    eta = torch.randn(12, generator=gen(20), dtype=torch.float64, requires_grad=True)
    m_w, m_l = (torch.randn(2 * 5 * 3, 12, generator=gen(s), dtype=torch.float64) for s in (21, 22))
    g_w, g_l = (torch.randn(2, 5, 3, generator=gen(s), dtype=torch.float64) for s in (23, 24))

    def sample(m):
        return (m @ eta + 0.5 * torch.sin(m @ eta)).view(2, 5, 3)

    def jacobian(m):
        return (1.0 + 0.5 * torch.cos(m @ eta.detach()))[:, None] * m

    grad, = torch.autograd.grad(student_surrogate(sample(m_w), sample(m_l), g_w, g_l, omega=7.0), eta)
    eq18 = (jacobian(m_w).T @ g_w.flatten() - jacobian(m_l).T @ g_l.flatten()) / 7.0
    torch.testing.assert_close(grad, eq18, rtol=1e-12, atol=1e-14)
    assert float(eq18.abs().max()) > 0
    default, = torch.autograd.grad(student_surrogate(sample(m_w), sample(m_l), g_w, g_l), eta)
    torch.testing.assert_close(default, eq18 * 7.0 / 30.0, rtol=1e-12, atol=1e-14)  # omega = B*N*3
    one_ta, = torch.autograd.grad(score_distill_surrogate(sample(m_w), g_w), eta)
    torch.testing.assert_close(one_ta, jacobian(m_w).T @ g_w.flatten() / 30.0, rtol=1e-12, atol=1e-14)


def test_descent_moves_the_winner_to_the_teacher_and_the_loser_away():
    """Gaussian toy with exact noise predictions: teacher data N(0, I), student samples G = m + z.

    For x_0 ~ N(mu, I) and x_t = x_0 + sigma n, E[n | x_t] = sigma (x_t - mu) / (1 + sigma^2).
    """
    sigma, z = 0.7, torch.randn(1, 2000, 3, generator=gen(30))
    n = torch.randn(1, 2000, 3, generator=gen(31))

    def eps(x_t, mu):
        return sigma * (x_t - mu) / (1 + sigma ** 2)

    m_w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    m_l = torch.tensor([-1.5, 0.5, 2.0], requires_grad=True)
    sample_w, sample_l = m_w + z, m_l + z
    with torch.no_grad():  # each assistant fits its own sample's distribution
        g_w = eps(sample_w + sigma * n, 0.0) - eps(sample_w + sigma * n, m_w)
        g_l = eps(sample_l + sigma * n, 0.0) - eps(sample_l + sigma * n, m_l)
    grad_w, grad_l = torch.autograd.grad(student_surrogate(sample_w, sample_l, g_w, g_l), (m_w, m_l))
    grad_sd, = torch.autograd.grad(score_distill_surrogate(m_w + z, g_w), m_w)
    m_w, m_l = m_w.detach(), m_l.detach()
    assert float((m_w - grad_w).norm()) < float(m_w.norm())  # one SGD step: the winner nears the teacher's mean 0
    assert float((m_l - grad_l).norm()) > float(m_l.norm())  # and the loser leaves it
    assert float((m_w - grad_sd).norm()) < float(m_w.norm())
    # loser_weight scales the loser's push; 0 leaves the winner's pull, score distillation's gradient
    m_w, m_l = m_w.clone().requires_grad_(), m_l.clone().requires_grad_()
    half_w, half_l = torch.autograd.grad(student_surrogate(m_w + z, m_l + z, g_w, g_l, loser_weight=0.5), (m_w, m_l))
    assert torch.allclose(half_w, grad_w) and torch.allclose(half_l, 0.5 * grad_l)
    only_w, = torch.autograd.grad(student_surrogate(m_w + z, m_l + z, g_w, g_l, loser_weight=0.0), m_w)
    assert torch.allclose(only_w, grad_sd)


def test_dmd_normalise_is_the_clean_cloud_difference_per_unit_distance():
    """g' = (x0_fake - x0_real) / mean|G - x0_real| per sample, with x0 = x_t - sigma eps."""
    sample = torch.randn(2, 500, 3, generator=gen(40))
    x0_real = sample + torch.tensor([[[0.3, 0.0, 0.0]], [[0.0, 0.0, -0.6]]])  # the teacher's clean estimate
    x0_fake = sample + 0.01 * torch.randn(2, 500, 3, generator=gen(41))     # the TA's: G itself, nearly
    sigma = torch.tensor([0.05, 0.9], dtype=torch.float64)                  # a small and a large step
    x_t = sample + sigma.float().reshape(-1, 1, 1) * torch.randn(2, 500, 3, generator=gen(42))
    s = sigma.float().reshape(-1, 1, 1)
    eps_teacher, eps_ta = (x_t - x0_real) / s, (x_t - x0_fake) / s
    out = dmd_normalise(eps_teacher - eps_ta, sample, x_t, eps_teacher, sigma)
    want = (x0_fake - x0_real) / torch.tensor([0.1, 0.2]).reshape(-1, 1, 1)  # mean |G - x0_real|
    assert torch.allclose(out, want, atol=1e-5)
    assert abs(float(out[0].abs().mean()) - float(out[1].abs().mean())) < 0.05  # both steps weigh alike
    # descent on the surrogate moves G towards the teacher's clean estimate
    m = torch.zeros(3, requires_grad=True)
    grad, = torch.autograd.grad(score_distill_surrogate(sample + m, out), m)
    assert float(grad @ (x0_real - sample).mean(dim=(0, 1))) < 0


# -- preference ----------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cd", "jsd"])
def test_the_closer_sample_wins(metric):
    rng = np.random.default_rng(0)
    gt = rng.uniform(-20, 20, size=(3000, 3))
    near = torch.from_numpy(gt + rng.normal(0, 0.02, gt.shape)).float()[None].requires_grad_()
    far = torch.from_numpy(gt + rng.normal(0, 2.0, gt.shape)).float()[None]
    win, s_near, s_far = preference(near, far, gt, metric=metric)
    assert win == 0 and s_near < s_far
    win, s_a, s_b = preference(far, near, gt, metric=metric)
    assert win == 1 and (s_a, s_b) == (s_far, s_near)
    assert preference(near, near, gt, metric=metric)[0] == 0  # a tie goes to a
    with pytest.raises(ValueError):
        preference(torch.cat([near, near]), far, gt, metric=metric)
    with pytest.raises(ValueError):
        preference(near, far, gt, metric="emd")


def test_far_outliers_are_clipped_before_voxelisation():
    """A sample with a point 1,000 km out overflows the sparse hash; clipped, the network takes it."""
    from ddpo_ros.config import ModelConfig
    from ddpo_ros.models import build_denoiser, build_encoder
    from training.student import clamp_far

    torch.manual_seed(0)
    cfg = ModelConfig(width=0.125)
    enc, den = build_encoder(cfg).eval(), build_denoiser(cfg).eval()
    x = torch.randn(1, 500, 3, generator=gen(4)) * 10
    x[0, 7] = torch.tensor([1.0e6, -1.0e6, 1.0e6])
    cond = enc(x[:, :100].clamp(-50, 50))
    t = torch.tensor([500])
    with pytest.raises(ValueError, match="coordinate extent too large"):
        den(x, cond, t)
    clipped = clamp_far(x, 50.0)
    assert clipped.abs().max() == 200.0 and torch.equal(clipped[0, :7], x[0, :7])
    assert torch.isfinite(den(clipped, cond, t)).all()


@pytest.mark.parametrize("ve", [False, True])
def test_independent_pairs_start_from_two_noises(ve):
    """distill.pair_noise: Eq. 19's pair shares one noise, so with lam 1 the samples differ only by the
    solver's small final noise; independent pairs start from two noises and differ by a whole noise."""
    from training.student import pair_samples
    schedule = make_schedule()
    x_init = torch.randn(2, 300, 3, generator=gen(50)) * 5
    gt = x_init + 0.1 * torch.randn(2, 300, 3, generator=gen(51))

    def zero(x, cond, t):  # a denoiser that predicts no noise: the sample keeps its starting offset
        return torch.zeros_like(x)
    gaps = {}
    for independent in (False, True):
        w, l, scores, _ = pair_samples(zero, None, x_init, gt, 1.0, schedule, gen(52), "cd", ve, independent)
        gaps[independent] = float((w - l).norm(dim=-1).mean())
        assert scores.shape == (2, 2) and bool((scores[:, 0] <= scores[:, 1]).all())
    assert gaps[True] > 10 * gaps[False]
