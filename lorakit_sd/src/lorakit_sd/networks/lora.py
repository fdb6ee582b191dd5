"""``lora`` / ``locon``: PEFT's LoRA, written as kohya's ``lora_down``/``lora_up``/``alpha``."""

from __future__ import annotations

from typing import Any


def peft_config(
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    ranks: dict[str, int],
    alphas: dict[str, float],
    options: Any,
    use_dora: bool = False,
) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # a float works
        lora_dropout=dropout,
        target_modules=targets,
        init_lora_weights="gaussian",
        rank_pattern=ranks,
        alpha_pattern=alphas,
        use_dora=use_dora,
    )


def layer_tensors(layer: Any, adapter: str = "default") -> dict[str, Any]:
    """A PEFT LoRA layer's ``lora_down.weight`` (A), ``lora_up.weight`` (B) and ``alpha``."""
    import torch

    down = layer.lora_A[adapter].weight.detach()
    up = layer.lora_B[adapter].weight.detach()
    alpha = layer.scaling[adapter] * down.shape[0]
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(float(alpha))}
