"""Z-Image's transformer file as released and as ComfyUI keeps it
(``z_image_turbo_bf16.safetensors``): the original module names.

The layout is the inverse of diffusers' ``convert_z_image_transformer_checkpoint_to_diffusers``:
q, k and v stacked by rows into ``attention.qkv``, ``attention.to_out.0`` named
``attention.out``, the q/k norms ``q_norm`` / ``k_norm``, and the patch embedder and final
layer without diffusers' ``all_..2-1`` keys. diffusers' ``from_single_file`` reads it back.
"""

from __future__ import annotations

from typing import Any

#: diffusers name piece -> original name piece
RENAMES = {
    "all_final_layer.2-1.": "final_layer.",
    "all_x_embedder.2-1.": "x_embedder.",
    ".attention.to_out.0.": ".attention.out.",
    ".attention.norm_k.": ".attention.k_norm.",
    ".attention.norm_q.": ".attention.q_norm.",
}


def diffusers_to_original(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers Z-Image transformer state dict under the original names."""
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        if ".attention.to_k." in key or ".attention.to_v." in key:
            continue
        if ".attention.to_q." in key:
            parts = [state[key.replace(".to_q.", f".to_{n}.")] for n in "qkv"]
            out[key.replace(".to_q.", ".qkv.")] = torch.cat(parts, dim=0)
            continue
        for ours, theirs in RENAMES.items():
            key = key.replace(ours, theirs)
        out[key] = value
    return out


def is_original(keys: Any) -> bool:
    """Whether tensor names are Z-Image's original transformer layout."""
    names = {k.removeprefix("model.diffusion_model.") for k in keys}
    return {"cap_embedder.1.weight", "layers.0.attention.qkv.weight"} <= names
