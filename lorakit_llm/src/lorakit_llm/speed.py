"""GPU speed options of the llm backend: Liger's Triton kernels, flash attention.

Both need a CUDA GPU and a package lorakit does not install; ``check`` refuses them in one
line before the model loads, ``apply_kernels`` patches a loaded model.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from lorakit.api import UsageError

#: What each option needs: (import name, pip name).
NEEDS = {
    "liger": ("liger_kernel", "liger-kernel"),
    "flash_attention_2": ("flash_attn", "flash-attn"),
}


def check(section: Any, cuda: bool) -> None:
    """Refuse ``llm.kernels`` / ``llm.attn_implementation: flash_attention_2`` where they
    cannot run: without a CUDA GPU, or without their package."""
    asked = []
    if section.kernels:
        asked.append(("llm.kernels", section.kernels))
    if section.attn_implementation == "flash_attention_2":
        asked.append(("llm.attn_implementation", "flash_attention_2"))
    for key, value in asked:
        module, package = NEEDS[value]
        if not cuda:
            raise UsageError(
                f"{key}: {value} runs on a CUDA GPU and this machine has none; remove {key}"
            )
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"{key}: {value} needs {package}: pip install {package}")


def apply_kernels(model: Any, kernels: str | None) -> str:
    """Patch ``model`` with Liger's RMSNorm, RoPE and SwiGLU kernels; what was applied.

    The loss keeps lorakit's own cross-entropy, which computes logits only at answer
    positions, in fp32 chunks: the saving Liger's fused linear cross-entropy brings.
    """
    if kernels != "liger":
        return ""
    from liger_kernel.transformers import monkey_patch

    model_type = str(getattr(model.config, "model_type", ""))
    if model_type not in monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN:
        supported = ", ".join(sorted(monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN))
        raise UsageError(f"llm.kernels: liger has no kernels for {model_type} ({supported})")
    monkey_patch._apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    return f"liger kernels (RMSNorm, RoPE, SwiGLU) for {model_type}"
