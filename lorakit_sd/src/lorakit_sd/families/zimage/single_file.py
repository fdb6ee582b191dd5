"""Z-Image as released and as ComfyUI keeps it: ``diffusion_models/z_image_turbo_bf16.safetensors``
(the transformer, original module names; bf16, fp8 or ComfyUI's scaled fp8),
``text_encoders/qwen_3_4b.safetensors`` (Qwen3, transformers' causal-LM names) and
``vae/ae.safetensors`` (FLUX.1's autoencoder in its original layout), with ``sd.base_config``
a diffusers Z-Image folder for configs and tokenizer (:mod:`lorakit_sd.families.split_files`).

The layout is the inverse of diffusers' ``convert_z_image_transformer_checkpoint_to_diffusers``:
q, k and v stacked by rows into ``attention.qkv``, ``attention.to_out.0`` named
``attention.out``, the q/k norms ``q_norm`` / ``k_norm``, and the patch embedder and final
layer without diffusers' ``all_..2-1`` keys. diffusers' ``from_single_file`` reads it back;
the VAE file through ``AutoencoderKL.from_single_file``, the text encoder through transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit_sd.families import split_files
from lorakit_sd.families.split_files import DIFFUSION_PREFIX, read, text_model

#: diffusers name piece -> original name piece
RENAMES = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_k.": ".attention.k_norm.",
    ".attention.norm_q.": ".attention.q_norm.",
}


def diffusers_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers Z-Image transformer state dict under the original names."""
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace(".to_q.", f".to_{n}.")] for n in "qkv"]
            out[key.replace(".to_q.", ".qkv.")] = torch.cat(parts, dim=0)
            continue
        for ours, theirs in RENAMES.items():
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def is_original(keys: Any) -> bool:
    """Whether tensor names are Z-Image's original transformer layout."""
    names = {k.removeprefix(DIFFUSION_PREFIX) for k in keys}
    return {"cap_embedder.1.weight", "layers.0.attention.qkv.weight"} <= names


def part_of(keys: Any) -> str | None:
    """``text_encoder`` (Qwen3: q/k norms in attention) or ``vae`` (FLUX.1's autoencoder, in
    the original or diffusers' names) when a file's tensor names are that part's."""
    names = set(keys)
    if any(k.endswith("layers.0.self_attn.q_norm.weight") for k in names):
        return "text_encoder"
    if {"encoder.down.0.block.0.norm1.weight", "decoder.up.0.block.0.norm1.weight"} <= names or {
        "encoder.down_blocks.0.resnets.0.norm1.weight",
        "decoder.up_blocks.0.resnets.0.norm1.weight",
    } <= names:
        return "vae"
    return None


def text_encoder(path: Path, config: str, local: bool) -> Any:
    from transformers import Qwen3Model

    return text_model(Qwen3Model, path, config, local)


def vae(path: Path, config: str, local: bool) -> Any:
    from diffusers import AutoencoderKL

    state = read(path)
    if "encoder.down.0.block.0.norm1.weight" in state:  # the original layout
        return AutoencoderKL.from_single_file(
            state, config=config, subfolder="vae", local_files_only=local
        )
    model = AutoencoderKL.from_config(
        AutoencoderKL.load_config(config, subfolder="vae", local_files_only=local)
    )
    model.load_state_dict(state, strict=True)
    return model


LOADERS = {"text_encoder": ("Qwen3 text encoder", text_encoder), "vae": ("Z-Image VAE", vae)}


def load_pipeline(family: Any, path: Path, config: str, local: bool) -> Any:
    """The pipeline of a transformer file, its other parts from ``config`` or siblings."""
    return split_files.load_pipeline(family, path, config, local, part_of, LOADERS)
