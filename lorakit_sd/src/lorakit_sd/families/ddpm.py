"""SD1 / SDXL's objective: DDPM noise (or velocity) prediction, with the kohya loss options.

``sd.noise_offset``, ``sd.prediction_type`` (v-prediction) and ``sd.min_snr_gamma`` live
here as one function each; the random draws (noise, offset, timesteps) come from torch's
global generator, so a resumed run replays them.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit.api import ConfigError
from lorakit_sd.families.base import Draw, Objective


def offset_noise(noise: torch.Tensor, strength: float) -> torch.Tensor:
    """``sd.noise_offset``: add one random offset per sample and channel."""
    if not strength:
        return noise
    offset = torch.randn(noise.shape[0], noise.shape[1], 1, 1, device=noise.device)
    return noise + strength * offset


def ddpm_target(
    scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict: the noise, or with v-prediction the velocity."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def min_snr_weight(
    scheduler: Any, timesteps: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """``sd.min_snr_gamma``: min(SNR, γ) / SNR (ε-prediction) or / (SNR + 1) (v-prediction)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weight = snr.clamp(max=gamma)
    return weight / (snr + 1) if prediction_type == "v_prediction" else weight / snr


class DDPMObjective(Objective):
    """Noise prediction on the model's DDPM schedule (``sd.prediction_type`` overrides it)."""

    name = "ddpm"

    def __init__(self, pipe: Any, sec: Any) -> None:
        from diffusers import DDPMScheduler

        overrides = {"prediction_type": sec.prediction_type} if sec.prediction_type else {}
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, **overrides)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"the model's scheduler predicts {self.prediction_type!r}; "
                "set epsilon or v_prediction",
                key="sd.prediction_type",
            )
        self.noise_offset = sec.noise_offset
        self.min_snr_gamma = sec.min_snr_gamma

    def draw(self, latents: torch.Tensor) -> Draw:
        dev = latents.device
        noise = torch.randn(latents.shape, device=dev, dtype=latents.dtype)
        noise = offset_noise(noise, self.noise_offset)
        steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), device=dev).long()
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        return Draw(noisy, timesteps, ddpm_target(self.scheduler, latents, noise, timesteps))

    def weigh(self, per_sample: torch.Tensor, draw: Draw) -> torch.Tensor:
        if not self.min_snr_gamma:
            return per_sample
        weight = min_snr_weight(
            self.scheduler, draw.timesteps, self.min_snr_gamma, self.prediction_type
        )
        return per_sample * weight
