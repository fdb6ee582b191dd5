"""Qwen-Image: a 20B dual-stream transformer on packed latents, Qwen2.5-VL captions, flow
matching."""

from __future__ import annotations

from lorakit.api import FileKind, lazy
from lorakit_sd.families import FamilySpec


def describe_file(names: list[str]) -> FileKind | None:
    """What ``lorakit inspect`` says of a kohya-format file in ComfyUI's Qwen-Image layout."""
    if not any(k.startswith("lora_unet_transformer_blocks_") for k in names):
        return None
    return FileKind(
        "kohya / ComfyUI Qwen-Image LoRA (musubi-tuner's layout)",
        groups={"lora_unet_": "transformer"},
        kohya_names=True,
    )


SPEC = FamilySpec(
    name="qwen_image",
    order=60,
    label="Qwen-Image",
    factory=lazy("lorakit_sd.families.qwen_image.family:QwenImage"),
    description="Qwen-Image 20B transformer (diffusers folders; ComfyUI's split files)",
    describe=describe_file,
    template=("qwen-image", "lorakit_sd", "families/qwen_image/qwen-image.yaml"),
)
