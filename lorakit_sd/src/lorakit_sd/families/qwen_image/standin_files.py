"""The tiny Qwen-Image written as ComfyUI users keep it (tests of :mod:`.split_files`).

:func:`write_split_files` writes ``diffusion_models/`` (the transformer: bf16, or fp8
"scaled" as ComfyUI's fp8 files are), ``text_encoders/`` (Qwen2.5-VL under transformers 4's
names) and ``vae/`` (Wan 2.1's original layout: :func:`vae_to_wan`, the inverse of diffusers'
``convert_wan_vae_to_diffusers``, which a test checks), and a configs-only diffusers folder
(no weights) for ``sd.base_config``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorakit_sd.families.split_standin import transformer_file, write_comfy_folders

_RESNET = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}
_TOP = {
    "quant_conv": "conv1",
    "post_quant_conv": "conv2",
    "encoder.conv_in": "encoder.conv1",
    "decoder.conv_in": "decoder.conv1",
    "encoder.norm_out": "encoder.head.0",
    "encoder.conv_out": "encoder.head.2",
    "decoder.norm_out": "decoder.head.0",
    "decoder.conv_out": "decoder.head.2",
}


def _wan_name(key: str) -> str:
    for ours, theirs in _TOP.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours) :]
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key):
        return f"{m[1]}.middle.{2 * int(m[2])}.{_RESNET[m[3]]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
        return f"{m[1]}.middle.1.{m[2]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(.+)$", key):
        return f"encoder.downsamples.{m[1]}.{_RESNET.get(m[2], m[2])}"
    if m := re.match(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.+)$", key):
        return f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_RESNET[m[3]]}"
    if m := re.match(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.(.+)$", key):
        return f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    raise KeyError(key)


def vae_to_wan(state: dict[str, Any]) -> dict[str, Any]:
    """A Qwen-Image VAE state dict (two res blocks per stage, as released) in Wan's layout."""
    return {_wan_name(k): v for k, v in state.items()}


def text_encoder_v4(state: dict[str, Any]) -> dict[str, Any]:
    """Qwen2.5-VL's tensors under transformers 4's names (``model.layers``, ``visual.``)."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^model\.language_model\.", "model.", key)
        out[re.sub(r"^model\.visual\.", "visual.", key)] = value
    return out


def write_split_files(pipe: Any, root: Path, config_dir: Path, fp8: bool = False) -> Path:
    """ComfyUI's ``models/`` folders under ``root`` and a configs-only copy of
    ``config_dir`` at ``root/configs``; returns the transformer file."""
    state = {k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}
    parts = {
        "text_encoders": (
            "qwen_2.5_vl_7b.safetensors",
            text_encoder_v4(pipe.text_encoder.state_dict()),
        ),
        "vae": ("qwen_image_vae.safetensors", vae_to_wan(pipe.vae.state_dict())),
    }
    return write_comfy_folders(root, config_dir, transformer_file(state, fp8, "qwen_image"), parts)
