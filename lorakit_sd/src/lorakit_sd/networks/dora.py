"""``dora``: PEFT's LoRA with ``use_dora``, written as kohya/LyCORIS store DoRA.

The file has ``lora_down``/``lora_up``/``alpha`` and ``dora_scale``, the learned magnitude of
each output row of ``W + ΔW`` (shape ``[out, 1]`` or ``[out, 1, 1, 1]``: LyCORIS's
``wd_on_out`` orientation, the one PEFT trains and ComfyUI detects by its shape).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from lorakit_sd.networks import lora

peft_config = partial(lora.peft_config, use_dora=True)


def layer_tensors(layer: Any, adapter: str = "default") -> dict[str, Any]:
    tensors = lora.layer_tensors(layer, adapter)
    magnitude = layer.lora_magnitude_vector[adapter].weight.detach()
    weight = layer.get_base_layer().weight
    tensors["dora_scale"] = magnitude.reshape(weight.shape[0], *[1] * (weight.ndim - 1))
    return tensors


def rank(tensors: dict[str, Any]) -> int | None:
    return None  # a DoRA module's rank is its lora_down's


def delta(module: Any, base: Any) -> Any:
    """Every output row of ``W + up @ down · alpha / r`` rescaled to ``dora_scale``, minus
    ``W`` (it depends on the base weight), shaped ``[out, -1]``."""
    if base is None:
        raise ValueError("a DoRA update depends on the base weight")
    w = base.float().flatten(1)
    lora = (module.up.float().flatten(1) @ module.down.float().flatten(1)) * (
        module.alpha / module.down.shape[0]
    )
    merged = w + lora
    scale = module.tensors["dora_scale"].float().reshape(-1, 1) / merged.norm(dim=1, keepdim=True)
    return merged * scale - w
