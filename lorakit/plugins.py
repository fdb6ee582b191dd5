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
import sys
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
    replaces: list[str] = field(default_factory=list)  # first-party names it overrides

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
            "replaces": self.replaces,
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
        try:
            self.pm.check_pending()  # a hook name no spec has: ``on_step_ends``
        except pluggy.PluginValidationError as exc:
            self._unregister(name)
            self._fail(info, f"unknown hook: {exc}")
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
        """Call every ``register_*`` hook through pluggy and fill fresh registries.

        A plugin whose registration hook raises is marked failed and unregistered, and the
        registries are built again without it: one broken plugin never hides the others.
        """
        while True:
            registries = Registries()
            self.conflicts = []
            for info in self.infos.values():
                info.registered, info.replaces = {}, []
            try:
                for hook_name, attr in REGISTER_HOOKS.items():
                    self._call_register(hook_name, getattr(registries, attr))
            except _Failed as failed:
                self._fail(self.infos[failed.plugin], failed.message)
                self._unregister(failed.plugin)
                continue
            for override in registries.overrides():
                self.infos[override.plugin].replaces.append(str(override))
            return registries

    def _call_register(self, hook_name: str, registry: Any) -> None:
        caller = getattr(self.pm.hook, hook_name)
        codes = _impl_codes(caller)

        def register(spec: Any) -> None:
            info = self.infos[_calling_plugin(codes) or "unknown"]
            try:
                registry.add(
                    spec,
                    plugin=info.name,
                    distribution=info.distribution,
                    version=info.version,
                    builtin=info.builtin,
                )
            except PluginError as exc:  # a name conflict: keep the plugin's other names
                self.conflicts.append(exc.message)
                if _flag("LORAKIT_STRICT_PLUGINS"):
                    raise
                return
            info.registered.setdefault(registry.kind, []).append(spec.name)

        try:
            caller(register=register)
        except PluginError:
            raise
        except Exception as exc:
            plugin = _raising_plugin(exc, codes)
            if plugin is None:
                raise
            raise _Failed(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}") from exc

    def _unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)

    def check(self) -> None:
        """Raise the first registration conflict (two plugins claiming one name)."""
        _ = self.registries
        if self.conflicts:
            raise PluginError(self.conflicts[0])

    def overrides(self) -> list[str]:
        """Each first-party registration a third party replaced, as one line."""
        return [str(o) for o in self.registries.overrides()]

    # -- hook calls ------------------------------------------------------------
    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook through pluggy; a plugin that raises is named in a RunError."""
        caller = getattr(self.pm.hook, hook_name)
        try:
            return list(caller(**kwargs) or [])
        except LorakitError:
            raise
        except Exception as exc:
            plugin = _raising_plugin(exc, _impl_codes(caller)) or "unknown"
            raise RunError(
                f"plugin {plugin} failed in {hook_name}: {type(exc).__name__}: {exc}"
            ) from exc

    def add_commands(self, app: Any) -> None:
        """Let plugins add CLI commands; a plugin that raises is marked failed and skipped."""
        while True:
            codes = _impl_codes(self.pm.hook.register_commands)
            try:
                self.pm.hook.register_commands(app=app)
                return
            except Exception as exc:
                plugin = _raising_plugin(exc, codes)
                if plugin is None:
                    raise
                self._fail(self.infos[plugin], f"register_commands raised {exc}")
                self._unregister(plugin)


class _Failed(Exception):
    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.message = message


_Codes = dict[Any, list[tuple[Any, str]]]


def _impl_codes(caller: Any) -> _Codes:
    """Each hook implementation's code object → (its ``self`` or None, plugin name)."""
    codes: _Codes = {}
    for impl in caller.get_hookimpls():
        code = getattr(impl.function, "__code__", None)
        if code is not None:
            owner = getattr(impl.function, "__self__", None)
            codes.setdefault(code, []).append((owner, impl.plugin_name))
    return codes


def _plugin_of_frame(frame: Any, codes: _Codes) -> str | None:
    for owner, name in codes.get(frame.f_code, ()):
        if owner is None or frame.f_locals.get("self") is owner:
            return name
    return None


def _calling_plugin(codes: _Codes) -> str | None:
    """The plugin whose hook implementation is on the current call stack."""
    frame = sys._getframe(1)
    while frame is not None:
        name = _plugin_of_frame(frame, codes)
        if name is not None:
            return name
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _raising_plugin(exc: BaseException, codes: _Codes) -> str | None:
    """The plugin whose hook implementation is innermost in ``exc``'s traceback."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        found = _plugin_of_frame(tb.tb_frame, codes) or found
        tb = tb.tb_next
    return found


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
