"""The tiny Z-Image written as ComfyUI users keep it (tests of :mod:`.single_file`): the
transformer in the original layout (bf16, or ComfyUI's scaled fp8), Qwen3 under the causal
LM's names (``model.layers.N``), FLUX.1's VAE in its original layout, a configs-only folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.families.ldm import vae_to_ldm
from lorakit_sd.families.split_standin import transformer_file, write_comfy_folders
from lorakit_sd.families.zimage.single_file import diffusers_to_original


def write_split_files(pipe: Any, root: Path, config_dir: Path, fp8: bool = False) -> Path:
    """ComfyUI's ``models/`` folders under ``root`` and ``root/configs``; the transformer file."""
    state = diffusers_to_original(dict(pipe.transformer.state_dict()))
    parts = {
        "text_encoders": (
            "qwen_3_4b.safetensors",
            {f"model.{k}": v for k, v in pipe.text_encoder.state_dict().items()},
        ),
        "vae": (  # ae.safetensors has no first_stage_model. prefix
            "ae.safetensors",
            {
                k.removeprefix("first_stage_model."): v
                for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()
            },
        ),
    }
    return write_comfy_folders(root, config_dir, transformer_file(state, fp8, "z_image"), parts)
