"""Config layout versions and the migrations between them.

A config may carry ``config_version``; one without it is read as the current layout.
Version 1 was the layout that used sd-scripts' key names (``network_dim``,
``train_batch_size``, a top-level ``resolution``...); each step below renames or moves keys
and returns one notice per change, which ``lorakit train`` prints and
``lorakit config migrate FILE`` writes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorakit.errors import ConfigError

#: v1 → v2: renamed top-level keys.
V1_RENAMES = {
    "network_dim": "lora_rank",
    "network_alpha": "lora_alpha",
    "network_dropout": "lora_dropout",
    "train_batch_size": "batch_size",
    "max_train_epochs": "epochs",
    "max_train_steps": "max_steps",
    "lr_scheduler_type": "lr_scheduler",
    "lr_warmup": "lr_warmup_steps",
    "output_path": "output_dir",
}
#: v1 → v2: top-level keys that moved into the sd section.
V1_TO_SD = ("resolution", "noise_offset", "min_snr_gamma", "cache_latents", "shuffle_caption")
V1_SD_RENAMES = {"shuffle_caption": "shuffle_tags"}


def _v1_to_v2(data: dict[str, Any]) -> list[str]:
    notices = []
    for old, new in V1_RENAMES.items():
        if old in data:
            if new in data:
                raise ConfigError(f"both '{old}' (old name) and '{new}' are set; keep '{new}'")
            data[new] = data.pop(old)
            notices.append(f"'{old}' is now '{new}'")
    for old in V1_TO_SD:
        if old in data:
            new = V1_SD_RENAMES.get(old, old)
            data.setdefault("sd", {})[new] = data.pop(old)
            notices.append(f"'{old}' moved to 'sd.{new}'")
    return notices


MIGRATIONS: dict[int, Callable[[dict[str, Any]], list[str]]] = {1: _v1_to_v2}


def migrate(data: dict[str, Any], *, file: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Bring ``data`` to the current layout; return it and the notices of what changed."""
    from lorakit.config import CONFIG_VERSION

    version = data.get("config_version", CONFIG_VERSION)
    if not isinstance(version, int) or version < 1 or version > CONFIG_VERSION:
        raise ConfigError(
            f"unsupported config_version {version!r} (this lorakit reads 1 to {CONFIG_VERSION})",
            key="config_version",
            file=file,
        )
    data = dict(data)
    notices: list[str] = []
    while version < CONFIG_VERSION:
        notices += [
            f"config_version {version}→{version + 1}: {n}" for n in MIGRATIONS[version](data)
        ]
        version += 1
    data["config_version"] = CONFIG_VERSION
    return data, notices
