"""What the FLUX.2 tests share: the pipeline's own one-step velocity, LoRA layers counted."""

from __future__ import annotations

from typing import Any

import torch


def velocity(pipe: Any, transformer: Any, x: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """The transformer's prediction at σ = 1 on patchified latents ``x``, as the diffusers
    pipeline computes it: one Euler step from σ = 1 to 0 is ``x - v`` (packed tokens)."""
    sampler = type(pipe)(**{**pipe.components, "transformer": transformer})
    sampler.set_progress_bar_config(disable=True)
    side = x.shape[-1] * 2 * 2  # patch 2, tiny VAE factor 2
    with torch.no_grad():
        out = sampler(
            prompt=captions,
            latents=x,
            num_inference_steps=1,
            guidance_scale=1.0,
            height=side,
            width=side,
            max_sequence_length=16,
            output_type="latent",
        ).images
    if out.ndim == 4:  # klein returns the VAE's latent: patchified and normalised back
        z = pipe._patchify_latents(out)
        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
        out = pipe._pack_latents((z - mean) / std)
    return type(pipe)._pack_latents(x) - out


def injected(module: Any) -> int:
    return sum(1 for name, _ in module.named_modules() if name.endswith(".lora_A"))
