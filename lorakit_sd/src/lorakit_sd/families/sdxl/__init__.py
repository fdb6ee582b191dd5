"""SDXL: a UNet, two CLIP text encoders, size conditioning."""

from __future__ import annotations

from lorakit.api import lazy
from lorakit_sd.families import FamilySpec

SPEC = FamilySpec(
    name="sdxl",
    order=20,
    label="SDXL",
    factory=lazy("lorakit_sd.families.sdxl.family:SDXL"),
    description="SDXL UNet (SGM single files, diffusers folders)",
    template=("sdxl", "lorakit_sd", "families/sdxl/sdxl.yaml"),
)
