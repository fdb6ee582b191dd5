"""Merging LoRAs into an SD1 / SDXL checkpoint in the original (LDM / SGM) single-file layout:
the base read as original-layout tensors, each LoRA entry matched to the weight it changes
through the LDM table, ``up @ down * alpha / r * weight`` added in float32."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorakit.api import UsageError, get_registries, read_safetensors_header
from lorakit_sd.families.ldm import (
    UNET_PREFIX,
    layers_per_block_from_keys,
    ldm_table,
    pipeline_to_ldm,
)
from lorakit_sd.lorafiles.names import UnetLayout
from lorakit_sd.lorafiles.read import entry_module, read_lora
from lorakit_sd.models import PICKLE_SUFFIXES, family_of_keys


def load_ldm(base: str, section: Any) -> tuple[dict[str, Any], str, dict[str, str]]:
    """(original-layout tensors, family, the file's metadata) of a base model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(base).expanduser()
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise UsageError(
            f"{path}: merge reads .safetensors checkpoints only (a pickled file can run code); "
            "convert it first"
        )
    loader = get_registries().model_loader_for("sd", base)
    if loader.name == "sd-single-file" and path.suffix.lower() == ".safetensors":
        # the file's own tensors: the merged checkpoint keeps every key it had
        read_safetensors_header(path)  # sizes against the file, one line, before mapping it
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = load_file(str(path))
        return state, family_of_keys(path, list(state)), metadata

    model = loader.load(
        base,
        base_config=getattr(section, "base_config", None),
        model_family=getattr(section, "model_family", "auto"),
    )
    state = {k: v.detach().clone() for k, v in pipeline_to_ldm(model.pipe).items()}
    return state, model.family, {}


def apply_loras(
    state: dict[str, Any], family: str, loras: list[tuple[str, float]]
) -> list[dict[str, Any]]:
    """Add each LoRA (times its weight) into ``state`` in place; returns what was merged."""

    table = ldm_table(state, family)
    lpb = layers_per_block_from_keys(state)
    ups = sorted(
        {
            int(m[1])
            for k in state
            if (m := re.match(r"model\.diffusion_model\.output_blocks\.(\d+)\.", k))
        }
    )
    up_attn = [
        f"{UNET_PREFIX}output_blocks.{b * (lpb + 1) + lpb}.2.conv.weight" in state
        for b in range(len(ups) // (lpb + 1))
    ]
    layout = UnetLayout(lpb, up_attn)
    merged = []
    for path, weight in loras:
        lora = read_lora(path, layout)
        if lora.family != family:
            raise UsageError(f"{path}: a {lora.family} LoRA cannot be merged into a {family} model")
        unknown = sorted(stem for stem in lora.entries if stem not in table)
        if unknown:
            raise UsageError(
                f"{path}: {len(unknown)} key(s) match no weight of the base model: "
                f"{', '.join(unknown[:3])}"
            )
        for stem, entry in lora.entries.items():
            key, part, shape = table[stem]
            module = entry_module(path, stem, entry, "", stem, shape)
            target = state[key].float()
            if part is None:
                target += module.delta(weight, target).reshape(target.shape)
            else:
                rows = shape[0]
                piece = target[part * rows : (part + 1) * rows]
                piece += module.delta(weight, piece).reshape(shape)
            state[key] = target
        merged.append(
            {
                "file": Path(path).name,
                "weight": weight,
                "hash": lora.metadata.get("sshs_model_hash", ""),
            }
        )
    return merged
