"""What is installed: lorakit, its plugins, the libraries that matter, the accelerator.

Nothing here imports torch: the CUDA/ROCm version torch was built for is read from
``torch/version.py`` as text, so ``lorakit version`` stays fast. Whether a GPU is usable
right now is ``lorakit doctor``'s question.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import platform
import sys
from pathlib import Path
from typing import Any

from lorakit import PLUGIN_API_VERSION, __version__
from lorakit.provenance import library_versions


def torch_build() -> dict[str, str | None] | None:
    """``{"version", "cuda", "hip"}`` of the installed torch build, or None without torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        version = getattr(torch, "version", None)
        return {
            "version": str(getattr(torch, "__version__", "")) or None,
            "cuda": getattr(version, "cuda", None),
            "hip": getattr(version, "hip", None),
        }
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        file = Path(location) / "version.py"
        if file.is_file():
            values = _constants(file)
            return {
                "version": values.get("__version__"),
                "cuda": values.get("cuda"),
                "hip": values.get("hip"),
            }
    return None


def _constants(file: Path) -> dict[str, str | None]:
    """Top-level ``name = "literal"`` assignments of a Python file, without running it."""
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    out: dict[str, str | None] = {}
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            constant = value.value
            if constant is None or isinstance(constant, str):
                out[target.id] = constant
    return out


def accelerator_summary(build: dict[str, str | None] | None = None) -> str | None:
    """``CUDA 12.1 build``, ``ROCm 6.2 build`` or ``CPU-only build`` (plus devices when
    torch is already imported)."""
    build = torch_build() if build is None else build
    if build is None:
        return None
    if build.get("cuda"):
        text = f"CUDA {build['cuda']} build"
    elif build.get("hip"):
        text = f"ROCm {build['hip']} build"
    else:
        text = "CPU-only build"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                text += f", GPUs: {', '.join(names)}"
            elif torch.backends.mps.is_available():
                text += ", Apple MPS"
        except Exception:  # noqa: BLE001 - a summary line must not fail
            pass
    return text


def version_report(plugins: Any = None) -> dict[str, Any]:
    """Everything ``lorakit version`` prints (``--json`` prints this dict)."""
    from lorakit.errors import LorakitError
    from lorakit.plugins import get_plugins

    plugins = plugins or get_plugins()
    # Collecting the registrations marks a plugin whose register hook fails; under
    # LORAKIT_STRICT_PLUGINS that raises, and the report shows it per plugin instead.
    with contextlib.suppress(LorakitError):
        _ = plugins.registries
    build = torch_build()
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
        ],
        "libraries": library_versions(),
        "torch_build": build,
        "accelerator": accelerator_summary(build),
    }
