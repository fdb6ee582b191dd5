"""Z-Image (Turbo and base): a 6B single-stream transformer on 2x2 patches of 16-channel
latents, Qwen3 captions, flow matching.

- **Captions** go through ``ZImagePipeline.encode_prompt``: Qwen3's chat template, the
  second-to-last hidden state, each caption's tokens without padding. The text cache keeps
  them padded to the dataset's longest caption (at most ``sd.max_sequence_length``, default
  512) with their mask as the second cached tensor; a step hands the transformer each caption's own tokens again, as the pipeline does.
  Qwen3 never takes LoRA.
- **Latents**: FLUX.1's autoencoder, ``(z - shift_factor) * scaling_factor``.
- **Objective**: flow matching with the scheduler's fixed shift (3.0 for Z-Image Turbo). The
  transformer reads ``1 - σ`` as its timestep and predicts ``x0 - noise``; the prediction is
  negated, as the pipeline negates it, so the target is the usual ``noise - x0``.
- **Bases**: a diffusers folder or hub id, or the transformer file in the original layout
  with ``sd.base_config`` for the rest (:mod:`.single_file`); ``merge`` writes that layout.
- **Files**: diffusers/PEFT keys and ComfyUI's layout (:mod:`.comfy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lorakit_sd.families.llm_captions import LLMCaptionFamily, padded
from lorakit_sd.families.transformer import traced
from lorakit_sd.families.zimage import SPEC
from lorakit_sd.families.zimage.comfy import PREFIX, from_comfy
from lorakit_sd.families.zimage.single_file import (
    diffusers_to_original,
    is_original,
    load_pipeline,
)

ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
ALL_LINEAR = ATTN + ["feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0"]


class ZImage(LLMCaptionFamily):
    name = SPEC.name
    label = SPEC.label
    default_resolution = 1024
    default_config_repo = "Tongyi-MAI/Z-Image-Turbo"
    base_model_version = "z_image"
    architecture = "Z-Image/lora"
    implementation = "https://github.com/Tongyi-MAI/Z-Image"
    network_module = "networks.lora_zimage"
    caption_width_key = "cap_feat_dim"
    transformer_file_layout = "Z-Image's original layout (fused qkv)"
    sequence_encoder = caption_encoders = "Qwen3"
    pipeline_names: ClassVar[tuple[str, ...]] = ("ZImagePipeline",)
    transformer_names: ClassVar[tuple[str, ...]] = ("ZImageTransformer2DModel",)
    target_presets = {"attn": ATTN, "all-linear": ALL_LINEAR}
    default_targets = ATTN
    lora_key_priority = 25  # before SD3, which claims any transformer. key

    # -- recognition and loading ---------------------------------------------------------
    def claims_lora_keys(self, keys: Any) -> bool:
        return any(
            k.startswith((PREFIX, "transformer."))
            and (".attention.to_" in k or ".feed_forward." in k)
            for k in keys
        ) or any(k.startswith("lora_unet_layers_") and "_attention_" in k for k in keys)

    def kohya_file_entries(self, entries: dict[str, Any], layout: Any) -> dict[str, Any]:
        return from_comfy(entries)

    def claims_keys(self, keys: set[str]) -> bool:
        return is_original(keys)

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        """The transformer file in the original layout, the other parts from ``config`` or
        from ComfyUI's sibling files (:mod:`.single_file`)."""
        return load_pipeline(self, Path(path), config, local)

    def transformer_file_state(self, state: dict[str, Any], config: Any) -> dict[str, Any]:
        """The original layout, as ``z_image_turbo_bf16.safetensors`` (ComfyUI loads it)."""
        return diffusers_to_original(state)

    def pipeline_class(self) -> Any:
        from diffusers import ZImagePipeline

        return ZImagePipeline

    def transformer_class(self) -> Any:
        from diffusers import ZImageTransformer2DModel

        return ZImageTransformer2DModel

    # -- conditioning --------------------------------------------------------------------
    def caption_length(self, pipe: Any, caption: str) -> int:
        """The caption's tokens in Qwen3's chat template, as the pipeline templates it."""
        text = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": caption}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,
        )
        return len(pipe.tokenizer(text).input_ids)

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        """(embeddings ``[B, max_tokens, D]``, mask ``[B, max_tokens]``) from the pipeline."""

        device = next(pipe.text_encoder.parameters()).device
        embeds, _ = pipe.encode_prompt(
            list(captions),  # the pipeline writes the templated prompts into the list
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_tokens,
        )
        return padded(embeds, max_tokens)

    # -- objective and the transformer's call ----------------------------------------------
    def denoise(
        self, transformer: Any, noisy: Any, timesteps: Any, hidden: Any, pooled: Any, guidance: Any
    ) -> Any:
        """Each sample as a one-frame latent and its caption's own tokens, as the pipeline
        calls the transformer; the prediction negated as the pipeline negates it."""
        import torch

        latents = list(noisy.unsqueeze(2).unbind(dim=0))
        if traced(pooled):  # lorakit plan: every caption at its longest
            captions = list(hidden.unbind(dim=0))
        else:
            keep = pooled.bool()
            captions = [hidden[i][keep[i]] for i in range(hidden.shape[0])]
        t = 1.0 - timesteps.to(noisy.dtype) / 1000.0
        out = transformer(latents, t, captions, return_dict=False)[0]
        return -torch.stack([o.to(noisy.dtype) for o in out], dim=0).squeeze(2)

    # -- previews ------------------------------------------------------------------------
    def render_extras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"negative_prompt": kwargs.get("negative") or None}

    # -- files ---------------------------------------------------------------------------
    def kohya_stem(self, path: str) -> str:
        return PREFIX + path

    def standin(self, directory: Any, seed: int = 0) -> Any:
        from lorakit_sd.families.zimage.standin import build_tiny_zimage

        return build_tiny_zimage(directory, seed)
