"""lorakit: train LoRA adapters for image and language models from one YAML file.

The public API for plugins is :mod:`lorakit.api`, and only it: a plugin imports from there
(a test keeps lorakit's own plugin packages to it). This module holds the version and the
``hookimpl`` marker that ``lorakit.api`` re-exports. Nothing heavy (torch, diffusers,
transformers, peft) is imported here.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: The plugin API this lorakit speaks. A plugin declares the version it was built for
#: as a module attribute ``LORAKIT_PLUGIN_API``; plugins built for another major version
#: are skipped with a message. 2: a backend registers one ``BackendPlugin`` object (no
#: ``BackendSpec`` / ``BackendCommands``), and the names only applications use moved from
#: ``lorakit.api`` to ``lorakit.app``; a plugin built for 1 that uses neither works unchanged.
PLUGIN_API_VERSION = 2
SUPPORTED_PLUGIN_APIS = frozenset({1, 2})

#: Decorator that marks a plugin's hook implementations: ``@lorakit.hookimpl``.
hookimpl = pluggy.HookimplMarker("lorakit")

__all__ = ["PLUGIN_API_VERSION", "SUPPORTED_PLUGIN_APIS", "__version__", "hookimpl"]
