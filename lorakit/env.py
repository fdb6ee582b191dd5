"""Environment variables that switch something on: one rule for all of them.

A flag is on when its value is ``1``, ``true``, ``yes`` or ``on`` (any case, surrounding
spaces ignored), the rule huggingface_hub applies to ``HF_HUB_OFFLINE``; anything else,
including unset or empty, is off.
"""

from __future__ import annotations

import os

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true value."""
    return os.environ.get(name, "").strip().lower() in TRUE_VALUES
