"""Built-in exporter: the trained LoRA tensors as one safetensors file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lorakit import hookimpl
from lorakit.export_view import AdapterExport
from lorakit.io import save_safetensors
from lorakit.registry import ExporterSpec


def export_safetensors(
    view: AdapterExport, directory: Path, name: str, metadata: dict[str, str]
) -> list[Path]:
    """``<name>.lorakit.safetensors``: the trainable tensors under their module names."""
    path = Path(directory) / f"{name}.lorakit.safetensors"
    save_safetensors(dict(view.state_dict()), path, metadata=metadata)
    return [path]


@hookimpl
def register_exporters(register: Callable[[ExporterSpec], None]) -> None:
    register(
        ExporterSpec(
            "safetensors",
            export_safetensors,
            "raw LoRA tensors (module names) + provenance metadata",
        )
    )
