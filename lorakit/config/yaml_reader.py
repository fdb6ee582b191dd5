"""YAML in, with the line number of every key, so errors can say where.

YAML 1.1 reads ``2e-4`` (no dot) as a string; this reader reads it as the float a user means.
Duplicate keys are errors; merge keys (``<<: *defaults``) work.

A config from someone else is read within bounds: the file at most :data:`MAX_BYTES`, and
before anything walks the parsed nodes, their size with every alias (and merge key) expanded
is counted on the shared node graph, in time linear in the file: more than
:data:`MAX_VALUES` values, nesting deeper than :data:`MAX_DEPTH` or an alias inside itself is
one :class:`ConfigError` (a ~350-byte "billion laughs" file stops here, at once).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lorakit.errors import ConfigError

#: The largest config file read (bytes); a config is a page of keys, not a data set.
MAX_BYTES = 4 * 1024 * 1024
#: The most values (scalars, lists, mappings) a config may hold with its aliases expanded.
MAX_VALUES = 100_000
#: The deepest nesting of lists and mappings, aliases expanded.
MAX_DEPTH = 64


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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: yaml.Node, file: str | None) -> None:
    """Refuse a node graph whose aliases expand past :data:`MAX_VALUES` / :data:`MAX_DEPTH`.

    Counted once per distinct node (memoised), without recursion: linear in the file however
    many times an alias repeats; merge keys count as the mappings they copy in.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            children = _children(node)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if size[key] > MAX_VALUES:
                raise ConfigError(
                    f"aliases expand to more than {MAX_VALUES} values (an alias bomb?)",
                    file=file,
                    line=line,
                )
            if depth[key] > MAX_DEPTH:
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", file=file, line=line)
            continue
        if key in size:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                line = child.start_mark.line + 1
                raise ConfigError("an alias refers to itself", file=file, line=line)
            if id(child) not in size:
                stack.append((child, False))


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
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ConfigError(f"larger than {MAX_BYTES // 2**20} MB: not a config", file=file)
        text = raw.decode("utf-8")
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
        if node is not None:
            check_expansion(node, file)
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
    except RecursionError:
        raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", file=file) from None
    except (ValueError, OverflowError) as exc:  # a value YAML cannot build (a 5000-digit int)
        raise ConfigError(f"invalid YAML value: {str(exc)[:200]}", file=file) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of keys to values", file=file, line=1)
    return data, lines
