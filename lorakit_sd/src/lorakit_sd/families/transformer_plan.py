"""``lorakit plan`` for SD3 / FLUX.1: the transformer (at the run's dtype, made trainable
by the backend's :func:`~lorakit_sd.step.adapt.adapt_models`) on the meta device and a fake batch
of caption embeddings.

With the text cache on (the default) the text encoders are not in the trace: their outputs
are cached and T5 and CLIP leave the GPU once the cache is built; the cached embeddings of
a batch are. Without it (``sd.train_text_encoder``, ``sd.shuffle_tags``) the CLIP encoders
are part of the trained module (with their LoRA when trained) and T5 stays on the device.
A step is the backend's own :func:`~lorakit_sd.step.loss.denoising_loss` on the family's layout
(FLUX.1 packs 2x2 latents) and the model's flow-matching scheduler. An edit model's batch
carries one control image per sample at the training size (its tokens lengthen the sequence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import Config, PlanModel
from lorakit_sd.commands.plan import (
    DTYPE_NAMES,
    _smaller,
    count_images,
    meta_encoders,
    meta_trainable,
    plan_loss,
    plan_objective,
    text_encoder_parts,
    traceable,
)
from lorakit_sd.families.transformer_module import FlowTrainModule
from lorakit_sd.families.transformer_rungs import flow_rungs, quantized
from lorakit_sd.models import quiet_libraries


def flow_planner(config: Config, folder: Path, spec: Any, section: Any) -> PlanModel:
    import torch
    from diffusers import AutoencoderKL

    train = config.train
    cls = spec.transformer_class()
    with quiet_libraries():
        t_config = cls.load_config(folder, subfolder="transformer")
        vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
        text_parts = text_encoder_parts(folder)
    clips = [p for p in text_parts if p[1].__name__.startswith("CLIP")]
    others = [p for p in text_parts if p not in clips]  # T5
    dtype = getattr(torch, DTYPE_NAMES[train.mixed_precision])
    resolution = section.resolution or spec.default_resolution
    channels, side = spec.latent_layout(vae_config, resolution)
    tokens = int(section.max_sequence_length or spec.default_sequence_length)
    batch = train.batch_size
    guidance = section.guidance if t_config.get("guidance_embeds") else None
    text_cached = section.text_cache_enabled()

    def build(checkpointing: bool) -> Any:
        transformer, encoders = meta_trainable(
            cls, t_config, clips, dtype, config, section, spec, checkpointing
        )
        module = FlowTrainModule(
            spec, None, transformer, encoders or None, section.train_text_encoder, tokens, guidance
        )
        return traceable(module)

    def fake_batch() -> dict[str, Any]:
        inputs = spec.plan_text_inputs(t_config, batch, tokens)
        if spec.takes_control:  # one control image per sample, at the target's size
            inputs["control"] = torch.randn(batch, 1, channels, side, side)
        return {"latents": spec.plan_latents(batch, channels, side, section), "inputs": inputs}

    one = spec.plan_text_inputs(t_config, 1, tokens)
    cached = batch * sum(t.numel() for t in one.values()) * dtype.itemsize
    caches = {"caption embeddings (one batch)": cached}
    if not text_cached:
        with torch.device("meta"), quiet_libraries():
            t5 = sum(p.numel() for m in meta_encoders(others, dtype) for p in m.parameters())
        caches = {f"{spec.sequence_encoder} (captions encoded each step)": t5 * dtype.itemsize}
    where = (
        f"({spec.caption_encoders} off the GPU after caching)"
        if text_cached
        else "(captions encoded each step)"
    )
    stored = section.base_quantization or str(dtype).removeprefix("torch.")
    return PlanModel(
        build=build,
        batch=fake_batch,
        loss=plan_loss(plan_objective(folder, spec, section), dtype),
        description=f"{spec.label} transformer, {stored} weights {where}",
        per_step=spec.plan_step(batch, resolution, section)
        + (" with a control image each" if spec.takes_control else ""),
        autocast_dtype=dtype if train.mixed_precision != "no" else None,
        caches=caches,
        items=count_images(config, section),
        resolution_key="sd.resolution",
        rungs=flow_rungs(train, section, spec) + spec.plan_rungs(section),
        **quantized(section, cls, t_config, dtype.itemsize),
        resolution=resolution,
        resolution_steps=tuple(
            v for v in _smaller(resolution) if v % spec.plan_multiple(t_config, vae_config) == 0
        ),
    )
