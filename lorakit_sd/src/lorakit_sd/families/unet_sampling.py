"""Previews of the UNet families: render prompts with a fixed seed through their pipelines.

Rendering uses a deterministic Euler sampler and a CPU generator seeded per prompt, inside
``torch.random.fork_rng``: previews are the same on every run and never disturb the training
run's random stream (a run with previews trains exactly like one without).

The UNet denoises under the run's mixed precision; the VAE then decodes outside autocast, in
its own dtype (SDXL's VAE overflows in float16: an fp16 SDXL VAE without the fp16 fix is
decoded in float32). A preview that still decodes to NaN or infinity stops the run with a
:class:`RunError` instead of saving a black image.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from lorakit.api import RunError
from lorakit_sd.families.clip import MAX_TOKEN_LENGTHS, encode_captions, token_count
from lorakit_sd.models import pipeline_class


def sampling_pipeline(pipe: Any, family: str, prediction_type: str) -> Any:
    """A pipeline sharing ``pipe``'s modules, with an Euler scheduler and no progress bar."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, prediction_type=prediction_type
    )
    components = {**pipe.components, "scheduler": scheduler}
    if family == "sd1":
        components["requires_safety_checker"] = False
    else:
        components["force_zeros_for_empty_prompt"] = pipe.config.get(
            "force_zeros_for_empty_prompt", True
        )
    sampler = pipeline_class(family)(**components)
    sampler.set_progress_bar_config(disable=True)
    return sampler


def render(
    pipe: Any,
    prompts: list[str],
    *,
    seed: int,
    steps: int,
    guidance: float,
    width: int,
    height: int,
    negative: str = "",
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
    clip_skip: int = 1,
) -> list[Any]:
    """One image per prompt; prompt ``i`` uses seed ``seed + i``.

    Prompts are encoded as training encodes captions (75-token windows, ``clip_skip``):
    ``max_tokens`` None picks the smallest window count that holds the longest prompt.
    """
    device = next(pipe.unet.parameters()).device
    autocast: Any = contextlib.nullcontext()
    if dtype != torch.float32 and device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=dtype)
    images = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast:
        for i, prompt in enumerate(prompts):
            generator = torch.Generator("cpu").manual_seed(seed + i)
            embeds = prompt_embeds(pipe, prompt, negative, max_tokens, clip_skip)
            out = pipe(
                **embeds,
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                generator=generator,
                output_type="latent",
            )
            images.append(decode_latents(pipe, out.images, prompt))
    return images


def prompt_embeds(
    pipe: Any, prompt: str, negative: str, max_tokens: int | None, clip_skip: int
) -> dict[str, Any]:
    """The pipeline's ``prompt_embeds`` arguments for a prompt and its negative."""

    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    family = "sdxl" if sdxl else "sd1"
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2] if sdxl else [pipe.tokenizer]
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if sdxl else [pipe.text_encoder]
    if max_tokens is None:
        longest = max(token_count(pipe.tokenizer, p) for p in (prompt, negative))
        max_tokens = next((n for n in MAX_TOKEN_LENGTHS if n >= longest), MAX_TOKEN_LENGTHS[-1])
    hidden, pooled = encode_captions(
        [prompt, negative], tokenizers, encoders, family, max_tokens, clip_skip
    )
    out = {"prompt_embeds": hidden[:1], "negative_prompt_embeds": hidden[1:]}
    if sdxl:
        assert pooled is not None
        out["pooled_prompt_embeds"] = pooled[:1]
        out["negative_pooled_prompt_embeds"] = pooled[1:]
        if not negative and pipe.config.get("force_zeros_for_empty_prompt", True):
            out["negative_prompt_embeds"] = torch.zeros_like(hidden[1:])
            out["negative_pooled_prompt_embeds"] = torch.zeros_like(pooled[1:])
    return out


def decode_latents(pipe: Any, latents: torch.Tensor, prompt: str = "") -> Any:
    """The PIL image of a pipeline's (scaled) latents: no autocast, the VAE's own dtype."""
    vae = pipe.vae
    param = next(vae.parameters())
    own, device = param.dtype, param.device
    dtype = own
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        dtype = torch.float32  # the SDXL VAE overflows in float16 (black / NaN images)
    config = vae.config
    mean = getattr(config, "latents_mean", None)
    std = getattr(config, "latents_std", None)
    latents = latents.to(device, torch.float32)
    if mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        mean_t = torch.tensor(mean, device=latents.device).view(shape)
        std_t = torch.tensor(std, device=latents.device).view(shape)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    upcast = dtype != own
    with torch.autocast(device.type, enabled=False), torch.no_grad():
        if upcast:
            vae.to(dtype)
        try:
            image = vae.decode(latents.to(dtype), return_dict=False)[0]
        finally:
            if upcast:
                vae.to(own)
    if not torch.isfinite(image).all():
        raise RunError(
            f"preview {prompt!r}: the VAE ({dtype}) decoded NaN or infinite values, which "
            "would save a black image; with mixed_precision fp16 use an fp16-fix VAE or bf16"
        )
    return pipe.image_processor.postprocess(image.float(), output_type="pil")[0]
