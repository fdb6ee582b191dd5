"""What ``lorakit plan`` adds for the transformer families beyond the trace: the ladder's rows.

On a 24 GB card FLUX.1 (12B parameters) trains as users do it: captions cached so T5 and
CLIP leave the GPU, the base in bf16 with gradient checkpointing, then its frozen weights
in fp8 or NF4 (``sd.base_quantization``). The planner's trace holds the frozen weights at
the run's dtype; a quantized base is counted here, from the transformer's Linear weights
(what diffusers' bitsandbytes / torchao configs quantize), at 1 byte (fp8) or NF4's size.
With ``sd.group_offload`` (the 20B+ models) every block's weights but one are in CPU memory,
counted the same way at 0 bytes.
"""

from __future__ import annotations

from typing import Any

from lorakit_sd.models import quiet_libraries

#: bytes per weight of NF4 with its double-quantized scales (as the core planner counts)
NF4 = 0.5 + 1 / 64 + 4 / (64 * 256)
BYTES = {"fp8": 1.0, "nf4": NF4}


def flow_rungs(train: Any, section: Any, spec: Any) -> tuple[tuple[dict[str, Any], str], ...]:
    """The ladder rows, cheapest loss first; each keeps the ones before it."""
    rungs: list[tuple[dict[str, Any], str]] = []
    if not section.text_cache_enabled() and not section.train_text_encoder:
        rungs.append(
            (
                {"sd.cache_text_encoder_outputs": True, "sd.shuffle_tags": False},
                f"{spec.caption_encoders} off the GPU after caching their outputs (captions not "
                "shuffled)",
            )
        )
    if train.mixed_precision == "no":
        rungs.append(({"mixed_precision": "bf16"}, "bf16 base weights (bf16 autocast)"))
    if section.base_quantization is None:
        rungs.append(
            (
                {"sd.base_quantization": "fp8"},
                "fp8 base weights (torchao through diffusers; needs a CUDA GPU)",
            )
        )
    if section.base_quantization != "nf4":
        rungs.append(
            (
                {"sd.base_quantization": "nf4"},
                "NF4 base weights (bitsandbytes through diffusers; needs a CUDA GPU)",
            )
        )
    if not section.group_offload:
        rungs.append(
            (
                {
                    "sd.group_offload": True,
                    "sd.base_quantization": None,
                    "gradient_checkpointing": True,
                },
                "transformer blocks streamed from CPU memory one at a time, in the base's own "
                "dtype (block-level group offloading; needs a CUDA GPU, slower)",
            )
        )
    return tuple(rungs)


def linear_weights(cls: Any, config: dict[str, Any]) -> int:
    """Weights of the transformer's Linear layers (built on the meta device)."""
    import torch

    with torch.device("meta"), quiet_libraries():
        model = cls.from_config(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def quantized(section: Any, cls: Any, config: dict[str, Any], itemsize: int) -> dict[str, Any]:
    """``PlanModel`` fields for a quantized base: the weights and the bytes each keeps.

    The core subtracts ``params * (2 - quantized_bytes)`` from the traced weights (a
    2-byte trace); a trace at another dtype is corrected here."""
    kind = section.base_quantization
    if getattr(section, "group_offload", False):
        # all blocks' weights but one's leave the GPU (kept: 0 bytes each)
        return {"quantized_params": offloaded_weights(cls, config), "quantized_bytes": 2 - itemsize}
    if kind is None:
        return {}
    return {
        "quantized_params": linear_weights(cls, config),
        "quantized_bytes": BYTES[kind] - (itemsize - 2),
    }


def offloaded_weights(cls: Any, config: dict[str, Any]) -> int:
    """Weights of the repeated blocks ``sd.group_offload`` keeps in CPU memory (all of them
    but the largest block, which is on the GPU while it runs)."""
    import torch

    from lorakit_sd.step.offload import repeated_blocks

    with torch.device("meta"), quiet_libraries():
        model = cls.from_config(config)
    sizes = [sum(p.numel() for p in block.parameters()) for block in repeated_blocks(model)]
    return sum(sizes) - max(sizes, default=0)
