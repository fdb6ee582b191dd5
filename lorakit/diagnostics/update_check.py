"""Is a newer lorakit out? Asks the package index's JSON API, caches the answer a day.

``lorakit version --check`` asks the index (``GET {index}/{name}/json``) about lorakit and
every installed plugin, all at once, and gives up after 3 s in total ("could not check",
never an error). Answers are cached for a day under the user cache dir
(``LORAKIT_CACHE_DIR`` overrides it), keyed by URL, so a second check within a day sends
nothing. ``lorakit train`` never touches the network: :func:`quiet_notice` only reads that
cache, and ``LORAKIT_NO_UPDATE_CHECK=1`` silences it. ``LORAKIT_INDEX_URL`` points at
another index (a mirror, a private index, a test server).

A third-party plugin installed from a local folder, a VCS URL or in editable mode is not
looked up: its name may not be on the public index, or may belong to someone else there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from lorakit import __version__
from lorakit.env import env_flag
from lorakit.registry import FIRST_PARTY

DEFAULT_INDEX = "https://pypi.org/pypi"
CACHE_TTL_S = 24 * 3600
TIMEOUT_S = 3.0
CACHE_FORMAT = 2
#: Index answers larger than this are refused (PyPI's answer for lorakit is a few kB).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: How much of a changelog is kept in the cache and shown.
MAX_CHANGELOG_LINES = 40


def index_url() -> str:
    """The index's JSON API base, e.g. ``https://pypi.org/pypi``."""
    return (os.environ.get("LORAKIT_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def cache_path() -> Path:
    """Where answers are cached (``LORAKIT_CACHE_DIR`` or the user cache dir)."""
    base = os.environ.get("LORAKIT_CACHE_DIR")
    if not base:
        from platformdirs import user_cache_dir

        base = user_cache_dir("lorakit")
    return Path(base) / "update-check.json"


def disabled() -> bool:
    """``LORAKIT_NO_UPDATE_CHECK`` is on (:func:`lorakit.env.env_flag`)."""
    return env_flag("LORAKIT_NO_UPDATE_CHECK")


def normalize(name: str) -> str:
    """PEP 503 name: ``Lorakit_SD`` → ``lorakit-sd``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str | None) -> Version | None:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


@dataclass
class Release:
    """One distribution: what is installed, what the index has, what changed between."""

    name: str
    installed: str
    latest: str | None
    changes: list[str] = field(default_factory=list)
    error: str | None = None
    changelog_url: str | None = None
    cached: bool = False

    @property
    def behind(self) -> bool:
        latest, installed = _version(self.latest), _version(self.installed)
        return latest is not None and installed is not None and latest > installed

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "behind": self.behind}


# -- changelog ---------------------------------------------------------------------

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _heading_version(title: str) -> str | None:
    """``[0.2.0] - 2026-01-05``, ``0.2.0 (2026-01-05)``, ``v0.2.0`` → ``0.2.0``."""
    token = title.lstrip("[").split("]")[0].split()
    if not token:
        return None
    version = _version(token[0])
    return str(version) if version is not None else None


def parse_changelog(text: str) -> list[tuple[str, list[str]]]:
    """Keep-a-Changelog entries of a release description: ``[(version, lines), ...]``.

    An entry starts at a heading that names a version (``## [0.2.0] - 2026-01-05``) and
    runs to the next heading of the same or a higher level; ``## [Unreleased]`` and other
    sections are skipped. Blank lines are dropped.
    """
    entries: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    level: int | None = None
    in_code = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            depth, version = len(match.group(1)), _heading_version(match.group(2))
            if version is not None and (level is None or depth == level):
                level, current = depth, [line]
                entries.append((version, current))
                continue
            if level is not None and depth <= level:
                current = None
                continue
        if current is not None and line.strip():
            current.append(line)
    return entries


def changes_between(entries: list[Any], installed: str, latest: str) -> list[str]:
    """The changelog lines of the versions after ``installed`` up to ``latest``."""
    low, high = _version(installed), _version(latest)
    if low is None or high is None:
        return []
    lines: list[str] = []
    for entry in entries:
        if not (isinstance(entry, list | tuple) and len(entry) == 2):
            continue
        version = _version(str(entry[0]))
        if version is not None and low < version <= high and isinstance(entry[1], list):
            lines += [str(line) for line in entry[1]]
    return lines


# -- the index ---------------------------------------------------------------------


def latest_version(data: dict[str, Any], installed: str) -> str | None:
    """Newest release that is not yanked (and not a pre-release unless one is installed)."""
    info = data.get("info")
    releases = data.get("releases")
    allow_pre = bool((v := _version(installed)) and v.is_prerelease)
    best: Version | None = None
    if isinstance(releases, dict):
        for text, files in releases.items():
            version = _version(str(text))
            if version is None or (version.is_prerelease and not allow_pre):
                continue
            if isinstance(files, list) and files:
                if all(isinstance(f, dict) and f.get("yanked") for f in files):
                    continue
            elif isinstance(files, list):
                continue  # a release without files cannot be installed
            if best is None or version > best:
                best = version
    if best is not None:
        return str(best)
    latest = info.get("version") if isinstance(info, dict) else None
    return str(latest) if latest and _version(str(latest)) else None


def _summary(data: dict[str, Any], installed: str) -> dict[str, Any]:
    """What the cache keeps of an index answer."""
    info = data["info"]
    urls = info.get("project_urls") if isinstance(info.get("project_urls"), dict) else {}
    changelog_url = next(
        (str(u) for k, u in urls.items() if str(k).lower().replace(" ", "") in _CHANGELOG_KEYS),
        None,
    )
    entries = parse_changelog(str(info.get("description") or ""))[:50]
    return {
        "t": time.time(),
        "latest": latest_version(data, installed),
        "changelog": [[v, lines[:MAX_CHANGELOG_LINES]] for v, lines in entries],
        "changelog_url": changelog_url,
    }


_CHANGELOG_KEYS = {"changelog", "changes", "releasenotes", "history", "whatsnew"}


def _get_json(url: str, timeout: float) -> dict[str, Any] | BaseException:
    """GET ``url`` as JSON; any failure is returned, not raised."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": f"lorakit/{__version__}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            return ValueError("answer too large")
        data = json.loads(body.decode("utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("info"), dict):
            return ValueError("not a JSON API answer")
        return data
    except BaseException as exc:  # noqa: BLE001 - reported, never raised
        return exc


def _describe(exc: BaseException) -> str:
    """A few words on why the index did not answer."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


def _fetch_all(urls: list[str], timeout: float) -> dict[str, dict[str, Any] | BaseException]:
    """Ask for every URL at once; whatever has not answered after ``timeout`` s is dropped.

    Daemon threads: one that hangs on a slow server never keeps the process alive.
    """
    results: dict[str, dict[str, Any] | BaseException] = {}
    deadline = time.monotonic() + timeout

    def work(url: str) -> None:
        results[url] = _get_json(url, timeout)

    threads = [threading.Thread(target=work, args=(u,), daemon=True) for u in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {u: results.get(u, TimeoutError()) for u in urls}


# -- cache ---------------------------------------------------------------------------


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    return data


def _write_cache(data: dict[str, Any]) -> None:
    from lorakit.io import write_text

    with contextlib.suppress(Exception):  # a read-only home must not break anything
        write_text(cache_path(), json.dumps({**data, "format": CACHE_FORMAT}))


def _fresh(hit: Any, now: float) -> bool:
    """A cached answer younger than a day (one from the future, after a clock change, is not)."""
    if not isinstance(hit, dict) or not isinstance(hit.get("t"), int | float):
        return False
    return 0 <= now - hit["t"] < CACHE_TTL_S


def _release(name: str, installed: str, hit: dict[str, Any], cached: bool) -> Release:
    latest = hit.get("latest") if isinstance(hit.get("latest"), str) else None
    entries = hit.get("changelog")
    changes = (
        changes_between(entries, installed, latest) if latest and isinstance(entries, list) else []
    )
    url = hit.get("changelog_url") if isinstance(hit.get("changelog_url"), str) else None
    return Release(name, installed, latest, changes, None, url, cached)


# -- what to check -------------------------------------------------------------------


def _installed_from_index(distribution: str) -> bool:
    """False for an editable, local-folder or VCS install (PEP 610 ``direct_url.json``)."""
    import importlib.metadata as md

    try:
        return md.distribution(distribution).read_text("direct_url.json") is None
    except md.PackageNotFoundError:
        return True


def distributions(plugins: Any = None) -> tuple[dict[str, str], list[str]]:
    """``({name: installed version}, [skipped plugin names])`` for lorakit and its plugins.

    Every third-party plugin distribution counts, also one that failed to load: an
    upgrade is often its fix.
    """
    from lorakit.plugins import get_plugins

    plugins = plugins or get_plugins()
    names = {"lorakit": __version__}
    skipped: list[str] = []
    for info in plugins.infos.values():
        dist = normalize(info.distribution)
        if info.builtin or dist in names or info.distribution == "unknown":
            continue
        # first-party distributions are always looked up, also when installed from a checkout
        if dist not in FIRST_PARTY and not _installed_from_index(info.distribution):
            skipped.append(dist)
            continue
        names[dist] = info.version
    return names, sorted(set(skipped))


def check(names: dict[str, str], *, use_cache: bool = True) -> list[Release]:
    """Ask the index about each ``{name: installed version}`` (cached answers first)."""
    cache = _read_cache()
    now = time.time()
    base = index_url()
    urls = {name: f"{base}/{normalize(name)}/json" for name in names}
    todo = [u for u in urls.values() if not (use_cache and _fresh(cache.get(u), now))]
    answers = _fetch_all(todo, TIMEOUT_S) if todo else {}
    releases: list[Release] = []
    for name, installed in names.items():
        url = urls[name]
        answer = answers.get(url)
        if answer is None:
            releases.append(_release(name, installed, cache[url], cached=True))
        elif isinstance(answer, dict):
            try:
                cache[url] = _summary(answer, installed)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                releases.append(Release(name, installed, None, error=f"could not check ({exc})"))
                continue
            releases.append(_release(name, installed, cache[url], cached=False))
        elif isinstance(answer, urllib.error.HTTPError) and answer.code == 404:
            releases.append(Release(name, installed, None, error="not on the index"))
        else:
            reason = _describe(answer)
            releases.append(Release(name, installed, None, error=f"could not check ({reason})"))
    if todo and any(isinstance(answers.get(u), dict) for u in todo):
        _write_cache(cache)
    return releases


def upgrade_command(releases: list[Release]) -> str | None:
    """One ``pip install -U`` for everything behind.

    When lorakit itself is behind, every plugin the index knows goes into the same command:
    each pins ``lorakit>=X.Y,<X.(Y+1)``, and pip can only move them together. Plugins the
    index does not know (or that were not looked up) are never named: pip would fetch
    whatever carries that name there.
    """
    behind = [r.name for r in releases if r.behind]
    if not behind:
        return None
    if "lorakit" in behind:
        behind += [r.name for r in releases if r.latest and r.name not in behind]
    return "pip install -U " + " ".join(behind)


def quiet_notice() -> str | None:
    """One line for ``train`` when the cache knows a newer lorakit; never touches the network."""
    if disabled():
        return None
    hit = _read_cache().get(f"{index_url()}/lorakit/json")
    if not isinstance(hit, dict):
        return None
    release = _release("lorakit", __version__, hit, cached=True)
    if not release.behind:
        return None
    return (
        f"lorakit {release.latest} is out (you have {__version__}): pip install -U lorakit "
        f"(lorakit version --check lists the changes)"
    )
