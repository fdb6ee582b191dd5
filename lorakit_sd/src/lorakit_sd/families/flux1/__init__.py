"""FLUX.1 dev / schnell: a transformer on packed latents, CLIP + T5, flow matching."""

from __future__ import annotations

from lorakit.api import FileKind, lazy
from lorakit_sd.families import FamilySpec


def describe_file(names: list[str]) -> FileKind | None:
    """What ``lorakit inspect`` says of a kohya file in BFL's layout (None: not one)."""
    if not any(
        k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in names
    ):
        return None
    fused = ("_img_attn_qkv.", "_txt_attn_qkv.", "_linear1.")
    notes = (
        (
            "q/k/v (a single block's linear1: and its MLP) are one fused layer in this layout: "
            "its rank is the sum of the parts' ranks",
        )
        if any(f in k for k in names for f in fused)
        else ()
    )
    groups = {"lora_unet_": "transformer", "lora_te1_": "text_encoder"}
    return FileKind("kohya / BFL FLUX.1 LoRA", groups=groups, kohya_names=True, notes=notes)


SPEC = FamilySpec(
    name="flux1",
    order=40,
    label="FLUX.1",
    factory=lazy("lorakit_sd.families.flux1.family:Flux1"),
    description="FLUX.1 dev / schnell transformer (BFL and GGUF files, diffusers folders)",
    describe=describe_file,
    template=("flux1", "lorakit_sd", "families/flux1/flux1.yaml"),
)
