"""Qwen-Image as ComfyUI users keep it: three files, and a folder for the configs.

ComfyUI's layout (``models/diffusion_models/qwen_image_bf16.safetensors``,
``models/text_encoders/qwen_2.5_vl_7b.safetensors``, ``models/vae/qwen_image_vae.safetensors``):

- the **transformer** keeps diffusers' names (``transformer_blocks.0.attn.to_q.weight``,
  sometimes under ``model.diffusion_model.``), in bf16, fp8 (``float8_e4m3fn``) or ComfyUI's
  "scaled" fp8 (each fp8 weight beside a ``.scale_weight`` factor, a ``scaled_fp8`` marker);
  fp8 weights are read back as ``weight * scale_weight`` in float32 (``sd.base_quantization``
  quantizes the base again for training, on a GPU);
- the **text encoder** is Qwen2.5-VL in transformers 4's names (``model.layers.N``,
  ``visual.``), loaded by transformers (its checkpoint conversion renames them), fp8 scaled
  files dequantized the same way;
- the **VAE** is Wan 2.1's original layout (``encoder.downsamples.N``), converted by
  diffusers' ``convert_wan_vae_to_diffusers`` (Qwen-Image's VAE has Wan's module names), or
  diffusers' own names.

The transformer file is ``base_model``; ``sd.base_config`` is a diffusers Qwen-Image folder
(configs, tokenizer, scheduler; ``Qwen/Qwen-Image`` by default). A part whose weights that
folder holds is read from it; otherwise from a sibling file: a ``.safetensors`` whose tensor
names are that part's, beside the transformer file or in ComfyUI's sibling folder
(``../text_encoders``, ``../vae``). A part found nowhere is a one-line error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.api import UsageError

PREFIX = "model.diffusion_model."
#: where ComfyUI keeps each part, relative to the transformer file's folder
SIBLINGS = {"text_encoder": (".", "../text_encoders", "../clip"), "vae": (".", "../vae")}
WHAT = {"text_encoder": "Qwen2.5-VL text encoder", "vae": "Qwen-Image VAE"}


def is_transformer(keys: Any) -> bool:
    names = {k.removeprefix(PREFIX) for k in keys}
    return {"txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight"} <= names


def part_of(keys: Any) -> str | None:
    """``text_encoder`` / ``vae`` when a file's tensor names are that part's, else None."""
    names = set(keys)
    if any(k.endswith("layers.0.self_attn.q_proj.weight") for k in names):
        return "text_encoder"
    if {"encoder.conv1.weight", "decoder.conv1.weight"} <= names or {
        "encoder.conv_in.weight",
        "decoder.conv_in.weight",
    } <= names:
        return "vae"
    return None


def dequantize(state: dict[str, Any]) -> dict[str, Any]:
    """fp8 weights as float32 (times their ``.scale_weight`` in ComfyUI's scaled files)."""
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".scale_input")):
            continue
        if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            value = value.float()
            scale = state.get(key.removesuffix(".weight") + ".scale_weight")
            if scale is not None:
                value = value * scale.float()
        out[key] = value
    return out


def read(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dequantize(load_file(str(path)))


def held_by(config: str, part: str) -> bool:
    """Whether the config folder (or hub id) holds ``part``'s weights."""
    folder = Path(config).expanduser()
    if not folder.is_dir():
        return True  # a hub id: the released repo has every part
    return any((folder / part).glob("*.safetensors"))


def sibling(path: Path, part: str) -> Path | None:
    """The one ``.safetensors`` near the transformer file whose tensors are ``part``'s."""
    from lorakit.api import read_safetensors_header

    for where in SIBLINGS[part]:
        folder = (path.parent / where).resolve()
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.glob("*.safetensors")):
            if candidate.resolve() == path.resolve():
                continue
            if part_of(read_safetensors_header(candidate).tensors) == part:
                return candidate
    return None


def text_encoder(path: Path, config: str, local: bool) -> Any:
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    cfg = AutoConfig.from_pretrained(config, subfolder="text_encoder", local_files_only=local)
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        None, config=cfg, state_dict=read(path)
    )


def vae(path: Path, config: str, local: bool) -> Any:
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = read(path)
    if "encoder.conv1.weight" in state:  # Wan 2.1's original names
        state = convert_wan_vae_to_diffusers(state)
    cfg = AutoencoderKLQwenImage.load_config(config, subfolder="vae", local_files_only=local)
    model = AutoencoderKLQwenImage.from_config(cfg)
    model.load_state_dict(state, strict=True)
    return model


def load_pipeline(family: Any, path: Path, config: str, local: bool) -> Any:
    """The pipeline of a transformer file, its other parts from ``config`` or siblings."""
    state = {k.removeprefix(PREFIX): v for k, v in read(path).items()}
    transformer = family.transformer_class().from_single_file(
        state, config=config, subfolder="transformer", local_files_only=local
    )
    parts: dict[str, Any] = {}
    for part, loader in (("text_encoder", text_encoder), ("vae", vae)):
        if held_by(config, part):
            continue
        found = sibling(path, part)
        if found is None:
            places = ", ".join(str((path.parent / w).resolve()) for w in SIBLINGS[part])
            raise UsageError(
                f"{path}: no {WHAT[part]} (.safetensors) found in {places}, and "
                f"sd.base_config {config} holds no {part} weights"
            )
        try:
            parts[part] = loader(found, config, local)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(f"{found}: not a {WHAT[part]} of this model ({first})") from None
    return family.pipeline_class().from_pretrained(
        config, transformer=transformer, local_files_only=local, **parts
    )
