"""LiDiff networks and their factories (the only code here that reads a config)."""
from __future__ import annotations

from .networks import ENCODER_STRIDE, MinkGlobalEnc, MinkUNet, MinkUNetDiff


def build_denoiser(cfg) -> MinkUNetDiff:
    """Denoiser for the teacher, student and teaching assistants (`cfg` is a ModelConfig)."""
    return MinkUNetDiff(cfg.channels, cfg.width, voxel_size=cfg.voxel_size, backend=cfg.backend)


def build_encoder(cfg) -> MinkGlobalEnc:
    return MinkGlobalEnc(cfg.channels, cfg.width, voxel_size=cfg.voxel_size, backend=cfg.backend)


def build_refiner(cfg) -> MinkUNet:
    return MinkUNet(cfg.channels, cfg.width, up_factor=cfg.refine_up_factor,
                    voxel_size=cfg.voxel_size, backend=cfg.backend)


# Which network each model role uses.
ROLE_BUILDERS = {
    "teacher": build_denoiser,
    "student": build_denoiser,
    "ta_win": build_denoiser,
    "ta_lose": build_denoiser,
    "ta": build_denoiser,
    "ta_real": build_denoiser,
    "encoder": build_encoder,
    "refiner": build_refiner,
}
ROLES = tuple(ROLE_BUILDERS)

__all__ = ["ENCODER_STRIDE", "MinkGlobalEnc", "MinkUNet", "MinkUNetDiff", "ROLES", "ROLE_BUILDERS",
           "build_denoiser", "build_encoder", "build_refiner"]
