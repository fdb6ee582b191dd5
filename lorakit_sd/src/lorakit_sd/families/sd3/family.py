"""SD3 / SD3.5 (medium, large): an MMDiT transformer on 16-channel latents; two CLIPs + T5.

Captions are encoded by ``StableDiffusion3Pipeline.encode_prompt``: both CLIPs' penultimate
states joined with T5's (``hidden``) and their projected pooled outputs (``pooled``). The
σ shift is the scheduler config's (3.0 for SD3 and SD3.5).
"""

from __future__ import annotations

from typing import Any

from lorakit_sd.families.sd3 import SPEC
from lorakit_sd.families.transformer import FlowFamily

ATTN = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
ALL_LINEAR = ATTN + [
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "norm1.linear",
    "norm1_context.linear",
]


class SD3(FlowFamily):
    name = SPEC.name
    label = SPEC.label
    default_resolution = 1024
    default_config_repo = "stabilityai/stable-diffusion-3.5-medium"
    base_model_version = "sd3"
    architecture = "stable-diffusion-3/lora"
    implementation = "diffusers"  # sd-scripts' value for SD3 LoRAs
    network_module = "networks.lora_sd3"
    kohya_text_prefixes = {"te1": "lora_te1_", "te2": "lora_te2_"}
    diffusers_text_prefixes = {"te1": "text_encoder", "te2": "text_encoder_2"}
    latent_multiple = 1
    default_sequence_length = 256
    pipeline_names = ("StableDiffusion3Pipeline",)
    transformer_names = ("SD3Transformer2DModel",)
    target_presets = {"attn": ATTN, "all-linear": ALL_LINEAR}
    default_targets = ATTN

    lora_key_priority = 20

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return version.startswith("sd3") or architecture.startswith("stable-diffusion-3")

    def claims_lora_keys(self, keys: Any) -> bool:
        return any(k.startswith("transformer.") for k in keys)

    def claims_keys(self, keys: set[str]) -> bool:
        return any(k.endswith("joint_blocks.0.x_block.attn.qkv.weight") for k in keys)

    def pipeline_class(self) -> Any:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def transformer_class(self) -> Any:
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def pixel_multiple(self, pipe: Any) -> int:
        vae = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        return vae * int(pipe.transformer.config.patch_size)

    def text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder, pipe.text_encoder_2]

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]

    def t5(self, pipe: Any) -> tuple[Any, Any]:
        return pipe.tokenizer_3, pipe.text_encoder_3

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        device = next(pipe.text_encoder.parameters()).device
        hidden, _, pooled, _ = pipe.encode_prompt(
            captions,
            None,
            None,
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_tokens,
        )
        return hidden, pooled

    def render_extras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"negative_prompt": kwargs.get("negative") or None}

    def run_metadata(self, sec: Any, denoiser: Any) -> dict[str, str]:
        """sd-scripts' SD3 keys: no attention masks on the CLIP or T5 states."""
        return {"ss_apply_lg_attn_mask": "False", "ss_apply_t5_attn_mask": "False"}

    def model_type(self, transformer: Any) -> str:
        """sd-scripts' SD3 model type (``medium``, ``5-medium``, ``5-large``): its
        ``ss_base_model_version`` and what follows ``stable-diffusion-3-``."""
        c = transformer.config
        if not c.get("qk_norm"):  # SD3 has no q/k norm, SD3.5 has; SD3.5 medium adds attn2
            return "medium"
        return "5-medium" if c.get("dual_attention_layers") else "5-large"

    def format_metadata_for(self, transformer: Any) -> dict[str, str]:
        kind = self.model_type(transformer)
        return {
            "ss_base_model_version": kind,
            "modelspec.architecture": f"stable-diffusion-3-{kind}/lora",
            "modelspec.implementation": self.implementation,
        }
