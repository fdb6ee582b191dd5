"""``lorakit selftest``'s reload check for the sd backend, with diffusers as the client.

Each exported LoRA file (kohya and diffusers layouts) goes through the pipeline's
``load_lora_weights`` on a freshly loaded base: diffusers drops keys it does not
understand without a word, so the check counts the LoRA layers it injected against the
modules the file holds, and the UNet's output must change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.models import load_base, quiet_libraries


def _unet_output(pipe: Any, latents: Any, hidden: Any) -> Any:
    import torch

    unet = pipe.unet
    kwargs: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = (
            unet.config.projection_class_embeddings_input_dim
            - 6 * unet.config.addition_time_embed_dim
        )
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.ones(1, pooled),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]),
        }
    with torch.no_grad():
        return unet(latents, 10, encoder_hidden_states=hidden, **kwargs).sample


def verify(output_dir: Path, config: Any) -> str:
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open

    files = sorted(Path(output_dir).glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"no LoRA file in {output_dir}")
    section = config.section
    details = []
    for file in files:
        with quiet_libraries():
            base = load_base(
                config.train.base_model,
                base_config=section.base_config,
                model_family=section.model_family,
            )
        pipe = base.pipe
        unet = pipe.unet
        torch.manual_seed(0)
        latents = torch.randn(1, unet.config.in_channels, 8, 8)
        cross = unet.config.cross_attention_dim
        hidden = torch.randn(1, 77, cross if isinstance(cross, int) else cross[0])
        before = _unet_output(pipe, latents, hidden)
        with safe_open(str(file), "pt") as handle:
            keys = list(handle.keys())
        in_file = sum(k.endswith((".lora_down.weight", ".lora_A.weight")) for k in keys)
        with quiet_libraries():
            pipe.load_lora_weights(str(file))
        models = [pipe.unet, *base.text_encoders]
        injected = sum(isinstance(m, BaseTunerLayer) for model in models for m in model.modules())
        if in_file == 0 or injected != in_file:
            raise RuntimeError(
                f"{file.name}: diffusers injected {injected} LoRA layers for the {in_file} "
                "modules in the file"
            )
        moved = float((_unet_output(pipe, latents, hidden) - before).abs().max())
        if not moved > 0:
            raise RuntimeError(f"{file.name}: the LoRA does not change the UNet's output")
        details.append(f"{file.name}: {injected} layers")
    return "diffusers load_lora_weights: " + "; ".join(details)
