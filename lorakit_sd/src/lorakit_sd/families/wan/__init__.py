"""Wan 2.1 / 2.2 video models: a 3D transformer on 4x-time, 8x-space latents, UMT5 captions."""

from __future__ import annotations

from lorakit.api import FileKind, lazy
from lorakit_sd.families import FamilySpec


def describe_file(names: list[str]) -> FileKind | None:
    """What ``lorakit inspect`` says of a LoRA file in ComfyUI's Wan layout (None: not one)."""
    if not names or not all(k.startswith("diffusion_model.") for k in names):
        return None
    if not any(".self_attn." in k or ".cross_attn." in k or ".ffn." in k for k in names):
        return None
    return FileKind(
        "ComfyUI Wan LoRA (diffusion_model.<original Wan module>)",
        groups={"diffusion_model.": "transformer"},
        kohya_names=False,
    )


SPEC = FamilySpec(
    name="wan",
    order=60,
    label="Wan 2.1 / 2.2",
    factory=lazy("lorakit_sd.families.wan.family:Wan"),
    description="Wan 2.1 / 2.2 video transformers (diffusers folders): text-to-video, "
    "image-to-video, two-expert A14B",
    describe=describe_file,
    template=("wan21-t2v", "lorakit_sd", "families/wan/wan21-t2v.yaml"),
    more_templates=(("wan22-i2v", "lorakit_sd", "families/wan/wan22-i2v.yaml"),),
)
