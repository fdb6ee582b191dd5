"""Qwen-Image: a 20B dual-stream transformer on 2x2-packed 16-channel latents, Qwen2.5-VL
captions, flow matching.

- **Captions** go through ``QwenImagePipeline.encode_prompt``: the prompt template, Qwen2.5-VL's
  last hidden state, the template's 34 system tokens dropped. Each caption's embedding has
  its own length; the text cache keeps it padded to the dataset's longest caption (at most
  ``sd.max_sequence_length``, default 512) with its mask as the second cached tensor, and a
  step cuts the batch to its longest caption
  (positions and mask unchanged: the pipeline's own padding to the longest prompt). The text
  encoder never takes LoRA.
- **Latents**: ``AutoencoderKLQwenImage`` encodes a one-frame video (``[B, C, 1, H, W]``);
  latents are normalised per channel, ``(z - latents_mean) / latents_std``, as the pipeline
  undoes them.
- **Objective**: flow matching (velocity ``ε - x0``), σ shifted by the image's packed token
  count through the pipeline's ``calculate_shift`` (the scheduler's dynamic shifting); the
  transformer reads σ as its timestep and the image's ``img_shapes`` for RoPE.
- **Bases**: a diffusers folder or hub id, or ComfyUI's split files (:mod:`.split_files`).
- **Files**: diffusers/PEFT keys (``transformer.<path>.lora_A.weight``) and the
  ``lora_unet_<path>`` layout ComfyUI and musubi-tuner use (:mod:`.kohya`).

Qwen-Image-Edit shares the transformer; a family for it subclasses this one and is tried
first (a lower ``FamilySpec.order``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lorakit_sd.families.llm_captions import LLMCaptionFamily, padded
from lorakit_sd.families.qwen_image import SPEC
from lorakit_sd.families.qwen_image.kohya import PREFIX, flat, from_comfy
from lorakit_sd.families.qwen_image.split_files import is_transformer, load_pipeline
from lorakit_sd.families.transformer import traced

ATTN = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
ALL_LINEAR = ATTN + [
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
    "img_mod.1",
    "txt_mod.1",
]


class QwenImage(LLMCaptionFamily):
    name = SPEC.name
    label = SPEC.label
    default_resolution = 1024
    default_config_repo = "Qwen/Qwen-Image"
    base_model_version = "qwen_image"
    architecture = "Qwen-Image/lora"
    implementation = "https://github.com/QwenLM/Qwen-Image"
    network_module = "networks.lora_qwen_image"
    sequence_encoder = caption_encoders = "Qwen2.5-VL"
    pipeline_names: ClassVar[tuple[str, ...]] = ("QwenImagePipeline",)
    transformer_names: ClassVar[tuple[str, ...]] = ("QwenImageTransformer2DModel",)
    target_presets = {"attn": ATTN, "all-linear": ALL_LINEAR}
    default_targets = ATTN
    lora_key_priority = 25  # before SD3, which claims any transformer. key

    # -- recognition and loading ---------------------------------------------------------
    def claims_lora_keys(self, keys: Any) -> bool:
        """ComfyUI / musubi keys (``lora_unet_transformer_blocks_``), or diffusers keys with
        Qwen-Image's own modules (``img_mlp``, ``txt_mod``...) or an ``attn.`` (not SANA's
        ``attn1``) in a block past SD3.5 Large's 38 (Qwen-Image has 60): an attention-only file on the first blocks alone, without
        metadata, reads as SD3's."""
        import re

        own = (".img_mlp.", ".txt_mlp.", ".img_mod.", ".txt_mod.")
        blocks = [re.match(r"transformer\.transformer_blocks\.(\d+)\.attn\.", k) for k in keys]
        return (
            any(k.startswith(PREFIX + "transformer_blocks_") for k in keys)
            or any(
                k.startswith("transformer.transformer_blocks.") and any(o in k for o in own)
                for k in keys
            )
            or any(int(m[1]) >= 38 for m in blocks if m)
        )

    def kohya_file_entries(self, entries: dict[str, Any], layout: Any) -> dict[str, Any]:
        return from_comfy(entries)

    def claims_keys(self, keys: set[str]) -> bool:
        return is_transformer(keys)

    def load_single_file(self, path: Any, keys: list[str], config: str, local: bool) -> Any:
        """ComfyUI's split files: the transformer file, the rest from ``config`` or beside
        it (:mod:`.split_files`)."""
        return load_pipeline(self, Path(path), config, local)

    def pipeline_class(self) -> Any:
        from diffusers import QwenImagePipeline

        return QwenImagePipeline

    def transformer_class(self) -> Any:
        from diffusers import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel

    # -- conditioning --------------------------------------------------------------------
    def caption_length(self, pipe: Any, caption: str) -> int:
        """The templated caption's tokens less the system prompt the pipeline drops."""
        text = pipe.prompt_template_encode.format(caption)
        return len(pipe.tokenizer(text).input_ids) - pipe.prompt_template_encode_start_idx

    def encode(self, pipe: Any, captions: list[str], max_tokens: int) -> tuple[Any, Any]:
        """(embeddings ``[B, max_tokens, D]``, mask ``[B, max_tokens]``) from the pipeline."""
        device = next(pipe.text_encoder.parameters()).device
        hidden, mask = pipe.encode_prompt(captions, device=device, max_sequence_length=max_tokens)
        lengths = [hidden.shape[1]] * len(hidden) if mask is None else mask.sum(dim=1).tolist()
        return padded([h[: int(n)] for h, n in zip(hidden, lengths, strict=True)], max_tokens)

    # -- latents -------------------------------------------------------------------------
    def encode_moments(self, vae: Any, pixels: Any) -> Any:
        """The posterior's mean ‖ log-variance of each image as a one-frame video."""
        import torch

        param = next(vae.parameters())
        with torch.no_grad():
            dist = vae.encode(pixels.to(param.device, param.dtype)[:, :, None]).latent_dist
        return dist.parameters[:, :, 0].float().contiguous()

    def normalize(self, latents: Any, vae_config: Any) -> Any:
        import torch

        shape = (1, -1, 1, 1)
        mean = torch.tensor(vae_config.latents_mean, device=latents.device).view(shape)
        std = torch.tensor(vae_config.latents_std, device=latents.device).view(shape)
        return ((latents - mean) / std).to(latents.dtype)

    def vae_factor(self, vae_config: Any) -> int:
        return int(2 ** len(vae_config["temperal_downsample"]))

    def latent_channels(self, vae_config: Any) -> int:
        return int(vae_config["z_dim"])

    def pixel_multiple(self, pipe: Any) -> int:
        return self.vae_factor(pipe.vae.config) * self.latent_multiple

    # -- objective and the transformer's call ----------------------------------------------
    def image_tokens(self, latents: Any, control: Any = None) -> tuple[Any, list[Any]]:
        """``(packed tokens, img_shapes entry)`` of ``[B, C, H, W]`` latents, packed by the
        pipeline's own ``_pack_latents``."""
        b, c, h, w = latents.shape
        return self.pipeline_class()._pack_latents(latents, b, c, h, w), [(1, h // 2, w // 2)]

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
        """Pack ``[B, C, H, W]`` as the pipeline does (an edit model's ``control`` latents
        after the image's), run the transformer, unpack the image's tokens."""
        b, c, h, w = noisy.shape
        hidden, mask = trim(hidden, pooled)
        packed, shapes = self.image_tokens(noisy, control)
        out = transformer(
            hidden_states=packed,
            timestep=timesteps.to(noisy.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states=hidden,
            encoder_hidden_states_mask=mask,
            img_shapes=[shapes] * b,
            return_dict=False,
        )[0]
        tokens = out[:, : (h // 2) * (w // 2)]
        return self.pipeline_class()._unpack_latents(tokens, h, w, 1)[:, :, 0]

    # -- previews ------------------------------------------------------------------------
    def render_guidance(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Qwen-Image's classifier-free guidance: ``true_cfg_scale`` against a negative prompt
        (a space when none is given, as Qwen-Image's own examples do)."""
        return {
            "guidance_scale": None,
            "true_cfg_scale": kwargs["guidance"],
            "negative_prompt": kwargs.get("negative") or " ",
        }

    def standin(self, directory: Any, seed: int = 0) -> Any:
        from lorakit_sd.families.qwen_image.standin import build_tiny_qwen_image

        return build_tiny_qwen_image(directory, seed)

    # -- files ---------------------------------------------------------------------------
    def kohya_stem(self, path: str) -> str:
        return flat(path)


def trim(hidden: Any, mask: Any) -> tuple[Any, Any]:
    """Cached embeddings cut to the batch's longest caption; the mask None where every token
    is a caption's (as ``encode_prompt`` returns them). Traced (fake) tensors stay whole."""
    import torch

    if mask is None or traced(mask):
        return hidden, mask
    keep = mask.bool()
    n = max(int(keep.sum(dim=1).max()), 1)
    hidden, keep = hidden[:, :n], keep[:, :n]
    return hidden, (None if bool(torch.all(keep)) else keep)
