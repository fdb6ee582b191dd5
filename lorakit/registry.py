"""What plugins register, and the registries that hold it.

Each ``register_*`` hook receives a ``register`` callback that takes one of the
dataclasses below. A registration is cheap: a name, a one-line description, an optional
config schema (a pydantic model) and a factory. The factory is only called when the thing
is used, so heavy imports belong inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from lorakit.backend_plugin import BackendPlugin
from lorakit.errors import PluginError, UsageError
from lorakit.export_view import Exporter


@dataclass(frozen=True)
class OptimizerSpec:
    """``factory(params, lr=..., **optimizer_args)`` returns a ``torch.optim.Optimizer``.

    ``adaptive`` optimizers (D-Adaptation, Prodigy) estimate their own step size: lorakit
    warns when learning_rate is far from 1.0 and logs ``d * lr`` instead of ``lr``.
    ``requires`` names a module the factory imports: a config that picks the optimizer is
    refused when validated (before any model loads) if it is not installed, with ``install``
    (the pip command) in the message.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    adaptive: bool = False
    requires: str = ""
    install: str = ""


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
    """``factory(view, directory, name, metadata)`` writes files and returns their paths.

    ``view`` is the :class:`lorakit.export_view.AdapterExport` the backend hands over (never
    the backend itself); ``metadata`` the provenance strings every file carries.
    ``backends`` lists the backend names it serves (empty: any backend).
    """

    name: str
    factory: Exporter
    description: str = ""
    backends: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelLoaderSpec:
    """A way to read a base model for one backend: a file layout, a folder, a hub id.

    ``detect(source)`` answers, cheaply (a suffix, a folder listing, a file's first bytes;
    never the weights), whether this loader reads ``source`` (a path or hub id, as written
    in ``base_model``). ``load(source, **options)`` loads it; the options and what it
    returns are the backend's contract (docs/plugin-hooks.md lists them for ``sd`` and
    ``llm``). A loader may also refuse: raise :class:`lorakit.errors.UsageError` saying
    what the file is and how to convert it.

    Loaders of a backend are tried by ``priority`` (higher first), third-party before
    first-party at equal priority, then by name; ``model_loader:`` in the config picks one
    by name and skips detection.

    ``check(source, section)``, optional, refuses cheaply (file headers, the local cache;
    no weights, no heavy imports) what ``load`` would refuse later for lack of something,
    with the same message. ``config validate`` and the start of ``train`` run it.
    """

    name: str
    backend: str
    detect: Callable[[str], bool]
    load: Callable[..., Any]
    description: str = ""
    priority: int = 0
    check: Callable[[str, Any], None] | None = None


class Tracker(Protocol):
    """What a tracker factory returns."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` at optimizer step ``step``."""

    def close(self) -> None:
        """Flush and close (the end of the run)."""


@dataclass(frozen=True)
class TrackerSpec:
    """``factory(output_dir, config)`` returns an object with ``log(metrics, step)`` and ``close()``."""

    name: str
    factory: Callable[..., Any]
    description: str = ""


@dataclass(frozen=True)
class RewardSpec:
    """A reward for reinforcement learning from verifiable rewards (GRPO).

    ``factory(**options)`` returns the reward function, called once per batch of
    completions: ``reward(prompts, completions, rows) -> list[float]``, one float per
    completion. ``prompts`` are the prompt texts as the model saw them, ``completions`` the
    generated texts, ``rows`` the data rows (dicts) they came from, so a reward can read a
    reference field such as ``answer``. The factory is called when a run names the reward,
    so heavy imports belong inside it. ``options`` lists the option names the factory takes
    (from ``llm.reward_options.<name>``).
    """

    name: str
    factory: Callable[..., Callable[[list[str], list[str], list[dict[str, Any]]], list[float]]]
    description: str = ""
    options: tuple[str, ...] = ()


S = TypeVar("S")


@dataclass(frozen=True)
class Entry(Generic[S]):
    """A registration and the plugin (and distribution) it came from."""

    spec: S
    plugin: str
    distribution: str
    version: str
    first_party: bool = False


@dataclass(frozen=True)
class Override:
    """A first-party registration that a third party's plugin replaced."""

    kind: str
    name: str
    replaced: str  # the first-party distribution
    by: str  # the third party's distribution
    plugin: str  # the third party's plugin

    def __str__(self) -> str:
        return f"{self.kind} '{self.name}' of {self.replaced} is replaced by {self.by} (plugin {self.plugin})"


#: Distributions lorakit ships; a third party's registration of a name they use replaces it.
FIRST_PARTY = frozenset({"lorakit", "lorakit-sd", "lorakit-llm", "lorakit-labelers", "lorakit-ui"})


def is_first_party(distribution: str) -> bool:
    return distribution.lower().replace("_", "-") in FIRST_PARTY


class Registry(Generic[S]):
    """Name → registration for one kind of thing, remembering who registered what.

    A third party registering a name lorakit's own distributions use replaces that
    registration, whatever the order the plugins load in, and the replacement is recorded
    in :attr:`overrides`. Two third parties, or two first-party plugins, claiming one name
    is a :class:`PluginError` naming both.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[S]] = {}
        self.overrides: list[Override] = []

    def add(
        self, spec: S, *, plugin: str, distribution: str, version: str, builtin: bool = False
    ) -> None:
        name: str = spec.name  # type: ignore[attr-defined]
        entry = Entry(spec, plugin, distribution, version, builtin or is_first_party(distribution))
        previous = self._entries.get(name)
        if previous is None:
            self._entries[name] = entry
            return
        if previous.first_party != entry.first_party:
            ours, theirs = (previous, entry) if previous.first_party else (entry, previous)
            self._entries[name] = theirs
            self.overrides.append(
                Override(self.kind, name, ours.distribution, theirs.distribution, theirs.plugin)
            )
            return
        raise PluginError(
            f"{self.kind} '{name}' is registered twice: by {previous.distribution} "
            f"(plugin {previous.plugin}) and by {distribution} (plugin {plugin}); uninstall "
            f"one, or skip it with LORAKIT_DISABLE_PLUGINS={distribution}"
        )

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

    backends: Registry[BackendPlugin] = field(default_factory=lambda: Registry("backend"))
    dataset_readers: Registry[DatasetReaderSpec] = field(
        default_factory=lambda: Registry("dataset reader")
    )
    labelers: Registry[LabelerSpec] = field(default_factory=lambda: Registry("labeler"))
    optimizers: Registry[OptimizerSpec] = field(default_factory=lambda: Registry("optimizer"))
    schedulers: Registry[SchedulerSpec] = field(default_factory=lambda: Registry("lr scheduler"))
    exporters: Registry[ExporterSpec] = field(default_factory=lambda: Registry("exporter"))
    trackers: Registry[TrackerSpec] = field(default_factory=lambda: Registry("tracker"))
    model_loaders: Registry[ModelLoaderSpec] = field(
        default_factory=lambda: Registry("model loader")
    )
    rewards: Registry[RewardSpec] = field(default_factory=lambda: Registry("reward"))

    def overrides(self) -> list[Override]:
        """Every replacement of a first-party registration by a third party."""
        return [o for registry in vars(self).values() for o in registry.overrides]

    def model_loader_for(
        self, backend: str, source: str, name: str | None = None
    ) -> ModelLoaderSpec:
        """The loader of ``backend`` that reads ``source`` (or the one called ``name``)."""
        if name:
            spec = self.model_loaders.get(name)
            if spec.backend != backend:
                raise UsageError(
                    f"model loader '{name}' loads {spec.backend} models, not {backend} models"
                )
            return spec
        candidates = sorted(
            (e for e in self.model_loaders._entries.values() if e.spec.backend == backend),
            key=lambda e: (-e.spec.priority, e.first_party, e.spec.name),
        )
        for entry in candidates:
            if entry.spec.detect(source):
                return entry.spec
        known = ", ".join(e.spec.name for e in candidates) or "none"
        raise UsageError(f"no {backend} model loader reads {source} (installed loaders: {known})")

    def check_model(
        self, backend: str, source: str, section: Any = None, name: str | None = None
    ) -> None:
        """Run the cheap ``check`` of the loader that would read ``source`` (if it has one)."""
        try:
            spec = self.model_loader_for(backend, source, name)
        except UsageError:
            return  # no loader reads it: said where the model loads, naming the loaders
        if spec.check is not None:
            spec.check(source, section)

    def backends_with(
        self, command: str, names: list[str] | None = None, *, what: str = "command"
    ) -> dict[str, BackendPlugin]:
        """The backends (all, or those ``names``) whose ``commands`` support ``command``, by
        name; a name without one is a UsageError saying what is missing (``what``)."""
        available = {e.spec.name: e.spec for e in self.backends if e.spec.supports(command)}
        chosen = names or sorted(available)
        missing = [n for n in chosen if n not in available]
        if missing or not chosen:
            raise UsageError(
                f"no {what} for backend {', '.join(missing) or '(none installed)'}: "
                f"pip install {' '.join(sorted(set(KNOWN_BACKEND_PACKAGES.values())))}"
            )
        return {n: available[n] for n in chosen}

    def backend_for(self, task_type: str | None, backend: str | None) -> Entry[BackendPlugin]:
        """The backend named by ``backend``, else the one serving ``task_type``; without
        either, the only installed backend (several: a UsageError naming them; a config's
        backend is chosen by :func:`lorakit.config.backend_choice.choose_backend`)."""
        if not backend and task_type is None:
            entries = list(self.backends)
            if len(entries) == 1:
                return entries[0]
            served = ", ".join(
                f"{e.spec.task_types[0]} ({e.spec.name})" for e in entries if e.spec.task_types
            )
            raise UsageError(
                f"several backends are installed ({served or 'none serves a task'}): name one"
                if entries
                else "no backend is installed: pip install lorakit-sd or lorakit-llm"
            )
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
