"""Where a run came from: versions, config hash, host, git commit.

``run.json`` in every output folder and the metadata of every exported file carry this,
so any LoRA can be traced to the lorakit, plugins, libraries and config that made it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import re
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorakit import PLUGIN_API_VERSION, __version__

LIBRARIES = (
    "torch",
    "accelerate",
    "diffusers",
    "transformers",
    "peft",
    "safetensors",
    "tokenizers",
    "bitsandbytes",
    "deepspeed",
    "gguf",
    "dadaptation",
    "prodigyopt",
)


def package_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in LIBRARIES}


def plugin_versions(plugins: Any = None) -> dict[str, str]:
    """Distribution → version for every loaded third-party plugin."""
    from lorakit.plugins import get_plugins

    plugins = plugins or get_plugins()
    return {
        info.distribution: info.version
        for info in plugins.infos.values()
        if not info.builtin and info.status == "ok"
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def iso_time(seconds: float) -> str:
    """A Unix time as run.json writes times (UTC, ISO 8601, seconds)."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run_record(config: Any, *, plugins: Any = None, **extra: Any) -> dict[str, Any]:
    """The content of run.json."""
    record: dict[str, Any] = {
        "lorakit": __version__,
        "plugin_api": PLUGIN_API_VERSION,
        "backend": config.backend,
        "plugins": plugin_versions(plugins),
        "libraries": library_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "config_hash": config.semantic_hash(),
        "config_file": str(config.path) if config.path else None,
        "config_git_commit": git_commit(config.path.resolve().parent) if config.path else None,
    }
    record.update(extra)
    return record


def file_metadata(config: Any, *, plugins: Any = None) -> dict[str, str]:
    """Provenance for an exported file's metadata (all values strings)."""
    return {
        "lorakit.version": __version__,
        "lorakit.backend": config.backend,
        "lorakit.plugins": json.dumps(plugin_versions(plugins), sort_keys=True),
        "lorakit.config_hash": config.semantic_hash(),
        "lorakit.config": json.dumps(
            shareable_config(config.to_dict()), sort_keys=True, default=str
        ),
    }


PATH_KEYS = ("base_model", "train_data_dir", "metadata_path", "output_dir")
PATH_SUFFIXES = ("_path", "_dir", "_file", "_model", "_data")
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")


def _is_path(key: str, value: str) -> bool:
    from lorakit.config.schema import HUB_ID

    if HUB_ID.match(value) and not Path(value).expanduser().exists():
        return False  # a hub id: the same for everyone
    if key in PATH_KEYS or key.endswith(PATH_SUFFIXES):
        return True
    return value.startswith(("/", "~", "./", "../", "\\\\")) or bool(_WINDOWS_ABS.match(value))


def shareable_config(data: Any, key: str = "") -> Any:
    """The config as it goes into files people share: local paths cut to their last part.

    Every depth is scrubbed (backend sections, subsets, lists): a value under a path-like
    key (``*_dir``, ``*_path``, ``base_model``, ...) or any absolute or ``./`` path becomes
    its last part, so ``/home/me/models/v1-5-pruned.safetensors`` becomes
    ``v1-5-pruned.safetensors``. Hub ids stay whole. run.json, which stays on the user's
    disk, keeps full paths.
    """
    if isinstance(data, dict):
        return {k: shareable_config(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [shareable_config(v, key) for v in data]
    if isinstance(data, str) and data and _is_path(key, data):
        return Path(data.replace("\\", "/")).name
    return data
