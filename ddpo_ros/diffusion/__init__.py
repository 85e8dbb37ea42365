"""Diffusion math: one noise schedule, pure samplers, classifier-free guidance. No networks here."""
from .guidance import guide, guided, unconditional_cloud
from .samplers import SAMPLERS, data_prediction, dpmpp_update, sample_ddpm, sample_dpmpp, standard_noise
from .schedule import (Schedule, add_local_noise, inference_timesteps, initial_state, make_schedule,
                       schedule_from_config, start_noise_scale)

__all__ = ["SAMPLERS", "Schedule", "add_local_noise", "data_prediction", "dpmpp_update", "guide", "guided",
           "inference_timesteps", "initial_state", "make_schedule", "sample_ddpm", "sample_dpmpp",
           "schedule_from_config", "standard_noise", "start_noise_scale", "unconditional_cloud"]
