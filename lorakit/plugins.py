"""The plugin manager: loads built-ins and entry points, fills the registries.

Built-in implementations (optimizers, schedulers, trackers, the safetensors exporter) are
plugins too: they register through the same hooks as a third party's package. Every entry
point loads inside its own ``try``: a broken plugin is reported by ``lorakit plugins`` and
``lorakit doctor`` and never breaks the CLI, unless ``LORAKIT_STRICT_PLUGINS=1``.
``LORAKIT_DISABLE_PLUGINS=a,b`` skips plugins by entry-point or distribution name.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from lorakit import PLUGIN_API_VERSION, SUPPORTED_PLUGIN_APIS, __version__, hookspecs
from lorakit.errors import LorakitError, PluginError, RunError
from lorakit.registry import Registries

ENTRY_POINT_GROUP = "lorakit"
BUILTIN_PLUGINS = (
    "lorakit.builtins.optimizers",
    "lorakit.builtins.schedulers",
    "lorakit.builtins.trackers",
    "lorakit.builtins.exporters",
)
REGISTER_HOOKS = {
    "register_backends": "backends",
    "register_model_loaders": "model_loaders",
    "register_dataset_readers": "dataset_readers",
    "register_labelers": "labelers",
    "register_optimizers": "optimizers",
    "register_schedulers": "schedulers",
    "register_exporters": "exporters",
    "register_trackers": "trackers",
}


@dataclass
class PluginInfo:
    """One plugin as ``lorakit plugins`` shows it."""

    name: str
    distribution: str
    version: str
    builtin: bool
    api: int | None = None
    status: str = "ok"  # ok | error | disabled | incompatible
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "plugin_api": self.api,
            "status": self.status,
            "error": self.error,
            "hooks": self.hooks,
            "registered": self.registered,
        }


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class Plugins:
    """A pluggy manager plus what each plugin registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("lorakit")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.conflicts: list[str] = []
        self._registries: Registries | None = None

    # -- loading ---------------------------------------------------------------
    def add(
        self,
        plugin: Any,
        *,
        name: str,
        distribution: str = "lorakit",
        version: str = __version__,
        builtin: bool = False,
    ) -> PluginInfo:
        """Register a plugin object in-process (how tests and built-ins add plugins)."""
        info = PluginInfo(name, distribution, version, builtin)
        self.infos[name] = info
        api = getattr(plugin, "LORAKIT_PLUGIN_API", PLUGIN_API_VERSION if builtin else None)
        info.api = api
        if api is not None and api not in SUPPORTED_PLUGIN_APIS:
            info.status = "incompatible"
            fits = ", ".join(str(v) for v in sorted(SUPPORTED_PLUGIN_APIS))
            info.error = (
                f"built for plugin API {api}; lorakit {__version__} supports API {fits}: "
                f"upgrade {distribution} or lorakit"
            )
            return info
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # a malformed hookimpl
            self._fail(info, f"cannot register: {exc}")
            return info
        info.hooks = sorted(
            hook.name for hook in (self.pm.get_hookcallers(plugin) or []) if hook.name
        )
        self._registries = None
        return info

    def load_builtins(self) -> None:
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.add(module, name=module_name.rsplit(".", 1)[-1], builtin=True)

    def load_entry_points(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        disabled = {
            n.strip() for n in os.environ.get("LORAKIT_DISABLE_PLUGINS", "").split(",") if n.strip()
        }
        if entry_points is None:
            entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else "unknown"
            dist_version = dist.version if dist is not None else "unknown"
            if ep.name in disabled or dist_name in disabled:
                self.infos[ep.name] = PluginInfo(
                    ep.name, dist_name, dist_version, False, status="disabled",
                    error="disabled by LORAKIT_DISABLE_PLUGINS",
                )  # fmt: skip
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                info = PluginInfo(ep.name, dist_name, dist_version, False)
                self.infos[ep.name] = info
                self._fail(info, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
                continue
            self.add(plugin, name=ep.name, distribution=dist_name, version=dist_version)

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.status = "error"
        info.error = message
        if _flag("LORAKIT_STRICT_PLUGINS"):
            raise PluginError(f"plugin {info.name} ({info.distribution}): {message}")

    # -- registries ------------------------------------------------------------
    @property
    def registries(self) -> Registries:
        if self._registries is None:
            self._registries = self._collect()
        return self._registries

    def _collect(self) -> Registries:
        registries = Registries()
        self.conflicts = []
        for hook_name, attr in REGISTER_HOOKS.items():
            registry = getattr(registries, attr)
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
                info = self.infos[impl.plugin_name]
                names: list[str] = []

                def register(
                    spec: Any,
                    _info: PluginInfo = info,
                    _names: list[str] = names,
                    _registry: Any = registry,
                ) -> None:
                    try:
                        _registry.add(
                            spec,
                            plugin=_info.name,
                            distribution=_info.distribution,
                            version=_info.version,
                            builtin=_info.builtin,
                        )
                    except PluginError as exc:  # a name conflict: keep the plugin's other names
                        self.conflicts.append(exc.message)
                        if _flag("LORAKIT_STRICT_PLUGINS"):
                            raise
                        return
                    _names.append(spec.name)

                try:
                    impl.function(register=register)
                except PluginError:  # a conflict, already recorded; raised in strict mode
                    raise
                except Exception as exc:
                    self._fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}")
                if names:
                    info.registered.setdefault(registry.kind, []).extend(names)
        return registries

    def check(self) -> None:
        """Raise the first registration conflict (two plugins claiming one name)."""
        _ = self.registries
        if self.conflicts:
            raise PluginError(self.conflicts[0])

    # -- hook calls ------------------------------------------------------------
    def call(self, hook_name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin, naming the plugin if one raises."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except LorakitError:
                raise
            except Exception as exc:
                raise RunError(
                    f"plugin {impl.plugin_name} failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc

    def add_commands(self, app: Any) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except Exception as exc:
                self._fail(self.infos[impl.plugin_name], f"register_commands raised {exc}")


_current: Plugins | None = None


def build_plugins(*, entry_points: bool = True, extra: Iterable[tuple[str, Any]] = ()) -> Plugins:
    """A fresh plugin manager with the built-ins, entry points and ``extra`` plugins."""
    plugins = Plugins()
    plugins.load_builtins()
    if entry_points:
        plugins.load_entry_points()
    for name, plugin in extra:
        plugins.add(plugin, name=name, distribution=name)
    return plugins


def get_plugins() -> Plugins:
    """The process-wide plugin manager, built on first use."""
    global _current
    if _current is None:
        _current = build_plugins()
    return _current


def set_plugins(plugins: Plugins | None) -> None:
    """Replace the process-wide plugin manager (tests use this)."""
    global _current
    _current = plugins


def get_registries() -> Registries:
    return get_plugins().registries


def lazy(path: str) -> Callable[..., Any]:
    """A factory that imports ``module:attr`` only when called."""

    def factory(*args: Any, **kwargs: Any) -> Any:
        module_name, _, attr = path.partition(":")
        return getattr(importlib.import_module(module_name), attr)(*args, **kwargs)

    factory.__qualname__ = factory.__name__ = f"lazy({path})"
    return factory
