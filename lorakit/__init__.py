"""lorakit: train LoRA adapters for image and language models from one YAML file.

The public API for plugins is what this module and :mod:`lorakit.hookspecs`,
:mod:`lorakit.registry`, :mod:`lorakit.backend`, :mod:`lorakit.labeling`, :mod:`lorakit.io`
and :mod:`lorakit.errors` export.
Nothing heavy (torch, diffusers, transformers, peft) is imported here.
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
