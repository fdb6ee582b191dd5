"""FLUX.2's transformer file in BFL's layout (``flux2-dev.safetensors``, ComfyUI's
``diffusion_models/`` files), bf16 or fp8 "scaled", and the diffusers names it maps to.

BFL's layout fuses a double block's q, k and v (``img_attn.qkv``; ``txt_attn.qkv`` for the
text stream) and swaps the halves of the final modulation; a single block is already one
fused layer in both layouts (``linear1`` = ``attn.to_qkv_mlp_proj``, ``linear2`` =
``attn.to_out``). These are the facts of diffusers' ``convert_flux2_transformer_checkpoint_
to_diffusers``, which loads the file (``Flux2Transformer2DModel.from_single_file``); the
inverse here writes merged transformers and the test stand-in's file.

fp8 files store ``float8_e4m3fn`` weights with a per-tensor scale beside them
(``<layer>.scale_weight``, or ``<layer>.weight_scale`` in ComfyUI's newer files); they are
dequantized (weight × scale) to bfloat16 on load, and the input scales and markers dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import UsageError
from lorakit_sd.families.flux1.single_file import diffusers_to_bfl as flux_layout
from lorakit_sd.families.flux1.single_file import norms  # the same RMSNorm names

#: double block: BFL module -> diffusers module paths stacked in it (by rows)
DOUBLE = {
    "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "img_attn.proj": ["attn.to_out.0"],
    "txt_attn.proj": ["attn.to_add_out"],
    "img_mlp.0": ["ff.linear_in"],
    "img_mlp.2": ["ff.linear_out"],
    "txt_mlp.0": ["ff_context.linear_in"],
    "txt_mlp.2": ["ff_context.linear_out"],
}
SINGLE = {"linear1": ["attn.to_qkv_mlp_proj"], "linear2": ["attn.to_out"]}
TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
    "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
    "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
    "single_stream_modulation.lin": "single_stream_modulation.linear",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # shift/scale halves swapped
}
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
#: tensors of fp8 files that are not weights (scales are folded in, the rest dropped)
_FP8_EXTRAS = ("scale_weight", "weight_scale", "scale_input", "input_scale")


def depth(keys: Any, kind: str) -> int:
    """How many ``double_blocks`` / ``single_blocks`` these names hold."""
    found = [int(k.split(".")[1]) for k in keys if k.startswith(f"{kind}.")]
    return max(found, default=-1) + 1


def layers(num_double: int, num_single: int) -> dict[str, list[str]]:
    """BFL module name -> the diffusers module paths stacked in it (by rows)."""
    out: dict[str, list[str]] = {}
    for i in range(num_double):
        for bfl, parts in DOUBLE.items():
            out[f"double_blocks.{i}.{bfl}"] = [f"transformer_blocks.{i}.{p}" for p in parts]
    for i in range(num_single):
        for bfl, parts in SINGLE.items():
            out[f"single_blocks.{i}.{bfl}"] = [f"single_transformer_blocks.{i}.{p}" for p in parts]
    for bfl, path in TOP.items():
        out[bfl] = [path]
    return out


def diffusers_to_bfl(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers FLUX.2 transformer state dict in BFL's layout."""
    num_double = depth(state, "transformer_blocks")
    num_single = depth(state, "single_transformer_blocks")
    return flux_layout(
        state,
        num_double,
        num_single,
        table=layers(num_double, num_single),
        norm_table=norms(num_double, num_single),
    )


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def dequantize(state: dict[str, Any]) -> dict[str, Any]:
    """An fp8 "scaled" file's weights as bfloat16 (weight × its scale); others unchanged."""
    import torch

    fp8 = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
    out: dict[str, Any] = {}
    for key, value in state.items():
        stem, _, last = key.rpartition(".")
        if last in _FP8_EXTRAS or key in ("scaled_fp8", "comfy_quant") or last == "comfy_quant":
            continue
        if value.dtype in fp8:
            scale = state.get(f"{stem}.scale_weight", state.get(f"{stem}.weight_scale"))
            value = value.to(torch.float32)
            if scale is not None:
                value = value * scale.to(torch.float32)
            value = value.to(torch.bfloat16)
        out[key] = value
    return out


def file_dtype(state: dict[str, Any]) -> Any:
    """The dtype most of a state dict's floating tensors have (a mixed file's weights)."""
    from collections import Counter

    counts = Counter(v.dtype for v in state.values() if v.is_floating_point())
    return counts.most_common(1)[0][0]


def load_transformer(path: Path, config: str, local: bool) -> Any:
    """The FLUX.2 transformer of a BFL-layout ``.safetensors`` file, config from ``config``'s
    ``transformer`` folder (diffusers' own single-file conversion)."""
    from diffusers import Flux2Transformer2DModel
    from safetensors.torch import load_file

    state = dequantize(strip_prefix(load_file(str(path))))
    try:
        return Flux2Transformer2DModel.from_single_file(
            state,
            config=config,
            subfolder="transformer",
            local_files_only=local,
            torch_dtype=file_dtype(state),  # the file's (never a float32 copy)
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        if isinstance(exc, OSError):
            raise
        raise UsageError(f"{path}: not a FLUX.2 transformer in BFL's layout ({exc})") from None
