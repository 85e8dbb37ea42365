"""The Distillation-DPO student's training-time sample and the preference that ranks a pair.

`one_step_generate` is G(x_init + lambda eps) (Eq. 19): one denoiser call at t = 999 and one
first-order sde-dpmsolver++ jump 999 -> 0, the released `p_sample_with_final_step_grad` with
s_steps = 1 (reference section 2). It runs the sampler's own step math (`data_prediction`,
`dpmpp_update`) on the sampler's state, the offset from x_init, so it equals a 1-step
`sample_dpmpp` for the same noise, but keeps the autograd graph to the denoiser's parameters.

`preference` ranks the pair by the paper's CD (or by JSD, Table 5) against ground truth: lower wins;
`pair_samples` makes and ranks the pair (lambda 1 and lam from one noise) for a whole batch.
`clamp_far`, `noised_sample` and `frozen_condition` are the other per-step helpers the student-side
stages share.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ddpo_ros.diffusion import Schedule, add_local_noise, data_prediction, dpmpp_update, standard_noise
from ddpo_ros.datasets.ground_truth import chamfer_distance
from training.metrics import jsd_3d

T_STUDENT = 999  # the student's only training step (diffusers' 1-step "linspace" schedule)


def one_step_generate(denoiser, cond, x_init: Tensor, noise: Tensor, lam: float, schedule: Schedule,
                      t: int = T_STUDENT, *, z: Tensor | None = None,
                      generator: torch.Generator | None = None, ve: bool = False) -> Tensor:
    """G(x_init + lam * noise): absolute points (B, N, 3) with the graph to the denoiser intact.

    x_t = x_init + lam * noise (Eq. 19; lam = 1 and 1.1 make the training pair), eps =
    denoiser(x_t, cond, t) with no guidance (the released student is trained conditional only),
    then x_0 = x_init + dpmpp_update(offset, x0_hat(offset, eps), t -> 0, z). z is the SDE's
    fresh noise: passed in for a deterministic sample, else drawn from `generator` exactly as
    `sample_dpmpp` draws it. The end is t = 0, not the clean prediction: the reference's last
    step lands on sigma_0 = 0.0059 (about 6 mm of fresh noise). ve=True takes the jump in the
    variance-exploding parameterisation of the ve-* samplers (alpha = 1), so a student validated
    and deployed with `completion.sampler: ve-...` is trained on the sample that sampler makes.
    """
    if x_init.shape != noise.shape or x_init.ndim != 3:
        raise ValueError(f"x_init {tuple(x_init.shape)} and noise {tuple(noise.shape)} must be equal (B, N, 3)")
    offset = lam * noise  # the sampler's diffusion state is the offset from x_init (reference section 2)
    steps = torch.full((x_init.shape[0],), t, dtype=torch.long, device=x_init.device)
    eps = denoiser(x_init + offset, cond, steps)
    x0 = data_prediction(offset, eps, t, schedule, ve=ve)
    if z is None:
        z = standard_noise(offset, generator)  # drawn after the denoiser call, as sample_dpmpp does
    return x_init + dpmpp_update(offset, x0, t, 0, schedule, noise=z, ve=ve)


def uses_ve(cfg) -> bool:
    """Whether the configured sampler (completion.sampler) is a variance-exploding one (ve-*)."""
    return cfg.completion.sampler.startswith("ve-")


def _cloud(sample, name: str) -> np.ndarray:
    """(N, 3) float64 numpy copy of a (N, 3) or (1, N, 3) tensor/array, detached from any graph."""
    arr = sample.detach().cpu().numpy() if isinstance(sample, Tensor) else np.asarray(sample)
    if arr.ndim == 3:
        if arr.shape[0] != 1:
            raise ValueError(f"{name}: the preference ranks one scene per call (batch 1), got batch {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{name} must be (N, 3) or (1, N, 3), got shape {arr.shape}")
    return np.asarray(arr[:, :3], dtype=np.float64)


METRICS = {"cd": chamfer_distance, "jsd": jsd_3d}


def preference(sample_a, sample_b, gt, metric: str = "cd") -> tuple[int, float, float]:
    """(winner index 0 or 1, score of a, score of b): the sample with the lower metric wins.

    "cd" is the paper's Chamfer distance in metres (the released code's Open3D CD against the
    tiled ground truth), "jsd" the 3-D Jensen-Shannon distance (Table 5's alternative). Scores
    are computed on detached numpy copies, so ranking never touches the autograd graph. A tie
    goes to a (the lambda = 1 sample).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    score = METRICS[metric]
    target = _cloud(gt, "gt")
    score_a = float(score(_cloud(sample_a, "sample_a"), target))
    score_b = float(score(_cloud(sample_b, "sample_b"), target))
    return (0 if score_a <= score_b else 1), score_a, score_b


def mean_cd(samples, gt) -> float:
    """Batch mean of each sample's Chamfer distance (m) to its scene's ground truth, as the preference
    scores a sample: what a one-step student's samples are worth while it trains."""
    return float(np.mean([chamfer_distance(_cloud(s, "sample"), _cloud(t, "gt")) for s, t in zip(samples, gt)]))


def pair_samples(student, cond, x_init, gt, lam, schedule, generator, metric, ve: bool = False,
                 independent: bool = False):
    """Two one-step samples, lambda 1 and lam -> winner, loser, CDs, lam-sample-won flags.

    Eq. 19 starts both from one noise (the lam sample is then nearly always the worse one, so the
    preference ranks noise scales); independent=True (distill.pair_noise) draws a second noise for
    the lam sample, so the ranking can reflect what the samples show.
    """
    eps = torch.randn(x_init.shape, generator=generator).to(x_init.device)
    eps2 = torch.randn(x_init.shape, generator=generator).to(x_init.device) if independent else eps
    s1 = one_step_generate(student, cond, x_init, eps, 1.0, schedule, generator=generator, ve=ve)
    s2 = one_step_generate(student, cond, x_init, eps2, lam, schedule, generator=generator, ve=ve)
    picks = [preference(s1[b], s2[b], gt[b], metric=metric) for b in range(len(gt))]
    second = torch.tensor([p[0] == 1 for p in picks], device=x_init.device)[:, None, None]
    winner, loser = torch.where(second, s2, s1), torch.where(second, s1, s2)
    scores = torch.tensor([[min(p[1], p[2]), max(p[1], p[2])] for p in picks])
    return winner, loser, scores, second.float().mean().item()


def clamp_far(points: Tensor, max_range: float) -> Tensor:
    """Points as the networks may see them: every coordinate clipped to +-4 max_range.

    A one-step sample multiplies the denoiser's error by 1/alpha_999 (~5.8): an early or unlucky
    student, or train-mode BatchNorm on an odd batch, can throw a few points kilometres away, and
    voxelising those overflows the sparse hash (ddpo_ros.sparse.coords.pack: "coordinate extent
    too large"). Clipped, they stay what they were, far outliers. Used on samples that only feed
    networks without gradient (TAs, teacher), never on the student's sample itself.
    """
    limit = 4.0 * max_range
    return points.clamp(-limit, limit)


def noised_sample(schedule: Schedule, x0: Tensor, t: Tensor, noise: Tensor, max_range: float) -> Tensor:
    """x0 + sigma_t noise on x0's device (Eq. 1) for a sample that feeds networks without gradient:
    far outliers clipped first (clamp_far)."""
    return add_local_noise(schedule, clamp_far(x0, max_range), t.to(x0.device), noise.to(x0.device))


def trained_mode(net, freeze_bn: bool):
    """Put a trained network (student, TA) in the mode its BatchNorm should run in.

    freeze_bn (distill.freeze_bn): eval mode, so BatchNorm normalises with the teacher's running
    statistics, copied at initialisation and never updated; the affine weights still learn. Then a
    TA equal to the teacher predicts exactly the teacher's eps and g = eps_teacher - eps_ta measures
    what the TA learned, not the difference between batch and running statistics. Otherwise train
    mode, as the reference runs them.
    """
    return net.eval() if freeze_bn else net.train()


def frozen_condition(encoder, frozen, batch: dict, device) -> tuple[Tensor, Tensor, object]:
    """(partial, gt, cond) for a distillation step: the frozen networks in eval mode, the scan
    encoded once without gradient (the reference's partial_enc is frozen)."""
    for net in (encoder, *frozen):
        net.eval()
    partial, gt = batch["partial"].to(device), batch["gt"].to(device)
    with torch.no_grad():
        cond = encoder(partial)
    return partial, gt, cond
