"""Qwen-Image-Edit: Qwen-Image's transformer editing an input image by an instruction."""

from __future__ import annotations

from lorakit.api import lazy
from lorakit_sd.families import FamilySpec

SPEC = FamilySpec(
    name="qwen_image_edit",
    # before Qwen-Image: an edit folder holds Qwen-Image's transformer; its model_index.json
    # (QwenImageEditPipeline) is what tells them apart
    order=55,
    label="Qwen-Image-Edit",
    factory=lazy("lorakit_sd.families.qwen_image_edit.family:QwenImageEdit"),
    description="Qwen-Image-Edit: edit LoRAs from (control image, instruction, target)",
    template=("qwen-image-edit", "lorakit_sd", "families/qwen_image_edit/qwen-image-edit.yaml"),
)
