"""Load a config: read, migrate, apply ``--set``, validate against the core and backend models."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from lorakit.config.migrations import migrate
from lorakit.config.overrides import apply_overrides
from lorakit.config.schema import HUB_ID, WEIGHT_SUFFIXES, Config, TrainConfig
from lorakit.config.yaml_reader import read_yaml
from lorakit.errors import ConfigError
from lorakit.registry import KNOWN_BACKEND_PACKAGES


def _did_you_mean(key: str, choices: list[str]) -> str:
    match = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _validate(
    model: type[BaseModel],
    data: dict[str, Any],
    prefix: tuple[str, ...],
    lines: dict,
    file: str | None,
    overridden: dict[tuple[str, ...], str] | None = None,
) -> BaseModel:
    """Validate ``data``; the first error as a ConfigError naming key, file and line (or the
    ``--set`` item it came from)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
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
        raise ConfigError(message, key=key, file=file, line=line) from None


def _fields_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        info = getattr(current, "model_fields", {}).get(part)
        if info is None:
            return []
        current = info.annotation
    return list(getattr(current, "model_fields", {}))


def _check_paths(train: TrainConfig, lines: dict, file: str | None) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(message, key=key, file=file, line=lines.get((key,)))

    base = train.base_model
    if not Path(base).expanduser().exists():
        looks_local = base.startswith((".", "/", "~")) or base.lower().endswith(WEIGHT_SUFFIXES)
        if looks_local or not HUB_ID.match(base):
            fail("base_model", f"file or folder not found: {base}")
    data = Path(train.train_data_dir).expanduser()
    if not data.exists():
        fail("train_data_dir", f"folder not found: {train.train_data_dir}")
    if train.metadata_path and not Path(train.metadata_path).expanduser().is_file():
        fail("metadata_path", f"file not found: {train.metadata_path}")


def load_config(
    path: str | Path | None = None,
    *,
    data: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    backend: str | None = None,
    check_paths: bool = True,
    registries: Any = None,
) -> Config:
    """Load, migrate and validate a config file (or a dict) for the backend it names."""
    from lorakit.plugins import get_registries

    registries = registries or get_registries()
    file = str(path) if path is not None else None
    lines: dict[tuple[str, ...], int] = {}
    if data is None:
        if path is None:
            raise ConfigError("no config given")
        data, lines = read_yaml(Path(path))
    data = dict(data)
    data, notices = migrate(data, file=file)
    overridden: dict[tuple[str, ...], str] = {}
    if overrides:
        overridden = apply_overrides(data, overrides)
    if backend:
        data["backend"] = backend

    backend_names = registries.backends.names()
    sections = {k: data.pop(k) for k in list(data) if k in backend_names}
    for key in list(data):
        if key in KNOWN_BACKEND_PACKAGES and key not in backend_names:
            raise ConfigError(
                f"section for backend '{key}', which is not installed: "
                f"pip install {KNOWN_BACKEND_PACKAGES[key]}",
                key=key, file=file, line=lines.get((key,)),
            )  # fmt: skip
    train = _validate(TrainConfig, data, (), lines, file, overridden)
    assert isinstance(train, TrainConfig)
    try:
        entry = registries.backend_for(train.task_type, train.backend)
    except Exception as exc:
        key = "backend" if train.backend else "task_type"
        raise ConfigError(str(exc), key=key, file=file, line=lines.get((key,))) from None
    spec = entry.spec
    validated: dict[str, BaseModel] = {}
    for name, section_data in sections.items():
        if section_data is None:
            section_data = {}
        if not isinstance(section_data, dict):
            raise ConfigError("must be a mapping", key=name, file=file, line=lines.get((name,)))
        model = registries.backends.get(name).config_model
        if model is not None:
            validated[name] = _validate(model, section_data, (name,), lines, file, overridden)
    if spec.name not in validated and spec.config_model is not None:
        validated[spec.name] = _validate(spec.config_model, {}, (spec.name,), lines, file)
    if check_paths:
        _check_paths(train, lines, file)
    return Config(
        train=train,
        backend=spec.name,
        section=validated.get(spec.name),
        path=Path(path) if path is not None else None,
        sections=validated,
        notices=notices,
    )
