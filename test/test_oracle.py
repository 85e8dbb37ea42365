"""training/oracle.py: the ideal denoiser against a brute-force posterior, and the formulation's
ceiling on a small real-shaped scene: its completion through the real Completer beats the scan."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpo_ros.config import CompletionConfig, Config
from ddpo_ros.diffusion import make_schedule
from ddpo_ros.datasets.ground_truth import chamfer_distance, partial_scan
from ddpo_ros.pipeline import Completer
from training.data.lidar import Lidar
from training.data.synthetic import make_sample
from training.metrics import completion_metrics
from training.oracle import OracleDenoiser, noise_mse

SCHED = make_schedule()


@pytest.fixture(scope="module")
def scene():
    """A synthetic street seen by a 16-beam sensor, 3.5-12 m: scan ~4,000 points, ground truth ~12,600."""
    sample = make_sample(3, lidar=Lidar(beams=16, azimuth_steps=512))
    gt = sample["ground_truth"]
    return partial_scan(sample["scan"], max_range=12.0), gt[np.linalg.norm(gt, axis=1) < 12.0]


def brute_force_mean(x, gt, sigma):
    d2 = ((x[:, None, :] - gt[None]) ** 2).sum(-1)
    w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * sigma * sigma))
    return (w[:, :, None] * gt[None]).sum(1) / w.sum(1, keepdims=True)


@pytest.mark.parametrize("t", [5, 100, 500, 999])
def test_posterior_mean_matches_the_sum_over_every_point(scene, t):
    _, gt = scene
    gt = gt.astype(np.float64)
    rng = np.random.default_rng(t)
    sigma = float(SCHED.sigma(t))
    x = gt[rng.integers(0, len(gt), 200)] + sigma * rng.standard_normal((200, 3))
    x[:5] += 3.0  # a few queries far off every surface
    exact = brute_force_mean(x, gt, sigma)
    got = OracleDenoiser(gt, SCHED).posterior_mean(x, sigma)
    err = np.abs(got - exact) / sigma
    assert err.mean() < 5e-3 and err.max() < 0.1, (err.mean(), err.max())
    unmerged = OracleDenoiser(gt, SCHED, cell_fraction=0.0, cutoff=5.0).posterior_mean(x, sigma)
    assert np.abs(unmerged - exact).max() / sigma < 1e-3


def test_oracle_noise_error_is_below_predicting_nothing_and_exact_for_one_point():
    gt = torch.from_numpy(np.random.default_rng(0).uniform(-5, 5, (2000, 3)))
    oracle = OracleDenoiser(gt.numpy(), SCHED)
    for t in (20, 500, 999):
        assert noise_mse(oracle, gt, t, SCHED, torch.Generator().manual_seed(t)) < 1.0
    single = torch.tensor([[1.0, 2.0, 3.0]])
    x_t = single + 0.3 * torch.randn(1, 5, 3)
    eps = OracleDenoiser(single.numpy(), SCHED)(x_t, 250)
    torch.testing.assert_close(eps, (x_t - single) / SCHED.sigma(250).item())


def test_oracle_completion_through_the_completer_beats_the_scan(scene):
    """The ceiling is real: the formulation can complete this scene better than its scan, with
    the VE sampler; the reference's VP reading of the same ideal denoiser does worse."""
    scan, gt = scene
    scores = {}
    for sampler in ("ve-sde-dpmsolver++", "sde-dpmsolver++"):
        cfg = Config(completion=CompletionConfig(num_points=300, replication=10, max_range=12.0, refine=False,
                                                 sampler=sampler))
        result = Completer(None, None, None, cfg).complete(scan, steps=8, seed=0,
                                                           denoise=OracleDenoiser(gt, SCHED))
        assert result.counts["diffused"] == 3000 and len(result.points) > 2500
        scores[sampler] = completion_metrics(result.points, gt)
    scan_score = completion_metrics(scan, gt)
    ve = scores["ve-sde-dpmsolver++"]
    assert ve["cd"] < 0.85 * scan_score["cd"]
    assert ve["coverage"] < scan_score["coverage"]
    assert ve["cd"] < scores["sde-dpmsolver++"]["cd"]
    assert chamfer_distance(scan, gt) == pytest.approx(scan_score["cd"])


def test_completer_without_networks_needs_a_denoise(scene):
    scan, _ = scene
    completer = Completer(None, None, None, Config(completion=CompletionConfig(num_points=300, max_range=12.0,
                                                                               refine=False)))
    with pytest.raises(ValueError, match="denoise"):
        completer.complete(scan, steps=1)


def test_completion_metrics_known_answer():
    gt = np.array([[0.0, 0, 0], [1, 0, 0]])
    pred = np.array([[0.0, 0, 0.05], [0, 0, 0.3]])
    m = completion_metrics(pred, gt, taus=(0.1,), voxels=(0.5,))
    assert m["accuracy"] == pytest.approx((0.05 + 0.3) / 2)
    assert m["coverage"] == pytest.approx((0.05 + np.hypot(1.0, 0.05)) / 2)
    assert m["cd"] == pytest.approx((m["accuracy"] + m["coverage"]) / 2)
    assert m["precision@0.1"] == 0.5 and m["recall@0.1"] == 0.5 and m["f@0.1"] == 0.5
