"""Setup the stages share: the optimiser `train.optimizer` names and the frozen teacher to start from.

Stages (teacher, refine, distill, diffusion_dpo, score_distill) import what they share from here,
training/student.py (the one-step sample and its preference) and the loop's own modules, never
from each other: each stage reads as one file (test/test_training_layout.py checks it).
"""
from __future__ import annotations

import torch

from .checkpoints import load_roles


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """train.optimizer at train.lr: Adam (betas 0.9, 0.999) or plain SGD."""
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.train.lr, betas=(0.9, 0.999))
    return torch.optim.SGD(params, lr=cfg.train.lr)


def load_teacher(cfg, device) -> dict:
    """encoder + teacher from distill.teacher, checked against this config's model."""
    return load_roles(cfg.distill.teacher, "distill.teacher", cfg, ["encoder", "teacher"], device)
