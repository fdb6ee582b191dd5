"""Wan transformers as single files in the original layout (what ComfyUI loads from
``models/diffusion_models``: ``blocks.N.self_attn.q.weight``, ``head.modulation``...), read
through diffusers' own converter (``WanTransformer3DModel.from_single_file``), the other
parts from a diffusers folder (``sd.base_config``). Merged transformers are written in this
layout too."""

from __future__ import annotations

import re
from typing import Any

#: diffusers -> original names outside the blocks (the inverse of diffusers' converter)
TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
}
#: inside a block: diffusers -> original (norm2 is the cross-attention norm, originally norm3)
BLOCK = {
    "attn1.": "self_attn.",
    "attn2.": "cross_attn.",
    "to_out.0.": "o.",
    "to_q.": "q.",
    "to_k.": "k.",
    "to_v.": "v.",
    "add_k_proj.": "k_img.",
    "add_v_proj.": "v_img.",
    "norm_added_k.": "norm_k_img.",
    "ffn.net.0.proj.": "ffn.0.",
    "ffn.net.2.": "ffn.2.",
    "norm2.": "norm3.",
    "scale_shift_table": "modulation",
}
_BLOCK_KEY = re.compile(r"^(blocks\.\d+\.)(.+)$")


def original_key(key: str) -> str:
    """The original Wan name of a diffusers ``WanTransformer3DModel`` tensor."""
    m = _BLOCK_KEY.match(key)
    if m is None:
        for diffusers, original in TOP.items():
            if key == diffusers or key.startswith(diffusers + "."):
                return original + key[len(diffusers) :]
        return key  # patch_embedding.*
    prefix, rest = m.groups()
    for diffusers, original in BLOCK.items():
        rest = rest.replace(diffusers, original) if diffusers.endswith(".") else rest
        if rest == diffusers:
            rest = original
    return prefix + rest


def to_original(state: dict[str, Any]) -> dict[str, Any]:
    return {original_key(k): v for k, v in state.items()}


def claims(keys: set[str]) -> bool:
    """A transformer file in the original layout (diffusers' own test: ``head.modulation``)."""
    return any(k.endswith("head.modulation") for k in keys) and any(
        k.endswith("blocks.0.self_attn.q.weight") for k in keys
    )


def load(path: Any, config: str, local: bool) -> Any:
    """The pipeline of ``config`` with its transformer read from ``path``."""
    from diffusers import DiffusionPipeline, WanTransformer3DModel

    transformer = WanTransformer3DModel.from_single_file(
        str(path), config=config, subfolder="transformer", local_files_only=local
    )
    return DiffusionPipeline.from_pretrained(
        config, transformer=transformer, local_files_only=local
    )
