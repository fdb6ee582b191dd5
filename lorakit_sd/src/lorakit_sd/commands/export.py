"""``lorakit export FILE --to kohya|diffusers [--base MODEL]``: convert between the two
formats. With ``--base`` every key is checked against that model; without, against the
family's standard structure (built on the meta device: no weights are loaded)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from lorakit.api import UsageError, save_safetensors
from lorakit_sd import families
from lorakit_sd.commands import load_model, section_of
from lorakit_sd.lorafiles.exporters import format_metadata
from lorakit_sd.lorafiles.names import (
    METADATA_KEY,
    UnetLayout,
    model_hash,
    module_table,
    to_diffusers,
)
from lorakit_sd.lorafiles.read import read_lora, resolve

FORMATS = ("kohya", "diffusers")


def standard_structure(family: str) -> tuple[Any, list[Any]]:
    """The family's standard denoiser and text encoders on the meta device (no weights)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    own = families.get(family).standard_structure()
    if own is not None:
        return own
    text = resources.files("lorakit_sd").joinpath("data/standard_models.json").read_text()
    spec = json.loads(text)[family]
    with torch.device("meta"):
        if "transformer" in spec:  # SD3 medium / FLUX.1-dev: the model classes' defaults
            transformer = families.get(family).transformer_class()
            unet = transformer(**spec["transformer"])
        else:
            unet = UNet2DConditionModel(**spec["unet"])
        encoders = []
        for cfg in spec["text_encoders"]:
            cfg = dict(cfg)
            cls = CLIPTextModelWithProjection if cfg.pop("with_projection") else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**cfg)))
    return unet, encoders


def _default_output(source: Path, to: str) -> Path:
    name = source.name
    stem = (
        name[: -len(".diffusers.safetensors")]
        if name.endswith(".diffusers.safetensors")
        else source.stem
    )
    if to == "diffusers":
        return source.with_name(f"{stem}.diffusers.safetensors")
    out = source.with_name(f"{stem}.safetensors")
    return out if out != source else source.with_name(f"{stem}.kohya.safetensors")


def export(
    source: Path, to: str, output: Path | None = None, base: str | None = None, config: Any = None
) -> list[Path]:
    """Convert a LoRA file to ``to`` (kohya or diffusers); returns the written path."""

    to = to.lower()
    if to not in FORMATS:
        raise UsageError(f"--to {to}: one of {', '.join(FORMATS)}")
    source = Path(source)
    lora = read_lora(source)
    if base:
        model = load_model(base, section_of(config), config)
        unet, encoders, family = model.denoiser, model.text_encoders, model.family
        if lora.family != family:
            raise UsageError(f"{source}: a {lora.family} LoRA, but --base is a {family} model")
    else:
        family = lora.family
        own = families.get(family).standard_structure(lora.entries)
        unet, encoders = own if own is not None else standard_structure(family)
    layout = (
        UnetLayout.from_config(unet.config) if hasattr(unet.config, "layers_per_block") else None
    )
    lora = read_lora(source, layout)
    modules = resolve(lora, module_table(unet, encoders, family))
    if any(m.tensors is not None for m in modules):
        from lorakit_sd.networks import file_network

        kind = file_network(f"x.{k}" for m in modules for k in m.tensors or {})
        raise UsageError(
            f"{source}: a {kind} file, already in the kohya/LyCORIS layout its clients read "
            "(diffusers' load_lora_weights reads plain LoRA only)"
        )
    dtype = modules[0].down.dtype
    output = Path(output) if output else _default_output(source, to)
    if output.resolve() == source.resolve():
        raise UsageError(f"--output {output}: would overwrite the source file")
    ranks = [m.rank for m in modules]
    alphas = [m.alpha for m in modules]
    rank = max(set(ranks), key=ranks.count)
    alpha = max(set(alphas), key=alphas.count)
    name = lora.metadata.get("ss_output_name") or source.name.split(".")[0]
    metadata = {k: v for k, v in lora.metadata.items() if k not in (METADATA_KEY, "format")}
    metadata.update(format_metadata(family, name, rank, alpha, denoiser=unet))
    if "modelspec.resolution" in lora.metadata:
        metadata["modelspec.resolution"] = lora.metadata["modelspec.resolution"]
    if to == "kohya":
        kohya = families.get(family).kohya_tensors(modules, unet, dtype)
        if kohya is None:
            raise UsageError(f"--to kohya: {family} LoRAs have one file layout, diffusers'")
        tensors = kohya
        metadata["sshs_model_hash"] = model_hash(tensors)
    else:
        tensors, extra = to_diffusers(modules, dtype)
        metadata.pop("sshs_model_hash", None)
        metadata.update(extra)
    save_safetensors(tensors, output, metadata=metadata)
    return [output]
