"""Z-Image LoRA files in the layout ComfyUI loads as it is.

ComfyUI runs Z-Image as its Lumina 2 "NextDiT" model, whose weights keep the original names
(``layers.N.attention.qkv``, fused). Its LoRA key map (``comfy/lora.py``) reads Z-Image LoRAs
by diffusers' module names through ``comfy.utils.z_image_to_diffusers`` (q, k and v land in
their slices of the fused ``qkv``), under any of ``diffusion_model.<path>``,
``transformer.<path>``, ``lycoris_<path with underscores>`` or the bare path. The file here
uses ``diffusion_model.<path>`` with ``.lora_down.weight``, ``.lora_up.weight`` and
``.alpha`` per module: no fusing, so every module is written exactly, and diffusers'
``ZImagePipeline`` reads it too (``_convert_non_diffusers_z_image_lora_to_diffusers``).
"""

from __future__ import annotations

from typing import Any

PREFIX = "diffusion_model."


def from_comfy(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``diffusion_model.<path>`` entries as ``transformer.<path>`` (others kept, refused by
    the caller)."""
    return {
        ("transformer." + stem.removeprefix(PREFIX) if stem.startswith(PREFIX) else stem): entry
        for stem, entry in entries.items()
    }
