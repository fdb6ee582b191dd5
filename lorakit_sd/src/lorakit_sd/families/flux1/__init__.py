"""FLUX.1 dev / schnell: a transformer on packed latents, CLIP + T5, flow matching."""

from __future__ import annotations

from lorakit.api import lazy
from lorakit_sd.families import FamilySpec

SPEC = FamilySpec(
    name="flux1", label="FLUX.1", factory=lazy("lorakit_sd.families.flux1.family:Flux1"),
    description="FLUX.1 dev / schnell transformer (BFL and GGUF files, diffusers folders)",
    template=("flux1", "lorakit_sd", "families/flux1/flux1.yaml"),
)  # fmt: skip
