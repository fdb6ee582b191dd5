"""Config layout versions and the migrations between them.

A config may carry ``config_version``. Version 1 was the layout that used sd-scripts' key
names (``network_dim``, ``train_batch_size``, a top-level ``resolution``...); a config
without ``config_version`` is read as the current layout, unless it uses version-1 keys,
which the current layout rejects: then it is read as version 1, and says so. Each step
below renames or moves keys and returns one :class:`Change` per key; ``lorakit train``
prints them as notices and ``lorakit config migrate FILE`` writes the result back,
keeping the file's comments and order (see :func:`migrate_text`).

Adding a layout: bump ``CONFIG_VERSION`` below to N+1 and add ``MIGRATIONS[N]``,
a function that changes the dict in place and returns its changes.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorakit.errors import ConfigError

#: The config layout this lorakit writes; older layouts are migrated up to it.
CONFIG_VERSION = 2


@dataclass(frozen=True)
class Change:
    """One key renamed, moved or changed: ``old`` and ``new`` are key paths."""

    old: tuple[str, ...]
    new: tuple[str, ...]
    note: str = ""

    def describe(self) -> str:
        old, new = ".".join(self.old), ".".join(self.new)
        if self.note:
            return f"'{old}': {self.note}"
        if self.old[:-1] == self.new[:-1]:
            return f"'{old}' is now '{new}'"
        return f"'{old}' moved to '{new}'"


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
#: Keys that only a version-1 config has.
V1_KEYS = frozenset(V1_RENAMES) | frozenset(V1_TO_SD)


def _v1_to_v2(data: dict[str, Any]) -> list[Change]:
    changes = []
    for old, new in V1_RENAMES.items():
        if old in data:
            if new in data:
                raise ConfigError(f"both '{old}' (old name) and '{new}' are set; keep '{new}'")
            data[new] = data.pop(old)
            changes.append(Change((old,), (new,)))
    for old in V1_TO_SD:
        if old in data:
            new = V1_SD_RENAMES.get(old, old)
            section = data.get("sd")
            if section is None:
                section = data["sd"] = {}
            if not isinstance(section, dict):
                raise ConfigError(f"'{old}' moves into the 'sd' section, which is not a mapping")
            if new in section:
                raise ConfigError(
                    f"both '{old}' (old place) and 'sd.{new}' are set; keep 'sd.{new}'"
                )
            section[new] = data.pop(old)
            changes.append(Change((old,), ("sd", new)))
    return changes


MIGRATIONS: dict[int, Callable[[dict[str, Any]], list[Change]]] = {1: _v1_to_v2}


def detect_version(data: dict[str, Any], *, file: str | None = None) -> tuple[int, str | None]:
    """The layout version of ``data`` and, when it was inferred, a notice saying why."""
    if "config_version" not in data:
        old = sorted(V1_KEYS & set(data))
        if old:
            return 1, f"no config_version; read as version 1 (it uses '{old[0]}')"
        return CONFIG_VERSION, None
    version = data["config_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(
            f"must be a whole number, got {version!r}", key="config_version", file=file
        )
    if version < 1 or version > CONFIG_VERSION:
        newer = " (written by a newer lorakit? pip install -U lorakit)" if version > 1 else ""
        raise ConfigError(
            f"unsupported version {version} (this lorakit reads 1 to {CONFIG_VERSION}){newer}",
            key="config_version",
            file=file,
        )
    return version, None


def migrate_changes(
    data: dict[str, Any], *, file: str | None = None
) -> tuple[dict[str, Any], list[Change], list[str]]:
    """Bring a copy of ``data`` to the current layout: ``(data, changes, notices)``."""
    version, inferred = detect_version(data, file=file)
    data = copy.deepcopy(data)
    changes: list[Change] = []
    notices = [inferred] if inferred else []
    while version < CONFIG_VERSION:
        try:
            step = MIGRATIONS[version](data)
        except ConfigError as exc:
            if exc.file or not file:
                raise
            raise ConfigError(exc.message, file=file) from None
        changes += step
        notices += [f"config_version {version}→{version + 1}: {c.describe()}" for c in step]
        version += 1
    data["config_version"] = CONFIG_VERSION
    return data, changes, notices


def migrate(data: dict[str, Any], *, file: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Bring ``data`` to the current layout; return it and the notices of what changed.

    ``data`` itself is left as it was.
    """
    new, _, notices = migrate_changes(data, file=file)
    return new, notices


# -- rewriting a file, comments kept ---------------------------------------------------

_TOP_KEY = re.compile(r"^(?P<q>['\"]?)(?P<key>[^\s'\"#:][^'\"#:]*?)(?P=q)\s*:(?=\s|$)")


def _top_keys(lines: list[str]) -> dict[str, int]:
    """Top-level key → its line index (keys written at column 0)."""
    out: dict[str, int] = {}
    for i, line in enumerate(lines):
        match = _TOP_KEY.match(line)
        if match:
            out[match.group("key")] = i
    return out


def _after_key(line: str) -> int:
    """Index of the ``:`` that ends the top-level key on ``line``."""
    match = _TOP_KEY.match(line)
    if match is None:
        raise ValueError(f"not a key line: {line!r}")
    return match.end() - 1


def _block_end(lines: list[str], start: int) -> int:
    """End (exclusive) of the block that starts at top-level key line ``start``.

    The block is the key's line and the indented lines after it; comments and blank lines
    directly before the next top-level key belong to that key.
    """
    end = start + 1
    last = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line[0].isspace():
            break
        end += 1
        if line.strip() and not line.lstrip().startswith("#"):
            last = end
    return last


def _rewrite(text: str, changes: list[Change], version: int) -> str:
    """Apply renames/moves to the YAML text; raise ValueError when the layout is unusual."""
    lines = text.splitlines()
    for change in changes:
        keys = _top_keys(lines)
        old = change.old[0]
        if len(change.old) != 1 or old not in keys:
            raise ValueError(f"cannot find '{old}'")
        at = keys[old]
        if len(change.new) == 1:  # rename at the top level
            lines[at] = change.new[0] + lines[at][_after_key(lines[at]) :]
            continue
        if len(change.new) != 2:
            raise ValueError("deep move")
        section, new = change.new
        end = _block_end(lines, at)
        while at > 0 and lines[at - 1].startswith("#"):  # its own comment goes with it
            at -= 1
        block = lines[at:end]
        del lines[at:end]
        key_at = next(i for i, ln in enumerate(block) if not ln.startswith("#"))
        block[key_at] = new + block[key_at][_after_key(block[key_at]) :]
        keys = _top_keys(lines)
        if section in keys:
            head = keys[section]
            rest = lines[head][_after_key(lines[head]) + 1 :].split("#")[0].strip()
            if rest not in {"", "null", "~"}:
                raise ValueError(f"'{section}' is not a block mapping")
            sec_end = _block_end(lines, head)
            children = [ln for ln in lines[head + 1 : sec_end] if ln.strip()]
            indent = (
                children[0][: len(children[0]) - len(children[0].lstrip())] if children else "  "
            )
            if rest:
                lines[head] = f"{section}:"
            lines[sec_end:sec_end] = [indent + ln if ln.strip() else ln for ln in block]
        else:
            while lines and not lines[-1].strip():
                lines.pop()
            lines += ["", f"{section}:"] + ["  " + ln if ln.strip() else ln for ln in block]
    keys = _top_keys(lines)
    if "config_version" in keys:
        at = keys["config_version"]
        comment = lines[at].split("#", 1)[1] if "#" in lines[at] else None
        lines[at] = f"config_version: {version}" + (f"  #{comment}" if comment else "")
    else:
        first = min(keys.values(), default=len(lines))
        lines.insert(first, f"config_version: {version}")
    return "\n".join(lines) + "\n"


def migrate_text(text: str, *, file: str | None = None) -> tuple[str | None, list[str]]:
    """A config file's text in the current layout, and the notices of what changed.

    Returns ``(None, [])`` when the file is already current. The file's comments, key order
    and formatting are kept; where the layout is too unusual to edit line by line (flow
    mappings, anchors...), the result is written fresh, and a notice says comments were lost.
    """
    import yaml

    from lorakit.config.yaml_reader import _Loader

    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values", file=file)
    new, changes, notices = migrate_changes(data, file=file)
    if not notices:
        if data.get("config_version", CONFIG_VERSION) == CONFIG_VERSION:
            return None, []
        notices = [f"config_version {data['config_version']}→{CONFIG_VERSION}: no key changed"]
    try:
        out = _rewrite(text, changes, CONFIG_VERSION)
        if yaml.load(out, Loader=_Loader) != new:  # noqa: S506
            raise ValueError("text edit did not give the migrated config")
    except (ValueError, yaml.YAMLError):
        out = yaml.safe_dump(new, sort_keys=False, allow_unicode=True)
        notices.append("the layout was too unusual to edit in place: comments were not kept")
    return out, notices
