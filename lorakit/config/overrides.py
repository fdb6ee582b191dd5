"""``--set key=value`` overrides from the command line."""

from __future__ import annotations

from typing import Any

import yaml

from lorakit.config.yaml_reader import _Loader
from lorakit.errors import ConfigError


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value parsed as a YAML scalar)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        parsed = yaml.load(value, Loader=_Loader) if value.strip() else None  # noqa: S506
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Apply ``--set`` items to ``data``; returns each overridden key path and its item."""
    applied: dict[tuple[str, ...], str] = {}
    for item in overrides:
        keys, value = parse_override(item)
        target = data
        for k in keys[:-1]:
            if target.get(k) is None:  # a missing or empty section
                target[k] = {}
            target = target[k]
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: '{k}' is not a section")
        target[keys[-1]] = value
        applied[tuple(keys)] = item
    return applied
