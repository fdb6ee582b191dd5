"""Transformer families kept as ComfyUI keeps them: a transformer file, a text-encoder file
and a VAE file, with a diffusers folder (``sd.base_config``) for configs and tokenizer.

What Qwen-Image and Z-Image share: the transformer file is ``base_model``; a part whose
weights the config folder holds is read from it, otherwise from a sibling ``.safetensors``
whose tensor names are that part's (beside the transformer file, or in ComfyUI's sibling
folders ``../text_encoders`` / ``../clip`` / ``../vae``); a part found nowhere is a one-line
error naming it. fp8 tensors are read back in float32, times their ``.scale_weight`` in
ComfyUI's "scaled" fp8 files (``sd.base_quantization`` quantizes the base again for
training, on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lorakit.api import UsageError

#: where ComfyUI keeps each part, relative to the transformer file's folder
SIBLINGS = {"text_encoder": (".", "../text_encoders", "../clip"), "vae": (".", "../vae")}
DIFFUSION_PREFIX = "model.diffusion_model."


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
    """A file's tensors, fp8 dequantized, without ComfyUI's ``model.diffusion_model.``."""
    from safetensors.torch import load_file

    return {
        k.removeprefix(DIFFUSION_PREFIX): v for k, v in dequantize(load_file(str(path))).items()
    }


def held_by(config: str, part: str) -> bool:
    """Whether the config folder (or hub id) holds ``part``'s weights."""
    folder = Path(config).expanduser()
    if not folder.is_dir():
        return True  # a hub id: the released repo has every part
    return any((folder / part).glob("*.safetensors"))


def sibling(path: Path, part: str, part_of: Callable[[Any], str | None]) -> Path | None:
    """The first ``.safetensors`` near the transformer file whose tensors are ``part``'s."""
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


def load_parts(
    path: Path,
    config: str,
    local: bool,
    part_of: Callable[[Any], str | None],
    loaders: Mapping[str, tuple[str, Callable[[Path, str, bool], Any]]],
) -> dict[str, Any]:
    """``{part: model}`` of the parts the config folder does not hold, from sibling files.

    ``loaders``: part -> (what it is called in messages, ``loader(file, config, local)``)."""
    parts: dict[str, Any] = {}
    for part, (what, loader) in loaders.items():
        if held_by(config, part):
            continue
        found = sibling(path, part, part_of)
        if found is None:
            places = ", ".join(str((path.parent / w).resolve()) for w in SIBLINGS[part])
            raise UsageError(
                f"{path}: no {what} (.safetensors) found in {places}, and "
                f"sd.base_config {config} holds no {part} weights"
            )
        try:
            parts[part] = loader(found, config, local)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(f"{found}: not a {what} of this model ({first})") from None
    return parts


def text_model(cls: Any, path: Path, config: str, local: bool) -> Any:
    """A transformers text encoder of class ``cls`` from a file (config from the folder);
    transformers renames older checkpoints' tensor names as it loads them."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(config, subfolder="text_encoder", local_files_only=local)
    return cls.from_pretrained(None, config=cfg, state_dict=read(path))


def load_pipeline(
    family: Any,
    path: Path,
    config: str,
    local: bool,
    part_of: Callable[[Any], str | None],
    loaders: Mapping[str, tuple[str, Callable[[Path, str, bool], Any]]],
) -> Any:
    """The pipeline of a transformer file (diffusers' ``from_single_file`` converts its
    layout), its other parts from ``config`` or from sibling files (:func:`load_parts`)."""
    transformer = family.transformer_class().from_single_file(
        read(path), config=config, subfolder="transformer", local_files_only=local
    )
    parts = load_parts(path, config, local, part_of, loaders)
    return family.pipeline_class().from_pretrained(
        config, transformer=transformer, local_files_only=local, **parts
    )
