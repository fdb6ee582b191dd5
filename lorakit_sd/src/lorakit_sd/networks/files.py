"""The tensors of a trained network under kohya/LyCORIS keys (``<kohya key>.<suffix>``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lorakit.api import AdapterLayer
from lorakit_sd import families
from lorakit_sd.lorafiles.names import UnetLayout


def adapted_layers(model: Any) -> Iterable[tuple[str, Any]]:
    """(path, layer) of every PEFT-adapted layer of ``model`` (paths of the base model)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, sub in model.named_modules():
        if isinstance(sub, BaseTunerLayer) and "default" in sub.active_adapters:
            yield name, sub


def kohya_network_tensors(
    network: str, layers: Iterable[AdapterLayer], family: str, denoiser: Any, dtype: Any
) -> dict[str, Any]:
    """Every adapted layer's tensors, named ``<kohya key>.<suffix>``, cast to ``dtype``."""

    spec = families.get(family)
    layout = UnetLayout.from_config(denoiser.config) if spec.denoiser_attr == "unet" else None
    out: dict[str, Any] = {}
    for layer in layers:
        stem = spec.network_stem(layer.component, layer.path, layout)
        for suffix, tensor in layer.tensors.items():
            out[f"{stem}.{suffix}"] = tensor.detach().to("cpu", dtype).contiguous()
    return out
