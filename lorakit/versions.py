"""What is installed: lorakit, its plugins, the libraries that matter, the accelerator."""

from __future__ import annotations

import platform
import sys
from typing import Any

from lorakit import PLUGIN_API_VERSION, __version__
from lorakit.provenance import library_versions


def accelerator_summary() -> str | None:
    """CUDA/MPS availability, only when torch is already imported (keeps `version` fast)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if torch.cuda.is_available():
        return f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"
    return "CPU only"


def version_report(plugins: Any = None) -> dict[str, Any]:
    from lorakit.plugins import get_plugins

    plugins = plugins or get_plugins()
    return {
        "lorakit": __version__,
        "plugin_api": PLUGIN_API_VERSION,
        "python": platform.python_version(),
        "plugins": [
            {
                "name": i.name,
                "distribution": i.distribution,
                "version": i.version,
                "plugin_api": i.api,
                "status": i.status,
                "error": i.error,
            }
            for i in plugins.infos.values()
            if not i.builtin
        ],  # fmt: skip
        "libraries": library_versions(),
        "accelerator": accelerator_summary(),
    }
