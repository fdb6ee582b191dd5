"""The image model families lorakit-sd trains, each behind :class:`ModelFamily`.

``get(name)`` returns a family; ``of_keys`` / ``of_index`` recognise one from a single file's
tensor names or a diffusers ``model_index.json``. Importing this package loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: family name -> "module:Class" (imported on first use)
FAMILIES = {
    "sd1": "lorakit_sd.families.sd1:SD1",
    "sdxl": "lorakit_sd.families.sdxl:SDXL",
    "sd3": "lorakit_sd.families.sd3:SD3",
    "flux1": "lorakit_sd.families.flux1:Flux1",
}
#: what each family is called in messages (no import needed)
LABELS = {"sd1": "SD1.x", "sdxl": "SDXL", "sd3": "SD3 / SD3.5", "flux1": "FLUX.1"}
_cache: dict[str, Any] = {}


def get(name: str) -> Any:
    """The :class:`~lorakit_sd.families.base.ModelFamily` called ``name``."""
    if name not in _cache:
        module, cls = FAMILIES[name].split(":")
        _cache[name] = getattr(import_module(module), cls)()
    return _cache[name]


def all_families() -> list[Any]:
    return [get(name) for name in FAMILIES]


def of_keys(keys: Any) -> str | None:
    """The family whose single-file layout these tensor names are, or None."""
    keyset = set(keys)
    return next((f.name for f in all_families() if f.claims_keys(keyset)), None)


def of_index(index: dict[str, Any]) -> str | None:
    """The family a diffusers ``model_index.json`` describes, or None."""
    return next((f.name for f in all_families() if f.claims_index(index)), None)
