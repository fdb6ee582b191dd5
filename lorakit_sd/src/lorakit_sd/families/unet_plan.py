"""``lorakit plan`` for the UNet families: the UNet and the CLIP encoders on the meta device,
one step traced under fake tensors (see :mod:`lorakit_sd.commands.plan` for the shared parts).

Captions are cached (or encoded each step); size-conditioned families add the pooled
embedding and the size ids; the VAE is counted when latents are not cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from lorakit.api import Config, PlanModel
from lorakit_sd.commands.plan import (
    DTYPE_NAMES,
    _smaller,
    count_images,
    meta_trainable,
    plan_loss,
    plan_objective,
    text_encoder_parts,
    traceable,
)
from lorakit_sd.families.clip import SDTrainModule
from lorakit_sd.models import quiet_libraries


def unet_planner(config: Config, folder: Path, spec: Any, section: Any) -> PlanModel:
    """The :class:`PlanModel` of a UNet family's config (``ModelFamily.planner``)."""
    train = config.train
    with quiet_libraries():
        unet_config = UNet2DConditionModel.load_config(folder, subfolder="unet")
        vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
        text_parts = text_encoder_parts(folder)
    text_configs = [cfg for _, _, cfg in text_parts]
    half = train.mixed_precision != "no"
    dtype = getattr(torch, DTYPE_NAMES[train.mixed_precision])
    resolution = section.resolution or spec.default_resolution
    factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    side = resolution // factor
    channels = int(unet_config["in_channels"])
    cross = unet_config["cross_attention_dim"]
    cross = int(cross if isinstance(cross, int) else cross[0])
    tokens = int(text_configs[0].max_position_embeddings)
    text_cached = section.text_cache_enabled()
    batch = train.batch_size
    caches: dict[str, int] = {}
    if not section.latent_cache_enabled():
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(vae_config)
        size = 4 if spec.vae_dtype(dtype) == torch.float32 else dtype.itemsize
        caches["VAE"] = sum(p.numel() for p in vae.parameters()) * size

    def build(checkpointing: bool) -> Any:
        unet, encoders = meta_trainable(
            UNet2DConditionModel,
            unet_config,
            text_parts,
            dtype,
            config,
            section,
            spec,
            checkpointing,
        )
        return traceable(
            SDTrainModule(unet, encoders or None, spec.name, section.train_text_encoder)
        )

    def fake_batch() -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        if text_cached:
            inputs["hidden"] = torch.randn(batch, tokens, cross)
            if spec.size_conditioned:
                inputs["pooled"] = torch.randn(batch, int(text_configs[-1].projection_dim))
        else:
            inputs["input_ids"] = [torch.randint(0, 1000, (batch, tokens)) for _ in text_configs]
        if spec.size_conditioned:
            inputs["time_ids"] = torch.randn(batch, 6)
        return {"latents": torch.randn(batch, channels, side, side), "inputs": inputs}

    return PlanModel(
        build=build,
        batch=fake_batch,
        loss=plan_loss(plan_objective(folder, spec, section), dtype),
        description=f"{spec.label} UNet, {str(dtype).removeprefix('torch.')} weights",
        per_step=f"{batch} image{'s' if batch > 1 else ''} of {resolution}×{resolution}",
        autocast_dtype=dtype if half else None,
        caches=caches,
        items=count_images(config, section),
        resolution_key="sd.resolution",
        resolution=resolution,
        resolution_steps=_smaller(resolution),
    )
