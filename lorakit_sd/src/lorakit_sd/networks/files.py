"""The tensors of a trained network under kohya/LyCORIS keys (``<kohya key>.<suffix>``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lorakit.api import UsageError
from lorakit_sd.networks import network_module


def adapted_layers(model: Any) -> Iterable[tuple[str, Any]]:
    """(path, layer) of every PEFT-adapted layer of ``model`` (paths of the base model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, sub in model.named_modules():
        if isinstance(sub, BaseTunerLayer) and "default" in sub.active_adapters:
            yield name, sub


def kohya_network_tensors(
    network: str, parts: list[tuple[str, Any]], family: str, denoiser: Any, dtype: Any
) -> dict[str, Any]:
    """Every adapted layer's tensors, named ``<kohya key>.<suffix>``, cast to ``dtype``."""
    from lorakit_sd import families
    from lorakit_sd.lora_format import UnetLayout, kohya_name

    if families.get(family).denoiser_attr != "unet":
        raise UsageError(f"sd.network {network} files are written for SD1/SDXL UNets only")
    layout = UnetLayout.from_config(denoiser.config)
    writer = network_module(network)
    out: dict[str, Any] = {}
    for component, model in parts:
        for path, layer in adapted_layers(model):
            stem = kohya_name(component, path, family, layout)
            for suffix, tensor in writer.layer_tensors(layer).items():
                out[f"{stem}.{suffix}"] = tensor.detach().to("cpu", dtype).contiguous()
    return out
