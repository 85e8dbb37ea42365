"""The whole train -> sample chain on one small scene: a tiny teacher, trained for about a minute by
the real teacher stage and loop, must learn to complete the scene it is trained on.

The guard against a broken noising, target, loss, sampler or post-processing: with any of them
broken the trained teacher's completion stays as far from the ground truth as an untrained one's,
or its noise error stays at that of predicting no noise. Two yardsticks on the same scene bound it:
the untrained network (the same weights before training) and the ideal denoiser
(training/oracle.py), the best any teacher trained with this loss can do.

It must also complete the scene better than the scan itself, in CD, as the issue asks of a
teacher trained for about a minute. Two settings of the product make that reachable in 150 steps
on 2 cores (docs/mini-scale.md, "The guard of the train -> sample chain"): the sampler starts at
completion.start_t = 125, as the bundled weights do, and teacher.rollout_levels = 2 trains half of
each batch on the sampler's own states with the ideal denoiser's eps* as target (training/rollout.py).
Measured on this scene after 150 steps: CD 0.146-0.152 against the scan's 0.162; without the
rollout rows 0.174-0.179, from t = 999 without them 0.184-0.188.
`DDPO_OVERFIT_STEPS=N` trains for N steps instead.
"""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ddpo_ros.config import CompletionConfig, ModelConfig
from ddpo_ros.diffusion import schedule_from_config
from ddpo_ros.datasets.ground_truth import partial_scan
from ddpo_ros.pipeline import Completer
from training.config import DataConfig, LoopConfig, TeacherConfig, TrainConfig
from training.data.kitti import training_pair
from training.data.lidar import Lidar
from training.data.synthetic import make_sample
from training.loop import inference_config, setup, train
from training.metrics import completion_metrics
from training.oracle import OracleDenoiser, noise_mse
from training import teacher

RADIUS = 8.0  # metres: the scene is the sample's disc around the sensor
# A 16-beam sensor: the scan within 8 m is ~3,200 points, near the completion's 3,000, so the
# Chamfer distance compares shapes, not point counts (a 64-beam scan is ~4x as many there).
SENSOR = Lidar(beams=16, azimuth_steps=512)
POINTS, REPLICATION = 300, 10
STEPS = 8  # sampler steps of the completions compared
START_T = 125  # completion.start_t of the bundled weights
ROLLOUT_LEVELS = 2  # of the 4 noise levels per step, states of the sampler's own trajectory
# 20 cm voxels: 3,000 points in an 8 m disc are ~0.25 m apart, so at LiDiff's 5 cm every point is
# its own voxel until stride 4-8 and the convolutions see no neighbours; at 20 cm they do from the
# first layer. Measured on its 12 m version after 80 steps: CD 0.25 (20 cm) against 0.32 (5 cm).
MODEL = ModelConfig(width=0.125, voxel_size=0.2)
TRAIN_STEPS = int(os.environ.get("DDPO_OVERFIT_STEPS", "150"))
# Adam, constant (a 150-point version of the scene, 200 steps: CD 0.175, halved each quarter 0.183)
LR = 6e-3


def small_scene(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(scan 3.5-8 m, its ground truth within 8 m) of one synthetic street."""
    sample = make_sample(seed, lidar=SENSOR)
    gt = sample["ground_truth"]
    return partial_scan(sample["scan"], max_range=RADIUS), gt[np.linalg.norm(gt, axis=1) < RADIUS]


class OneScene(Dataset):
    """The same scene as every item (no augmentation): training pairs as the loader makes them."""

    def __init__(self, scan, gt, length: int = TRAIN_STEPS):
        self.item = training_pair(scan, gt, np.random.default_rng(0), POINTS, POINTS * REPLICATION, False, "overfit")
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.item

    def set_epoch(self, epoch: int) -> None:
        pass


def config(steps: int, sampler: str = "ve-sde-dpmsolver++") -> TrainConfig:
    completion = CompletionConfig(num_points=POINTS, replication=REPLICATION, max_range=RADIUS, refine=False,
                                  sampler=sampler, denoiser="teacher", start_t=START_T)
    return TrainConfig(
        stage="teacher", model=MODEL, completion=completion,
        data=DataConfig(synthetic=1, num_points=POINTS, gt_points=POINTS * REPLICATION, augment=False, num_workers=0),
        train=LoopConfig(batch_size=1, lr=LR, lr_decay=1.0, epochs=10 ** 6, max_steps=steps,
                         checkpoint_every=10 ** 6, log_every=10 ** 6),
        teacher=TeacherConfig(uncond_prob=0.0, reg_weight=0.0, noise_levels=4, rollout_levels=ROLLOUT_LEVELS))


def scores(points, gt) -> dict[str, float]:
    """CD and coverage (mean distance ground truth -> points), metres."""
    m = completion_metrics(points, gt, taus=(), voxels=())
    return {"cd": round(m["cd"], 4), "coverage": round(m["coverage"], 4)}


def completions(cfg, encoder, denoiser, scan, gt, seeds=range(3), denoise=None) -> list[dict[str, float]]:
    completer = Completer(encoder, denoiser, None, inference_config(cfg, refiner=False), kind="teacher")
    return [scores(completer.complete(scan, steps=STEPS, guidance_scale=1.0, seed=s, denoise=denoise).points, gt)
            for s in seeds]


def noise_mses(schedule, encoder, denoiser, item, eps_fn=None, ts=(999, 500, 250, 125)) -> dict[int, float]:
    """Noise MSE per t on the training scene (the loss at t): the network's, or eps_fn's."""
    with torch.no_grad():
        cond = encoder(item["partial"][None]) if eps_fn is None else None
        fn = eps_fn or (lambda x, s: denoiser(x, cond, torch.tensor([s])))
        return {t: noise_mse(fn, item["gt"], t, schedule, torch.Generator().manual_seed(t)) for t in ts}


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    torch.manual_seed(0)
    scan, gt = small_scene()
    cfg, scene = config(TRAIN_STEPS), OneScene(scan, gt)
    schedule, item = schedule_from_config(cfg.diffusion), scene.item
    run = setup(cfg, tmp_path_factory.mktemp("overfit"))
    stage = teacher.build(cfg, run, scene, None)
    encoder, denoiser = stage.models["encoder"].eval(), stage.models["teacher"].eval()
    before = {"scores": completions(cfg, encoder, denoiser, scan, gt, seeds=[0]),
              "mse": noise_mses(schedule, encoder, denoiser, item)}
    train(cfg, stage, run)  # leaves the networks in train mode
    encoder.eval(), denoiser.eval()
    after = {"scores": completions(cfg, encoder, denoiser, scan, gt),
             "mse": noise_mses(schedule, encoder, denoiser, item)}
    # The ideal denoiser of the scene's surfaces (all of its ground truth, as bench/noise_mse), not
    # only of the 3,000 points drawn for training.
    oracle = OracleDenoiser(gt, schedule)
    ideal = {"scores": completions(cfg, None, None, scan, gt, seeds=[0], denoise=oracle),
             "mse": noise_mses(schedule, None, None, item, eps_fn=oracle)}
    the_scan = scores(scan, gt)
    print(f"\nscan {the_scan}\ncompletions: untrained {before['scores']}\n  trained {after['scores']}\n"
          f"  ideal {ideal['scores']}\nnoise MSE per t: untrained {before['mse']}\n  trained {after['mse']}\n"
          f"  ideal {ideal['mse']}")
    return the_scan, before, after, ideal


def test_overfit_teacher_completes_closer_to_the_ideal_denoiser_than_to_an_untrained_one(overfit):
    the_scan, before, after, ideal = overfit
    assert ideal["scores"][0]["cd"] < the_scan["cd"]  # the formulation allows beating the scan here
    halfway = (before["scores"][0]["cd"] + ideal["scores"][0]["cd"]) / 2
    cds = [s["cd"] for s in after["scores"]]
    assert max(cds) < halfway, (f"the trained teacher's completions (CD {cds}) are not closer to the ground truth "
                                f"than halfway ({halfway:.3f}) from an untrained one's to the ideal denoiser's")


def test_overfit_teacher_completes_its_scene_better_than_the_scan(overfit):
    """The issue's bar: in eval mode, every seed's 8-step completion is closer to the ground truth
    (CD) than the scan that went in."""
    the_scan, _, after, _ = overfit
    cds = [s["cd"] for s in after["scores"]]
    assert max(cds) < the_scan["cd"], f"completions' CD {cds} is not below the scan's {the_scan['cd']}"


def test_overfit_teacher_covers_the_ground_truth_better_than_the_scan(overfit):
    """Completion, not copying: the points the sampler starts from are the scan's, so a sampler or
    post-processing that loses the denoiser's work covers the ground truth no better than the scan."""
    the_scan, _, after, ideal = overfit
    assert ideal["scores"][0]["coverage"] < the_scan["coverage"]
    covs = [s["coverage"] for s in after["scores"]]
    assert max(covs) < the_scan["coverage"], f"coverage {covs} is no better than the scan's {the_scan['coverage']}"


def test_overfit_teacher_noise_error_per_t_between_untrained_and_ideal(overfit):
    _, before, after, ideal = overfit
    for t, model in after["mse"].items():
        assert ideal["mse"][t] <= model + 0.02, f"t={t}: beats the ideal denoiser ({model} < {ideal['mse'][t]})"
        assert model < (before["mse"][t] + ideal["mse"][t]) / 2, (
            f"t={t}: noise MSE {model:.3f} is not below halfway from untrained {before['mse'][t]:.3f} to ideal "
            f"{ideal['mse'][t]:.3f}")


def test_teacher_step_noises_at_the_drawn_t_and_regresses_that_noise(tmp_path):
    """What the overfit test could not resolve (its 12 m version, 120 steps from t = 999): its
    teacher completed about as well with the noise at half its t, with sqrt(abar) and
    sqrt(1 - abar) swapped or with half the noise (CD 0.26-0.30 against 0.27-0.28; the cloud
    itself shows its noise level). So the stage's noising and target are checked here directly:
    x_t - x_0 is sigma_t of the t the network is told times unit noise, and the loss is the MSE of
    the network's output against that noise."""
    scan, gt = small_scene()
    cfg, scene = config(1), OneScene(scan, gt)
    cfg = replace(cfg, teacher=replace(cfg.teacher, rollout_levels=0))  # every row noised ground truth
    stage = teacher.build(cfg, setup(cfg, tmp_path), scene, None)
    net, seen = stage.models["teacher"], {}
    forward = net.forward

    def spy(x_t, cond, t):
        seen.update(x_t=x_t.detach().clone(), t=t.clone(), eps=forward(x_t, cond, t))
        return seen["eps"]
    net.forward = spy
    batch = {k: v[None] if torch.is_tensor(v) else [v] for k, v in scene.item.items()}
    logs = stage.step(batch)
    x0 = batch["gt"].repeat_interleave(cfg.teacher.noise_levels, 0)
    sigma = schedule_from_config(cfg.diffusion).sigma(seen["t"]).reshape(-1, 1, 1)
    noise = (seen["x_t"] - x0) / sigma
    assert len(set(seen["t"].tolist())) == cfg.teacher.noise_levels
    for n in noise:  # unit normal noise for every noise level: its std is 1 +- 3%
        assert abs(float(n.std()) - 1.0) < 0.03 and abs(float(n.mean())) < 0.03
    assert logs["loss/teacher"] == pytest.approx(float((seen["eps"].detach() - noise).pow(2).mean()), rel=1e-4)


def test_teacher_step_regresses_trajectory_rows_on_the_ideal_denoiser(tmp_path):
    """teacher.rollout_levels: the last copies of each scene are states of the sampler's trajectory
    (at one of its timesteps, not the ground truth plus noise) and their target is the ideal
    denoiser's eps* there; the other copies keep the drawn noise."""
    from ddpo_ros.diffusion import inference_timesteps
    from training.rollout import TARGET_ORACLE

    scan, gt = small_scene()
    cfg, scene = config(1), OneScene(scan, gt)
    cfg = replace(cfg, teacher=replace(cfg.teacher, rollout_levels=2))
    stage = teacher.build(cfg, setup(cfg, tmp_path), scene, None)
    net, seen = stage.models["teacher"], {}
    forward = net.forward

    def spy(x_t, cond, t):  # the last call is the training forward pass (rollouts run before it)
        seen.update(x_t=x_t.detach().clone(), t=t.clone(), eps=forward(x_t, cond, t))
        return seen["eps"]
    net.forward = spy
    batch = {k: v[None] if torch.is_tensor(v) else [v] for k, v in scene.item.items()}
    logs = stage.step(batch)
    schedule = schedule_from_config(cfg.diffusion)
    oracle = OracleDenoiser(scene.item["gt"].numpy(), schedule, **TARGET_ORACLE)
    eps, x_t, steps = seen["eps"].detach(), seen["x_t"], seen["t"].tolist()
    calls = inference_timesteps(schedule, cfg.teacher.rollout_steps, cfg.completion.start_t)
    assert set(steps[2:]) <= set(calls.tolist())
    target = [(x_t[r] - scene.item["gt"]) / schedule.sigma(steps[r]) for r in (0, 1)]
    target += [oracle(x_t[r:r + 1], steps[r])[0] for r in (2, 3)]
    errors = [float((eps[r] - target[r]).pow(2).mean()) for r in range(4)]
    for r in (0, 1):  # noised ground truth: unit noise
        assert abs(float(target[r].std()) - 1.0) < 0.05
    assert logs["loss/trajectory"] == pytest.approx(np.mean(errors[2:]), rel=1e-4)
    assert logs["loss/noise"] == pytest.approx(np.mean(errors[:2]), rel=1e-4)
    assert logs["loss/teacher"] == pytest.approx(np.mean(errors), rel=1e-4)
