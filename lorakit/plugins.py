"""The plugin manager: loads built-ins and entry points, fills the registries.

Built-in implementations (optimizers, schedulers, trackers, the safetensors exporter) are
plugins too: they register through the same hooks as a third party's package. Every entry
point loads inside its own ``try``: a broken plugin is reported by ``lorakit plugins`` and
``lorakit doctor`` and never breaks the CLI, unless ``LORAKIT_STRICT_PLUGINS=1``.
``LORAKIT_DISABLE_PLUGINS=a,b`` skips plugins by entry-point or distribution name.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata as md
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from lorakit import PLUGIN_API_VERSION, SUPPORTED_PLUGIN_APIS, __version__, hookspecs
from lorakit.env import env_flag
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
    "register_rewards": "rewards",
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


class Plugins:
    """A pluggy manager plus what each plugin registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("lorakit")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.conflicts: list[str] = []
        #: modules of hookspecs plugins added (``LORAKIT_HOOKSPECS``), besides lorakit's own
        self.spec_modules: list[str] = []
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
        if api in SUPPORTED_PLUGIN_APIS:
            try:
                self.add_hookspecs(plugin)
            except Exception as exc:  # a missing or malformed hookspecs module
                self._fail(info, f"cannot add its hookspecs: {_describe(exc)}")
                return info
        if api is not None and api not in SUPPORTED_PLUGIN_APIS:
            info.status = "incompatible"
            fits = ", ".join(str(v) for v in sorted(SUPPORTED_PLUGIN_APIS))
            info.error = (
                f"built for plugin API {api}; lorakit {__version__} supports API {fits}: "
                f"upgrade {distribution} or lorakit"
            )
            return info
        try:
            self.pm.register(_with_guards(self.pm, plugin, name), name=name)
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
            hook.name
            for hook in (self.pm.get_hookcallers(self.pm.get_plugin(name)) or [])
            if hook.name
        )
        self._registries = None
        return info

    def add_hookspecs(self, plugin: Any) -> None:
        """Add the hooks a plugin publishes for other plugins (``LORAKIT_HOOKSPECS``).

        A plugin package may define hooks of its own (lorakit-sd's ``register_image_families``):
        its entry-point module names the module holding them, ``LORAKIT_HOOKSPECS =
        "lorakit_sd.hookspecs"``, and pluggy adds them to this manager, so a third party's
        implementation of them is a known hook whatever order the plugins load in.
        """
        path = getattr(plugin, "LORAKIT_HOOKSPECS", None)
        if path and path not in self.spec_modules:
            self.pm.add_hookspecs(importlib.import_module(path))
            self.spec_modules.append(path)

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
        loaded: list[tuple[Any, str, str, str]] = []
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else "unknown"
            dist_version = dist.version if dist is not None else "unknown"
            if ep.name in disabled or dist_name in disabled:
                self.infos[ep.name] = PluginInfo(
                    ep.name,
                    dist_name,
                    dist_version,
                    False,
                    status="disabled",
                    error="disabled by LORAKIT_DISABLE_PLUGINS",
                )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                info = PluginInfo(ep.name, dist_name, dist_version, False)
                self.infos[ep.name] = info
                self._fail(info, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
                continue
            loaded.append((plugin, ep.name, dist_name, dist_version))
        # Every plugin's own hookspecs first: an implementation of them is then known
        # whichever plugin's entry point comes first.
        for plugin, _, _, _ in loaded:
            if getattr(plugin, "LORAKIT_PLUGIN_API", None) not in SUPPORTED_PLUGIN_APIS:
                continue
            with contextlib.suppress(Exception):  # reported by ``add`` for that plugin
                self.add_hookspecs(plugin)
        for plugin, name, dist_name, dist_version in loaded:
            self.add(plugin, name=name, distribution=dist_name, version=dist_version)

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.status = "error"
        info.error = message
        if env_flag("LORAKIT_STRICT_PLUGINS"):
            raise PluginError(f"plugin {info.name} ({info.distribution}): {message}")

    # -- registries ------------------------------------------------------------
    @property
    def registries(self) -> Registries:
        if self._registries is None:
            self._registries = self._collect()
        return self._registries

    def _collect(self) -> Registries:
        """Call every ``register_*`` hook, one plugin at a time, and fill fresh registries.

        Each plugin's implementations are called through pluggy (so its own wrappers and
        ``tryfirst``/``trylast`` hold) with a ``register`` of its own, which knows the
        plugin's name. A plugin whose registration hook raises is marked failed and
        unregistered, and none of its registrations are kept: one broken plugin never
        hides the others.
        """
        registries = Registries()
        self.conflicts = []
        for info in self.infos.values():
            info.registered, info.replaces = {}, []
        made: list[tuple[str, Any, Any]] = []  # (plugin, registry, spec), in call order
        failed: set[str] = set()
        for hook_name, attr in REGISTER_HOOKS.items():
            registry = getattr(registries, attr)
            for plugin in self._implementers(hook_name):
                if plugin in failed:
                    continue

                def register(spec: Any, plugin: str = plugin, registry: Any = registry) -> None:
                    made.append((plugin, registry, spec))

                try:
                    self._hook_of(hook_name, plugin)(register=register)
                except Exception as exc:
                    failed.add(plugin)
                    self._fail(self.infos[plugin], f"{hook_name} raised {_describe(exc)}")
        for plugin in failed:
            self._unregister(plugin)
        for plugin, registry, spec in made:
            if plugin not in failed:
                self._add_spec(registry, spec, self.infos[plugin])
        for override in registries.overrides():
            self.infos[override.plugin].replaces.append(str(override))
        self._note_published()
        return registries

    def _note_published(self) -> None:
        """What plugins register through hooks other plugins publish, in ``lorakit plugins``:
        ``register_image_families`` is listed as ``image family: <names>``."""
        for path in self.spec_modules:
            module = importlib.import_module(path)
            for hook_name in sorted(vars(module)):
                if not hook_name.startswith("register_"):
                    continue
                kind = hook_name.removeprefix("register_").replace("_", " ")
                kind = kind.removesuffix("ies") + "y" if kind.endswith("ies") else kind
                for info, spec in self.registrations(hook_name):
                    name = str(getattr(spec, "name", spec))
                    info.registered.setdefault(kind.removesuffix("s"), []).append(name)

    def _add_spec(self, registry: Any, spec: Any, info: PluginInfo) -> None:
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
            if env_flag("LORAKIT_STRICT_PLUGINS"):
                raise
            return
        info.registered.setdefault(registry.kind, []).append(spec.name)

    def _implementers(self, hook_name: str) -> list[str]:
        """The plugins implementing ``hook_name``, in pluggy's call order."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        names = [impl.plugin_name for impl in reversed(impls)]
        return [n for n in dict.fromkeys(names) if n in self.infos]

    def _hook_of(self, hook_name: str, plugin: str) -> Any:
        """``pm.hook.<hook_name>`` restricted to ``plugin``'s implementations."""
        others = [p for n, p in self.pm.list_name_plugin() if n != plugin]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)

    def _unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)

    def registrations(self, hook_name: str) -> list[tuple[PluginInfo, Any]]:
        """What each plugin registers through ``hook_name``, a ``register_*`` hook a plugin
        published (``LORAKIT_HOOKSPECS``): ``(who, spec)`` in pluggy's call order.

        Each plugin is called with a ``register`` of its own; one whose hook raises is marked
        failed and none of its registrations are kept. An unknown hook gives ``[]``.
        """
        if not hasattr(self.pm.hook, hook_name):
            return []
        out: list[tuple[PluginInfo, Any]] = []
        for plugin in self._implementers(hook_name):
            made: list[Any] = []
            try:
                self._hook_of(hook_name, plugin)(register=made.append)
            except Exception as exc:
                self._fail(self.infos[plugin], f"{hook_name} raised {_describe(exc)}")
                continue
            out.extend((self.infos[plugin], spec) for spec in made)
        return out

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
        except HookFailed as failed:
            raise RunError(
                f"plugin {failed.plugin} failed in {hook_name}: {_describe(failed.error)}"
            ) from failed.error
        except Exception as exc:  # an implementation registered on ``pm`` directly
            raise RunError(f"a plugin failed in {hook_name}: {_describe(exc)}") from exc

    def add_commands(self, app: Any) -> None:
        """Let plugins add CLI commands; a plugin that raises is marked failed and skipped."""
        for plugin in self._implementers("register_commands"):
            try:
                self._hook_of("register_commands", plugin)(app=app)
            except Exception as exc:
                self._fail(self.infos[plugin], f"register_commands raised {_describe(exc)}")
                self._unregister(plugin)


class HookFailed(Exception):
    """A plugin's hook implementation raised ``error`` (see :func:`_guarded`)."""

    def __init__(self, plugin: str, error: BaseException) -> None:
        super().__init__(f"plugin {plugin}: {error}")
        self.plugin = plugin
        self.error = error


def _describe(exc: BaseException) -> str:
    exc = exc.error if isinstance(exc, HookFailed) else exc
    return f"{type(exc).__name__}: {exc}"


def _guarded(function: Any, plugin: str, wrapper: bool) -> Any:
    """``function`` (a hook implementation of ``plugin``), raising :class:`HookFailed` for
    its errors; :class:`LorakitError` (already one line for the user) passes unchanged.
    ``functools.wraps`` keeps its signature and pluggy's ``lorakit_impl`` marker."""

    def fail(exc: Exception) -> BaseException:
        if isinstance(exc, HookFailed | LorakitError):
            return exc
        return HookFailed(plugin, exc)

    if wrapper:  # a generator: pluggy sends the inner result (or throws the inner error) in

        @functools.wraps(function)
        def guarded_wrapper(*args: Any) -> Any:
            try:
                return (yield from function(*args))
            except Exception as exc:
                raise fail(exc) from exc

        return guarded_wrapper

    @functools.wraps(function)
    def guarded(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as exc:
            raise fail(exc) from exc

    return guarded


class _Hooks:
    """The guarded hook implementations of one plugin object, as pluggy holds them."""

    def __init__(self, plugin: Any) -> None:
        self.wrapped = plugin

    def __repr__(self) -> str:
        return repr(self.wrapped)


def _with_guards(pm: pluggy.PluginManager, plugin: Any, name: str) -> Any:
    """An object carrying ``plugin``'s hook implementations, each one :func:`_guarded`, so
    an error names the plugin it came from; what is not a hook implementation is left out."""
    guarded = _Hooks(plugin)
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is not None:
            wrapper = bool(opts.get("wrapper") or opts.get("hookwrapper"))
            setattr(guarded, attr, _guarded(getattr(plugin, attr), name, wrapper))
    return guarded


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


def plugin_registrations(hook_name: str) -> list[tuple[PluginInfo, Any]]:
    """:meth:`Plugins.registrations` of the process-wide plugin manager."""
    return get_plugins().registrations(hook_name)


def lazy(path: str) -> Callable[..., Any]:
    """A factory that imports ``module:attr`` only when called."""

    def factory(*args: Any, **kwargs: Any) -> Any:
        module_name, _, attr = path.partition(":")
        return getattr(importlib.import_module(module_name), attr)(*args, **kwargs)

    factory.__qualname__ = factory.__name__ = f"lazy({path})"
    return factory
