"""Stable Diffusion 1.x: a UNet, one CLIP text encoder, DDPM noise prediction."""

from __future__ import annotations

from lorakit.api import lazy
from lorakit_sd.families import FamilySpec

SPEC = FamilySpec(
    name="sd1",
    order=10,
    label="SD1.x",
    factory=lazy("lorakit_sd.families.sd1.family:SD1"),
    description="Stable Diffusion 1.x UNet (LDM single files, diffusers folders)",
    template=("sd15", "lorakit_sd", "families/sd1/sd15.yaml"),
)
