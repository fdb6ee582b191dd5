"""Qwen-Image as ComfyUI users keep it (:mod:`lorakit_sd.families.split_files`).

ComfyUI's layout (``models/diffusion_models/qwen_image_bf16.safetensors``,
``models/text_encoders/qwen_2.5_vl_7b.safetensors``, ``models/vae/qwen_image_vae.safetensors``):

- the **transformer** keeps diffusers' names (``transformer_blocks.0.attn.to_q.weight``,
  sometimes under ``model.diffusion_model.``), in bf16, fp8 or ComfyUI's "scaled" fp8;
- the **text encoder** is Qwen2.5-VL in transformers 4's names (``model.layers.N``,
  ``visual.``), which transformers renames as it loads them;
- the **VAE** is Wan 2.1's original layout (``encoder.downsamples.N``), converted by
  diffusers' ``convert_wan_vae_to_diffusers`` (Qwen-Image's VAE has Wan's module names), or
  diffusers' own names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.families import split_files
from lorakit_sd.families.split_files import DIFFUSION_PREFIX, read, text_model


def is_transformer(keys: Any) -> bool:
    names = {k.removeprefix(DIFFUSION_PREFIX) for k in keys}
    return {"txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight"} <= names


def part_of(keys: Any) -> str | None:
    """``text_encoder`` / ``vae`` when a file's tensor names are that part's, else None."""
    names = set(keys)
    if any(k.endswith("layers.0.self_attn.q_proj.weight") for k in names) and not any(
        k.endswith("self_attn.q_norm.weight")
        for k in names  # Qwen3's
    ):
        return "text_encoder"
    if {"encoder.conv1.weight", "decoder.conv1.weight"} <= names or {
        "encoder.conv_in.weight",
        "decoder.conv_in.weight",
    } <= names:
        return "vae"
    return None


def text_encoder(path: Path, config: str, local: bool) -> Any:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return text_model(Qwen2_5_VLForConditionalGeneration, path, config, local)


def vae(path: Path, config: str, local: bool) -> Any:
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = read(path)
    if "encoder.conv1.weight" in state:  # Wan 2.1's original names
        state = convert_wan_vae_to_diffusers(state)
    cfg = AutoencoderKLQwenImage.load_config(config, subfolder="vae", local_files_only=local)
    model = AutoencoderKLQwenImage.from_config(cfg)
    model.load_state_dict(state, strict=True)
    return model


LOADERS = {
    "text_encoder": ("Qwen2.5-VL text encoder", text_encoder),
    "vae": ("Qwen-Image VAE", vae),
}


def load_pipeline(family: Any, path: Path, config: str, local: bool) -> Any:
    """The pipeline of a transformer file, its other parts from ``config`` or siblings."""
    return split_files.load_pipeline(family, path, config, local, part_of, LOADERS)
