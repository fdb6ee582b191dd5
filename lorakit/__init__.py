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
#: are skipped with a message.
PLUGIN_API_VERSION = 1
SUPPORTED_PLUGIN_APIS = frozenset({1})

#: Decorator that marks a plugin's hook implementations: ``@lorakit.hookimpl``.
hookimpl = pluggy.HookimplMarker("lorakit")

__all__ = ["PLUGIN_API_VERSION", "SUPPORTED_PLUGIN_APIS", "__version__", "hookimpl"]
