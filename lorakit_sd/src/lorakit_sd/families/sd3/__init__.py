"""SD3 / SD3.5: an MMDiT transformer, two CLIPs + T5, flow matching."""

from __future__ import annotations

from lorakit.api import lazy
from lorakit_sd.families import FamilySpec

SPEC = FamilySpec(
    name="sd3",
    order=30,
    label="SD3 / SD3.5",
    factory=lazy("lorakit_sd.families.sd3.family:SD3"),
    description="SD3 / SD3.5 MMDiT (all-in-one single files, diffusers folders)",
    template=("sd35", "lorakit_sd", "families/sd3/sd35.yaml"),
)
