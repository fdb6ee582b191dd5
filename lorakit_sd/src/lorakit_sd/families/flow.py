"""Flow matching as SD3 and FLUX.1 train: ``x_σ = (1-σ)·x0 + σ·ε``, target ``ε - x0``.

σ is drawn with :func:`diffusers.training_utils.compute_density_for_timestep_sampling`
(``sd.timestep_sampling``: logit_normal, sigmoid, uniform, mode) and shifted as the model's
``FlowMatchEulerDiscreteScheduler`` config says: a fixed ``shift`` (SD3: 3.0), or with
``use_dynamic_shifting`` (FLUX.1) the resolution-dependent shift, ``mu`` from the image's
token count through the pipeline's ``calculate_shift`` and the scheduler's ``time_shift``.
The loss is weighted with :func:`diffusers.training_utils.compute_loss_weighting_for_sd3`
(``sd.loss_weighting``: none, sigma_sqrt, cosmap). Every draw comes from torch's global
generator, so a resumed run replays it.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit_sd.families.base import Draw, Objective


class FlowMatchObjective(Objective):
    """Rectified-flow velocity prediction on the model's flow-matching scheduler config."""

    name = "flow_matching"
    prediction_type = "flow"

    def __init__(self, pipe: Any, sec: Any, *, tokens_per_latent: float = 1.0) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        config = self.scheduler.config
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.dynamic = bool(config.get("use_dynamic_shifting", False)) and sec.flow_shift is None
        self.shift = float(sec.flow_shift if sec.flow_shift is not None else config.shift)
        #: image tokens per latent pixel (FLUX.1 packs 2x2 latent pixels into one token)
        self.tokens_per_latent = tokens_per_latent
        self.sampling = sec.timestep_sampling
        self.logit_mean, self.logit_std = sec.logit_mean, sec.logit_std
        self.mode_scale = sec.mode_scale
        self.sigmoid_scale = sec.sigmoid_scale
        self.weighting = sec.loss_weighting

    def sample_u(self, n: int, device: Any) -> torch.Tensor:
        """u in (0, 1) from diffusers' density for timestep sampling."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        if self.sampling == "sigmoid":  # sd-scripts' sigmoid: sigmoid(scale · N(0, 1))
            scheme, mean, std = "logit_normal", 0.0, self.sigmoid_scale
        else:
            scheme, mean, std = self.sampling, self.logit_mean, self.logit_std
        return compute_density_for_timestep_sampling(
            weighting_scheme=scheme,
            batch_size=n,
            logit_mean=mean,
            logit_std=std,
            mode_scale=self.mode_scale,
            device=device,
        )

    def mu(self, latents: torch.Tensor) -> float:
        """FLUX.1's resolution-dependent shift for this latent size (``calculate_shift``)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = self.scheduler.config
        seq_len = int(latents.shape[-2] * latents.shape[-1] * self.tokens_per_latent)
        return float(
            calculate_shift(
                seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift
            )
        )

    def shift_sigmas(self, u: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            return self.scheduler.time_shift(self.mu(latents), 1.0, u)
        return self.shift * u / (1 + (self.shift - 1) * u)

    def draw(self, latents: torch.Tensor) -> Draw:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        n, dev = latents.shape[0], latents.device
        noise = torch.randn(latents.shape, device=dev, dtype=latents.dtype)
        u = self.sample_u(n, dev)
        sigmas = self.shift_sigmas(u.to(dev, torch.float32), latents)
        timesteps = sigmas * self.num_train_timesteps
        s = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
        noisy = (1.0 - s) * latents + s * noise
        weight = compute_loss_weighting_for_sd3(self.weighting, sigmas=s)
        return Draw(noisy, timesteps, noise - latents, weight=weight, sigmas=sigmas)

    def metadata(self) -> dict[str, str]:
        shift = "dynamic" if self.dynamic else f"{self.shift:g}"
        # no modelspec.prediction_type: sd-scripts writes none for FLUX.1, and its SD3
        # value ("epsilon", its DDPM default) does not describe a flow-matching model
        return {
            "ss_timestep_sampling": self.sampling,
            "ss_sigmoid_scale": f"{self.sigmoid_scale:g}",
            "ss_weighting_scheme": self.weighting,
            "ss_discrete_flow_shift": shift,
            "ss_logit_mean": f"{self.logit_mean:g}",
            "ss_logit_std": f"{self.logit_std:g}",
            "ss_mode_scale": f"{self.mode_scale:g}",
        }
