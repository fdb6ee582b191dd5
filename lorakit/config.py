"""The training config: YAML in, a validated model out, errors that name key and line.

The seed-style flat keys work as written (``learning_rate: 2e-4``, which YAML 1.1 reads as
a string, is a float here). Backends add their own section (``sd:``, ``llm:``) with their
own pydantic model. Relative paths are resolved against the current directory, as
sd-scripts and axolotl do.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lorakit.errors import ConfigError
from lorakit.registry import KNOWN_BACKEND_PACKAGES

CONFIG_VERSION = 2
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


class DistributedConfig(BaseModel):
    """How to spread training over several processes (see docs/distributed.md)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"] = Field(
        "ddp", description="ddp, deepspeed_zero2, deepspeed_zero3 or fsdp."
    )
    offload: bool = Field(False, description="DeepSpeed/FSDP: offload optimizer state to CPU.")
    find_unused_parameters: bool = Field(False, description="DDP: look for unused parameters.")


class TrainConfig(BaseModel):
    """The core training config. Backend sections are validated by their backend."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    config_version: int = Field(CONFIG_VERSION, description="Config layout version.")
    task_type: str = Field(
        "image-generation",
        description="image-generation (backend sd) or text-generation (backend llm).",
    )
    backend: str | None = Field(None, description="Backend name; overrides task_type.")
    base_model: str = Field(
        description="Base model: a local file or folder, a hub id, or (llm) a .gguf file."
    )
    train_data_dir: str = Field(description="Training data: a folder (or, llm, a .jsonl file).")
    metadata_path: str | None = Field(
        None, description="Captions file (sd); default train_data_dir/metadata.csv."
    )
    output_dir: str = Field("./output/lora", description="Where the run writes everything.")
    output_name: str | None = Field(
        None, description="Base name of exported files; default the output_dir's name."
    )
    lora_rank: int = Field(8, gt=0, le=4096, description="LoRA rank r.")
    lora_alpha: float | None = Field(
        None, gt=0, description="LoRA alpha; the update is scaled by alpha/rank. Default: rank."
    )
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None, description="Modules to adapt; default chosen by the backend."
    )
    batch_size: int = Field(1, gt=0, description="Samples per step per process.")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="Micro-batches per optimizer step."
    )
    epochs: int = Field(1, gt=0, description="Passes over the data (unless max_steps).")
    max_steps: int | None = Field(
        None, gt=0, description="Optimizer steps to run; overrides epochs."
    )
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    optimizer: str = Field("adamw", description="adamw, adamw8bit, dadapt_adam, prodigy, ...")
    optimizer_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for the optimizer."
    )
    lr_scheduler: str = Field(
        "constant", description="constant, linear, cosine, cosine_with_restarts, ..."
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    lr_scheduler_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra scheduler arguments (e.g. num_cycles)."
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip gradients to this norm; null disables clipping."
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, else no."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    seed: int = Field(42, description="Seed for every random generator.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    save_total_limit: int | None = Field(
        3, gt=0, description="Keep the newest N checkpoints (null: all)."
    )
    logging_steps: int = Field(1, gt=0, description="Log metrics every N steps.")
    trackers: list[str] = Field(
        default_factory=lambda: ["tensorboard", "jsonl"], description="Metric trackers."
    )
    export_formats: list[str] | None = Field(
        None, description="Exporters to run at the end; default chosen by the backend."
    )
    sample_prompts: list[str] = Field(default_factory=list, description="Prompts for previews.")
    sample_every_n_steps: int = Field(
        0, ge=0, description="Render previews every N steps (0: only at the end)."
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Multi-process settings."
    )

    @field_validator("target_modules", "trackers", "export_formats", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("sample_prompts", mode="before")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)

    @property
    def name(self) -> str:
        return self.output_name or Path(self.output_dir).resolve().name


#: Keys that may change between a run and its resume without changing what it learns.
RESUMABLE_KEYS = frozenset(
    {
        "max_steps", "epochs", "save_steps", "save_total_limit", "logging_steps", "trackers",
        "sample_prompts", "sample_every_n_steps", "output_dir", "output_name", "num_workers",
        "export_formats", "config_version", "mixed_precision",
    }
)  # fmt: skip


@dataclass
class Config:
    """A validated config: the core keys plus the chosen backend's section."""

    train: TrainConfig
    backend: str
    section: BaseModel | None
    path: Path | None = None
    sections: dict[str, BaseModel] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = self.train.model_dump(mode="json")
        for name, model in self.sections.items():
            data[name] = model.model_dump(mode="json")
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def semantic_view(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """``data`` (default: this config) without the keys a resume may change.

        Core keys in :data:`RESUMABLE_KEYS`; in backend sections, keys starting with
        ``sample_`` (previews) and those a section model lists in ``resumable_keys``.
        """
        data = self.to_dict() if data is None else data
        view: dict[str, Any] = {}
        for key, value in data.items():
            if key in RESUMABLE_KEYS:
                continue
            model = self.sections.get(key)
            if model is not None and isinstance(value, dict):
                extra: frozenset[str] = getattr(type(model), "resumable_keys", frozenset())
                value = {
                    k: v for k, v in value.items() if not k.startswith("sample_") and k not in extra
                }
            view[key] = value
        return view

    def semantic_hash(self) -> str:
        """Hash of everything that changes what a run learns (not max_steps, logging, ...)."""
        blob = json.dumps(self.semantic_view(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# -- YAML with line numbers ---------------------------------------------------------


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


def _walk(node: yaml.Node, loader: _Loader, path: tuple[str, ...], lines: dict, file: str) -> Any:
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


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value parsed as a YAML scalar)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        parsed = yaml.load(value, Loader=_Loader) if value.strip() else None  # noqa: S506
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Apply ``--set`` items to ``data``; returns each overridden key path and its item."""
    applied: dict[tuple[str, ...], str] = {}
    for item in overrides:
        keys, value = parse_override(item)
        target = data
        for k in keys[:-1]:
            if target.get(k) is None:  # a missing or empty section
                target[k] = {}
            target = target[k]
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item}: '{k}' is not a section")
        target[keys[-1]] = value
        applied[tuple(keys)] = item
    return applied


# -- validation ----------------------------------------------------------------------


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
    from lorakit.migrations import migrate
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
