"""FLUX.2 LoRA files in the layout ComfyUI loads without a converter: ``lora_unet_`` + the
BFL module path with ``_`` (``lora_unet_double_blocks_0_img_attn_qkv``), kohya's
``lora_down`` / ``lora_up`` / ``alpha``, as musubi-tuner writes FLUX.2 LoRAs.

ComfyUI's FLUX.2 model keeps BFL's module names (``double_blocks.N.img_attn.qkv``,
``single_blocks.N.linear1``...), and ``comfy/lora.py``'s generic rule maps every
``lora_unet_<path with _>`` to ``diffusion_model.<path>.weight``; diffusers reads the same
files (``Flux2LoraLoaderMixin``'s kohya conversion). Only a double block's q/k/v differ from
diffusers' modules: they are one fused layer in BFL's layout, written exactly as one LoRA of
rank 3r (downs stacked, ups block-diagonal, alpha scaled so alpha / rank is unchanged) and
split back exactly on reading. Single blocks are one layer in both layouts.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit_sd.families.flux1.kohya import from_bfl as fused_from_bfl
from lorakit_sd.families.flux1.kohya import to_bfl as fused_to_bfl
from lorakit_sd.families.flux2.single_file import layers


def groups(num_double: int, num_single: int) -> dict[str, list[str]]:
    """``lora_unet_<BFL stem>`` -> the diffusers transformer paths it stacks."""
    return {
        "lora_unet_" + name.replace(".", "_"): paths
        for name, paths in layers(num_double, num_single).items()
    }


def to_bfl(modules: list[Any], transformer: Any, dtype: Any) -> dict[str, torch.Tensor]:
    """The kohya / BFL tensors of a FLUX.2 transformer LoRA."""
    cfg = transformer.config
    return fused_to_bfl(modules, transformer, dtype, groups(cfg.num_layers, cfg.num_single_layers))


def from_bfl(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """kohya / BFL entries (by stem) -> diffusers transformer entries (by module path)."""
    return fused_from_bfl(entries, groups)
