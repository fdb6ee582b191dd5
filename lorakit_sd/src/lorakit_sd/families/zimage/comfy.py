"""Z-Image LoRA files in the layouts ComfyUI loads as they are.

ComfyUI runs Z-Image as its Lumina 2 "NextDiT" model, whose weights keep the original names
(``layers.N.attention.qkv``, fused). Its LoRA key map (``comfy/lora.py``) reads Z-Image LoRAs

- by diffusers' module names through ``comfy.utils.z_image_to_diffusers`` (q, k and v land
  in their slices of the fused ``qkv``), under any of ``diffusion_model.<path>``,
  ``transformer.<path>``, ``lycoris_<path with underscores>`` or the bare path: what lorakit
  writes (``diffusion_model.<path>`` with ``.lora_down.weight``, ``.lora_up.weight`` and
  ``.alpha``; every module exact, and diffusers' ``ZImagePipeline`` reads it too);
- by the original names as ``lora_unet_<name with underscores>`` (its rule for every model):
  what musubi-tuner's ``networks.lora_zimage`` writes, ``qkv`` fused. lorakit reads those,
  splitting a fused ``qkv`` exactly (:mod:`lorakit_sd.families.fused_lora`).
"""

from __future__ import annotations

import re
from typing import Any

from lorakit_sd.families.fused_lora import split

PREFIX = "diffusion_model."
#: musubi-tuner's / ComfyUI's flat original name (after ``lora_unet_``) -> diffusers path
_TOP = {
    "x_embedder": "all_x_embedder.2-1",
    "final_layer_linear": "all_final_layer.2-1.linear",
    "final_layer_adaLN_modulation_1": "all_final_layer.2-1.adaLN_modulation.1",
    "cap_embedder_1": "cap_embedder.1",
    "t_embedder_mlp_0": "t_embedder.mlp.0",
    "t_embedder_mlp_2": "t_embedder.mlp.2",
}
_BLOCK = {
    "attention_out": "attention.to_out.0",
    "feed_forward_w1": "feed_forward.w1",
    "feed_forward_w2": "feed_forward.w2",
    "feed_forward_w3": "feed_forward.w3",
    "adaLN_modulation_0": "adaLN_modulation.0",
}
_STEM = re.compile(r"lora_unet_(layers|noise_refiner|context_refiner)_(\d+)_(.+)$")


def from_comfy(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """ComfyUI-layout entries as ``transformer.<path>`` (unknown stems kept, refused by the
    caller)."""
    out: dict[str, dict[str, Any]] = {}
    for stem, entry in entries.items():
        if stem.startswith(PREFIX):
            out["transformer." + stem.removeprefix(PREFIX)] = entry
            continue
        m = _STEM.match(stem)
        if m and m[3] == "attention_qkv" and "tensors" not in entry:
            rows = int(entry["up"].shape[0]) // 3
            parts = split(entry["down"], entry["up"], entry["alpha"], [rows] * 3)
            for name, part in zip(("to_q", "to_k", "to_v"), parts, strict=True):
                if part is not None:
                    path = f"transformer.{m[1]}.{m[2]}.attention.{name}"
                    out[path] = {"down": part[0], "up": part[1], "alpha": part[2]}
        elif m and m[3] in _BLOCK:
            out[f"transformer.{m[1]}.{m[2]}.{_BLOCK[m[3]]}"] = entry
        elif stem.removeprefix("lora_unet_") in _TOP:
            out["transformer." + _TOP[stem.removeprefix("lora_unet_")]] = entry
        else:
            out[stem] = entry
    return out
