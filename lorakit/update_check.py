"""Is a newer lorakit out? Asks the package index's JSON API, caches the answer a day.

``lorakit version --check`` asks (3 s timeout, "could not check" offline); ``lorakit train``
only reads the cache and prints one quiet line. ``LORAKIT_NO_UPDATE_CHECK=1`` disables both
the line and any network access from train. ``LORAKIT_INDEX_URL`` points at another index.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from lorakit import __version__

DEFAULT_INDEX = "https://pypi.org/pypi"
CACHE_TTL_S = 24 * 3600
TIMEOUT_S = 3.0


def index_url() -> str:
    return os.environ.get("LORAKIT_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def cache_path() -> Path:
    from platformdirs import user_cache_dir

    base = os.environ.get("LORAKIT_CACHE_DIR") or user_cache_dir("lorakit")
    return Path(base) / "update-check.json"


@dataclass
class Release:
    name: str
    installed: str
    latest: str | None
    changes: list[str]
    error: str | None = None

    @property
    def behind(self) -> bool:
        if self.latest is None:
            return False
        try:
            return Version(self.latest) > Version(self.installed)
        except InvalidVersion:
            return False


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(data: dict[str, Any]) -> None:
    from lorakit.io import write_text

    with contextlib.suppress(Exception):  # a read-only home must not break anything
        write_text(cache_path(), json.dumps(data))


def _changelog_lines(info: dict[str, Any], installed: str, latest: str) -> list[str]:
    """Changelog entries between the installed and latest version, when the index has them.

    Reads a Keep-a-Changelog text from the release description (``## [x.y.z]`` headings).
    """
    text = info.get("description") or ""
    lines, keep = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            head = line[3:].strip().strip("[]").split("]")[0].split()[0] if line[3:].strip() else ""
            try:
                v = Version(head.strip("[]"))
                keep = Version(installed) < v <= Version(latest)
            except InvalidVersion:
                keep = False
        if keep and line.strip():
            lines.append(line)
    return lines


def fetch(name: str, installed: str, *, use_cache: bool = True) -> Release:
    """The newest release of distribution ``name`` on the index (cached for a day)."""
    cache = _read_cache()
    url = f"{index_url()}/{name}/json"
    hit = cache.get(url)
    if use_cache and hit and time.time() - hit.get("t", 0) < CACHE_TTL_S:
        return Release(
            name,
            installed,
            hit.get("latest"),
            _changelog_lines(hit, installed, hit.get("latest") or installed),
        )
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310
            data = json.loads(response.read().decode("utf-8"))
        latest = str(data["info"]["version"])
    except (OSError, urllib.error.URLError, ValueError, KeyError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return Release(name, installed, None, [], error=f"could not check ({reason})")
    cache[url] = {
        "t": time.time(),
        "latest": latest,
        "description": data["info"].get("description", ""),
    }
    _write_cache(cache)
    return Release(name, installed, latest, _changelog_lines(data["info"], installed, latest))


def check_all(plugins: Any = None) -> list[Release]:
    """lorakit and every installed plugin distribution."""
    from lorakit.provenance import plugin_versions

    names = {"lorakit": __version__, **plugin_versions(plugins)}
    return [fetch(name, version) for name, version in names.items()]


def quiet_notice() -> str | None:
    """One line for ``train`` when the cache knows a newer lorakit; never touches the network."""
    if os.environ.get("LORAKIT_NO_UPDATE_CHECK", "").strip() not in {"", "0"}:
        return None
    hit = _read_cache().get(f"{index_url()}/lorakit/json")
    if not hit or not hit.get("latest"):
        return None
    release = Release("lorakit", __version__, hit["latest"], [])
    if release.behind:
        return f"lorakit {release.latest} is out (you have {__version__}): pip install -U lorakit"
    return None
