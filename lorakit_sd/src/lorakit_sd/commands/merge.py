"""Baking LoRAs into a base checkpoint, in the single-file layout users keep.

The base is read as original-layout tensors (a ``.safetensors`` checkpoint as it is, or a
diffusers folder / hub id converted), every LoRA entry is matched to the weight it changes
(refusing entries that match none, or whose shapes do not fit), ``up @ down * alpha / r *
weight`` is added in float32, and the whole checkpoint, with every key it had, is written
as one new ``.safetensors`` file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.api import UsageError, __version__, save_safetensors
from lorakit_sd import families
from lorakit_sd.commands import section_of
from lorakit_sd.families.ldm_merge import apply_loras, load_ldm
from lorakit_sd.families.transformer_merge import flow_family, merge_transformer
from lorakit_sd.models import DTYPES, stored_dtype


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

    if not loras:
        raise UsageError("merge: pass at least one --lora FILE[:weight]")
    if output.suffix.lower() != ".safetensors":
        raise UsageError(f"--output {output}: the merged checkpoint must be a .safetensors file")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: one of {', '.join(DTYPES)}")
    if Path(base).expanduser().resolve() == output.resolve():
        raise UsageError("--output must differ from --base")

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


def merge(
    base: str,
    loras: list[tuple[str, float]],
    output: Path,
    dtype: str | None = None,
    config: Any = None,
) -> Path:
    """Bake ``loras`` (path, weight) into ``base``; write a single-file checkpoint.

    ``dtype`` None keeps the base's dtype; the summary line (on stderr) names it.
    """
    import sys

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    return merge_checkpoint(base, loras, Path(output), dtype, section_of(config), log=log)
