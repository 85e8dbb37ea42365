"""Classifier-free guidance (Ho & Salimans 2022): eps = eps_u + w (eps_c - eps_u).

LiDiff's unconditional input is an all-zero partial cloud (same point count as the scan), so the
unconditional branch is the same network with a different condition, not a separate model.
w = 6 for LiDiff's 50-step teacher, 3.5 for the 8-step Distillation-DPO student.
"""
from __future__ import annotations

from torch import Tensor

from .samplers import Denoise


def guide(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """eps_u + w (eps_c - eps_u); w = 1 is the conditional model, w = 0 the unconditional one."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided(denoise_cond: Denoise, denoise_uncond: Denoise, scale: float) -> Denoise:
    """A denoiser that runs both branches at the same (x, t) and mixes them (skips one at w = 1)."""
    if scale == 1.0:
        return denoise_cond

    def denoise(x: Tensor, t: int) -> Tensor:
        return guide(denoise_cond(x, t), denoise_uncond(x, t), scale)
    return denoise


def unconditional_cloud(partial: Tensor) -> Tensor:
    """LiDiff's unconditional condition: the partial cloud's shape, all points at the origin."""
    return partial.new_zeros(partial.shape)
