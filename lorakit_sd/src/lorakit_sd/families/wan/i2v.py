"""Image-to-video: the first frame as ``WanImageToVideoPipeline`` conditions on it.

The pipeline encodes the first frame followed by black (zero) frames with the VAE (its
posterior's mode), normalises it as latents are, and puts a 4-channel mask in front (ones on
the first latent frame, which covers the first pixel frame four times over, zeros after): 20
channels joined to the 16 noisy ones, 36 in all. Training builds the same from each sample's
own first frame (cached with its latents); the trained module joins it to the noisy latents
the same way. Wan 2.1 I2V's transformer also reads the first frame's CLIP image tokens
(:func:`image_tokens`), cached beside it.
"""

from __future__ import annotations

from typing import Any

import torch


def normalised(latents: torch.Tensor, config: Any) -> torch.Tensor:
    """``(z - latents_mean) / latents_std`` (what the pipeline undoes before decoding)."""
    shape = (1, int(config.z_dim), 1, 1, 1)
    mean = torch.tensor(config.latents_mean).view(shape).to(latents)
    std = torch.tensor(config.latents_std).view(shape).to(latents)
    return (latents - mean) / std


def first_frame_condition(vae: Any, pixels: torch.Tensor, temporal: int = 4) -> torch.Tensor:
    """The 20-channel condition of a ``[B, 3, F, H, W]`` clip batch in [-1, 1]: the mask and
    the normalised latents of its first frame followed by zero frames."""
    param = next(vae.parameters())
    video = torch.cat([pixels[:, :, :1], torch.zeros_like(pixels[:, :, 1:])], dim=2)
    with torch.no_grad():
        latent = vae.encode(video.to(param.device, param.dtype)).latent_dist.mode().float()
    latent = normalised(latent, vae.config)
    b, _, frames, h, w = latent.shape
    mask = torch.zeros(b, temporal, frames, h, w, device=latent.device)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, latent], dim=1).contiguous()


def image_tokens(encoder: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Wan 2.1 I2V's CLIP image tokens of each clip's first frame, as
    ``WanImageToVideoPipeline.encode_image`` makes them (its processor on the frame as an
    8-bit image, the encoder's penultimate hidden states)."""
    from PIL import Image

    processor, model = encoder
    frames = ((pixels[:, :, 0].permute(0, 2, 3, 1) + 1.0) * 127.5).round().clamp(0, 255)
    images = [Image.fromarray(f.to(torch.uint8).cpu().numpy()) for f in frames]
    param = next(model.parameters())
    inputs = processor(images=images, return_tensors="pt").to(param.device)
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True).hidden_states[-2].float()
