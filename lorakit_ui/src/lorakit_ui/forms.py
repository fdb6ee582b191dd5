"""The new-run form: fields from the config schemas, YAML out, checked by ``load_config``.

Fields come from the same pydantic models ``lorakit config reference`` documents (types,
defaults, descriptions). A form's values become the YAML file the CLI runs; that file is
checked by lorakit's own ``load_config``, so the page refuses a config with the very line
``lorakit config validate`` prints.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lorakit.api import ConfigError, get_registries, load_config, write_text
from lorakit.app import DistributedConfig, TrainConfig, parse_override, plan_line, template_text

#: The form field that takes any other keys, as YAML (a typo there gets a "did you mean").
EXTRA = "_extra"


@dataclass
class Field:
    """One config key on the form."""

    key: str  # dotted: learning_rate, sd.resolution, distributed.strategy
    kind: str  # text, select
    type_name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()
    required: bool = False
    plain_string: bool = False  # the value is taken as typed (paths, names, choices)
    nullable: bool = False


def _args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "null").replace("None", "null")


def _default(info: Any) -> tuple[str, bool]:
    from pydantic_core import PydanticUndefined

    if info.default is PydanticUndefined and info.default_factory is None:
        return "", True
    value = info.default_factory() if info.default_factory is not None else info.default
    return json.dumps(value), False


def fields_of(model: Any, prefix: str = "") -> list[Field]:
    """The form fields of a config model (nested models become ``prefix.key`` fields)."""
    found = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            found += fields_of(annotation, f"{prefix}{name}.")
            continue
        options = [a for a in _args(annotation) if a is not type(None)]
        default, required = _default(info)
        choices: tuple[str, ...] = ()
        kind = "text"
        if len(options) == 1 and typing.get_origin(options[0]) is typing.Literal:
            kind, choices = "select", tuple(str(c) for c in typing.get_args(options[0]))
        elif options == [bool]:
            kind, choices = "select", ("true", "false")
        plain = options == [str] or kind == "select" and options != [bool]
        found.append(
            Field(
                key=f"{prefix}{name}",
                kind=kind,
                type_name=_type_name(annotation),
                default=default,
                description=info.description or "",
                choices=choices,
                required=required,
                plain_string=plain,
                nullable=type(None) in _args(annotation),
            )
        )
    return found


def backends() -> list[dict[str, Any]]:
    """Installed backends with their templates: ``[{name, description, templates}]``."""
    return [
        {
            "name": entry.spec.name,
            "description": entry.spec.description,
            "templates": list(entry.spec.template_files()),
            "distribution": entry.distribution,
        }
        for entry in get_registries().backends
    ]


def form_fields(backend: str) -> list[Field]:
    """Core keys, ``distributed.*`` and the backend's own section."""
    found = fields_of(TrainConfig)
    found = [f for f in found if not f.key.startswith("distributed.")]
    found += fields_of(DistributedConfig, "distributed.")
    model = get_registries().backends.get(backend).config_model
    if model is not None:
        found += fields_of(model, f"{backend}.")
    return found


def _flatten(
    data: dict[str, Any], prefix: str = "", nested: set[str] | None = None
) -> dict[str, Any]:
    """Dotted keys of a config mapping: sections (``distributed``, a backend's, and sections
    nested in those, ``sd.video``) become ``section.key``."""
    sections = {"distributed", *_backend_names()} if nested is None else nested
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and f"{prefix}{key}" in sections:
            flat.update(_flatten(value, f"{prefix}{key}.", sections | _nested(prefix + key)))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _nested(section: str) -> set[str]:
    """The sections nested in a backend's section (``sd.video``), by dotted name."""
    if section not in _backend_names():
        return set()
    model: Any = get_registries().backends.get(section).config_model
    if model is None:
        return set()
    return {
        f"{section}.{name}"
        for name, info in model.model_fields.items()
        if isinstance(info.annotation, type) and hasattr(info.annotation, "model_fields")
    }


def _backend_names() -> list[str]:
    return list(get_registries().backends.names())


def as_text(value: Any) -> str:
    """A YAML value as the text a form field shows."""
    if isinstance(value, str):
        return value
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000)
        .strip()
        .removesuffix("\n...")
        .removesuffix("...")
        .strip()
    )


def template_values(backend: str, template: str | None) -> dict[str, str]:
    """The form's starting values: the template's keys, as text."""
    data = yaml.safe_load(template_text(backend, template)) or {}
    return {key: as_text(value) for key, value in _flatten(data).items()}


class FormError(Exception):
    """A value the form cannot turn into YAML (shown next to its field)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def to_config(values: dict[str, str], backend: str) -> dict[str, Any]:
    """Form values (key → text; empty means "the default") → the config mapping.

    Paths and names are taken as typed; everything else is read as a YAML value, as in the
    file (so ``learning_rate: 2e-4`` means what it means to the CLI).
    """
    fields = {f.key: f for f in form_fields(backend)}
    data: dict[str, Any] = {}
    for key, raw in values.items():
        if key == EXTRA or raw is None or str(raw).strip() == "":
            continue
        text = str(raw).strip()
        field = fields.get(key)
        if field is not None and field.nullable and text in ("null", "~"):
            value: Any = None
        elif field is not None and field.plain_string:
            value = text
        else:  # read as `--set key=value` reads it
            value = parse_override(f"{key}={text}")[1]
        *heads, last = key.split(".")
        target = data
        for head in heads:  # sd.video.frames -> data["sd"]["video"]["frames"]
            target = target.setdefault(head, {})
        target[last] = value
    extra = str(values.get(EXTRA) or "").strip()
    if extra:
        try:
            more = yaml.safe_load(extra)
        except yaml.YAMLError as exc:  # the reader's errors (a control character) have no mark
            marked = isinstance(exc, yaml.MarkedYAMLError) and exc.problem
            problem = marked or str(exc).splitlines()[0]
            raise FormError(EXTRA, f"other keys: not YAML ({problem})") from None
        if not isinstance(more, dict):
            raise FormError(EXTRA, "other keys: write them as key: value lines")
        for key, value in more.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
    if "backend" not in data and "task_type" not in data:  # required with several backends
        data["backend"] = backend
    return data


def to_yaml(data: dict[str, Any], header: str = "") -> str:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    return header + text


@dataclass
class Checked:
    """The outcome of checking a form: the YAML, and the error (with its key) if any."""

    text: str
    error: str | None = None
    key: str | None = None
    output_dir: str | None = None
    plan: str | None = None  # the `lorakit plan` line, when asked for
    config: Any = None  # the loaded config, when it passed

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.error is None,
            "yaml": self.text,
            "error": self.error,
            "key": self.key,
            "output_dir": self.output_dir,
            "plan": self.plan,
        }


def check(
    values: dict[str, str], backend: str, path: Path, header: str = "", *, plan: bool = False
) -> Checked:
    """Build the YAML the CLI would run from ``path`` and check it with ``load_config``;
    with ``plan``, a valid config also gets the memory line ``lorakit train`` prints.

    The check reads a copy beside ``path``; an error names ``path``, as ``lorakit config
    validate PATH`` would once the file is saved.
    """
    try:
        text = to_yaml(to_config(values, backend), header)
    except FormError as exc:
        return Checked("", str(exc), exc.key)
    path = Path(path)
    probe = path.with_name(f".{path.name}.check.yaml")
    try:
        write_text(probe, text)
        try:
            cfg = load_config(probe)
        finally:
            probe.unlink(missing_ok=True)
    except ConfigError as exc:
        where = f"{path}:{exc.line}" if exc.file == str(probe) and exc.line else exc.where
        if exc.file == str(probe) and not exc.line:
            where = str(path)
        message = f"{where}: {exc.message}" if where else exc.message
        key = exc.key
        if (
            key not in {f.key for f in form_fields(backend)}
            and str(values.get(EXTRA) or "").strip()
        ):
            key = EXTRA  # a key typed under "other keys": the message goes beside that box
        return Checked(text, " ".join(message.split("\n")), key)
    except OSError as exc:
        return Checked(text, f"{path}: cannot write here ({exc.strerror})", "config_path")
    line = plan_line(cfg) if plan else None
    return Checked(text, output_dir=cfg.train.output_dir, plan=line, config=cfg)


def save(values: dict[str, str], backend: str, path: Path, header: str = "") -> Checked:
    """Check, then write ``path`` (only a config that passes)."""
    checked = check(values, backend, path, header)
    if checked.error is None:
        write_config(path, checked.text)
    return checked


def default_config_path(output_dir: Path) -> Path:
    """A run's own config file by default: beside its folder, named after it."""
    output_dir = Path(output_dir)
    return output_dir.with_name(f"{output_dir.name}.yaml")


def write_config(path: Path, text: str) -> None:
    write_text(Path(path), text)
