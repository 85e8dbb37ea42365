"""One typed config for every training stage (YAML files in config/train/, unknown keys rejected).

Sections: `model` and `diffusion` are the inference config's own (ddpo_ros.config), so weights
saved by training carry exactly what the Completer needs; `data` says what to train on; `train`
is the shared loop; each stage reads its own section (`teacher`, ...). Reference values
(reference section 4) are the paper-scale defaults; config/train/*_mini.yaml shrink them for a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ddpo_ros.config import (CompletionConfig, ConfigError, DiffusionConfig, ModelConfig, _check, added_option,
                             load_config)

STAGES = ("teacher", "refine", "distill", "score-distill", "diffusion-dpo")


@dataclass(frozen=True)
class DataConfig:
    """Training pairs: SemanticKITTI sequences and/or procedural synthetic scenes."""

    kitti_root: str | None = None          # SemanticKITTI root (sequences/XX) or one sequence folder
    kitti_sequences: tuple[str, ...] = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
    val_sequences: tuple[str, ...] = ("08",)
    synthetic: int = 0                     # synthetic scenes per epoch (0: none)
    synthetic_val: int = 0                 # held-out synthetic scenes for validation
    synthetic_seed: int = 0
    num_points: int = 18000                # partial scan points (FPS)
    gt_points: int = 180000                # ground-truth points
    augment: bool = True
    cache_dir: str = "runs/maps"           # ground-truth maps, built once per sequence
    num_workers: int = 2

    def __post_init__(self):
        _check(self.kitti_root is not None or self.synthetic > 0, "data",
               "needs kitti_root or synthetic > 0 (nothing to train on)")
        _check(self.num_points >= 1 and self.gt_points >= 1, "data.num_points/gt_points", "must be >= 1")
        _check(self.synthetic >= 0 and self.synthetic_val >= 0, "data.synthetic", "must be >= 0")


@dataclass(frozen=True)
class LoopConfig:
    """The shared loop (training/loop.py): optimisation, checkpoints, logging, validation."""

    batch_size: int = 2
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-4
    lr_decay: float = 0.5                  # multiply the lr by this ...
    lr_decay_every: int = 5                # ... every this many epochs (0: constant)
    grad_clip: float = 0.0                 # global norm per optimiser (0: off)
    epochs: int = 20
    max_steps: int = 0                     # stop after this many optimiser steps (0: epochs decide)
    max_minutes: float = 0.0               # ... or after this much wall time in this process (0: no limit)
    seed: int = 42
    checkpoint_every: int = 500            # steps
    log_every: int = 10                    # steps
    val_every: int = 0                     # steps (0: at the end of each epoch)
    val_scans: int = 2                     # scans completed per validation
    val_steps: int = 8                     # sampler steps in validation
    device: str = "cpu"

    def __post_init__(self):
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(0 < self.lr_decay <= 1, "train.lr_decay", "must be in (0, 1]")
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.max_minutes >= 0, "train.max_minutes", "must be >= 0")
        _check(self.checkpoint_every >= 1 and self.log_every >= 1, "train.checkpoint_every/log_every",
               "must be >= 1")


@dataclass(frozen=True)
class TeacherConfig:
    """LiDiff teacher: noise MSE + reg_weight x ((mean eps)^2 + (std eps - 1)^2), CFG dropout."""

    uncond_prob: float = 0.1               # per batch, the whole batch gets the all-zero condition
    reg_weight: float = 5.0
    init: str = ""                         # start from these weights (roles encoder + teacher); "": random
    # Each scene of a batch is noised at this many t, stratified over 0..T-1 across the batch, so
    # every batch (and BatchNorm's statistics) spans the noise levels (1: one uniform t per scene, LiDiff).
    noise_levels: int = 1
    # Of each scene's noise_levels copies, this many are a state of the network's own sampling
    # trajectory (completion.sampler, rollout_steps steps, a uniformly drawn call) with the ideal
    # denoiser's eps* of the scene as target instead of drawn noise (training/rollout.py). 0: LiDiff.
    rollout_levels: int = 0
    rollout_steps: int = 8

    def __post_init__(self):
        _check(0 <= self.uncond_prob <= 1, "teacher.uncond_prob", "must be in [0, 1]")
        _check(self.reg_weight >= 0, "teacher.reg_weight", "must be >= 0")
        _check(self.noise_levels >= 1, "teacher.noise_levels", "must be >= 1")
        _check(0 <= self.rollout_levels <= self.noise_levels, "teacher.rollout_levels",
               f"must be in 0..teacher.noise_levels ({self.noise_levels})")
        _check(self.rollout_steps >= 1, "teacher.rollout_steps", "must be >= 1")


@dataclass(frozen=True)
class RefineConfig:
    """LiDiff refinement net: refine(gt subset + clipped jitter, or a teacher's completion) -> up x
    points, squared chamfer to gt."""

    jitter_sigma: float = 0.2              # metres, per coordinate (reference: aggregated cloud + jitter)
    jitter_clip: float = 0.3               # metres, the jitter is clipped to +-this
    input_points: int = 0                  # refiner input points; 0: completion.num_points * replication
    # Weights with encoder + teacher: the refiner learns on that teacher's own completions of each
    # training scan (its completion settings, no refiner) instead of jittered ground truth, so it
    # sees at training what it refines at inference. Empty: jittered ground truth (the reference).
    teacher: str = ""
    init: str = added_option("")           # start from the refiner of these weights; "": random

    def __post_init__(self):
        _check(self.jitter_sigma >= 0 and self.jitter_clip >= 0, "refine.jitter_sigma/jitter_clip", "must be >= 0")
        _check(self.input_points >= 0, "refine.input_points", "must be >= 0")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation-DPO (DESIGN.md; Eqs. 18-20) and the score-distillation baseline (Table 6)."""

    teacher: str = ""                      # weights with roles encoder + teacher (the teacher stage's output)
    lam: float = 1.1                       # Eq. 19: the second sample starts from x_init + lam * eps
    preference: Literal["cd", "jsd"] = "cd"  # what ranks the pair (Table 5)
    ta_lr: float = 1e-5                    # SGD for the teacher assistants; train.lr is the student's
    ta_steps: int = 1                      # TA updates per student update (the reference alternates 1:1)
    omega: float = 0.0                     # Eq. 18's normaliser; 0: the number of sample elements (B*N*3)
    # Student and TAs normalise with the teacher's running statistics (eval-mode BatchNorm, never
    # updated) instead of batch statistics: g = eps_teacher - eps_ta is then exactly 0 until a TA
    # learns something (training/student.trained_mode); false: train mode, as the reference.
    freeze_bn: bool = True
    # How g = eps_teacher - eps_ta weighs steps t and scenes: "eps" as the paper writes Eq. 18 (small
    # t dominate: 1/sigma_t), "dmd" in clean-cloud units normalised per sample (training/losses.dmd_normalise).
    g_weighting: Literal["eps", "dmd"] = "eps"
    # Weight of Eq. 18's loser term (the paper: 1). The loser (the lam sample) lies further from the
    # teacher than the winner, so its push outweighs the winner's pull (tools/ddpo_gradient.py).
    loser_weight: float = 1.0
    # The real score from a copy of the teacher fine-tuned on the ground truth alongside the TAs
    # (role ta_real, same optimiser), instead of the frozen teacher. A TA fine-tuned from an
    # under-trained teacher learns to denoise better in general, not only the student's samples, and
    # g = eps_teacher - eps_ta then pushes the student away from that improvement (tools/ddpo_gradient.py
    # --control). With ta_real both sides of g carry it and it cancels.
    real_ta: bool = False
    # Eq. 19 draws the pair from one noise (x_init + eps, x_init + lam eps): "shared". "independent"
    # draws a second noise for the lam sample, so the preference is not fixed by the noise scale.
    pair_noise: Literal["shared", "independent"] = "shared"
    # A structure term next to Eq. 18, as ScoreLiDAR's scene loss: this weight times the squared Chamfer
    # distance of the student's one-step winner to the ground truth (0: the paper's loss alone).
    gt_weight: float = 0.0
    # The real score of g is the ideal denoiser of the batch's ground truth (training/oracle.py), the
    # teacher no network trained on this scene can beat, instead of the frozen teacher: the control
    # that tells what the pair does from what the teacher's under-training does (docs/mini-scale.md).
    # Two coarse ideal-denoiser calls per student step (~1-2 s on 2 CPU cores).
    oracle_real: bool = added_option(False)

    def __post_init__(self):
        _check(self.lam > 0, "distill.lam", "must be > 0")
        _check(self.g_weighting in ("eps", "dmd"), "distill.g_weighting", "must be 'eps' or 'dmd'")
        _check(self.loser_weight >= 0, "distill.loser_weight", "must be >= 0")
        _check(self.gt_weight >= 0, "distill.gt_weight", "must be >= 0")
        _check(not (self.oracle_real and self.real_ta), "distill.oracle_real",
               "excludes distill.real_ta (g has one real score)")
        _check(self.pair_noise in ("shared", "independent"), "distill.pair_noise", "must be 'shared' or 'independent'")
        _check(self.ta_lr > 0, "distill.ta_lr", "must be > 0")
        _check(self.ta_steps >= 1, "distill.ta_steps", "must be >= 1")
        _check(self.omega >= 0, "distill.omega", "must be >= 0")


@dataclass(frozen=True)
class DPOConfig:
    """Diffusion-DPO fine-tuning of the teacher (Eq. 10); pairs come from distill.teacher with distill.lam."""

    beta: float = 5000.0                   # Diffusion-DPO's KL weight (its SD1.5 value); T*omega(lambda_t) folded in

    def __post_init__(self):
        _check(self.beta > 0, "dpo.beta", "must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    stage: Literal["teacher", "refine", "distill", "score-distill", "diffusion-dpo"] = "teacher"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(kitti_root="data/SemanticKITTI"))
    train: LoopConfig = field(default_factory=LoopConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)

    def __post_init__(self):
        if self.teacher.rollout_levels:  # a trajectory state replaces a noised ground-truth row
            c = self.completion
            _check(self.data.num_points == c.num_points and self.data.gt_points == c.num_points * c.replication,
                   "teacher.rollout_levels", "needs data.num_points == completion.num_points and data.gt_points == "
                   f"completion.num_points * completion.replication, got {self.data.num_points} / "
                   f"{self.data.gt_points} and {c.num_points} x {c.replication}")


def parse_sets(items) -> dict:
    """--set SECTION.KEY=VALUE arguments (YAML syntax) -> {"section.key": value}; ValueError names a bad one."""
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """config/train/<x>.yaml as a TrainConfig; `overrides` {"train.lr": 1e-5, ...} are applied on top."""
    import yaml

    from ddpo_ros.config import from_dict

    if not overrides:
        return load_config(path, TrainConfig)
    data = yaml.safe_load(Path(path).read_text()) or {}
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        node = data
        for part in filter(None, section.split(".")):
            node = node.setdefault(part, {})
        node[name] = value
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
