"""Every hook and every backend command is documented in docs/plugin-hooks.md, and every
documented one exists."""

import importlib
import inspect
import re
from pathlib import Path

from lorakit import hookspecs
from lorakit.backend_plugin import VERBS, BackendPlugin

DOC = Path(__file__).parent.parent / "docs" / "plugin-hooks.md"


def spec_modules() -> list:
    """lorakit's hookspecs and those every installed plugin publishes (``LORAKIT_HOOKSPECS``)."""
    from lorakit.plugins import build_plugins

    published = build_plugins().spec_modules
    return [hookspecs, *(importlib.import_module(path) for path in published)]


def specs() -> dict:
    return {
        name: obj
        for module in spec_modules()
        for name, obj in vars(module).items()
        if callable(obj) and hasattr(obj, "lorakit_spec")
    }


def spec_names() -> set[str]:
    return set(specs())


def test_plugins_publish_their_own_hooks_into_lorakits_manager():
    """lorakit-sd's ``register_image_families`` is a hook of the same pluggy manager."""
    from lorakit.plugins import build_plugins

    assert "lorakit_sd.hookspecs" in build_plugins().spec_modules
    assert "register_image_families" in spec_names()


def documented_hooks() -> set[str]:
    return set(re.findall(r"^### `(\w+)\(", DOC.read_text(), re.M))


def documented_commands() -> dict[str, list[str]]:
    found = re.findall(r"^### `backend\.(\w+)\(([^)]*)\)`", DOC.read_text(), re.M)
    return {name: [a.strip() for a in args.split(",") if a.strip()] for name, args in found}


def test_every_hook_is_documented():
    missing = spec_names() - documented_hooks()
    assert not missing, f"hooks without a section in docs/plugin-hooks.md: {sorted(missing)}"


def test_every_documented_hook_exists():
    assert documented_hooks() <= spec_names(), documented_hooks() - spec_names()


def test_every_hook_has_a_docstring():
    for name, spec in specs().items():
        assert spec.__doc__, name


def test_every_backend_method_is_documented_with_its_arguments():
    methods = {
        name: list(inspect.signature(fn).parameters)[1:]
        for name, fn in vars(BackendPlugin).items()
        if inspect.isfunction(fn) and not name.startswith("_") and name != "supports"
    }
    assert set(VERBS) <= set(methods)
    assert documented_commands() == methods
    for name in methods:
        assert getattr(BackendPlugin, name).__doc__, name
