"""FLUX.2 dev: a transformer on patchified latents, Mistral-3 captions, flow matching."""

from __future__ import annotations

from lorakit.api import FileKind, lazy
from lorakit_sd.families import FamilySpec


def describe_file(names: list[str]) -> FileKind | None:
    """What ``lorakit inspect`` says of a FLUX.2 kohya / BFL file (None: not one).

    Told from FLUX.1's files (same prefixes) by names only FLUX.2 has, or by single-block
    ``linear2`` LoRAs without FLUX.1's modulation layers (``img_mod``, ``modulation``)."""
    stems = [k.split(".", 1)[0] for k in names]
    if not any(
        s.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for s in stems
    ):
        return None
    own = any("stream_modulation" in s for s in stems)
    flux1 = any(s.endswith(("_img_mod_lin", "_txt_mod_lin", "_modulation_lin")) for s in stems)
    linear2 = any(
        s.startswith("lora_unet_single_blocks_") and s.endswith("_linear2") for s in stems
    )
    if not own and (flux1 or not linear2):
        return None
    notes = (
        "a double block's q/k/v are one fused layer (img_attn.qkv, txt_attn.qkv) in this "
        "layout: its rank is the sum of the parts' ranks",
    )
    return FileKind(
        "ComfyUI / musubi-tuner FLUX.2 LoRA (kohya names, BFL layout)",
        groups={"lora_unet_": "transformer"},
        kohya_names=True,
        notes=notes if any(s.endswith("_attn_qkv") for s in stems) else (),
    )


SPEC = FamilySpec(
    name="flux2",
    order=35,
    label="FLUX.2",
    factory=lazy("lorakit_sd.families.flux2.family:Flux2"),
    description="FLUX.2 dev transformer (diffusers folders, BFL / ComfyUI split files)",
    describe=describe_file,
    template=("flux2", "lorakit_sd", "families/flux2/flux2.yaml"),
)
