"""Qwen-Image LoRA files in the layout ComfyUI loads as it is (musubi-tuner writes it).

ComfyUI's Qwen-Image model keeps diffusers' module names under ``diffusion_model.``, and its
LoRA key map (``comfy/lora.py``) takes, for every weight of it, the generic
``lora_unet_<path, dots as underscores>`` and, for Qwen-Image, ``<path>``,
``transformer.<path>`` and ``lycoris_<path with underscores>``. musubi-tuner's
``networks.lora_qwen_image`` writes the first, with ``.lora_down.weight``,
``.lora_up.weight`` and ``.alpha`` per module; diffusers' ``QwenImagePipeline`` reads it too
(``_convert_non_diffusers_qwen_lora_to_diffusers``). Names with underscores are turned back
into module paths by Qwen-Image's own module grammar (its modules' names hold underscores:
``to_q``, ``add_q_proj``, ``img_mlp``), so no model is needed to read a file.
"""

from __future__ import annotations

import re
from typing import Any

PREFIX = "lora_unet_"

#: a block's modules (dotted diffusers paths), by their flattened names
BLOCK_MODULES = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
    "img_mod.1",
    "txt_mod.1",
]
TOP_MODULES = [
    "img_in",
    "txt_in",
    "proj_out",
    "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.timestep_embedder.linear_2",
]
_BLOCK = {m.replace(".", "_"): m for m in BLOCK_MODULES}
_TOP = {m.replace(".", "_"): m for m in TOP_MODULES}
_STEM = re.compile(r"transformer_blocks_(\d+)_(.+)$")


def flat(path: str) -> str:
    """``lora_unet_`` + a transformer module path with dots as underscores."""
    return PREFIX + path.replace(".", "_")


def module_path(stem: str) -> str | None:
    """The transformer module path of a ``lora_unet_`` stem, or None where it names none."""
    name = stem.removeprefix(PREFIX)
    if name in _TOP:
        return _TOP[name]
    m = _STEM.match(name)
    if m is None or m[2] not in _BLOCK:
        return None
    return f"transformer_blocks.{m[1]}.{_BLOCK[m[2]]}"


def from_comfy(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """kohya-named entries -> ``transformer.<path>`` entries (unknown stems kept, refused by
    the caller)."""
    out: dict[str, dict[str, Any]] = {}
    for stem, entry in entries.items():
        path = module_path(stem) if stem.startswith(PREFIX) else None
        out[f"transformer.{path}" if path else stem] = entry
    return out
