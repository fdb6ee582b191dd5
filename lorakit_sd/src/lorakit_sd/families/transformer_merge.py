"""Baking LoRAs into a FLUX.1 or SD3 transformer, written as one file users load.

The base (a diffusers folder, a hub id, BFL's transformer file or SD3.5's all-in-one file,
with ``sd.base_config`` where the file needs it) is loaded as diffusers' transformer; every
LoRA entry (either file format) is matched strictly to a module of it, and
``up @ down * alpha / r * weight`` is added in float32. The result is written as

- FLUX.1: the transformer in BFL's layout, as ``flux1-dev.safetensors`` is (ComfyUI and
  Forge load it as a diffusion model; lorakit and diffusers with a config folder for the
  other parts);
- SD3 / SD3.5: the transformer with diffusers' names, the file a diffusers folder keeps as
  ``transformer/diffusion_pytorch_model.safetensors`` (``from_single_file`` with ``config``
  loads it as it is).

Only the transformer is written: a LoRA that also adapts a text encoder is refused, as is a
GGUF-quantized base (its weights would have to be quantized again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.api import UsageError, __version__, save_safetensors
from lorakit_sd import families
from lorakit_sd.lorafiles.apply import apply_to_model
from lorakit_sd.lorafiles.read import read_lora
from lorakit_sd.models import load_base, peek_family, stored_dtype


def flow_family(base: str, section: Any) -> str | None:
    """The base's family when it is a transformer family (SD3, FLUX.1), else None."""

    if Path(base).suffix.lower() == ".gguf":
        raise UsageError(
            f"{base}: a GGUF-quantized transformer; merging would quantize the weights again "
            "(merge into the BFL .safetensors file or a diffusers folder)"
        )
    family = peek_family(base, getattr(section, "model_family", "auto") or "auto")
    if family is not None and families.get(family).denoiser_attr == "transformer":
        return family
    return None


def _check_loras(loras: list[tuple[str, float]], family: str) -> None:

    for path, _ in loras:
        lora = read_lora(path)
        if lora.family != family:
            raise UsageError(f"{path}: a {lora.family} LoRA cannot be merged into a {family} model")
        text = sorted(s for s in lora.entries if not s.startswith("transformer."))
        if text:
            raise UsageError(
                f"{path}: adapts the text encoder too ({text[0]}); merge writes the "
                f"{families.get(family).label} transformer only (export the LoRA's transformer "
                "part, or apply it at sampling time)"
            )


def transformer_state(transformer: Any, family: str, source: str = "single_file") -> dict[str, Any]:
    """The merged transformer's tensors in the layout its family's files use (a family that
    keeps the base's layout: diffusers' names for a diffusers folder or hub id)."""
    state = {k: v.detach() for k, v in transformer.state_dict().items()}
    if source != "single_file" and families.get(family).merge_keeps_base_layout:
        return state
    return families.get(family).transformer_file_state(state, transformer.config)


def merge_transformer(
    base: str,
    family: str,
    loras: list[tuple[str, float]],
    output: Path,
    dtype: str | None,
    section: Any,
    log: Any = None,
) -> Path:
    """Write ``base``'s transformer with ``loras`` merged (see the module docstring)."""
    import torch

    _check_loras(loras, family)
    model = load_base(
        base,
        base_config=getattr(section, "base_config", None),
        model_family=getattr(section, "model_family", "auto") or "auto",
    )
    applied = apply_to_model(model, loras)
    chosen = dtype or stored_dtype(base, {})
    target = getattr(torch, chosen)
    state = {
        k: (v.to(target) if v.is_floating_point() else v).contiguous()
        for k, v in transformer_state(model.denoiser, family, model.source).items()
    }
    spec = families.get(family).format_metadata_for(model.denoiser)
    merged = [
        {"file": Path(p).name, "weight": w, "hash": lora.metadata.get("sshs_model_hash", "")}
        for (p, w), lora in zip(loras, applied, strict=True)
    ]
    metadata = {
        "format": "pt",
        "lorakit.version": __version__,
        "lorakit.base_model": str(base),
        "lorakit.merged_loras": json.dumps(merged),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": spec["modelspec.architecture"].removesuffix("/lora"),
        "modelspec.implementation": spec["modelspec.implementation"],
        "modelspec.title": output.stem,
    }
    save_safetensors(state, output, metadata=metadata)
    if log is not None:
        owner = families.get(family)
        layout = owner.transformer_file_layout
        if model.source != "single_file" and owner.merge_keeps_base_layout:
            layout = "diffusers' names, as the base"
        how = "as --dtype asked" if dtype else "the base's dtype"
        log(
            f"merged {len(merged)} LoRA(s) into {Path(base).name}'s "
            f"{owner.label} transformer: {chosen} ({how}), {layout}"
        )
    return output
