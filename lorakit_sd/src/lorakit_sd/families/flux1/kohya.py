"""FLUX.1 LoRA files in the kohya / BFL layout sd-scripts writes, converted exactly.

BFL's transformer fuses what diffusers keeps apart: a double block's ``img_attn.qkv`` is
diffusers' ``attn.to_q``, ``to_k``, ``to_v`` stacked by rows (``txt_attn.qkv`` the
``add_*_proj``), a single block's ``linear1`` is ``to_q``, ``to_k``, ``to_v`` and
``proj_mlp`` stacked. LoRAs of rank r on the parts are exactly one LoRA of rank
``sum(r)`` on the fused layer: the downs stacked, the ups block-diagonal (zero rows for parts
that were not trained), with alpha scaled so ``alpha / rank`` is unchanged. Reading a fused
entry back splits it: block-diagonal ups give each part its own columns (the exact inverse),
a dense up (a LoRA trained on the fused layer, as sd-scripts does) gives each part the whole
down and its rows of the up, which is exact too. Names follow ComfyUI's
``flux_to_diffusers`` table (``comfy/utils.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from lorakit_sd.families.fused_lora import fuse, split

#: double block: BFL stem -> diffusers module paths stacked in it (by rows)
DOUBLE = {
    "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "img_attn_proj": ["attn.to_out.0"],
    "txt_attn_proj": ["attn.to_add_out"],
    "img_mlp_0": ["ff.net.0.proj"],
    "img_mlp_2": ["ff.net.2"],
    "txt_mlp_0": ["ff_context.net.0.proj"],
    "txt_mlp_2": ["ff_context.net.2"],
    "img_mod_lin": ["norm1.linear"],
    "txt_mod_lin": ["norm1_context.linear"],
}
SINGLE = {
    "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    "linear2": ["proj_out"],
    "modulation_lin": ["norm.linear"],
}
TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",  # shift/scale halves swapped
}
SWAPPED = "norm_out.linear"


#: lora stem (underscores) -> BFL module name (dots)
_DOUBLE_NAMES = {
    "img_attn_qkv": "img_attn.qkv",
    "txt_attn_qkv": "txt_attn.qkv",
    "img_attn_proj": "img_attn.proj",
    "txt_attn_proj": "txt_attn.proj",
    "img_mlp_0": "img_mlp.0",
    "img_mlp_2": "img_mlp.2",
    "txt_mlp_0": "txt_mlp.0",
    "txt_mlp_2": "txt_mlp.2",
    "img_mod_lin": "img_mod.lin",
    "txt_mod_lin": "txt_mod.lin",
}
_SINGLE_NAMES = {"linear1": "linear1", "linear2": "linear2", "modulation_lin": "modulation.lin"}
_TOP_NAMES = {
    "img_in": "img_in",
    "txt_in": "txt_in",
    "time_in_in_layer": "time_in.in_layer",
    "time_in_out_layer": "time_in.out_layer",
    "vector_in_in_layer": "vector_in.in_layer",
    "vector_in_out_layer": "vector_in.out_layer",
    "guidance_in_in_layer": "guidance_in.in_layer",
    "guidance_in_out_layer": "guidance_in.out_layer",
    "final_layer_linear": "final_layer.linear",
    "final_layer_adaLN_modulation_1": "final_layer.adaLN_modulation.1",
}


def layers(num_double: int, num_single: int) -> dict[str, list[str]]:
    """BFL module name -> the diffusers module paths stacked in it (by rows)."""
    out: dict[str, list[str]] = {}
    for i in range(num_double):
        for stem, parts in DOUBLE.items():
            out[f"double_blocks.{i}.{_DOUBLE_NAMES[stem]}"] = [
                f"transformer_blocks.{i}.{p}" for p in parts
            ]
    for i in range(num_single):
        for stem, parts in SINGLE.items():
            out[f"single_blocks.{i}.{_SINGLE_NAMES[stem]}"] = [
                f"single_transformer_blocks.{i}.{p}" for p in parts
            ]
    for stem, path in TOP.items():
        out[_TOP_NAMES[stem]] = [path]
    return out


def groups(num_double: int, num_single: int) -> dict[str, list[str]]:
    """``lora_unet_<BFL stem>`` -> the diffusers transformer paths it stacks."""
    return {
        "lora_unet_" + name.replace(".", "_"): paths
        for name, paths in layers(num_double, num_single).items()
    }


def _swap_halves(up: torch.Tensor) -> torch.Tensor:
    shift, scale = up.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def part_rows(transformer: Any, paths: list[str]) -> list[int]:
    """Output rows of each diffusers module stacked into one BFL layer."""
    return [int(transformer.get_submodule(p).weight.shape[0]) for p in paths]


def to_bfl(
    modules: list[Any], transformer: Any, dtype: Any, table: dict[str, list[str]] | None = None
) -> dict[str, torch.Tensor]:
    """kohya/BFL tensors of a FLUX.1 transformer LoRA (``component == "transformer"``);
    ``table``: another BFL layout's stems (``lora_unet_<stem>`` -> diffusers paths)."""
    cfg = transformer.config
    by_path = {m.path: m for m in modules}
    out: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    if table is None:
        table = groups(cfg.num_layers, cfg.num_single_layers)
    for stem, paths in table.items():
        present = [p for p in paths if p in by_path]
        if not present:
            continue
        rows = part_rows(transformer, paths)
        down, up, alpha = fuse([(r, by_path.get(p)) for r, p in zip(rows, paths, strict=True)])
        if paths == [SWAPPED]:
            up = _swap_halves(up)
        out[f"{stem}.lora_down.weight"] = down.to(dtype).contiguous()
        out[f"{stem}.lora_up.weight"] = up.to(dtype).contiguous()
        out[f"{stem}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
        done.update(present)
    missing = sorted(set(by_path) - done)
    if missing:
        raise ValueError(f"no BFL name for {', '.join(missing[:3])}")
    return out


def from_bfl(
    entries: dict[str, dict[str, Any]], layout: Callable[[int, int], dict] | None = None
) -> dict[str, dict[str, Any]]:
    """kohya/BFL entries (by stem) -> diffusers transformer entries (by module path).

    Part sizes come from the shapes: a fused layer's input width is the hidden size, q, k
    and v have that many rows each, and a single block's MLP rows are what is left.
    ``layout(num_double, num_single)``: another BFL layout's stems (default FLUX.1's).
    """
    blocks = [
        int(m[2]) for s in entries if (m := re.match(r"lora_unet_(double|single)_blocks_(\d+)_", s))
    ]
    depth = max(blocks, default=-1) + 1
    table = (layout or groups)(depth, depth)
    out: dict[str, dict[str, Any]] = {}
    for stem, entry in entries.items():
        if stem not in table:
            out[stem] = entry  # not a transformer key: the caller refuses it
            continue
        paths = table[stem]
        down, up, alpha = entry["down"], entry["up"], entry["alpha"]
        if paths == [SWAPPED]:
            up = _swap_halves(up)
        hidden = int(down.shape[1])
        rows = [hidden] * len(paths) if len(paths) > 1 else [int(up.shape[0])]
        if len(paths) == 4:  # linear1: q, k, v, then the MLP
            rows[3] = int(up.shape[0]) - 3 * hidden
        if sum(rows) != up.shape[0]:
            out[stem] = entry  # shapes that do not fit: refused by the caller
            continue
        for path, part in zip(paths, split(down, up, alpha, rows), strict=True):
            if part is not None:
                out[f"transformer.{path}"] = {"down": part[0], "up": part[1], "alpha": part[2]}
    return out
