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
