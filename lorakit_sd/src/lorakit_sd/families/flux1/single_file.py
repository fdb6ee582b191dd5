"""BFL's FLUX.1 transformer file (``flux1-dev.safetensors``) and its GGUF quantizations.

The layout is BFL's: ``double_blocks.N.img_attn.qkv`` holds diffusers' ``to_q``, ``to_k``,
``to_v`` stacked by rows, ``single_blocks.N.linear1`` those and ``proj_mlp``, and
``final_layer.adaLN_modulation.1`` has its shift and scale halves the other way round (the
facts of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``, which assumes
FLUX.1's 3072 width; the split here reads the widths from the file, so any width loads).
The converted tensors go to ``FluxTransformer2DModel.from_single_file`` with the config of
``sd.base_config``'s ``transformer`` folder, which loads them, quantized ones included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import UsageError
from lorakit_sd.families.flux1.kohya import SWAPPED, layers

#: RMSNorm scales: BFL suffix -> diffusers suffix, per block kind
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_SINGLE_NORMS = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
PREFIX = "model.diffusion_model."


def norms(num_double: int, num_single: int) -> dict[str, str]:
    """BFL norm scale name -> diffusers parameter name."""
    out = {}
    for i in range(num_double):
        for bfl, ours in _DOUBLE_NORMS.items():
            out[f"double_blocks.{i}.{bfl}"] = f"transformer_blocks.{i}.{ours}"
    for i in range(num_single):
        for bfl, ours in _SINGLE_NORMS.items():
            out[f"single_blocks.{i}.{bfl}"] = f"single_transformer_blocks.{i}.{ours}"
    return out


def _depth(keys: Any, kind: str) -> int:
    found = [int(k.split(".")[1]) for k in keys if k.startswith(f"{kind}.")]
    return max(found, default=-1) + 1


def _swap(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def bfl_to_diffusers(state: dict[str, Any]) -> dict[str, Any]:
    """A BFL-layout FLUX.1 transformer state dict as diffusers' parameter names.

    Fused rows are split by the widths in the file: q, k and v are ``img_in``'s output
    width each, and a single block's MLP takes the rest of ``linear1``.
    """
    state = {k.removeprefix(PREFIX): v for k, v in state.items()}
    hidden = int(state["img_in.weight"].shape[0])
    out: dict[str, Any] = {}
    table = layers(_depth(state, "double_blocks"), _depth(state, "single_blocks"))
    for name, paths in table.items():
        for kind in ("weight", "bias"):
            tensor = state.pop(f"{name}.{kind}", None)
            if tensor is None:
                continue
            if paths == [SWAPPED]:
                tensor = _swap(tensor)
            rows = [hidden] * len(paths) if len(paths) > 1 else [int(tensor.shape[0])]
            if len(paths) == 4:
                rows[3] = int(tensor.shape[0]) - 3 * hidden
            for path, part in zip(paths, tensor.split(rows, dim=0), strict=True):
                out[f"{path}.{kind}"] = part
    for bfl, ours in norms(_depth(state, "double_blocks"), _depth(state, "single_blocks")).items():
        if bfl in state:
            out[ours] = state.pop(bfl)
    if state:
        raise ValueError(f"tensors of no FLUX.1 layer: {', '.join(sorted(state)[:3])}")
    return out


def diffusers_to_bfl(
    state: dict[str, Any],
    num_double: int,
    num_single: int,
    *,
    table: dict[str, list[str]] | None = None,
    norm_table: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A diffusers FLUX.1 transformer state dict in BFL's layout (the inverse); ``table`` /
    ``norm_table``: another BFL layout's (BFL name -> diffusers paths / norm names)."""
    import torch

    if table is None:
        table = layers(num_double, num_single)
    out: dict[str, Any] = {}
    for name, paths in table.items():
        for kind in ("weight", "bias"):
            keys = [f"{p}.{kind}" for p in paths]
            if any(state.get(k) is None for k in keys):
                continue
            tensor = torch.cat([state[k] for k in keys], dim=0)
            out[f"{name}.{kind}"] = _swap(tensor) if paths == [SWAPPED] else tensor
    for bfl, ours in (norm_table or norms(num_double, num_single)).items():
        out[bfl] = state[ours]
    return out


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def load_transformer(path: Path, config: str, local: bool) -> Any:
    """The FLUX.1 transformer of a BFL ``.safetensors`` or ``.gguf`` file, config from
    ``config``'s ``transformer`` folder. GGUF stays quantized (``GGUFQuantizationConfig``)."""
    import torch
    from diffusers import FluxTransformer2DModel

    kwargs: dict[str, Any] = {}
    if is_gguf(path):
        from diffusers import GGUFQuantizationConfig
        from diffusers.models.model_loading_utils import load_gguf_checkpoint

        state = load_gguf_checkpoint(str(path))
        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=torch.float32)
    else:
        from safetensors.torch import load_file

        state = load_file(str(path))
    try:
        converted = bfl_to_diffusers(state)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{path}: not a FLUX.1 transformer in BFL's layout ({exc})") from None
    return FluxTransformer2DModel.from_single_file(
        converted, config=config, subfolder="transformer", local_files_only=local, **kwargs
    )
