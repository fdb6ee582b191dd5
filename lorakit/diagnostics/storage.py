"""``lorakit doctor``'s checks of where things are written: the run's folder and the
Hugging Face cache (writable, free space, offline mode)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lorakit.diagnostics.checks import Check
from lorakit.env import env_flag

GiB = 1024**3
#: Free space below which the output folder gets ✗ / ⚠ (checkpoints, caches, exports).
DISK_FAIL_BYTES = 1 * GiB
DISK_WARN_BYTES = 10 * GiB
#: Free space below which the Hugging Face cache gets ⚠ (one SDXL base is ~7 GB).
HF_CACHE_WARN_BYTES = 20 * GiB


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(output_dir: Path) -> Check:
    """Free space and write access where the run will write."""
    where = _existing(output_dir)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check("disk", "warn", f"cannot read free space of {where}: {exc.strerror}")
    text = f"{free / GiB:.1f} GiB free for {output_dir}"
    if not os.access(where, os.W_OK):
        return Check("disk", "fail", f"{where} is not writable", "choose another output_dir")
    if free < DISK_FAIL_BYTES:
        return Check("disk", "fail", text, "free some space or choose another output_dir")
    if free < DISK_WARN_BYTES:
        return Check(
            "disk",
            "warn",
            text + " (checkpoints and caches may not fit)",
            "free some space, lower save_total_limit, or choose another output_dir",
        )
    return Check("disk", "ok", text)


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (its environment variables, in its order)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env["HUGGINGFACE_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "huggingface" / "hub"


def check_hf() -> Check:
    """The Hugging Face cache (writable, free space) and the offline settings."""
    cache = hf_cache_dir()
    where = _existing(cache)
    offline = env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")
    mode = (
        "offline (HF_HUB_OFFLINE): hub ids load only from this cache"
        if offline
        else "online: hub ids download on first use"
    )
    token = ", token set" if os.environ.get("HF_TOKEN") else ""
    if not os.access(where, os.W_OK):
        if offline:
            return Check("hf", "ok", f"cache {cache} (read-only), {mode}{token}")
        return Check(
            "hf",
            "warn",
            f"cache {cache} is not writable: downloads will fail",
            "set HF_HOME to a writable folder",
        )
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    room = f", {free / GiB:.0f} GiB free" if free is not None else ""
    if free is not None and free < HF_CACHE_WARN_BYTES and not offline:
        return Check(
            "hf",
            "warn",
            f"cache {cache}{room}: little room for base models, {mode}",
            "set HF_HOME to a bigger disk, or clean it with `hf cache delete`",
        )
    return Check("hf", "ok", f"cache {cache}{room}, {mode}{token}")
