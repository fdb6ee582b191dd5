"""Which installed backend runs a config.

``backend:`` names one, ``task_type`` names what it serves; a config with neither (the image
configs lorakit was first specified with have none) is run by the backend that reads it: each
installed backend is asked, from local files only, whether it reads ``base_model``
(:meth:`~lorakit.backend_plugin.BackendPlugin.reads_model`) and, if that does not settle it,
``train_data_dir`` (:meth:`~lorakit.backend_plugin.BackendPlugin.reads_data`). Exactly one
claimant runs it, and the run header says why; none or several is one line naming the
candidates and asking for ``task_type``. Nothing here touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorakit.config.schema import TASK_TYPE_ALIASES
from lorakit.errors import UsageError

if TYPE_CHECKING:
    from lorakit.backend_plugin import BackendPlugin
    from lorakit.registry import Registries


@dataclass(frozen=True)
class Choice:
    """The backend that runs a config, and why (None: the config or the command named it)."""

    backend: BackendPlugin
    reason: str | None = None

    def header(self) -> str | None:
        """``backend sd: base_model is a single-file SD1.x checkpoint``, when the backend was inferred."""
        return f"backend {self.backend.name}: {self.reason}" if self.reason else None


def choose_backend(
    registries: Registries, data: dict[str, Any], backend: str | None = None
) -> Choice:
    """The backend for the raw config ``data`` (``backend`` from the command line first)."""
    name = backend or data.get("backend") or None
    raw = data.get("task_type")
    task_type = TASK_TYPE_ALIASES.get(raw, raw) if isinstance(raw, str) else None
    if name or task_type is not None or len(registries.backends) <= 1:
        named = name if isinstance(name, str) else None
        return Choice(registries.backend_for(task_type, named).spec)
    return _infer(registries, data)


def _infer(registries: Registries, data: dict[str, Any]) -> Choice:
    backends = [entry.spec for entry in registries.backends]
    base = data.get("base_model")
    folder = data.get("train_data_dir")
    by_model = _claims(backends, "reads_model", base, "base_model")
    if len(by_model) == 1:
        return Choice(*by_model[0])
    candidates = [b for b, _ in by_model] or backends
    by_data = _claims(candidates, "reads_data", folder, "train_data_dir")
    if len(by_data) == 1:
        return Choice(*by_data[0])
    served = ", ".join(f"{b.name} ({b.task_types[0]})" for b in candidates if b.task_types)
    seen = "; ".join(reason for _, reason in (by_model or by_data)) or (
        f"neither base_model ({base}) nor train_data_dir ({folder}) is a local file or folder "
        "a backend recognises"
    )
    raise UsageError(
        f"cannot tell which backend runs this config ({seen}); set task_type to one of {served}"
    )


def _claims(
    backends: list[BackendPlugin], method: str, value: Any, key: str
) -> list[tuple[BackendPlugin, str]]:
    if not isinstance(value, str) or not value:
        return []
    found = []
    for backend in backends:
        what = getattr(backend, method)(value)
        if what:
            found.append((backend, f"{key} is {what}"))
    return found
