"""YAML in, with the line number of every key, so errors can say where.

YAML 1.1 reads ``2e-4`` (no dot) as a string; this reader reads it as the float a user means.
Duplicate keys are errors; merge keys (``<<: *defaults``) work.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lorakit.errors import ConfigError


class _Loader(yaml.SafeLoader):
    pass


# YAML 1.1 reads 2e-4 (no dot) as a string; read it as the float a user means.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _walk(
    node: yaml.Node, loader: _Loader, path: tuple[str, ...], lines: dict, file: str | None
) -> Any:
    if isinstance(node, yaml.MappingNode):
        own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        loader.flatten_mapping(node)  # YAML merge keys (<<: *defaults) come first
        merged = len(node.value) - own
        out: dict[str, Any] = {}
        written: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = str(loader.construct_object(key_node, deep=True))
            line = key_node.start_mark.line + 1
            if index >= merged:  # a key written here, not merged in: it must be unique
                if key in written:
                    raise ConfigError(
                        "duplicate key", key=".".join((*path, key)), file=file, line=line
                    )
                written.add(key)
            lines[(*path, key)] = line
            out[key] = _walk(value_node, loader, (*path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, loader, (*path, str(i)), lines, file) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Read a YAML mapping and the line number of every key."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    return parse_yaml(text, file=file)


def parse_yaml(
    text: str, *, file: str | None = None
) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """A YAML mapping from ``text`` and the line number of every key; errors name ``file``."""
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {getattr(exc, 'reason', exc)}", file=file) from None
    try:
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        data = {} if node is None else _walk(node, loader, (), lines, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values", file=file, line=1)
    return data, lines
