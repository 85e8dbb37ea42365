"""Diffusion math: one noise schedule, pure samplers, classifier-free guidance. No networks here."""
from .guidance import guide, guided, unconditional_cloud
from .samplers import SAMPLERS, sample_ddpm, sample_dpmpp
from .schedule import (Schedule, add_local_noise, inference_timesteps, initial_state, make_schedule,
                       schedule_from_config)

__all__ = ["SAMPLERS", "Schedule", "add_local_noise", "guide", "guided", "inference_timesteps",
           "initial_state", "make_schedule", "sample_ddpm", "sample_dpmpp", "schedule_from_config",
           "unconditional_cloud"]
