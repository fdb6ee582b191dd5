"""``lorakit plan`` for SD3 / FLUX.1: the transformer (at the run's dtype, LoRA injected)
on the meta device and a fake batch of cached caption embeddings.

The text encoders are not in the trace: their outputs are cached and T5 and CLIP leave the
GPU once the cache is built (what the backend does by default); the cached embeddings of a
batch are. A step is the backend's own flow-matching loss on the family's layout (FLUX.1
packs 2x2 latents).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import Config, PlanModel


def flow_planner(config: Config, folder: Path, family: str, section: Any) -> PlanModel:
    import torch
    from diffusers import AutoencoderKL

    from lorakit_sd import families
    from lorakit_sd.backend import DEFAULT_RESOLUTION
    from lorakit_sd.families.transformer import FlowTrainModule
    from lorakit_sd.models import quiet_libraries
    from lorakit_sd.plan import DTYPE_NAMES, _smaller, count_images

    spec = families.get(family)
    train = config.train
    cls = spec.transformer_class()
    with quiet_libraries():
        t_config = cls.load_config(folder, subfolder="transformer")
        vae_config = AutoencoderKL.load_config(folder, subfolder="vae")
    dtype = getattr(torch, DTYPE_NAMES[train.mixed_precision])
    resolution = section.resolution or DEFAULT_RESOLUTION[family]
    side = resolution // 2 ** (len(vae_config["block_out_channels"]) - 1)
    channels = int(vae_config["latent_channels"])
    tokens = int(section.max_sequence_length or spec.default_sequence_length)
    width = int(t_config["joint_attention_dim"])
    pooled = int(t_config["pooled_projection_dim"])
    batch = train.batch_size
    guidance = section.guidance if t_config.get("guidance_embeds") else None

    def build(checkpointing: bool) -> Any:
        from peft import LoraConfig

        with torch.device("meta"), quiet_libraries():
            transformer = cls.from_config(t_config).to(dtype)
            transformer.add_adapter(
                LoraConfig(
                    r=train.lora_rank,
                    lora_alpha=train.alpha,  # type: ignore[arg-type]
                    lora_dropout=train.lora_dropout,
                    target_modules=spec.expand_targets(train.target_modules),
                    init_lora_weights="gaussian",
                )  # fmt: skip
            )
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        module = FlowTrainModule(spec, None, transformer, None, False, tokens, guidance)
        module.train()
        return module

    def fake_batch() -> dict[str, Any]:
        return {
            "latents": torch.randn(batch, channels, side, side),
            "noise": torch.randn(batch, channels, side, side),
            "sigmas": torch.rand(batch),
            "hidden": torch.randn(batch, tokens, width),
            "pooled": torch.randn(batch, pooled),
        }

    def loss(module: Any, b: dict[str, Any]) -> Any:
        s = b["sigmas"].view(-1, 1, 1, 1)
        noisy = (1 - s) * b["latents"] + s * b["noise"]
        pred = module(
            noisy.to(dtype), b["sigmas"] * 1000, b["hidden"].to(dtype), b["pooled"].to(dtype)
        )
        err = (pred.float() - (b["noise"] - b["latents"]).float()) ** 2
        return err.mean(dim=tuple(range(1, err.ndim))).sum()

    from lorakit_sd.plan_rungs import flow_rungs, quantized, text_encoder_bytes

    cached = batch * (tokens * width + pooled) * dtype.itemsize
    stored = section.base_quantization or str(dtype).removeprefix("torch.")
    text = "off the GPU after caching" if section.text_cache_enabled() else "on the GPU"
    return PlanModel(
        build=build, batch=fake_batch, loss=loss,
        description=f"{spec.label} transformer, {stored} weights (T5 and CLIP {text})",
        per_step=f"{batch} image{'s' if batch > 1 else ''} of {resolution}×{resolution}",
        autocast_dtype=dtype if train.mixed_precision != "no" else None,
        caches={"caption embeddings (one batch)": cached,
                **text_encoder_bytes(Path(folder), spec, section, dtype.itemsize)},
        rungs=flow_rungs(train, section), **quantized(section, cls, t_config, dtype.itemsize),
        items=count_images(config, section), resolution_key="sd.resolution",
        resolution=resolution, resolution_steps=_smaller(resolution),
    )  # fmt: skip
