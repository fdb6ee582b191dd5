"""Baking LoRAs into a base checkpoint, in the single-file layout users keep.

The base is read as original-layout tensors (a ``.safetensors`` checkpoint as it is, or a
diffusers folder / hub id converted), every LoRA entry is matched to the weight it changes
(refusing entries that match none, or whose shapes do not fit), ``up @ down * alpha / r *
weight`` is added in float32, and the whole checkpoint, with every key it had, is written
as one new ``.safetensors`` file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lorakit.api import UsageError
from lorakit_sd import families
from lorakit_sd.families.ldm import UNET_PREFIX, layers_per_block_from_keys, ldm_table


def load_ldm(base: str, section: Any) -> tuple[dict[str, Any], str, dict[str, str]]:
    """(original-layout tensors, family, the file's metadata) of a base model."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from lorakit.api import get_registries
    from lorakit_sd.models import PICKLE_SUFFIXES, family_of_keys

    path = Path(base).expanduser()
    if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
        raise UsageError(
            f"{path}: merge reads .safetensors checkpoints only (a pickled file can run code); "
            "convert it first"
        )
    loader = get_registries().model_loader_for("sd", base)
    if loader.name == "sd-single-file" and path.suffix.lower() == ".safetensors":
        # the file's own tensors: the merged checkpoint keeps every key it had
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        state = load_file(str(path))
        return state, family_of_keys(path, list(state)), metadata
    from lorakit_sd.families.ldm import pipeline_to_ldm

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
    from lorakit_sd.lora_format import UnetLayout
    from lorakit_sd.lora_read import entry_module, read_lora

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


DTYPES = ("float32", "float16", "bfloat16")


def stored_dtype(base: str, state: dict[str, Any]) -> str:
    """The dtype the base stores its weights in: most of a single file's floating tensors
    (``state``, or the file's header when empty), or a diffusers folder's UNet / transformer
    file; float32 where it cannot be told (nothing is lost)."""
    from collections import Counter

    from safetensors import safe_open

    path = Path(base).expanduser()
    counts: Counter[str] = Counter()
    if path.is_dir() or (path.is_file() and not state):
        found = [path] if path.is_file() else []
        for part in ("unet", "transformer"):
            found = found or sorted((path / part).glob("*.safetensors"))
        for weights in found[:1]:
            with safe_open(str(weights), framework="pt") as f:
                counts.update(str(f.get_slice(k).get_dtype()) for k in list(f.keys())[:50])
        names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
        counts = Counter({names.get(k, k): v for k, v in counts.items()})
    elif path.is_file():
        counts.update(
            str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()
        )
    common = [d for d, _ in counts.most_common() if d in DTYPES]
    return common[0] if common else "float32"


def merge_checkpoint(
    base: str,
    loras: list[tuple[str, float]],
    output: Path,
    dtype: str | None = None,
    section: Any = None,
    log: Any = None,
) -> Path:
    """Write ``base`` + ``loras`` as a single-file ``.safetensors`` checkpoint.

    ``dtype`` None keeps the base's own dtype. ``log`` gets the one-line summary.
    """
    import torch

    from lorakit.api import __version__, save_safetensors

    if not loras:
        raise UsageError("merge: pass at least one --lora FILE[:weight]")
    if output.suffix.lower() != ".safetensors":
        raise UsageError(f"--output {output}: the merged checkpoint must be a .safetensors file")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: one of {', '.join(DTYPES)}")
    if Path(base).expanduser().resolve() == output.resolve():
        raise UsageError("--output must differ from --base")
    from lorakit_sd.merge_flow import flow_family, merge_transformer

    flow = flow_family(base, section)
    if flow is not None:
        return merge_transformer(base, flow, loras, output, dtype, section, log)
    state, family, base_meta = load_ldm(base, section)
    chosen = dtype or stored_dtype(base, state)
    target = getattr(torch, chosen)
    merged = apply_loras(state, family, loras)
    state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
    metadata = {k: v for k, v in base_meta.items() if not k.startswith("lorakit.")}
    metadata.update(
        {
            "format": "pt",
            "lorakit.version": __version__,
            "lorakit.base_model": str(base),
            "lorakit.merged_loras": json.dumps(merged),
            "modelspec.architecture": families.get(family).architecture.removesuffix("/lora"),
        }
    )
    save_safetensors(state, output, metadata=metadata)
    if log is not None:
        how = "as --dtype asked" if dtype else "the base's dtype"
        log(f"merged {len(merged)} LoRA(s) into {Path(base).name}: {chosen} ({how}), {family}")
    return output
