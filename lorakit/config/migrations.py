"""Config layout versions and the migrations between them.

A config may carry ``config_version``. Version 1 was the layout that used sd-scripts' key
names (``network_dim``, ``train_batch_size``, a top-level ``resolution``...); a config
without ``config_version`` is read as the current layout, unless it uses version-1 keys,
which the current layout rejects: then it is read as version 1, and says so. Each step
below renames or moves keys and returns one :class:`Change` per key; ``lorakit train``
prints them as notices and ``lorakit config migrate FILE`` writes the result back, in the
same key order, with a note that its comments are in the ``.bak`` it keeps (see
:func:`migrate_text`). Keys that moved into a backend's section are the backend's to declare
(``BackendPlugin.migrations``): the core knows no backend.

Adding a layout: bump ``CONFIG_VERSION`` below to N+1 and add ``MIGRATIONS[N]``,
a function that changes the dict in place and returns its changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
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
#: Keys that only a version-1 config has (a backend adds those it moved into its section).
V1_KEYS = frozenset(V1_RENAMES)


def _v1_to_v2(data: dict[str, Any]) -> list[Change]:
    changes = []
    for old, new in V1_RENAMES.items():
        if old in data:
            if new in data:
                raise ConfigError(f"both '{old}' (old name) and '{new}' are set; keep '{new}'")
            items = list(data.items())  # renamed in place: the key keeps its position
            data.clear()
            data.update((new if k == old else k, v) for k, v in items)
            changes.append(Change((old,), (new,)))
    return changes


def move_into_section(data: dict[str, Any], section: str, moves: Mapping[str, str]) -> list[Change]:
    """Move top-level keys into ``section`` (old name → name in the section), in place."""
    changes = []
    for old, new in moves.items():
        if old not in data:
            continue
        target = data.get(section)
        if target is None:
            target = data[section] = {}
        if not isinstance(target, dict):
            raise ConfigError(f"'{old}' moves into the '{section}' section, which is not a mapping")
        if new in target:
            raise ConfigError(
                f"both '{old}' (old place) and '{section}.{new}' are set; keep '{section}.{new}'"
            )
        target[new] = data.pop(old)
        changes.append(Change((old,), (section, new)))
    return changes


MIGRATIONS: dict[int, Callable[[dict[str, Any]], list[Change]]] = {1: _v1_to_v2}


def detect_version(
    data: dict[str, Any], *, file: str | None = None, backend: Any = None
) -> tuple[int, str | None]:
    """The layout version of ``data`` and, when it was inferred, a notice saying why.

    ``backend`` (a :class:`~lorakit.backend_plugin.BackendPlugin`) adds the keys it moved."""
    if "config_version" not in data:
        moved = set(backend.migrations.get(1, {})) if backend is not None else set()
        old = sorted((V1_KEYS | moved) & set(data))
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
    data: dict[str, Any], *, file: str | None = None, backend: Any = None
) -> tuple[dict[str, Any], list[Change], list[str]]:
    """Bring a copy of ``data`` to the current layout: ``(data, changes, notices)``.

    Each step runs the core's migration, then moves the keys the run's ``backend`` (a
    :class:`~lorakit.backend_plugin.BackendPlugin`, or None) declares for it into its section."""
    version, inferred = detect_version(data, file=file, backend=backend)
    data = copy.deepcopy(data)
    changes: list[Change] = []
    notices = [inferred] if inferred else []
    while version < CONFIG_VERSION:
        try:
            step = MIGRATIONS[version](data)
            if backend is not None:
                moves = backend.migrations.get(version, {})
                step += move_into_section(data, backend.name, moves)
        except ConfigError as exc:
            if exc.file or not file:
                raise
            raise ConfigError(exc.message, file=file) from None
        changes += step
        notices += [f"config_version {version}→{version + 1}: {c.describe()}" for c in step]
        version += 1
    data["config_version"] = CONFIG_VERSION
    return data, changes, notices


def migrate(
    data: dict[str, Any], *, file: str | None = None, backend: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """Bring ``data`` to the current layout; return it and the notices of what changed.

    ``data`` itself is left as it was.
    """
    new, _, notices = migrate_changes(data, file=file, backend=backend)
    return new, notices


# -- rewriting a file --------------------------------------------------------------------

#: The first lines of a migrated file: PyYAML does not keep comments, so the file says so.
MIGRATED_NOTE = (
    "# Migrated to config_version {version} by `lorakit config migrate`; the comments of the\n"
    "# original are in {backup}.\n"
)


def migrate_text(
    text: str, *, file: str | None = None, backend: Any = None
) -> tuple[str | None, list[str]]:
    """A config file's text in the current layout, and the notices of what changed.

    Returns ``(None, [])`` when the file is already current. The keys keep their order; the
    file is written afresh (PyYAML keeps no comments), headed by :data:`MIGRATED_NOTE`.
    """
    import yaml

    from lorakit.config.yaml_reader import parse_yaml

    data, _ = parse_yaml(text, file=file)
    new, _changes, notices = migrate_changes(data, file=file, backend=backend)
    if not notices:
        if data.get("config_version", CONFIG_VERSION) == CONFIG_VERSION:
            return None, []
        notices = [f"config_version {data['config_version']}→{CONFIG_VERSION}: no key changed"]
    version = {"config_version": new.pop("config_version")}
    body = yaml.safe_dump({**version, **new}, sort_keys=False, allow_unicode=True)
    backup = f"{Path(file).name}.bak" if file else "the .bak file beside it"
    notices.append("comments are not kept in the rewritten file (the original is the .bak)")
    return MIGRATED_NOTE.format(version=CONFIG_VERSION, backup=backup) + body, notices
