"""FLUX.1 Kontext: FLUX.1's transformer editing an input image by an instruction."""

from __future__ import annotations

from lorakit.api import lazy
from lorakit_sd.families import FamilySpec

SPEC = FamilySpec(
    name="kontext",
    # before FLUX.1: a Kontext folder holds a FLUX.1 transformer; its model_index.json
    # (FluxKontextPipeline) is what tells them apart
    order=35,
    label="FLUX.1 Kontext",
    factory=lazy("lorakit_sd.families.kontext.family:Kontext"),
    description="FLUX.1 Kontext dev: edit LoRAs from (control image, instruction, target)",
    template=("kontext", "lorakit_sd", "families/kontext/kontext.yaml"),
)
