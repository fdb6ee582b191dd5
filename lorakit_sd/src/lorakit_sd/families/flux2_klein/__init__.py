"""FLUX.2 klein: FLUX.2's transformer, smaller, without guidance embedding; Qwen3 captions."""

from __future__ import annotations

from lorakit.api import lazy
from lorakit_sd.families import FamilySpec

SPEC = FamilySpec(
    name="flux2_klein",
    order=34,
    label="FLUX.2 klein",
    factory=lazy("lorakit_sd.families.flux2_klein.family:Flux2Klein"),
    description="FLUX.2 klein 4B / 9B transformer (diffusers folders, BFL / ComfyUI split files)",
    describe=None,  # FLUX.2's files are told apart by their metadata (flux2 describes them)
    template=("flux2-klein", "lorakit_sd", "families/flux2_klein/flux2_klein.yaml"),
)
