"""What ``lorakit export``, ``merge``, ``plan``, ``sample``, ``demo`` and ``selftest`` do for
image LoRAs, one module each; the helpers they share are here."""

from __future__ import annotations

from typing import Any

from lorakit.api import unsafe_pickle_allowed
from lorakit_sd.config import SDSection
from lorakit_sd.models import load_base


def section_of(config: Any) -> Any:
    """The config's ``sd:`` section (the defaults without a config)."""

    section = getattr(config, "section", None) if config is not None else None
    return section if isinstance(section, SDSection) else SDSection()


def load_model(base: str, section: Any, config: Any = None) -> Any:
    """The base model, read by the loader the config names (``model_loader``) or detects."""

    return load_base(
        base,
        base_config=section.base_config,
        model_family=section.model_family,
        allow_unsafe_pickle=unsafe_pickle_allowed(),  # the command's flag, never the config
        loader=getattr(getattr(config, "train", None), "model_loader", None),
    )
