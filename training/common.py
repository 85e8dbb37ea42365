"""Setup the stages share: the optimiser `train.optimizer` names and the frozen teacher to start from.

Stages (teacher, refine, distill, diffusion_dpo, score_distill) import what they share from here,
training/student.py (the one-step sample and its preference) and the loop's own modules, never
from each other: each stage reads as one file (test/test_training_layout.py checks it).
"""
from __future__ import annotations

import torch

from .checkpoints import load_roles


def make_optimizer(cfg, params, lr: float | None = None) -> torch.optim.Optimizer:
    """train.optimizer at `lr` (default train.lr): Adam (betas 0.9, 0.999) or plain SGD. With another
    lr than train.lr the group keeps the ratio as lr_scale, so the loop's decay applies to it too."""
    lr = cfg.train.lr if lr is None else lr
    if cfg.train.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    else:
        opt = torch.optim.SGD(params, lr=lr)
    if lr != cfg.train.lr:
        opt.param_groups[0]["lr_scale"] = lr / cfg.train.lr
    return opt


def load_teacher(cfg, device) -> dict:
    """encoder + teacher from distill.teacher, checked against this config's model."""
    return load_roles(cfg.distill.teacher, "distill.teacher", cfg, ["encoder", "teacher"], device)


def drift(model: torch.nn.Module, reference: torch.nn.Module) -> dict[str, float]:
    """L2 distance of a trained copy from the network it started as, for parameters and for the
    BatchNorm buffers separately (running mean/var): a student whose only change is its running
    statistics has not learned. Relative: divided by the reference's parameter norm."""
    ref = dict(reference.named_parameters())
    ref_buffers = {k: v for k, v in reference.named_buffers() if v.is_floating_point()}
    with torch.no_grad():
        params = sum(float((p - ref[k]).double().square().sum()) for k, p in model.named_parameters())
        norm = sum(float(p.double().square().sum()) for p in ref.values())
        buffers = sum(float((b - ref_buffers[k]).double().square().sum())
                      for k, b in model.named_buffers() if k in ref_buffers)
    return {"params": params ** 0.5, "params_relative": (params / max(norm, 1e-30)) ** 0.5,
            "buffers": buffers ** 0.5}
