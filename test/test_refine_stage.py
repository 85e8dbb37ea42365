"""The refine stage (training/refine.py): LiDiff's refinement net learns to turn jittered ground truth
into a denser cloud closer to the ground truth; its weights hold the refiner only and, merged with a
teacher's, give a Completer that refines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, scalars, write_train_config

# 2 synthetic scenes, batch 1, 10 epochs: 20 steps on a fixed set (no augmentation). The refiner
# input is num_points x replication = 2,000 jittered points of the 2,000-point ground truth.
TINY = {
    "stage": "refine",
    "model": {"width": 0.125},
    "completion": {"denoiser": "teacher", "num_points": 200, "replication": 10},
    "data": {"synthetic": 2, "synthetic_val": 1, "num_points": 200, "gt_points": 2000, "num_workers": 0,
             "augment": False},
    "train": {"batch_size": 1, "lr": 1.0e-3, "epochs": 10, "lr_decay_every": 0, "checkpoint_every": 10,
              "log_every": 1, "val_every": 20, "val_scans": 1, "device": "cpu"},
}


def write_config(path: Path, **sections) -> Path:
    return write_train_config(path, TINY, **sections)


def train(config: Path, out: Path, *extra):
    cmd = [sys.executable, str(REPO / "training" / "train.py"), "refine", "--config", str(config),
           "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refine")
    proc = train(write_config(tmp / "tiny.yaml"), tmp / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def weights_file(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}" / "weights.safetensors"


def test_checkpoints_hold_the_refiner_only(trained):
    from ddpo_ros.checkpoint import load_checkpoint
    assert (trained / "checkpoints" / "latest").read_text() == "step_0000020"
    first, last = load_checkpoint(weights_file(trained, 10)), load_checkpoint(weights_file(trained, 20))
    assert first.roles == last.roles == ("refiner",) and last.step == 20
    assert last.config.completion.refine and last.config.model.width == 0.125
    assert any(not torch.equal(first.state["refiner"][k], last.state["refiner"][k]) for k in first.state["refiner"])
    assert [p.name for p in (trained / "val").glob("*.png")] == ["step_0000020.png"]


def test_loss_goes_down_and_validation_improves_on_the_input(trained):
    pytest.importorskip("tensorboard")
    s = scalars(trained)
    loss = s["loss/refine"]
    assert len(loss) == 20 and all(np.isfinite(loss))
    first, last = np.mean(loss[:3]), np.mean(loss[-3:])
    assert last < 0.85 * first, loss
    # held-out synthetic scene: the refined x6 cloud is closer to the ground truth than its input
    assert s["val/cd_refined"][-1] < s["val/cd_input"][-1], s


def test_refined_output_is_closer_to_ground_truth_than_the_jittered_input(trained):
    from ddpo_ros.checkpoint import build_models, load_checkpoint
    from ddpo_ros.datasets.ground_truth import chamfer_distance
    from training.data.synthetic import SyntheticPairs
    from training.refine import refiner_input, refined

    refiner = build_models(load_checkpoint(weights_file(trained, 20)))["refiner"]
    gt = SyntheticPairs(2, num_points=200, gt_points=2000)[0]["gt"][None]  # a training pair
    x = refiner_input(gt, 2000, 0.2, 0.3, torch.Generator().manual_seed(123))
    near = torch.cdist(x[0].double(), gt[0].double()).min(1).values  # every input point: a gt point + jitter
    assert x.shape == (1, 2000, 3) and float(near.max()) <= 0.3 * 3 ** 0.5 + 1e-5 and float(near.mean()) > 0.1
    with torch.no_grad():
        y = refined(refiner, x)
    assert y.shape == (1, 12000, 3)
    cd_in, cd_out = chamfer_distance(x[0].numpy(), gt[0].numpy()), chamfer_distance(y[0].numpy(), gt[0].numpy())
    assert cd_out < 0.95 * cd_in, (cd_in, cd_out)


def test_refiner_merges_with_teacher_weights_into_a_refining_completer(trained, tmp_path):
    from ddpo_ros.checkpoint import merge_checkpoints, save_checkpoint
    from ddpo_ros.models import build_denoiser, build_encoder
    from ddpo_ros.pipeline import Completer
    from ddpo_ros.config import from_dict
    from training.config import TrainConfig
    from training.data.synthetic import make_sample
    from training.loop import inference_config

    # a teacher stage's weights file: encoder + teacher, refine off (it has no refiner)
    cfg = from_dict(TrainConfig, {**TINY, "stage": "teacher"})
    teacher = save_checkpoint(tmp_path / "teacher.safetensors",
                              {"encoder": build_encoder(cfg.model), "teacher": build_denoiser(cfg.model)},
                              inference_config(cfg, refiner=False), step=5)
    merged = merge_checkpoints([teacher, weights_file(trained, 20)], tmp_path / "merged.safetensors")
    completer = Completer.from_checkpoint(merged)
    assert completer.kind == "teacher" and completer.refiner is not None
    result = completer.complete(make_sample(7)["scan"], steps=1, seed=0)
    assert result.counts["coarse"] > 0 and result.counts["output"] == 6 * result.counts["coarse"]


def test_bad_refine_config_is_rejected_with_its_name(tmp_path):
    proc = train(write_config(tmp_path / "bad.yaml", refine={"jitter": 0.1}), tmp_path / "x")
    assert proc.returncode == 2 and "unknown key(s) ['jitter']" in proc.stderr and "bad.yaml" in proc.stderr
    proc = train(write_config(tmp_path / "neg.yaml", refine={"jitter_sigma": -0.2}), tmp_path / "x")
    assert proc.returncode == 2 and "refine.jitter_sigma" in proc.stderr
    assert not (tmp_path / "x").exists()


def tiny_teacher(path: Path, width: float = 0.125) -> Path:
    """A teacher stage's weights file for TINY's model: encoder + teacher, random (the refiner's input
    only has to be that teacher's completion, not a good one)."""
    from ddpo_ros.checkpoint import save_checkpoint
    from ddpo_ros.config import from_dict
    from ddpo_ros.models import build_denoiser, build_encoder
    from training.config import TrainConfig
    from training.loop import inference_config

    cfg = from_dict(TrainConfig, {**TINY, "stage": "teacher", "model": {"width": width}})
    torch.manual_seed(0)
    return save_checkpoint(path, {"encoder": build_encoder(cfg.model), "teacher": build_denoiser(cfg.model)},
                           inference_config(cfg, refiner=False), step=1)


def test_completion_input_is_the_teachers_completion_resampled(tmp_path):
    from ddpo_ros.pipeline import Completer
    from training.data.synthetic import SyntheticPairs
    from training.refine import completion_input

    completer = Completer.from_checkpoint(tiny_teacher(tmp_path / "teacher.safetensors"))
    partial = torch.stack([SyntheticPairs(2, num_points=200, gt_points=2000)[i]["partial"] for i in range(2)])
    x = completion_input(completer, partial, 2500, torch.Generator().manual_seed(3))
    assert x.shape == (2, 2500, 3)
    g = torch.Generator().manual_seed(3)
    for b in range(2):
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=g))
        points = torch.from_numpy(completer.complete(partial[b].numpy(), refine=False, seed=seed).points)
        for _ in range(-(-2500 // len(points))):  # the shuffles it drew
            torch.randperm(len(points), generator=g)
        assert len(points) < 2500  # 200 x 10 diffused, cropped: tiled to fill
        rows = {tuple(p) for p in points.tolist()}
        assert {tuple(p) for p in x[b].tolist()} == rows  # every completion point, nothing else


def test_refiner_trains_on_a_teachers_completions(trained, tmp_path):
    pytest.importorskip("tensorboard")
    teacher = tiny_teacher(tmp_path / "teacher.safetensors")
    config = write_config(tmp_path / "t.yaml", refine={"teacher": str(teacher)},
                          train={"epochs": 2, "val_every": 4, "checkpoint_every": 4})
    proc = train(config, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = scalars(tmp_path / "run")
    assert len(s["loss/refine"]) == 4 and all(np.isfinite(s["loss/refine"]))
    # the untrained teacher's completion is far further from the ground truth than 0.2 m jitter
    assert s["val/cd_input"][-1] > 2 * scalars(trained)["val/cd_input"][-1]


def test_refine_teacher_of_another_width_is_rejected_with_its_name(tmp_path):
    teacher = tiny_teacher(tmp_path / "wide.safetensors", width=0.25)
    proc = train(write_config(tmp_path / "t.yaml", refine={"teacher": str(teacher)}), tmp_path / "x")
    assert proc.returncode != 0 and "refine.teacher" in proc.stderr and "wide.safetensors" in proc.stderr


def test_refine_init_fine_tunes_the_given_refiner_and_refuses_another_architecture(trained, tmp_path):
    from ddpo_ros.checkpoint import load_checkpoint
    init = weights_file(trained, 20)
    config = write_config(tmp_path / "t.yaml", refine={"init": str(init)},
                          train={"epochs": 1, "lr": 1.0e-12, "seed": 3, "checkpoint_every": 1, "val_every": 100})
    proc = train(config, tmp_path / "run", "--set", "train.max_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = load_checkpoint(init).state["refiner"]
    after = load_checkpoint(weights_file(tmp_path / "run", 1)).state["refiner"]
    learned = [k for k in before if k.endswith(("kernel", "weight")) and before[k].dim() > 1]
    # lr 1e-12: the trained refiner's weights, not a fresh network's
    assert learned and all(torch.allclose(before[k], after[k], atol=1e-9) for k in learned)

    wide = write_config(tmp_path / "wide.yaml", model={"width": 0.25}, refine={"init": str(init)})
    proc = train(wide, tmp_path / "x")
    assert proc.returncode == 2 and "refine.init" in proc.stderr and str(init) in proc.stderr
