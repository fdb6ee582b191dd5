"""Load a config: read, migrate, apply ``--set``, validate against the core and backend models."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lorakit.config.backend_choice import choose_backend
from lorakit.config.migrations import migrate
from lorakit.config.overrides import apply_overrides
from lorakit.config.schema import (
    HUB_ID,
    WEIGHT_SUFFIXES,
    Config,
    TrainConfig,
)
from lorakit.config.yaml_reader import read_yaml
from lorakit.errors import ConfigError
from lorakit.registry import KNOWN_BACKEND_PACKAGES, Registries


def _did_you_mean(key: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class ConfigErrors(ConfigError):
    """Several config errors found in one pass; ``str()`` is the first, ``errors`` all."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        first = errors[0]
        super().__init__(first.detail, key=first.key, file=first.file, line=first.line)


def _validate(
    model: type[BaseModel],
    data: dict[str, Any],
    prefix: tuple[str, ...],
    lines: dict,
    file: str | None,
    overridden: dict[tuple[str, ...], str] | None = None,
    errors: list[ConfigError] | None = None,
    check_paths: bool = True,
) -> BaseModel | None:
    """Validate ``data``. Each problem becomes a ConfigError naming key, file and line (or
    the ``--set`` item it came from): appended to ``errors`` when given (and None
    returned), else the first one is raised. A backend section's validators read
    ``info.context["check_paths"]``: whether to check that the files it names exist."""
    try:
        return model.model_validate(data, context={"check_paths": check_paths})
    except ValidationError as exc:
        found = [_config_error(err, model, prefix, lines, file, overridden) for err in exc.errors()]
        if errors is None:
            raise found[0] from None
        errors.extend(found)
        return None


def _config_error(
    err: Any,
    model: type[BaseModel],
    prefix: tuple[str, ...],
    lines: dict,
    file: str | None,
    overridden: dict[tuple[str, ...], str] | None,
) -> ConfigError:
    loc = tuple(str(p) for p in err["loc"])
    full = (*prefix, *loc)
    key = ".".join(full) or "config"
    line = lines.get(full) or lines.get(full[:-1]) if full else None
    override = (overridden or {}).get(full)
    if override is not None:  # the value came from the command line, not the file
        file, line = f"--set {override}", None
    if err["type"] == "extra_forbidden":
        fields = list(_fields_at(model, loc[:-1]))
        message = "unknown key" + _did_you_mean(loc[-1], fields)
    elif err["type"] == "missing":
        message = "required key is missing"
    else:
        got = err.get("input")
        text = str(err["msg"])
        for lead in ("Value error, ", "Assertion failed, "):
            text = text.removeprefix(lead)
        message = text[0].lower() + text[1:] if text else "invalid value"
        if not isinstance(got, dict | list):
            message += f" (got {repr(got)[:60]})"
    return ConfigError(message, key=key, file=file, line=line)


def _names(value: Any) -> list[Any]:
    """A list key as written: a list, or the comma-separated string the schema accepts."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value if isinstance(value, list) else []


def _check_names(
    train: TrainConfig,
    sections: dict[str, BaseModel],
    registries: Any,
    lines: dict,
    file: str | None,
    overridden: dict[tuple[str, ...], str],
) -> list[ConfigError]:
    """Names the run will look up in a registry: unknown ones, with did-you-mean.

    ``train`` may be unvalidated (built from the raw keys when another key is wrong), so
    every value is checked for its type before it is looked up.
    """
    wanted: list[tuple[tuple[str, ...], str, Any]] = [
        (("optimizer",), train.optimizer, registries.optimizers),
        (("lr_scheduler",), train.lr_scheduler, registries.schedulers),
    ]
    trackers, formats = (_names(v) for v in (train.trackers, train.export_formats))
    wanted += [(("trackers", str(i)), n, registries.trackers) for i, n in enumerate(trackers)]
    wanted += [(("export_formats", str(i)), n, registries.exporters) for i, n in enumerate(formats)]
    if train.model_loader:
        wanted.append((("model_loader",), train.model_loader, registries.model_loaders))
    for name, section in sections.items():
        reader = getattr(section, "dataset_format", None)
        if isinstance(reader, str) and reader != "auto":
            wanted.append(((name, "dataset_format"), reader, registries.dataset_readers))
        rewards = getattr(section, "rewards", None)  # GRPO's reward functions
        if isinstance(rewards, list):
            wanted += [
                ((name, "rewards", str(i)), n, registries.rewards) for i, n in enumerate(rewards)
            ]
    errors = []
    for path, value, registry in wanted:
        if not isinstance(value, str) or value in registry:
            continue
        known = ", ".join(registry.names()) or "none"
        message = f"unknown {registry.kind} '{value}'{_did_you_mean(value, registry.names())}"
        key = ".".join(p for p in path if not p.isdigit())
        where_file, line = file, lines.get(path) or lines.get(path[:2]) or lines.get(path[:1])
        override = overridden.get(path) or overridden.get(path[:1])
        if override is not None:
            where_file, line = f"--set {override}", None
        errors.append(
            ConfigError(f"{message}; available: {known}", key=key, file=where_file, line=line)
        )
    return errors


def _check_optimizer_package(
    train: TrainConfig, registries: Any, lines: dict, file: str | None, overridden: dict
) -> list[ConfigError]:
    """The optimizer's package (``OptimizerSpec.requires``), missing: refused before loading."""
    name = train.optimizer
    if not isinstance(name, str) or name not in registries.optimizers:
        return []  # unknown names are reported by _check_names
    spec = registries.optimizers.get(name)
    if not spec.requires or importlib.util.find_spec(spec.requires) is not None:
        return []
    override = overridden.get(("optimizer",))
    where_file, line = (
        (f"--set {override}", None) if override else (file, lines.get(("optimizer",)))
    )
    install = f": {spec.install}" if spec.install else ""
    return [
        ConfigError(
            f"{name} needs {spec.requires}, which is not installed{install}",
            key="optimizer",
            file=where_file,
            line=line,
        )
    ]


def _fields_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        current = info.annotation
    return list(getattr(current, "model_fields", {}))


def _check_paths(train: TrainConfig, lines: dict, file: str | None) -> list[ConfigError]:
    errors: list[ConfigError] = []

    def fail(key: str, message: str) -> None:
        errors.append(ConfigError(message, key=key, file=file, line=lines.get((key,))))

    base = train.base_model
    if not Path(base).expanduser().exists():
        looks_local = base.startswith((".", "/", "~")) or base.lower().endswith(WEIGHT_SUFFIXES)
        if looks_local or not HUB_ID.match(base):
            fail("base_model", f"file or folder not found: {base}")
    data = Path(train.train_data_dir).expanduser()
    if not data.exists():
        fail("train_data_dir", f"folder not found: {train.train_data_dir}")
    return errors


#: The keys a backend is chosen by.
CHOICE_KEYS = {"task_type", "backend", "base_model", "train_data_dir"}


def run_backend(data: dict[str, Any], registries: Any, backend: str | None = None) -> Any:
    """The :class:`~lorakit.backend_plugin.BackendPlugin` a raw config will run with, or None
    when it names none that is installed or none can be told (validation then says why)."""
    try:
        return choose_backend(registries, data, backend).backend
    except Exception:  # noqa: BLE001 - reported where the config is validated
        return None


def _take_sections(
    data: dict[str, Any], registries: Any, lines: dict, file: str | None, errors: list
) -> dict[str, Any]:
    """Pop the installed backends' sections; one of a backend not installed is an error."""
    backend_names = registries.backends.names()
    sections = {k: data.pop(k) for k in list(data) if k in backend_names}
    for key in list(data):
        if key in KNOWN_BACKEND_PACKAGES and key not in backend_names:
            errors.append(
                ConfigError(
                    f"section for backend '{key}', which is not installed: "
                    f"pip install {KNOWN_BACKEND_PACKAGES[key]}",
                    key=key,
                    file=file,
                    line=lines.get((key,)),
                )
            )
            data.pop(key)
    return sections


def _apply_aliases(
    data: dict[str, Any], spec: Any, registries: Any, lines: dict, file: str | None
) -> list[ConfigError]:
    """Move the top-level keys ``spec`` accepts (``BackendPlugin.aliases``) into its section.

    Without a backend (task_type names none; that is reported), the installed backends'
    aliases are dropped: they are no typos."""
    errors: list[ConfigError] = []
    if spec is None:
        for entry in registries.backends:
            for top in entry.spec.aliases:
                data.pop(top, None)
        return errors
    for top, key in spec.aliases.items():
        if top not in data:
            continue
        section = data.get(spec.name)
        if section is None:
            section = data[spec.name] = {}
        if not isinstance(section, dict) or key in section:
            where = f"'{spec.name}.{key}'" if isinstance(section, dict) else f"'{spec.name}'"
            errors.append(
                ConfigError(
                    f"stands for {where}, which is set too (or not a mapping); keep one",
                    key=top,
                    file=file,
                    line=lines.get((top,)),
                )
            )
            data.pop(top)
            continue
        section[key] = data.pop(top)
        if (top,) in lines:
            lines[(spec.name, key)] = lines[(top,)]
    return errors


def load_config(
    path: str | Path | None = None,
    *,
    data: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    backend: str | None = None,
    check_paths: bool = True,
    registries: Registries | None = None,
) -> Config:
    """Load, migrate and validate a config file (or a dict) for the backend it names.

    ``registries`` are the backends, readers, optimizers... it is checked against; None
    takes those of the installed plugins (:func:`lorakit.plugins.get_registries`)."""
    if registries is None:
        from lorakit.plugins import get_registries  # plugins import this module

        registries = get_registries()
    file = str(path) if path is not None else None
    lines: dict[tuple[str, ...], int] = {}
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        data, lines = read_yaml(Path(path))
    data = dict(data)
    data, notices = migrate(data, file=file, backend=run_backend(data, registries, backend))
    overridden: dict[tuple[str, ...], str] = {}
    if overrides:
        overridden = apply_overrides(data, overrides)
    if backend:
        data["backend"] = backend
    errors = _apply_aliases(data, run_backend(data, registries), registries, lines, file)
    sections = _take_sections(data, registries, lines, file, errors)
    train = _validate(TrainConfig, data, (), lines, file, overridden, errors)
    spec = chosen_by = None
    if isinstance(train, TrainConfig):
        try:
            choice = choose_backend(registries, train.model_dump(include=CHOICE_KEYS))
            spec, chosen_by = choice.backend, choice.header()
        except Exception as exc:
            key = "backend" if train.backend else "task_type"
            errors.append(ConfigError(str(exc), key=key, file=file, line=lines.get((key,))))
        if spec is not None and train.task_type is None:
            train.task_type = spec.task_types[0]
    validated: dict[str, BaseModel] = {}
    for name, section_data in sections.items():
        if section_data is None:
            section_data = {}
        if not isinstance(section_data, dict):
            errors.append(
                ConfigError("must be a mapping", key=name, file=file, line=lines.get((name,)))
            )
            continue
        model = registries.backends.get(name).config_model
        if model is not None:
            section = _validate(
                model, section_data, (name,), lines, file, overridden, errors, check_paths
            )
            if section is not None:
                validated[name] = section
    if spec is not None and spec.name not in validated and spec.config_model is not None:
        section = _validate(
            spec.config_model, {}, (spec.name,), lines, file, None, errors, check_paths
        )
        if section is not None:
            validated[spec.name] = section
    known = {k: v for k, v in data.items() if k in TrainConfig.model_fields}
    names = train if isinstance(train, TrainConfig) else TrainConfig.model_construct(**known)
    errors += _check_names(names, validated, registries, lines, file, overridden)
    errors += _check_optimizer_package(names, registries, lines, file, overridden)
    if isinstance(train, TrainConfig) and check_paths:
        errors += _check_paths(train, lines, file)
    if errors:
        raise ConfigErrors(errors)
    assert isinstance(train, TrainConfig) and spec is not None
    return Config(
        train=train,
        backend=spec.name,
        section=validated.get(spec.name),
        path=Path(path) if path is not None else None,
        sections=validated,
        notices=notices,
        chosen_by=chosen_by,
    )
