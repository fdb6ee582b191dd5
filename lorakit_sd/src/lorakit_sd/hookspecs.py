"""The hooks lorakit-sd publishes for other plugins (added to lorakit's plugin manager).

lorakit-sd's entry-point module names this module in ``LORAKIT_HOOKSPECS``; lorakit adds it
to the same pluggy manager as its own hooks, so a package implements these exactly as it
implements ``register_backends``. Documented in docs/plugin-hooks.md (a test enforces it).
"""

from __future__ import annotations

from collections.abc import Callable

from lorakit.api import hookspec
from lorakit_sd.families import FamilySpec


@hookspec
def register_image_families(register: Callable[[FamilySpec], None]) -> None:
    """Register image model families the ``sd`` backend trains:
    ``register(FamilySpec(name="pixart", label="PixArt-Σ", factory=lazy("pkg.family:PixArt")))``."""
