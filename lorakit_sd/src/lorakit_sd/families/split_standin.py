"""Tiny models written as ComfyUI users keep them (tests of :mod:`.split_files`): ComfyUI's
``models/`` folders and a configs-only copy of the diffusers folder for ``sd.base_config``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def scaled_fp8(state: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's "scaled" fp8: 2-D weights as ``float8_e4m3fn`` times a per-tensor
    ``.scale_weight``, the rest bf16, and the ``scaled_fp8`` marker."""
    import torch

    out: dict[str, Any] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float().clamp(min=1e-12) / 448.0
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(1)
        else:
            out[key] = value.to(torch.bfloat16)
    return out


def write_comfy_folders(
    root: Path, config_dir: Path, transformer: dict[str, Any], parts: dict[str, tuple[str, Any]]
) -> Path:
    """``root/diffusion_models/<name>`` (``transformer``: name -> tensors), each of ``parts``
    (folder -> (file, tensors)) and ``root/configs`` (``config_dir`` without weights);
    returns the transformer file."""
    from safetensors.torch import save_file

    [(name, tensors)] = transformer.items()
    for folder, (file, state) in {"diffusion_models": (name, tensors), **parts}.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / folder / file))
    shutil.copytree(config_dir, root / "configs", ignore=shutil.ignore_patterns("*.safetensors"))
    return root / "diffusion_models" / name


def transformer_file(state: dict[str, Any], fp8: bool, stem: str) -> dict[str, Any]:
    """``{file name: tensors}`` of a transformer in bf16 or ComfyUI's scaled fp8."""
    import torch

    if fp8:
        return {f"{stem}_fp8_scaled.safetensors": scaled_fp8(state)}
    return {f"{stem}_bf16.safetensors": {k: v.to(torch.bfloat16) for k, v in state.items()}}
