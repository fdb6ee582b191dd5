"""The image model families the ``sd`` backend trains, each a :class:`ModelFamily`.

Families are registered, not listed: every installed package (lorakit-sd for its own) adds
:class:`FamilySpec` entries through the ``register_image_families`` hook, and ``get(name)``
builds a family on first use. ``of_keys`` / ``of_index`` recognise one from a single file's
tensor names or a diffusers ``model_index.json``. Importing this package loads no torch.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorakit.api import (
    ConfigError,
    PluginError,
    PluginInfo,
    get_registries,
    plugin_registrations,
)

HOOK = "register_image_families"


@dataclass(frozen=True)
class FamilySpec:
    """One family as registered: its name (``sd.model_family``), how messages call it, and a
    factory returning its :class:`~lorakit_sd.families.base.ModelFamily` (called on first use,
    so registering imports nothing heavy: ``lazy("pkg.family:Class")``)."""

    name: str
    label: str
    factory: Callable[[], Any]
    description: str = ""
    #: what ``lorakit inspect`` says of a kohya-format file in this family's own layout:
    #: ``describe(tensor names) -> lorakit.api.FileKind | None`` (torch-free), or None
    describe: Callable[[list[str]], Any] | None = None
    #: its config template for ``lorakit config init``: ``(name, package, file)``, or None
    template: tuple[str, str, str] | None = None
    #: more templates of the family, each ``(name, package, file)`` (a video family's
    #: text-to-video and image-to-video runs)
    more_templates: tuple[tuple[str, str, str], ...] = ()
    #: where it comes when a file is recognised (lower first; equal: by name). A family whose
    #: files another family would also claim (an edit model on a base model's architecture)
    #: goes first.
    order: int = 100

    def templates(self) -> dict[str, tuple[str, str]]:
        """Every template of the family: name -> (package, file)."""
        found = [self.template] if self.template is not None else []
        return {t[0]: t[1:] for t in (*found, *self.more_templates)}


@dataclass
class _Table:
    specs: dict[str, FamilySpec]
    built: dict[str, Any]


#: the table of the plugin manager's registries it was built from (rebuilt for another)
_current: tuple[Any, _Table] | None = None


def _table() -> _Table:
    """The families the current plugin manager's packages register (built once per manager)."""
    global _current
    registries = get_registries()
    if _current is not None and _current[0] is registries:
        return _current[1]
    found: list[tuple[PluginInfo | None, Any]] = list(plugin_registrations(HOOK))
    if not any(spec.name in builtin_names() for _, spec in found):
        # lorakit-sd's own plugin is not in this manager (a test's hand-made one): its
        # families are known anyway, since this code is lorakit-sd's.
        found = [(None, spec) for spec in builtin_specs()] + found
    # lorakit-sd's own first (recognition tries them first), each group by its order
    found.sort(key=lambda item: (item[1].name not in builtin_names(), item[1].order))
    specs: dict[str, FamilySpec] = {}
    owners: dict[str, str] = {}
    for info, spec in found:
        owner = info.distribution if info is not None else "lorakit-sd"
        if spec.name in specs:
            raise PluginError(
                f"image family {spec.name!r} is registered by both {owners[spec.name]} and "
                f"{owner} (uninstall one, or disable it with LORAKIT_DISABLE_PLUGINS)"
            )
        specs[spec.name], owners[spec.name] = spec, owner
    table = _Table(specs, {})
    _current = (registries, table)
    return table


def register_builtins(register: Callable[[FamilySpec], None]) -> None:
    """lorakit-sd's own families: each folder's ``SPEC`` (torch-free)."""
    for name in builtin_names():
        register(importlib.import_module(f"lorakit_sd.families.{name}").SPEC)


def builtin_specs() -> list[FamilySpec]:
    """lorakit-sd's own families' specs (no plugin manager needed: the backend's registration
    reads its templates and labels from them)."""
    made: list[FamilySpec] = []
    register_builtins(made.append)
    return made


def builtin_templates() -> dict[str, tuple[str, str]]:
    """``lorakit config init`` templates of lorakit-sd's own families: name -> (package, file)."""
    return {name: where for s in builtin_specs() for name, where in s.templates().items()}


def builtin_labels() -> str:
    """lorakit-sd's own families as one line: ``SD1.x / SDXL / ...``."""
    return " / ".join(s.label for s in builtin_specs())


@functools.cache
def builtin_names() -> tuple[str, ...]:
    """The folders of lorakit-sd's own families (each a subpackage with a ``SPEC``), in the
    order files are recognised: adding a family is adding its folder, nothing else."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            spec = getattr(importlib.import_module(f"{__name__}.{module.name}"), "SPEC", None)
            if isinstance(spec, FamilySpec):
                found.append((spec.order, spec.name, module.name))
    return tuple(folder for _, _, folder in sorted(found))


def names() -> list[str]:
    """Every registered family's name, in registration order."""
    return list(_table().specs)


def specs() -> list[FamilySpec]:
    """Every registered family's spec, in registration order (no family is built)."""
    return list(_table().specs.values())


def labels() -> dict[str, str]:
    """``name -> label`` of every registered family (no family is built)."""
    return {name: spec.label for name, spec in _table().specs.items()}


def label(name: str) -> str:
    return labels().get(name, name)


def check_name(name: str) -> str:
    """``name`` when it is ``auto`` or a registered family, else a ConfigError naming them."""
    if name == "auto" or name in names():
        return name
    raise ConfigError(
        f"sd.model_family {name!r} is not an installed image family (choose auto, "
        f"{', '.join(names())})",
        key="sd.model_family",
    )


def spec(name: str) -> FamilySpec:
    """The registered :class:`FamilySpec` called ``name``."""
    found = _table().specs.get(name)
    if found is None:
        raise ConfigError(f"no image family {name!r} is installed", key="sd.model_family")
    return found


def get(name: str) -> Any:
    """The :class:`~lorakit_sd.families.base.ModelFamily` called ``name``."""
    table = _table()
    if name not in table.built:
        spec = table.specs.get(name)
        if spec is None:
            raise ConfigError(f"no image family {name!r} is installed", key="sd.model_family")
        table.built[name] = spec.factory()
    return table.built[name]


def all_families() -> list[Any]:
    return [get(name) for name in names()]


def of_keys(keys: Any) -> str | None:
    """The family whose single-file layout these tensor names are, or None."""
    keyset = set(keys)
    return next((f.name for f in all_families() if f.claims_keys(keyset)), None)


def of_index(index: dict[str, Any]) -> str | None:
    """The family a diffusers ``model_index.json`` describes, or None."""
    return next((f.name for f in all_families() if f.claims_index(index)), None)
