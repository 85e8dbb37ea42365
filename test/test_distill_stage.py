"""Distillation-DPO and score distillation as stages: the student learns, frozen networks stay frozen."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, kitti_scan, scalars
from ddpo_ros.checkpoint import save_checkpoint
from ddpo_ros.config import CompletionConfig, Config, ModelConfig
from ddpo_ros.models import build_denoiser, build_encoder

MODEL = {"width": 0.125}


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory) -> Path:
    """A tiny teacher (random weights stand in for a trained one: the mechanics are what is tested)."""
    cfg = Config(model=ModelConfig(**MODEL), completion=CompletionConfig(num_points=200, replication=2))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    return save_checkpoint(path, {"encoder": build_encoder(cfg.model), "teacher": build_denoiser(cfg.model)}, cfg)


def config(tmp_path: Path, stage: str, teacher: Path, **sections) -> Path:
    cfg = {"stage": stage, "model": dict(MODEL),
           "completion": {"denoiser": "student", "num_points": 200, "replication": 2},
           "data": {"synthetic": 4, "synthetic_val": 1, "num_points": 200, "gt_points": 2000, "num_workers": 0},
           "train": {"batch_size": 1, "optimizer": "sgd", "lr": 1.0e-4, "grad_clip": 0.05, "epochs": 1,
                     "lr_decay": 1.0, "checkpoint_every": 4, "log_every": 1, "val_scans": 1, "val_steps": 2,
                     "device": "cpu"},
           "distill": {"teacher": str(teacher), "ta_lr": 1.0e-4}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_stage(stage: str, cfg: Path, out: Path, launcher=None):
    cmd = [*(launcher or [sys.executable]), str(REPO / "training" / "train.py"), stage, "--config", str(cfg),
           "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"} if launcher else None)


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory, teacher_weights) -> tuple[Path, Path]:
    """(config, out folder) of one 4-step distill run, shared by the tests that read it."""
    tmp = tmp_path_factory.mktemp("distill")
    cfg = config(tmp, "distill", teacher_weights)
    proc = run_stage("distill", cfg, tmp / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, tmp / "run"


def test_distillation_dpo_student_learns_and_frozen_networks_do_not(distill_run, teacher_weights):
    run = distill_run[1]
    w = load_file(str(run / "checkpoints" / "step_0000004" / "weights.safetensors"))
    t0 = load_file(str(teacher_weights))
    roles = {k.split(".", 1)[0] for k in w}
    assert roles == {"encoder", "teacher", "student", "ta_win", "ta_lose"}

    def role(state, name):
        return {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")}
    teacher0 = role(t0, "teacher")
    moved = {r: sum(not torch.equal(role(w, r)[k], teacher0[k]) for k in teacher0 if "running" not in k
                    and "num_batches" not in k) for r in ("student", "ta_win", "ta_lose", "teacher")}
    assert moved["teacher"] == 0 and all(role(w, "encoder")[k].equal(v) for k, v in role(t0, "encoder").items())
    assert moved["student"] > 0 and moved["ta_win"] > 0 and moved["ta_lose"] > 0  # Eq. 18 moves the student
    assert (run / "val" / "step_0000004.png").exists()
    from ddpo_ros.pipeline import Completer
    completer = Completer.from_checkpoint(run / "checkpoints" / "step_0000004" / "weights.safetensors")
    assert completer.kind == "student" and completer.default_steps == 8
    assert len(completer.complete(kitti_scan(0), steps=2, seed=0).points) > 0


def test_score_distillation_baseline_runs(tmp_path, teacher_weights):  # with DMD's weighting of g
    cfg = config(tmp_path, "score-distill", teacher_weights, distill={"g_weighting": "dmd"})
    proc = run_stage("score-distill", cfg, tmp_path / "sd")
    assert proc.returncode == 0, proc.stderr[-3000:]
    w = load_file(str(tmp_path / "sd" / "checkpoints" / "step_0000004" / "weights.safetensors"))
    assert {k.split(".", 1)[0] for k in w} == {"encoder", "teacher", "student", "ta"}
    assert any(not torch.equal(w["student." + k.split(".", 1)[1]], v) for k, v in w.items()
               if k.startswith("teacher.") and "running" not in k)  # the student moved
    cds = scalars(tmp_path / "sd")["sample/cd"]  # the one-step sample's CD, logged every step
    assert len(cds) == 4 and all(0 < cd < 50 for cd in cds)


def test_teacher_of_another_architecture_is_refused(tmp_path, teacher_weights):
    cfg = config(tmp_path, "distill", teacher_weights, model={"width": 0.25})
    proc = run_stage("distill", cfg, tmp_path / "x")
    assert proc.returncode == 2 and "teacher.safetensors" in proc.stderr and "width=0.125" in proc.stderr
    empty = config(tmp_path, "distill", "")
    proc = run_stage("distill", empty, tmp_path / "y")
    assert proc.returncode == 2 and "distill.teacher is empty" in proc.stderr


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_distill_under_torchrun(tmp_path, teacher_weights):
    cfg = config(tmp_path, "distill", teacher_weights, data={"synthetic_val": 0})
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    proc = run_stage("distill", cfg, tmp_path / "ddp", launcher=torchrun)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoints" / "latest").read_text() == "step_0000002"


def test_diffusion_dpo_fine_tunes_the_teacher(tmp_path, teacher_weights):
    cfg = config(tmp_path, "diffusion-dpo", teacher_weights, completion={"denoiser": "teacher"},
                 dpo={"beta": 5000.0})
    proc = run_stage("diffusion-dpo", cfg, tmp_path / "dpo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    w = load_file(str(tmp_path / "dpo" / "weights.safetensors"))
    t0 = load_file(str(teacher_weights))
    assert {k.split(".", 1)[0] for k in w} == {"encoder", "teacher"}
    changed = [k for k in t0 if k.startswith("teacher.") and "running" not in k and "num_batches" not in k
               and not torch.equal(w[k], t0[k])]
    assert changed  # the fine-tuned teacher moved; the encoder did not
    assert all(torch.equal(w[k], t0[k]) for k in t0 if k.startswith("encoder."))


def test_diffusion_dpo_starts_at_margin_zero_and_loss_log_2(tmp_path, teacher_weights):
    """Policy and reference are the same network in the same BatchNorm mode at the first step, so the
    implicit reward margin is 0 and -log sigmoid(0) = log 2 (a train-mode policy breaks this)."""
    from torch.utils.data import default_collate

    from training import diffusion_dpo
    from training.config import load_train_config
    from training.data.sets import build_sets
    from training.loop import setup
    cfg = load_train_config(config(tmp_path, "diffusion-dpo", teacher_weights, completion={"denoiser": "teacher"},
                                   dpo={"beta": 5000.0}), {})
    train_set, _ = build_sets(cfg)
    stage = diffusion_dpo.build(cfg, train_set=train_set, val_set=None, run=setup(cfg, tmp_path / "run"))
    logs = stage.step(default_collate([train_set[0]]))
    assert logs["dpo/implicit_margin"] == 0.0
    assert logs["loss/dpo"] == pytest.approx(math.log(2.0), abs=1e-7)


@pytest.mark.parametrize("freeze_bn", [True, False])
@pytest.mark.parametrize("g_weighting", ["eps", "dmd"])
def test_distill_g_is_what_the_tas_learned_with_frozen_batchnorm(tmp_path, teacher_weights, freeze_bn, g_weighting):
    """TAs that have learned nothing (ta_lr 1e-30 leaves every float32 weight as it was) predict the
    teacher's eps exactly when BatchNorm is frozen to the teacher's statistics, so |g| = 0; in train
    mode batch statistics alone make |g| > 0. The drift logs keep parameters apart from buffers."""
    from torch.utils.data import default_collate

    from training import distill
    from training.config import load_train_config
    from training.data.sets import build_sets
    from training.loop import setup
    cfg = load_train_config(config(tmp_path, "distill", teacher_weights, distill={"ta_lr": 1e-30,
                                                                                  "freeze_bn": freeze_bn,
                                                                                  "g_weighting": g_weighting}), {})
    train_set, _ = build_sets(cfg)
    stage = distill.build(cfg, train_set=train_set, val_set=None, run=setup(cfg, tmp_path / "run"))
    logs = stage.step(default_collate([train_set[0]]))
    if freeze_bn:
        assert logs["g/winner_norm"] == 0.0 and logs["g/loser_norm"] == 0.0
        assert logs["drift/student_buffers"] == 0.0 and logs["drift/ta_win_params"] < 1e-20
    else:
        assert logs["g/winner_norm"] > 0.0 and logs["g/loser_norm"] > 0.0
        assert logs["drift/student_buffers"] > 0.0  # train mode updated the running statistics
    # g = 0 gives the student no gradient (frozen) or statistics noise (train mode); never a NaN
    assert math.isfinite(logs["drift/student_params"]) and logs["drift/student_params_relative"] >= 0.0


def test_ddpo_gradient_tool_splits_the_student_gradient_into_winner_and_loser(tmp_path, distill_run):
    """tools/ddpo_gradient.py on a real distill checkpoint: grad_w - grad_l is exactly the gradient of
    the stage's surrogate (Eq. 18) for the same draw, and the report is written."""
    sys.path.insert(0, str(REPO / "tools"))
    import ddpo_gradient
    from torch.utils.data import default_collate

    from ddpo_ros.checkpoint import build_models, load_checkpoint
    from ddpo_ros.diffusion import schedule_from_config
    from training.config import load_train_config
    from training.data.sets import build_sets
    from training.distill import student_pair
    from training.losses import student_surrogate
    from training.student import frozen_condition
    cfg_path, run = distill_run
    weights = run / "weights.safetensors"
    cfg = load_train_config(cfg_path, {"data.augment": False})
    nets = build_models(load_checkpoint(weights), ddpo_gradient.ROLES, device="cpu")
    batch = default_collate([build_sets(cfg)[0][0]])
    parts = ddpo_gradient.scene_gradients(cfg, nets, batch, torch.Generator().manual_seed(5))

    _, _, cond = frozen_condition(nets["encoder"], [nets["teacher"]], batch, "cpu")
    x_init = batch["partial"].repeat(1, cfg.completion.replication, 1)
    G_w, G_l, g_w, g_l, _, _ = student_pair(cfg, schedule_from_config(cfg.diffusion), nets["student"], nets["teacher"],
                                            nets["ta_win"], nets["ta_lose"], cond, x_init, batch["gt"],
                                            torch.Generator().manual_seed(5))
    params = [p for p in nets["student"].parameters() if p.requires_grad]
    whole = torch.cat([g.reshape(-1) for g in torch.autograd.grad(student_surrogate(G_w, G_l, g_w, g_l), params)])
    assert torch.allclose(parts["grad_w"] - parts["grad_l"], whole.double(), rtol=1e-4, atol=1e-9)
    assert float(parts["grad_w"].norm()) > 0
    moved = ddpo_gradient.random_move(nets["teacher"], nets["student"], torch.Generator().manual_seed(0))
    for a, b, c in zip(nets["teacher"].parameters(), nets["student"].parameters(), moved.parameters()):
        assert torch.allclose((c - a).norm(), (b - a).norm(), rtol=1e-3, atol=1e-6)  # same distance per tensor

    out = tmp_path / "report" / "grad"
    assert ddpo_gradient.main(["--weights", str(weights), "--config", str(cfg_path), "--scenes", "2", "--draws", "2",
                               "--control", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert len(record["rows"]) == 2 and -1 <= record["summary"]["cos_w_l"]["mean"] <= 1
    assert "cosine of the DDPO update between two draws" in out.with_suffix(".md").read_text()
    control = record["control"]
    assert set(control) == {"teacher", "student", "random move"} and all(len(v["cd"]) == 2 for v in control.values())
    mse = record["noise_mse"]
    assert set(mse) == {"ground truth", "student samples"} and all(0 < v < 10 for m in mse.values() for v in m.values())


def test_real_ta_learns_the_ground_truth_and_is_saved(tmp_path, teacher_weights):
    """distill.real_ta: a teacher copy (role ta_real) trains with the TAs on the ground truth; the frozen
    teacher stays as it was, and the checkpoint holds the copy."""
    from torch.utils.data import default_collate

    from training import distill
    from training.config import load_train_config
    from training.data.sets import build_sets
    from training.loop import setup
    cfg = load_train_config(config(tmp_path, "distill", teacher_weights, distill={"real_ta": True}), {})
    train_set, _ = build_sets(cfg)
    stage = distill.build(cfg, train_set=train_set, val_set=None, run=setup(cfg, tmp_path / "run"))
    before = {k: v.clone() for k, v in stage.models["teacher"].state_dict().items()}
    logs = stage.step(default_collate([train_set[0]]))
    assert math.isfinite(logs["loss/ta"]) and "ta_real" in stage.models
    real, teacher = stage.models["ta_real"].state_dict(), stage.models["teacher"].state_dict()
    assert all(torch.equal(teacher[k], before[k]) for k in before)
    assert any(not torch.equal(real[k], before[k]) for k in before if "running" not in k)
    assert logs["g/winner_norm"] > 0  # the real side moved, so g is no longer 0 at the first step


def test_gt_weight_pulls_the_students_winner_to_the_ground_truth(tmp_path, teacher_weights):
    """distill.gt_weight: the winner's squared Chamfer distance to the ground truth joins Eq. 18. Two
    runs on the same batches and noises, with and without the term: with it, the student's later
    winners lie closer to the ground truth; at 0 nothing is logged and the paper's loss runs alone."""
    from torch.utils.data import default_collate

    from training import distill
    from training.config import load_train_config
    from training.data.sets import build_sets
    from training.loop import setup

    def winners(weight, steps=5):
        cfg = load_train_config(config(tmp_path, "distill", teacher_weights, distill={"gt_weight": weight},
                                       train={"optimizer": "adam", "lr": 1.0e-3, "grad_clip": 1.0}), {})
        train_set, _ = build_sets(cfg)
        stage = distill.build(cfg, train_set=train_set, val_set=None, run=setup(cfg, tmp_path / f"run{weight}"))
        logs = [stage.step(default_collate([train_set[0]])) for _ in range(steps)]
        assert ("loss/gt_chamfer" in logs[0]) == (weight > 0)
        return [log["preference/winner"] for log in logs]
    pulled, paper = winners(1.0e4), winners(0.0)
    assert pulled[0] == paper[0]  # the same first sample: the term acts only through the update
    assert all(a < b for a, b in zip(pulled[1:], paper[1:])), (pulled, paper)
    with pytest.raises(ValueError, match="distill.gt_weight"):
        load_train_config(config(tmp_path, "distill", teacher_weights, distill={"gt_weight": -1.0}), {})


def test_oracle_real_takes_the_real_score_from_the_ideal_denoiser(tmp_path, teacher_weights, monkeypatch):
    """distill.oracle_real: g's real side is eps* of the batch's own ground truth (the winner's and the
    loser's call), not the teacher; per scene of a batch its own ground truth; exclusive with real_ta."""
    from torch.utils.data import default_collate

    from ddpo_ros.diffusion import schedule_from_config
    from training import distill
    from training.config import load_train_config
    from training.data.sets import build_sets
    from training.loop import setup
    from training.oracle import OracleDenoiser
    from training.rollout import TARGET_ORACLE

    cfg = load_train_config(config(tmp_path, "distill", teacher_weights, distill={"oracle_real": True}), {})
    train_set, _ = build_sets(cfg)
    stage = distill.build(cfg, train_set=train_set, val_set=None, run=setup(cfg, tmp_path / "run"))
    calls, call = [], distill.IdealScore.__call__

    def spy(self, x_t, cond, t):
        out = call(self, x_t, cond, t)
        calls.append((self, x_t.clone(), t.clone(), out))
        return out
    monkeypatch.setattr(distill.IdealScore, "__call__", spy)
    batch = default_collate([train_set[0]])
    logs = stage.step(batch)
    assert len(calls) == 2 and math.isfinite(logs["g/winner_norm"])  # the winner's and the loser's
    schedule = schedule_from_config(cfg.diffusion)
    gt = batch["gt"][0]
    for _, x_t, t, out in calls:
        torch.testing.assert_close(out[0], OracleDenoiser(gt.numpy(), schedule, **TARGET_ORACLE)(x_t[0], int(t[0])))
    two = torch.stack([gt, gt.flip(0) + 5.0])  # a batch of two scenes: each is scored by its own ground truth
    x, t = calls[0][1].repeat(2, 1, 1), torch.tensor([300, 700])
    eps = distill.IdealScore(two, schedule)(x, None, t)
    for i in range(2):
        torch.testing.assert_close(eps[i], OracleDenoiser(two[i].numpy(), schedule, **TARGET_ORACLE)(x[i], int(t[i])))
    with pytest.raises(ValueError, match="distill.oracle_real"):
        load_train_config(config(tmp_path, "distill", teacher_weights,
                                 distill={"oracle_real": True, "real_ta": True}), {})
