"""The key layouts ``lorakit inspect`` reads: LoRA tensor suffixes and target names.

Pure string work on tensor names (no torch, no file access).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: (pattern, role): role "down" holds the rank in dim 0, "up" in dim 1.
_SUFFIXES = [
    (re.compile(r"^(?P<m>.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.alpha$"), "alpha"),
    (re.compile(r"^(?P<m>.+)\.lora_A(?:\.[^.]+)?\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora_B(?:\.[^.]+)?\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.lora_embedding_A(?:\.[^.]+)?$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora_embedding_B(?:\.[^.]+)?$"), "up"),
    (re.compile(r"^(?P<m>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$"), "dora"),
    (re.compile(r"^(?P<m>.+)\.dora_scale$"), "dora"),
    (re.compile(r"^(?P<m>.+?)(?:\.lora|_lora|\.lora_linear_layer)\.down\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+?)(?:\.lora|_lora|\.lora_linear_layer)\.up\.weight$"), "up"),
]
_LYCORIS = re.compile(r"\.(hada_w[12]_[ab]|lokr_w[12](_[ab])?|lokr_t2|hada_t[12]|oft_\w+)$")
#: kohya names are module paths with "_" for "."; the target is what follows the last
#: numbered container (``..._transformer_blocks_0_attn1_to_q`` → ``attn1_to_q``).
_CONTAINER = re.compile(
    r"(?:blocks|attentions|resnets|layers|layer|h|block|upsamplers|downsamplers|"
    r"input_blocks|output_blocks|middle_block)(?:_\d+)+_"
)


def kohya_target(module: str, prefixes: Iterable[str] = ()) -> str:
    """``lora_unet_down_blocks_0_attentions_0_proj_in`` → ``proj_in``."""
    for prefix in prefixes:
        if module.startswith(prefix):
            module = module[len(prefix) :]
            break
    matches = list(_CONTAINER.finditer(module))
    return module[matches[-1].end() :] if matches else module


def peft_target(module: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj`` → ``q_proj``; ``attn.to_out.0`` →
    ``to_out.0`` (a numbered module keeps its container's name)."""
    parts = module.rsplit(".", 2)
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
