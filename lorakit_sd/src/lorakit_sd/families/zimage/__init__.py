"""Z-Image: a 6B single-stream transformer, Qwen3 captions, flow matching."""

from __future__ import annotations

from lorakit.api import FileKind, lazy
from lorakit_sd.families import FamilySpec


def describe_file(names: list[str]) -> FileKind | None:
    """What ``lorakit inspect`` says of a file in ComfyUI's Z-Image layout."""
    if any(k.startswith("diffusion_model.") and ".attention." in k for k in names):
        return FileKind(
            "ComfyUI Z-Image LoRA (diffusers module names under diffusion_model.)",
            groups={"diffusion_model.": "transformer"},
            kohya_names=True,
        )
    if any(k.startswith("lora_unet_layers_") and "_attention_" in k for k in names):
        return FileKind(
            "kohya / ComfyUI Z-Image LoRA (musubi-tuner's layout, original names)",
            groups={"lora_unet_": "transformer"},
            kohya_names=True,
            notes=("q/k/v are one fused layer (attention.qkv) in this layout",),
        )
    return None


SPEC = FamilySpec(
    name="zimage",
    order=70,
    label="Z-Image",
    factory=lazy("lorakit_sd.families.zimage.family:ZImage"),
    description="Z-Image / Z-Image Turbo 6B transformer (diffusers folders)",
    describe=describe_file,
    template=("z-image", "lorakit_sd", "families/zimage/z-image.yaml"),
)
