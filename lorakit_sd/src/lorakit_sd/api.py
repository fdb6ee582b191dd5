"""The public API of lorakit-sd for packages that add image model families.

A family package imports lorakit from ``lorakit.api`` and lorakit-sd from here, nowhere
else (a test keeps the packages in ``plugins/`` to it)::

    from lorakit_sd.api import FamilySpec, ModelFamily

Importing this module imports no torch: ``FamilySpec``, ``ModelFamily``, ``Objective`` and
``Draw`` are plain classes. The building blocks that need torch (``DDPMObjective``,
``FlowMatchObjective``, ``TransformerFamily``, ``TransformerTrainModule``) are imported on
first access (``lorakit_sd.api.TransformerFamily``), so a family's entry-point module, which
imports only ``FamilySpec``, stays cheap for ``lorakit --help``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lorakit_sd.families import FamilySpec
from lorakit_sd.families.base import Draw, ModelFamily, Objective

#: name -> "module:attribute" of the torch-backed building blocks (imported on first use)
_HEAVY = {
    "DDPMObjective": "lorakit_sd.families.ddpm:DDPMObjective",
    "FlowMatchObjective": "lorakit_sd.families.flow:FlowMatchObjective",
    "TransformerFamily": "lorakit_sd.families.transformer:FlowFamily",
    "TransformerTrainModule": "lorakit_sd.families.transformer_module:FlowTrainModule",
}

__all__ = ["Draw", "FamilySpec", "ModelFamily", "Objective", *_HEAVY]


def __getattr__(name: str) -> Any:
    if name not in _HEAVY:
        raise AttributeError(f"module 'lorakit_sd.api' has no attribute {name!r}")
    module, attr = _HEAVY[name].split(":")
    return getattr(import_module(module), attr)
