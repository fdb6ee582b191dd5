"""Applying LoRA files to a loaded model: each module's update, times its weight, added into
the weight it changes; every key must map to a module (``lorakit sample``, ``merge``)."""

from __future__ import annotations

from typing import Any

from lorakit.api import UsageError
from lorakit_sd.lorafiles.names import UnetLayout, module_table
from lorakit_sd.lorafiles.read import read_lora, resolve


def apply_to_model(model: Any, loras: list[tuple[str, float]]) -> list[Any]:
    """Add each LoRA's update (times its weight) into the model's weights; strict keys."""
    import torch

    denoiser = model.denoiser
    table = module_table(denoiser, model.text_encoders, model.family)
    config = denoiser.config
    layout = UnetLayout.from_config(config) if hasattr(config, "layers_per_block") else None
    applied = []
    for path, weight in loras:
        lora = read_lora(path, layout)
        if lora.family != model.family:
            raise UsageError(
                f"{path}: a {lora.family} LoRA cannot be used with a {model.family} model"
            )
        modules = resolve(lora, table)
        with torch.no_grad():
            for m in modules:
                target = table_module(table, m).weight
                target += m.delta(weight, target).reshape(target.shape).to(target.dtype)
        applied.append(lora)
    return applied


def table_module(table: dict[str, Any], module: Any) -> Any:
    for component, path, mod in table.values():
        if component == module.component and path == module.path:
            return mod
    raise KeyError(module.path)  # pragma: no cover - resolve() found it
