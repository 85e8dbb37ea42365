"""The whole train -> sample chain on one small scene: a tiny teacher, trained for about a minute by
the real teacher stage and loop, must complete the scene it learnt better than its scan.

Meant as the guard against a broken noising, target, loss, sampler or post-processing: each of
them, broken, would leave a completion worse than the scan. The oracle (training/oracle.py) on the
same scene says what the formulation allows; the trained teacher's noise error per t is compared with the oracle's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ddpo_ros.config import CompletionConfig, ModelConfig
from ddpo_ros.diffusion import schedule_from_config
from ddpo_ros.ground_truth import chamfer_distance, partial_scan
from ddpo_ros.pipeline import Completer
from training.config import DataConfig, LoopConfig, TeacherConfig, TrainConfig
from training.data.kitti import training_pair
from training.data.lidar import Lidar
from training.data.synthetic import make_sample
from training.loop import inference_config, setup, train
from training.oracle import OracleDenoiser, noise_mse
from training import teacher

# Open item of the issue that added this file: on 2 CPU cores no tiny teacher tried so far beats its
# scan within a CI-sized budget (README, "A completion model": 0.22-0.35 m against 0.171 after 1-5
# minutes). Remove this mark to run it by hand while working on it; it stays out of CI until it
# passes in under 2 minutes.
pytestmark = pytest.mark.skip(reason="open: the overfit teacher does not yet beat its scan in a CI budget")

RADIUS = 12.0  # metres: the scene is the sample's disc around the sensor
# A 16-beam sensor: the scan within 12 m is ~4,000 points, as many as the completion's 3,000, so
# the Chamfer distance compares shapes, not point counts (a 64-beam scan is ~25,000 points there).
SENSOR = Lidar(beams=16, azimuth_steps=512)
POINTS, REPLICATION = 300, 10
STEPS = 8


def small_scene(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(scan 3.5-12 m, its ground truth within 12 m) of one synthetic street."""
    sample = make_sample(seed, lidar=SENSOR)
    gt = sample["ground_truth"]
    return partial_scan(sample["scan"], max_range=RADIUS), gt[np.linalg.norm(gt, axis=1) < RADIUS]


class OneScene(Dataset):
    """The same scene as every item (no augmentation): training pairs as the loader makes them."""

    def __init__(self, scan, gt, length: int = 10_000):
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
                                  sampler=sampler, denoiser="teacher")
    return TrainConfig(
        stage="teacher", model=ModelConfig(width=0.125), completion=completion,
        data=DataConfig(synthetic=1, num_points=POINTS, gt_points=POINTS * REPLICATION, augment=False, num_workers=0),
        train=LoopConfig(batch_size=1, lr=3e-3, lr_decay_every=0, epochs=1, max_steps=steps,
                         checkpoint_every=10 ** 6, log_every=10 ** 6),
        teacher=TeacherConfig(uncond_prob=0.0, reg_weight=0.0, noise_levels=4))


def train_tiny_teacher(tmp_path, scan, gt, steps: int):
    cfg = config(steps)
    run = setup(cfg, tmp_path)
    stage = teacher.build(cfg, run, OneScene(scan, gt), None)
    train(cfg, stage, run)
    return cfg, stage.models["encoder"].eval(), stage.models["teacher"].eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    scan, gt = small_scene()
    cfg, encoder, denoiser = train_tiny_teacher(tmp_path_factory.mktemp("overfit"), scan, gt, steps=80)
    return scan, gt, cfg, encoder, denoiser


def test_overfit_teacher_completes_its_scene_better_than_the_scan(trained):
    scan, gt, cfg, encoder, denoiser = trained
    completer = Completer(encoder, denoiser, None, inference_config(cfg, refiner=False), kind="teacher")
    cds = [chamfer_distance(completer.complete(scan, steps=STEPS, guidance_scale=1.0, seed=s).points, gt)
           for s in range(3)]
    scan_cd = chamfer_distance(scan, gt)
    oracle = Completer(None, None, None, inference_config(cfg, refiner=False)).complete(
        scan, steps=STEPS, seed=0, denoise=OracleDenoiser(gt, schedule_from_config(cfg.diffusion)))
    oracle_cd = chamfer_distance(oracle.points, gt)
    print(f"CD scan {scan_cd:.3f}, oracle {oracle_cd:.3f}, trained {np.round(cds, 3)}")
    assert oracle_cd < scan_cd  # the formulation allows it on this scene
    assert max(cds) < scan_cd, f"the overfit teacher's completion (CD {cds}) is worse than its scan ({scan_cd:.3f})"


def test_overfit_teacher_noise_error_per_t_approaches_the_oracle(trained):
    scan, gt, cfg, encoder, denoiser = trained
    schedule = schedule_from_config(cfg.diffusion)
    item = OneScene(scan, gt).item
    gt_t = item["gt"]
    with torch.no_grad():
        cond = encoder(item["partial"][None])
        oracle = OracleDenoiser(gt, schedule)
        for t in (999, 500, 100, 20):
            model = noise_mse(lambda x, s: denoiser(x, cond, torch.tensor([s])), gt_t, t, schedule,
                              torch.Generator().manual_seed(t))
            ideal = noise_mse(oracle, gt_t, t, schedule, torch.Generator().manual_seed(t))
            print(f"t={t}: noise MSE trained {model:.3f}, oracle {ideal:.3f}")
            assert ideal <= model + 0.05  # nothing beats the oracle (up to sampling noise)
            assert model < 1.0  # better than predicting no noise at all
