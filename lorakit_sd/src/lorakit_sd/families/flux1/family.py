"""FLUX.1 (dev, schnell): a transformer on 2x2-packed 16-channel latents, CLIP pooled + T5.

dev has a guidance embedding (trained at ``sd.guidance``, default 1.0, as sd-scripts and
diffusers' example do); schnell has none. Latents are packed as the pipeline packs them
(``FluxPipeline._pack_latents``, image ids from ``_prepare_latent_image_ids``); σ's shift
depends on the image's token count (the scheduler's dynamic shifting).
"""

from __future__ import annotations

from typing import Any

from lorakit_sd.families.base import Objective, PartialClient
from lorakit_sd.families.flow import FlowMatchObjective
from lorakit_sd.families.flux1 import SPEC
from lorakit_sd.families.flux1.kohya import from_bfl, to_bfl
from lorakit_sd.families.flux1.single_file import diffusers_to_bfl, load_transformer
from lorakit_sd.families.transformer import FlowFamily
from lorakit_sd.lorafiles.names import to_kohya

ATTN = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
ALL_LINEAR = ATTN + [
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "proj_mlp",
    "proj_out",
    "norm1.linear",
    "norm1_context.linear",
    "norm.linear",
]


#: kohya sd-scripts' ``networks/lora_flux.py`` applies every linear layer of the transformer
#: (attention included) but the final one, BFL's ``final_layer.linear`` (diffusers' top-level
#: ``proj_out``). A1111 does not load FLUX.1 at all; Forge, ComfyUI and diffusers apply it all.
SD_SCRIPTS_FLUX = PartialClient(
    "kohya sd-scripts' lora_flux",
    r"^(?!proj_out$)",
    "every linear layer but the final one (final_layer.linear)",
    "diffusers, ComfyUI and Forge",
)


class Flux1(FlowFamily):
    name = SPEC.name
    label = SPEC.label
    default_resolution = 1024
    default_config_repo = "black-forest-labs/FLUX.1-dev"
    base_model_version = "flux1"
    architecture = "flux-1-dev/lora"
    implementation = "https://github.com/black-forest-labs/flux"
    network_module = "networks.lora_flux"
    kohya_text_prefixes = {"te1": "lora_te1_"}
    diffusers_text_prefixes = {"te1": "text_encoder"}
    latent_multiple = 2  # 2x2 packing
    transformer_file_layout = "BFL's layout"
    partial_clients = (SD_SCRIPTS_FLUX,)
    default_sequence_length = 512
    pipeline_names = ("FluxPipeline",)
    transformer_names = ("FluxTransformer2DModel",)
    target_presets = {"attn": ATTN, "all-linear": ALL_LINEAR}
    default_targets = ATTN

    lora_key_priority = 30

    def claims_lora_metadata(self, version: str, architecture: str) -> bool:
        return version.startswith("flux") or architecture.startswith("flux-1")

    def claims_lora_keys(self, keys: Any) -> bool:
        bfl = ("lora_unet_double_blocks_", "lora_unet_single_blocks_")
        return any(k.startswith((*bfl, "transformer.single_transformer_blocks.")) for k in keys)

    def kohya_file_entries(self, entries: dict[str, Any], layout: Any) -> dict[str, Any]:
        """BFL's fused layers, split into diffusers' modules."""

        return from_bfl(entries)

    def claims_keys(self, keys: set[str]) -> bool:
        return any(k.endswith("double_blocks.0.img_attn.qkv.weight") for k in keys)

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        """BFL's transformer file (``.safetensors`` or ``.gguf``), the other parts from
        ``config`` (a diffusers FLUX.1 folder or hub id)."""

        transformer = load_transformer(path, config, local)
        return self.pipeline_class().from_pretrained(
            config, transformer=transformer, local_files_only=local
        )

    def transformer_file_state(self, state: dict[str, Any], config: Any) -> dict[str, Any]:
        """BFL's layout, as ``flux1-dev.safetensors`` is (ComfyUI and Forge load it)."""

        return diffusers_to_bfl(state, config.num_layers, config.num_single_layers)

    def pipeline_class(self) -> Any:
        from diffusers import FluxPipeline

        return FluxPipeline

    def transformer_class(self) -> Any:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def text_encoders(self, pipe: Any) -> list[Any]:
        return [pipe.text_encoder]

    def tokenizers(self, pipe: Any) -> list[Any]:
        return [pipe.tokenizer, pipe.tokenizer_2]

    def t5(self, pipe: Any) -> tuple[Any, Any]:
        return pipe.tokenizer_2, pipe.text_encoder_2

    def sequence_length(self, pipe: Any, sec: Any) -> int:
        if sec.max_sequence_length:
            return int(sec.max_sequence_length)
        return 512 if self.uses_guidance(pipe.transformer) else 256  # dev 512, schnell 256

    def uses_guidance(self, transformer: Any) -> bool:
        return bool(transformer.config.guidance_embeds)

    def variant(self, transformer: Any) -> str:
        return "dev" if self.uses_guidance(transformer) else "schnell"

    def objective(self, pipe: Any, sec: Any) -> Objective:

        return FlowMatchObjective(pipe, sec, tokens_per_latent=0.25)

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        device = next(pipe.text_encoder.parameters()).device
        hidden, pooled, _ = pipe.encode_prompt(
            captions, device=device, max_sequence_length=max_tokens
        )
        return hidden, pooled

    def image_tokens(self, latents: Any, control: Any = None) -> tuple[Any, Any]:
        """``(packed tokens, image ids)`` of ``[B, C, H, W]`` latents, through the pipeline's
        own ``_pack_latents`` and ``_prepare_latent_image_ids``."""
        pipeline = self.pipeline_class()
        b, c, h, w = latents.shape
        packed = pipeline._pack_latents(latents, b, c, h, w)
        ids = pipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
        return packed, ids

    def denoise(
        self,
        transformer: Any,
        noisy: Any,
        timesteps: Any,
        hidden: Any,
        pooled: Any,
        guidance: Any,
        control: Any = None,
    ) -> Any:
        """Pack ``[B, C, H, W]`` into tokens (and an edit model's ``control`` latents after
        them), run the transformer, unpack its prediction of the image's tokens."""
        import torch

        b, c, h, w = noisy.shape
        packed, img_ids = self.image_tokens(noisy, control)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        out = transformer(
            hidden_states=packed,
            timestep=timesteps.to(noisy.dtype) / 1000,
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=hidden,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return self.pipeline_class()._unpack_latents(out[:, : (h // 2) * (w // 2)], h, w, 1)

    def kohya_tensors(self, modules: list[Any], denoiser: Any, dtype: Any) -> dict | None:
        """sd-scripts' layout: BFL names, fused q/k/v written exactly (rank 3r), CLIP ``lora_te1_``."""

        transformer = [m for m in modules if m.component == "transformer"]
        text = [m for m in modules if m.component != "transformer"]
        out = to_bfl(transformer, denoiser, dtype)
        out.update(to_kohya(text, self.name, None, dtype))  # type: ignore[arg-type]
        return out

    def run_metadata(self, sec: Any, denoiser: Any) -> dict[str, str]:
        """sd-scripts' FLUX.1 keys: the guidance trained at, the raw prediction, no T5 mask."""
        return {
            "ss_model_type": "flux",
            "ss_guidance_scale": f"{sec.guidance:g}",
            "ss_model_prediction_type": "raw",
            "ss_apply_t5_attn_mask": "False",
        }

    def format_metadata_for(self, transformer: Any) -> dict[str, str]:
        return {
            "ss_base_model_version": f"{self.base_model_version}",
            "modelspec.architecture": f"flux-1-{self.variant(transformer)}/lora",
            "modelspec.implementation": self.implementation,
        }
