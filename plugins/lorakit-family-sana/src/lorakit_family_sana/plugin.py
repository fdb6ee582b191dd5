"""Entry point: registers the ``sana`` image family with lorakit-sd. Imports nothing heavy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorakit_sd.api import FamilySpec

from lorakit.api import hookimpl, lazy

LORAKIT_PLUGIN_API = 2


@hookimpl
def register_image_families(register: Callable[[Any], None]) -> None:
    register(
        FamilySpec(
            name="sana",
            label="SANA",
            factory=lazy("lorakit_family_sana.family:Sana"),
            description="SANA 1.0 / 1.5 linear DiT (diffusers folders)",
            template=("sana", "lorakit_family_sana", "sana.yaml"),
        )
    )
