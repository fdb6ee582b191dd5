"""The original (LDM / SGM) single-file layout of SD1 and SDXL checkpoints.

Users keep base models as one ``.safetensors`` file in the layout of the original
Stable Diffusion code: ``model.diffusion_model.*`` (the UNet, with ``input_blocks`` /
``middle_block`` / ``output_blocks``), ``first_stage_model.*`` (the VAE) and the text
encoders under ``cond_stage_model.transformer.*`` (SD1) or ``conditioner.embedders.0.*``
(CLIP-L) and ``conditioner.embedders.1.model.*`` (OpenCLIP bigG, SDXL). diffusers reads
that layout (``from_single_file``); this module writes it, and maps diffusers module
paths to their original names, which is what kohya SDXL LoRA keys and ``lorakit merge``
need. Everything here is renaming; no tensor is changed except where the layouts store
the same weight differently (VAE attention as 1×1 convolutions, OpenCLIP's fused q/k/v).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."
SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."

#: Keys that tell the families apart in a single-file checkpoint.
SDXL_MARKER = "conditioner.embedders.1.model.positional_embedding"
SD1_MARKER = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
#: The same key in SD1 files that lack the ``text_model.`` level (NAI-derived merges).
SD1_BARE_MARKER = "cond_stage_model.transformer.embeddings.position_embedding.weight"
SD2_MARKER = "cond_stage_model.model.positional_embedding"

_RESNET_TO_LDM = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_rest(rest: str) -> str:
    head, _, tail = rest.partition(".")
    for new, old in _RESNET_TO_LDM:
        if head == new:
            return f"{old}.{tail}" if tail else old
    return rest


def unet_path_to_ldm(path: str, layers_per_block: int, up_has_attention: Sequence[bool]) -> str:
    """The original name of a diffusers UNet parameter or module path.

    ``up_has_attention[i]`` says whether diffusers' ``up_blocks.i`` has attentions (its
    upsampler then sits at index 2 of the last output block instead of 1).
    """
    n = layers_per_block + 1
    for new, old in _UNET_TOP.items():
        if path == new or path.startswith(new + "."):
            return old + path[len(new) :]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(?:\.(.*))?$", path)
    if m:
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "downsamplers":
            return f"input_blocks.{1 + block * n + layers_per_block}.0.op" + rest[4:]
        sub, rest = (0, _resnet_rest(rest)) if kind == "resnets" else (1, rest)
        return _join(f"input_blocks.{1 + block * n + index}.{sub}", rest)
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$", path)
    if m:
        kind, index, rest = m[1], int(m[2]), m[3] or ""
        if kind == "attentions":
            return _join("middle_block.1", rest)
        return _join(f"middle_block.{2 * index}", _resnet_rest(rest))
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(?:\.(.*))?$", path)
    if m:
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4] or ""
        if kind == "upsamplers":
            sub = 2 if up_has_attention[block] else 1
            return _join(f"output_blocks.{block * n + layers_per_block}.{sub}", rest)
        sub, rest = (0, _resnet_rest(rest)) if kind == "resnets" else (1, rest)
        return _join(f"output_blocks.{block * n + index}.{sub}", rest)
    raise KeyError(f"no original name for UNet path {path!r}")


def _join(head: str, rest: str) -> str:
    return f"{head}.{rest}" if rest else head


_LDM_TOP = {v: k for k, v in _UNET_TOP.items()}


def _resnet_path(rest: str) -> str:
    for new, old in _RESNET_TO_LDM:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_ldm_to_path(name: str, layers_per_block: int) -> str:
    """The diffusers path of an original UNet name (the inverse of :func:`unet_path_to_ldm`)."""
    n = layers_per_block + 1
    for old, new in sorted(_LDM_TOP.items(), key=lambda kv: -len(kv[0])):
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    m = re.match(r"input_blocks\.(\d+)\.(\d+)(?:\.(.*))?$", name)
    if m:
        index, sub, rest = int(m[1]) - 1, int(m[2]), m[3] or ""
        block, layer = divmod(index, n)
        if layer == layers_per_block:
            return f"down_blocks.{block}.downsamplers.0.conv" + rest[2:]
        if sub == 0:
            return _join(f"down_blocks.{block}.resnets.{layer}", _resnet_path(rest))
        return _join(f"down_blocks.{block}.attentions.{layer}", rest)
    m = re.match(r"middle_block\.(\d+)(?:\.(.*))?$", name)
    if m:
        index, rest = int(m[1]), m[2] or ""
        if index == 1:
            return _join("mid_block.attentions.0", rest)
        return _join(f"mid_block.resnets.{index // 2}", _resnet_path(rest))
    m = re.match(r"output_blocks\.(\d+)\.(\d+)(?:\.(.*))?$", name)
    if m:
        block, layer = divmod(int(m[1]), n)
        sub, rest = int(m[2]), m[3] or ""
        if sub == 0:
            return _join(f"up_blocks.{block}.resnets.{layer}", _resnet_path(rest))
        if sub == 2 or rest == "conv" or rest.startswith("conv."):  # the upsampler's conv
            return _join(f"up_blocks.{block}.upsamplers.0", rest)
        return _join(f"up_blocks.{block}.attentions.{layer}", rest)
    raise KeyError(f"no diffusers path for original UNet name {name!r}")


def unet_layout(config: Any) -> tuple[int, list[bool]]:
    """``(layers_per_block, up_has_attention)`` from a diffusers UNet config."""
    lpb = config["layers_per_block"] if isinstance(config, dict) else config.layers_per_block
    ups = config["up_block_types"] if isinstance(config, dict) else config.up_block_types
    if not isinstance(lpb, int):
        raise ValueError("UNets with a different layers_per_block per block are not supported")
    return lpb, ["CrossAttn" in t for t in ups]


def unet_to_ldm(state_dict: dict[str, Any], config: Any) -> dict[str, Any]:
    """A diffusers UNet state dict under original names (with ``model.diffusion_model.``)."""
    lpb, up_attn = unet_layout(config)
    return {UNET_PREFIX + unet_path_to_ldm(k, lpb, up_attn): v for k, v in state_dict.items()}


# -- VAE ----------------------------------------------------------------------------------

_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_path_to_ldm(path: str, num_up_blocks: int) -> str:
    """The original name of a diffusers AutoencoderKL parameter."""
    path = path.replace("conv_norm_out", "norm_out")
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", path)
    if m:
        part, kind, index, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "attentions":
            for new, old in _VAE_ATTN.items():
                if rest.startswith(new + "."):
                    return f"{part}.mid.attn_1.{old}{rest[len(new) :]}"
            raise KeyError(path)
        return f"{part}.mid.block_{index + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)$", path)
    if m:
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"encoder.down.{block}.downsample.{rest}"
        return f"encoder.down.{block}.block.{index}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)$", path)
    if m:
        block = num_up_blocks - 1 - int(m[1])
        kind, index, rest = m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            return f"decoder.up.{block}.upsample.{rest}"
        return f"decoder.up.{block}.block.{index}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    return path


def vae_to_ldm(state_dict: dict[str, Any], config: Any) -> dict[str, Any]:
    """A diffusers VAE state dict in the original layout (attention as 1×1 convolutions)."""
    ups = config["up_block_types"] if isinstance(config, dict) else config.up_block_types
    out = {}
    for key, value in state_dict.items():
        name = vae_path_to_ldm(key, len(ups))
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + name] = value
    return out


# -- text encoders --------------------------------------------------------------------------


def text_model_path(path: str) -> str:
    """A CLIP text-model path with transformers 4's ``text_model.`` level.

    transformers 5's ``CLIPTextModel`` dropped that level (``encoder.layers.0...``); the
    original layout and every kohya-format consumer expect ``text_model.encoder.layers.0...``.
    ``text_projection`` (``CLIPTextModelWithProjection``) sits outside it.
    """
    if path.startswith(("text_model.", "text_projection")):
        return path
    return "text_model." + path


def clip_to_ldm(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A CLIP-L text encoder (SD1, or SDXL's first) under ``prefix`` + ``text_model.``."""
    return {
        prefix + text_model_path(k): v
        for k, v in state_dict.items()
        if not k.endswith("position_ids")
    }


_OPEN_CLIP_LAYER = (
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
    ("self_attn.out_proj", "attn.out_proj"),
)


def open_clip_path(path: str) -> tuple[str, int | None]:
    """Original OpenCLIP name of a ``CLIPTextModelWithProjection`` parameter path.

    Returns ``(name, part)``: for q/k/v projections ``name`` is the fused ``in_proj_*``
    tensor and ``part`` (0, 1, 2) says which third of its rows the projection is.
    """
    path = text_model_path(path)
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
        "text_projection.weight": "text_projection",
    }
    if path in fixed:
        return fixed[path], None
    m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)$", path)
    if not m:
        raise KeyError(f"no OpenCLIP name for {path!r}")
    layer, rest = m[1], m[2]
    qkv = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)$", rest)
    if qkv:
        return f"transformer.resblocks.{layer}.attn.in_proj_{qkv[2]}", "qkv".index(qkv[1])
    for new, old in _OPEN_CLIP_LAYER:
        if rest.startswith(new + ".") or rest == new:
            return f"transformer.resblocks.{layer}.{old}{rest[len(new) :]}", None
    raise KeyError(f"no OpenCLIP name for {path!r}")


def open_clip_to_ldm(state_dict: dict[str, Any], prefix: str) -> dict[str, Any]:
    """SDXL's second text encoder in OpenCLIP layout: fused q/k/v, transposed projection."""
    import torch

    out: dict[str, Any] = {}
    fused: dict[str, list[Any]] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        name, part = open_clip_path(key)
        if part is None:
            out[prefix + name] = value.T.contiguous() if name == "text_projection" else value
        else:
            fused.setdefault(name, [None, None, None])[part] = value
    for name, parts in fused.items():
        if any(p is None for p in parts):
            raise KeyError(f"incomplete q/k/v for {name}")
        out[prefix + name] = torch.cat(parts, dim=0)
    return out


def pipeline_to_ldm(pipe: Any) -> dict[str, Any]:
    """Every weight of an SD1 or SDXL diffusers pipeline in the single-file layout."""
    out = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.update(clip_to_ldm(pipe.text_encoder.state_dict(), SDXL_TE1_PREFIX))
        out.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict(), SDXL_TE2_PREFIX))
    else:
        out.update(clip_to_ldm(pipe.text_encoder.state_dict(), SD1_TE_PREFIX))
    return out


def detect_family(keys: Any) -> str | None:
    """``sd1``, ``sdxl``, ``sd2`` or None, from the key names of a single-file checkpoint."""
    keys = set(keys)
    if SDXL_MARKER in keys:
        return "sdxl"
    if SD1_MARKER in keys or SD1_BARE_MARKER in keys:
        return "sd1"
    if SD2_MARKER in keys or "cond_stage_model.model.token_embedding.weight" in keys:
        return "sd2"
    return None


def layers_per_block_from_keys(keys: Any) -> int:
    """The UNet's ``layers_per_block``, read from original key names."""
    ops = sorted(
        int(m[1])
        for k in keys
        if (m := re.match(r"model\.diffusion_model\.input_blocks\.(\d+)\.0\.op\.", k))
    )
    if ops:
        return ops[0] - 1
    blocks = {
        int(m[1])
        for k in keys
        if (m := re.match(r"model\.diffusion_model\.input_blocks\.(\d+)\.", k))
    }
    return max(blocks)


_OPEN_CLIP_TO_PATH = {
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}

Target = tuple[str, int | None, tuple[int, ...]]  # (key, third of fused q/k/v or None, shape)


def ldm_table(state: dict[str, Any], family: str) -> dict[str, Target]:
    """kohya key stem → the original-layout weight it changes."""
    lpb = layers_per_block_from_keys(state)
    table: dict[str, Target] = {}
    te = {"sd1": [(SD1_TE_PREFIX, "lora_te_")], "sdxl": [(SDXL_TE1_PREFIX, "lora_te1_")]}[family]
    for key, tensor in state.items():
        shape = tuple(tensor.shape)
        if key.startswith(SDXL_TE2_PREFIX) and family == "sdxl":
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key[len(SDXL_TE2_PREFIX) :])
            if not m:
                continue
            stem = f"lora_te2_text_model_encoder_layers_{m[1]}_"
            if m[2] == "attn.in_proj_weight":
                rows = shape[0] // 3
                for part, name in enumerate("qkv"):
                    table[f"{stem}self_attn_{name}_proj"] = (key, part, (rows, shape[1]))
            elif m[2].endswith(".weight") and m[2][: -len(".weight")] in _OPEN_CLIP_TO_PATH:
                path = _OPEN_CLIP_TO_PATH[m[2][: -len(".weight")]]
                table[stem + path.replace(".", "_")] = (key, None, shape)
            continue
        if not key.endswith(".weight") or len(shape) not in (2, 4):
            continue
        name = key[: -len(".weight")]
        if name.startswith(UNET_PREFIX):
            name = name[len(UNET_PREFIX) :]
            if family == "sd1":
                try:
                    name = unet_ldm_to_path(name, lpb)
                except KeyError:
                    continue
            table["lora_unet_" + name.replace(".", "_")] = (key, None, shape)
            continue
        for prefix, kohya in te:
            if name.startswith(prefix):  # with text_model. even where the file lacks it
                path = text_model_path(name[len(prefix) :])
                table[kohya + path.replace(".", "_")] = (key, None, shape)
    return table
