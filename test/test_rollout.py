"""Trajectory states for the teacher's on-trajectory targets (training/rollout.py): they must be the
very states the Completer hands its denoiser, or the teacher learns about states it never meets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpo_ros.config import CompletionConfig, Config, ConfigError
from ddpo_ros.datasets.ground_truth import partial_scan
from ddpo_ros.diffusion import schedule_from_config
from ddpo_ros.pipeline import Completer
from training.config import DataConfig, TeacherConfig, TrainConfig
from training.data.lidar import Lidar
from training.data.synthetic import make_sample
from training.oracle import OracleDenoiser
from training.rollout import TARGET_ORACLE, oracle_targets, trajectory_states

POINTS, REPLICATION, STEPS = 300, 4, 8


def eps_fn(x, t):
    """A stand-in network that depends on the state and on t, so every step moves the state."""
    return torch.tanh(x) * (0.3 + t / 2000.0)


@pytest.fixture(scope="module")
def scan():
    return partial_scan(make_sample(3, lidar=Lidar(beams=16, azimuth_steps=512))["scan"], max_range=12.0)


@pytest.mark.parametrize("sampler, start", [("ve-sde-dpmsolver++", None), ("sde-dpmsolver++", None),
                                            ("ve-dpmsolver++", None), ("ddpm", None), ("ve-sde-dpmsolver++", 125)])
def test_trajectory_states_are_the_states_the_completer_hands_its_denoiser(scan, sampler, start):
    completion = CompletionConfig(num_points=POINTS, replication=REPLICATION, max_range=12.0, refine=False,
                                  sampler=sampler, denoiser="teacher", start_t=start)
    completer = Completer(None, None, None, Config(completion=completion))
    seen = []

    def record(x, t):
        seen.append((x.clone(), t))
        return eps_fn(x, t)
    completer.complete(scan, steps=STEPS, seed=7, denoise=record)
    partial, _ = completer.preprocess(scan)
    x_init = torch.from_numpy(partial)[None].repeat(1, REPLICATION, 1)
    calls, made = [5, 0, 3], []

    def counted(x, t):
        made.append(t)
        return eps_fn(x, t)
    states = trajectory_states(counted, x_init, STEPS, completer.schedule, sampler, calls,
                               generator=torch.Generator().manual_seed(7), start=start)
    assert seen[0][1] == (999 if start is None else start)
    assert len(made) == 5  # the network runs up to the last wanted call, not through it
    for k, (x, t) in zip(calls, states):
        assert t == seen[k][1]
        torch.testing.assert_close(x, seen[k][0], rtol=0, atol=0)


def test_trajectory_states_reject_calls_beyond_the_steps():
    with pytest.raises(ValueError, match="0..7"):
        trajectory_states(eps_fn, torch.zeros(1, 10, 3), 8, schedule_from_config(Config().diffusion),
                          "ve-sde-dpmsolver++", [8])


def test_oracle_targets_are_the_ideal_denoisers_noise():
    schedule = schedule_from_config(Config().diffusion)
    gt = torch.from_numpy(np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32))
    states = [(gt[None] + 0.3, 250), (gt[None] * 2.0, 999)]
    exact = OracleDenoiser(gt.numpy(), schedule, cell_fraction=0.0, cutoff=8.0)
    for (x, t), eps in zip(states, oracle_targets(gt, states, schedule)):
        torch.testing.assert_close(eps, OracleDenoiser(gt.numpy(), schedule, **TARGET_ORACLE)(x, t))
        assert float((eps - exact(x, t)).pow(2).mean()) < 1e-3  # the coarse target is close to exact


def test_rollout_config_is_checked():
    with pytest.raises(ConfigError, match="teacher.rollout_levels"):
        TeacherConfig(noise_levels=2, rollout_levels=3)
    with pytest.raises(ConfigError, match="teacher.rollout_steps"):
        TeacherConfig(rollout_steps=0)
    completion = CompletionConfig(num_points=100, replication=10)
    with pytest.raises(ConfigError, match="data.gt_points"):
        TrainConfig(completion=completion, data=DataConfig(synthetic=1, num_points=100, gt_points=999),
                    teacher=TeacherConfig(noise_levels=2, rollout_levels=1))
    TrainConfig(completion=completion, data=DataConfig(synthetic=1, num_points=100, gt_points=1000),
                teacher=TeacherConfig(noise_levels=2, rollout_levels=1))
