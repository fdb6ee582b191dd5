"""What plugins register, and the registries that hold it.

Each ``register_*`` hook receives a ``register`` callback that takes one of the
dataclasses below. A registration is cheap: a name, a one-line description, an optional
config schema (a pydantic model) and a factory. The factory is only called when the thing
is used, so heavy imports belong inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lorakit.errors import PluginError, UsageError


@dataclass(frozen=True)
class BackendSpec:
    """A model backend (``sd``, ``llm``).

    ``factory(config)`` returns a :class:`lorakit.backend.Backend`. ``config_model`` is the
    pydantic model of the backend's own config section (named ``name``: ``sd:``, ``llm:``).
    ``commands`` maps core CLI verbs (``merge``, ``sample``, ``export``) to callables the
    core dispatches to; their signatures are documented in docs/plugin-hooks.md.
    ``templates`` maps template names to ``(package, file)`` of commented config templates
    shipped as package data; the first is the default of ``lorakit config init``.
    ``detect(path)`` (optional) answers whether a LoRA file or folder belongs to this backend.
    """

    name: str
    task_types: tuple[str, ...]
    factory: Callable[..., Any]
    description: str = ""
    config_model: type | None = None
    commands: dict[str, Callable[..., Any]] = field(default_factory=dict)
    templates: dict[str, tuple[str, str]] = field(default_factory=dict)
    detect: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class OptimizerSpec:
    """``factory(params, lr=..., **optimizer_args)`` returns a ``torch.optim.Optimizer``.

    ``adaptive`` optimizers (D-Adaptation, Prodigy) estimate their own step size: lorakit
    warns when learning_rate is far from 1.0 and logs ``d * lr`` instead of ``lr``.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    adaptive: bool = False


@dataclass(frozen=True)
class SchedulerSpec:
    """``factory(optimizer, warmup_steps=, total_steps=, **args)`` returns an LR scheduler."""

    name: str
    factory: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class DatasetReaderSpec:
    """``factory(path, **options)`` returns a list of records (dicts) for a backend.

    ``modality`` is ``image`` or ``text``; ``detect(path)`` (optional) answers whether the
    reader understands the data at ``path`` (used by ``dataset_format: auto``).
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    modality: str = "image"
    detect: Callable[..., bool] | None = None


@dataclass(frozen=True)
class LabelerSpec:
    """``factory(**options)`` returns a :class:`lorakit.labeling.Labeler`."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    options_model: type | None = None


@dataclass(frozen=True)
class ExporterSpec:
    """``factory(backend, directory, name, metadata)`` writes files and returns their paths.

    ``backends`` lists the backend names it serves (empty: any backend).
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    backends: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackerSpec:
    """``factory(output_dir, config)`` returns an object with ``log(metrics, step)`` and ``close()``."""

    name: str
    factory: Callable[..., Any]
    description: str = ""


S = TypeVar("S")


@dataclass(frozen=True)
class Entry(Generic[S]):
    """A registration and the plugin (and distribution) it came from."""

    spec: S
    plugin: str
    distribution: str
    version: str


class Registry(Generic[S]):
    """Name → registration for one kind of thing, remembering who registered what."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[S]] = {}

    def add(self, spec: S, *, plugin: str, distribution: str, version: str, builtin: bool) -> None:
        name: str = spec.name  # type: ignore[attr-defined]
        previous = self._entries.get(name)
        if previous is not None and not (previous.distribution == "lorakit" and not builtin):
            raise PluginError(
                f"{self.kind} '{name}' is registered twice: by {previous.distribution} "
                f"(plugin {previous.plugin}) and by {distribution} (plugin {plugin})"
            )
        # A third-party registration replaces a built-in one of the same name.
        self._entries[name] = Entry(spec, plugin, distribution, version)

    def get(self, name: str, *, hint: str | None = None) -> S:
        entry = self._entries.get(name)
        if entry is None:
            import difflib

            known = ", ".join(sorted(self._entries)) or "none"
            close = difflib.get_close_matches(name, list(self._entries), n=1, cutoff=0.6)
            guess = f"did you mean '{close[0]}'? " if close else ""
            message = f"unknown {self.kind} '{name}' ({guess}available: {known})"
            raise UsageError(f"{message}; {hint}" if hint else message)
        return entry.spec

    def entry(self, name: str) -> Entry[S]:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[S]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.spec.name))  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)


@dataclass
class Registries:
    """Every registry, filled by :func:`lorakit.plugins.get_registries`."""

    backends: Registry[BackendSpec] = field(default_factory=lambda: Registry("backend"))
    dataset_readers: Registry[DatasetReaderSpec] = field(
        default_factory=lambda: Registry("dataset reader")
    )
    labelers: Registry[LabelerSpec] = field(default_factory=lambda: Registry("labeler"))
    optimizers: Registry[OptimizerSpec] = field(default_factory=lambda: Registry("optimizer"))
    schedulers: Registry[SchedulerSpec] = field(default_factory=lambda: Registry("lr scheduler"))
    exporters: Registry[ExporterSpec] = field(default_factory=lambda: Registry("exporter"))
    trackers: Registry[TrackerSpec] = field(default_factory=lambda: Registry("tracker"))

    def backend_for(self, task_type: str | None, backend: str | None) -> Entry[BackendSpec]:
        """The backend named by ``backend``, else the one serving ``task_type``."""
        if backend:
            if backend not in self.backends:
                package = KNOWN_BACKEND_PACKAGES.get(backend)
                hint = f"pip install {package}" if package else None
                self.backends.get(backend, hint=hint)
            return self.backends.entry(backend)
        for entry in self.backends:
            if task_type in entry.spec.task_types:
                return entry
        name = KNOWN_TASK_TYPES.get(task_type or "")
        if name:
            raise UsageError(
                f"no backend for task_type '{task_type}' is installed: "
                f"pip install {KNOWN_BACKEND_PACKAGES[name]}"
            )
        known = ", ".join(sorted(KNOWN_TASK_TYPES))
        raise UsageError(f"unknown task_type '{task_type}' (known: {known})")


#: Backends lorakit's own distributions provide, for "pip install ..." hints.
KNOWN_BACKEND_PACKAGES = {"sd": "lorakit-sd", "llm": "lorakit-llm"}
KNOWN_TASK_TYPES = {"image-generation": "sd", "text-generation": "llm"}
