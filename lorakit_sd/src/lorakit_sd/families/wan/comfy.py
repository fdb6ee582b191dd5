"""Wan LoRA files in ComfyUI's layout: the original Wan module names under ``diffusion_model.``.

ComfyUI loads a Wan LoRA whose keys are ``diffusion_model.<module of the original Wan
model>`` with ``.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (what musubi-tuner and
diffusion-pipe write), with no converter; diffusers' ``WanPipeline.load_lora_weights`` reads it
too. The original modules are diffusers' under other names:

=================================  ==========================================
diffusers (``WanTransformer3DModel``)  original Wan (ComfyUI)
=================================  ==========================================
``blocks.N.attn1.to_q|k|v``        ``blocks.N.self_attn.q|k|v``
``blocks.N.attn1.to_out.0``        ``blocks.N.self_attn.o``
``blocks.N.attn2.…``               ``blocks.N.cross_attn.…`` (same names)
``blocks.N.attn2.add_k_proj|add_v_proj``  ``blocks.N.cross_attn.k_img|v_img``
``blocks.N.ffn.net.0.proj``        ``blocks.N.ffn.0``
``blocks.N.ffn.net.2``             ``blocks.N.ffn.2``
``proj_out``                       ``head.head``
=================================  ==========================================
"""

from __future__ import annotations

import re
from typing import Any

from lorakit.api import UsageError

PREFIX = "diffusion_model."
_ATTN = {"to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o", "add_k_proj": "k_img"}
_ATTN["add_v_proj"] = "v_img"
_FFN = {"net.0.proj": "0", "net.2": "2"}
_TOP = {"proj_out": "head.head"}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(attn1|attn2|ffn)\.(.+)$")


def to_original(path: str) -> str | None:
    """The original Wan module of a diffusers module path, or None where there is none."""
    if path in _TOP:
        return _TOP[path]
    m = _BLOCK.match(path)
    if not m:
        return None
    block, part, rest = m.groups()
    if part == "ffn":
        name = _FFN.get(rest)
        return None if name is None else f"blocks.{block}.ffn.{name}"
    attn = _ATTN.get(rest)
    if attn is None:
        return None
    return f"blocks.{block}.{'self_attn' if part == 'attn1' else 'cross_attn'}.{attn}"


def from_original(path: str) -> str | None:
    """The diffusers module path of an original Wan module, or None where there is none."""
    for diffusers, original in _TOP.items():
        if path == original:
            return diffusers
    m = re.match(r"^blocks\.(\d+)\.(self_attn|cross_attn|ffn)\.(.+)$", path)
    if not m:
        return None
    block, part, rest = m.groups()
    if part == "ffn":
        table = {v: k for k, v in _FFN.items()}
        return f"blocks.{block}.ffn.{table[rest]}" if rest in table else None
    table = {v: k for k, v in _ATTN.items()}
    attn = "attn1" if part == "self_attn" else "attn2"
    return f"blocks.{block}.{attn}.{table[rest]}" if rest in table else None


def comfy_tensors(modules: list[Any], dtype: Any) -> dict[str, Any]:
    """``diffusion_model.<original>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` of
    every transformer module; a module with no original name is refused in one line."""
    import torch

    out: dict[str, Any] = {}
    for m in modules:
        original = to_original(m.path)
        if m.component != "transformer" or original is None:
            raise UsageError(
                f"{m.component}.{m.path} has no name in ComfyUI's Wan layout (adapt the "
                "attention, add_k_proj/add_v_proj, the FFN or proj_out)"
            )
        stem = PREFIX + original
        out[f"{stem}.lora_down.weight"] = m.down.detach().to("cpu", dtype).contiguous()
        out[f"{stem}.lora_up.weight"] = m.up.detach().to("cpu", dtype).contiguous()
        out[f"{stem}.alpha"] = torch.tensor(float(m.alpha), dtype=dtype)
    return out
