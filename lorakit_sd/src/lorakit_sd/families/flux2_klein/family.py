"""FLUX.2 klein (4B, 9B): FLUX.2's transformer and latents, captions from Qwen3's hidden
states 9, 18 and 27 (``Flux2KleinPipeline.encode_prompt``, its chat template without
thinking), no guidance embedding (previews use classifier-free guidance, as the pipeline
does for the base models; the step-distilled ones ignore it)."""

from __future__ import annotations

from typing import Any

from lorakit_sd.families.flux2.family import Flux2
from lorakit_sd.families.flux2_klein import SPEC


class Flux2Klein(Flux2):
    name = SPEC.name
    label = SPEC.label
    default_config_repo = "black-forest-labs/FLUX.2-klein-base-4B"
    base_model_version = "flux2_klein"
    architecture = "Flux.2-klein/lora"
    sequence_encoder = caption_encoders = "Qwen3"
    pipeline_names = ("Flux2KleinPipeline",)
    encoder_prefix = "Qwen3"
    lora_key_priority = 36

    def has_guidance(self, keys: set[str]) -> bool:
        return "guidance_in.in_layer.weight" not in keys

    def claims_lora_keys(self, keys: Any) -> bool:
        return False  # without metadata, a FLUX.2 file reads as dev's (same modules)

    def pipeline_class(self) -> Any:
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline

    def variant(self, transformer: Any) -> str:
        return "klein"
