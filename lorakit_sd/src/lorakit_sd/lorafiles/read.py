"""Reading LoRA files back: the kohya/A1111 or diffusers/PEFT layout, strictly.

:func:`read_lora` gives a file's entries named the kohya way (SD1/SDXL) or the diffusers way
(SD3 / FLUX.1 transformers; kohya/BFL FLUX.1 files are split into diffusers' modules), and
:func:`resolve` refuses any key that maps to no module of the model, and any shape that does
not fit: diffusers and the UIs skip such keys without a word.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.api import FileKind, FileProbe, UsageError, read_safetensors_header
from lorakit_sd import families
from lorakit_sd.families.ldm import _UNET_TOP, unet_path_to_ldm
from lorakit_sd.lorafiles.names import (
    DIFFUSERS_PREFIXES,
    METADATA_KEY,
    LoraModule,
    UnetLayout,
    _short_target,
    diffusers_name,
    kohya_name,
)

KOHYA_PREFIXES = (
    "lora_unet_",
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "lycoris_",
    "diffusion_model.",
)


def file_format(keys: Iterable[str]) -> str | None:
    """``kohya``, ``diffusers`` or None (not an SD LoRA) from tensor names."""
    keys = list(keys)
    if keys and all(k.startswith(KOHYA_PREFIXES) for k in keys):
        # lycoris_<diffusers path>: a transformer family's LyCORIS file; diffusion_model.:
        # kohya-style tensors under ComfyUI's names of a transformer family's modules
        return "kohya"
    if keys and all(
        k.startswith(("unet.", "transformer.", "text_encoder.", "text_encoder_2.")) for k in keys
    ):
        return "diffusers"
    return None


#: Tensor-name prefix → the part of the pipeline it adapts, for ``lorakit inspect``.
KOHYA_GROUPS = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}


def identify(probe: FileProbe) -> FileKind | None:
    """What ``lorakit inspect`` says of an SD LoRA file: kohya or diffusers layout."""
    fmt = file_format(probe.tensor_names) if probe.tensor_names else None
    if fmt == "kohya":
        names = list(probe.tensor_names or ())
        for spec in families.specs():  # torch-free: inspect reads the header only
            kind = spec.describe(names) if spec.describe is not None else None
            if kind is not None:
                return kind
        if any(k.startswith("diffusion_model.") for k in names):
            return None  # ComfyUI's names of a model no installed family describes
        return FileKind("kohya / A1111 LoRA", groups=KOHYA_GROUPS, kohya_names=True)
    if fmt == "diffusers":
        groups = {prefix: prefix.rstrip(".") for prefix in DIFFUSERS_PREFIXES.values()}
        return FileKind("diffusers (PEFT keys)", groups=groups)
    return None


_RESNET_PARTS = ("time_emb_proj", "conv_shortcut", "conv1", "conv2", "norm1", "norm2")


def sgm_unet_stem(stem: str, layout: UnetLayout) -> str:
    """An SDXL kohya UNet stem under its SGM name, also when written with diffusers names.

    Some trainers write SDXL LoRAs as ``lora_unet_down_blocks_1_attentions_0_...`` (diffusers
    block names); A1111 and ComfyUI read both. Anything else is returned unchanged.
    """
    import re

    if not stem.startswith("lora_unet_"):
        return stem
    name = stem[len("lora_unet_") :]
    for new in _UNET_TOP:
        flat = new.replace(".", "_")
        if name == flat:
            return "lora_unet_" + unet_path_to_ldm(new, 2, []).replace(".", "_")
    m = re.match(
        r"(down_blocks|up_blocks)_(\d+)_(attentions|resnets|downsamplers|upsamplers)_(\d+)_(.+)$",
        name,
    ) or re.match(r"(mid_block)_()(attentions|resnets)_(\d+)_(.+)$", name)
    if not m:
        return stem
    head = f"{m[1]}.{m[2]}." if m[2] else f"{m[1]}."
    head += f"{m[3]}.{m[4]}"
    rest = m[5]
    if m[3] == "resnets":
        first = next((p for p in _RESNET_PARTS if rest == p or rest.startswith(p + "_")), None)
        if first is None:
            return stem
        head, rest = f"{head}.{first}", rest[len(first) :].lstrip("_")
    elif m[3] in ("downsamplers", "upsamplers"):
        if not (rest == "conv" or rest.startswith("conv_")):
            return stem
        head, rest = f"{head}.conv", rest[len("conv") :].lstrip("_")
    try:
        sgm = unet_path_to_ldm(head, layout.layers_per_block, layout.up_has_attention)
    except (KeyError, IndexError):
        return stem
    return "lora_unet_" + sgm.replace(".", "_") + (f"_{rest}" if rest else "")


def file_family(keys: Iterable[str], metadata: dict[str, str]) -> str:
    """The family of a LoRA file: the one its ``ss_base_model_version`` /
    ``modelspec.architecture`` name, else the first (by ``lora_key_priority``) that claims its
    key names and shapes, else the lowest-priority family."""
    version = metadata.get("ss_base_model_version", "")
    arch = metadata.get("modelspec.architecture", "")
    ranked = sorted(families.all_families(), key=lambda f: -f.lora_key_priority)
    for family in ranked:
        if family.claims_lora_metadata(version, arch):
            return str(family.name)
    named = keys if isinstance(keys, dict) else {k: None for k in keys}
    named = {k: v for k, v in named.items() if k != "__metadata__"}
    return next((str(f.name) for f in ranked if f.claims_lora_keys(named)), ranked[-1].name)


@dataclass
class LoraFile:
    """A LoRA file as read: entries by key stem (kohya naming), metadata, format, family."""

    path: Path
    format: str
    family: str
    entries: dict[str, dict[str, Any]]
    metadata: dict[str, str]


def read_lora(path: str | Path, layout: UnetLayout | None = None) -> LoraFile:
    """Read a kohya or diffusers LoRA file; entries are named the kohya way.

    ``layout`` is the UNet layout used to name an SDXL diffusers-format file's UNet keys
    (default: SDXL's own, two layers per block).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"LoRA file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise UsageError(f"{path}: LoRA files must be .safetensors (pickled files are not read)")
    header = read_safetensors_header(path)
    metadata = header.metadata
    fmt = file_format(header.tensors)
    if fmt is None:
        sample = next(iter(header.tensors), "none")
        raise UsageError(f"{path}: not an SD LoRA file (unexpected key {sample})")
    family = file_family(header.tensors, metadata)
    tensors = load_file(str(path))
    if fmt == "kohya":
        entries = families.get(family).kohya_file_entries(_group_kohya(path, tensors), layout)
    else:
        layout = layout or UnetLayout(2, [True, True, False])
        entries = _group_diffusers(path, tensors, metadata, family, layout)
    return LoraFile(path, fmt, family, entries, metadata)


def _group_kohya(path: Path, tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        for suffix, field in (
            (".lora_down.weight", "down"),
            (".lora_up.weight", "up"),
            (".alpha", "alpha"),
        ):
            if key.endswith(suffix):
                entries.setdefault(key[: -len(suffix)], {})[field] = value
                break
        else:
            from lorakit_sd.networks.deltas import LYCORIS_SUFFIXES

            stem, _, suffix = key.partition(".")
            if suffix not in LYCORIS_SUFFIXES:
                raise UsageError(
                    f"{path}: unsupported key {key} (LoRA, LoHa, LoKr or DoRA keys only)"
                )
            entries.setdefault(stem, {}).setdefault("tensors", {})[suffix] = value
    for stem, entry in entries.items():
        if "tensors" in entry:
            from lorakit_sd.networks.deltas import check_entry

            check_entry(path, stem, entry)
            continue
        if "down" not in entry or "up" not in entry:
            raise UsageError(f"{path}: {stem} lacks its lora_down or lora_up weight")
        entry["alpha"] = (
            float(entry["alpha"]) if "alpha" in entry else float(entry["down"].shape[0])
        )
    return entries


def _group_diffusers(
    path: Path, tensors: dict[str, Any], metadata: dict[str, str], family: str, layout: UnetLayout
) -> dict[str, dict[str, Any]]:
    raw = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    by_component: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in tensors.items():
        component = next(
            (
                c
                for c, p in sorted(DIFFUSERS_PREFIXES.items(), key=lambda kv: -len(kv[1]))
                if key.startswith(p)
            ),
            None,
        )
        if component is None:
            raise UsageError(f"{path}: unexpected key {key}")
        rest = key[len(DIFFUSERS_PREFIXES[component]) :]
        for suffix, field in (
            (".lora_A.weight", "down"),
            (".lora_B.weight", "up"),
            (".alpha", "alpha"),
        ):
            if rest.endswith(suffix):
                by_component.setdefault(component, {}).setdefault(rest[: -len(suffix)], {})[
                    field
                ] = value
                break
        else:
            raise UsageError(f"{path}: unsupported key {key} (only plain LoRA: lora_A, lora_B)")
    entries: dict[str, dict[str, Any]] = {}
    for component, modules in by_component.items():
        for module_path, entry in modules.items():
            if "down" not in entry or "up" not in entry:
                raise UsageError(f"{path}: {module_path} lacks its lora_A or lora_B weight")
            alpha = _diffusers_alpha(entry, raw, component, module_path)
            if families.get(family).denoiser_attr == "transformer":  # keep diffusers names
                stem = diffusers_name(component, module_path)
            else:
                stem = kohya_name(component, module_path, family, layout)
            entries[stem] = {"down": entry["down"], "up": entry["up"], "alpha": alpha}
    return entries


def _diffusers_alpha(
    entry: dict[str, Any], raw: dict[str, Any], component: str, module_path: str
) -> float:
    """A module's alpha: stored tensor, else the adapter config's pattern or default, else r."""
    if "alpha" in entry:
        return float(entry["alpha"])
    prefix = DIFFUSERS_PREFIXES[component].rstrip(".")
    short = _short_target(component, module_path)
    for key, value in (raw.get(f"{prefix}.alpha_pattern") or {}).items():
        if short == key or short.endswith("." + key):
            return float(value)
    default = raw.get(f"{prefix}.lora_alpha")
    return float(default) if default is not None else float(entry["down"].shape[0])


def resolve(lora: LoraFile, table: dict[str, tuple[str, str, Any]]) -> list[LoraModule]:
    """Match every entry to a module of the model; refuse unknown keys and wrong shapes."""
    unknown = sorted(stem for stem in lora.entries if stem not in table)
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise UsageError(
            f"{lora.path}: {len(unknown)} key(s) match no module of this {lora.family} model: "
            f"{', '.join(unknown[:3])}{more}"
        )
    modules = []
    for stem, entry in lora.entries.items():
        component, path, module = table[stem]
        modules.append(entry_module(lora.path, stem, entry, component, path, module.weight.shape))
    return modules


def entry_module(
    source: Any, stem: str, entry: dict[str, Any], component: str, path: str, shape: Any
) -> LoraModule:
    """The :class:`LoraModule` of a file entry, checked against the weight's ``shape``."""
    tensors = entry.get("tensors")
    module = LoraModule(
        component, path, entry.get("down"), entry.get("up"), entry["alpha"], tensors
    )
    if tensors is None or "dora_scale" in tensors:
        check_shapes(source, stem, entry["down"], entry["up"], tuple(shape))
    if tensors is not None and "dora_scale" not in tensors:
        numel = module.delta().numel()
        if numel != math.prod(shape):
            raise UsageError(
                f"{source}: {stem} makes an update of {numel} values, "
                f"which does not fit the model's weight {tuple(shape)}"
            )
    return module


def check_shapes(source: Any, stem: str, down: Any, up: Any, weight_shape: tuple[int, ...]) -> None:
    """Raise unless ``down``/``up`` fit a Linear or Conv2d weight of ``weight_shape``."""
    out_features, in_features = weight_shape[0], weight_shape[1]
    rank = down.shape[0]
    ok = (
        down.ndim in (2, 4)
        and up.ndim == down.ndim
        and up.shape[0] == out_features
        and up.shape[1] == rank
        and down.shape[1] == in_features
        and (up.ndim == 2 or tuple(up.shape[2:]) == (1, 1))
    )
    if ok and down.ndim == 4 and len(weight_shape) == 4:
        ok = tuple(down.shape[2:]) == weight_shape[2:]
    elif ok and down.ndim == 4:
        ok = tuple(down.shape[2:]) == (1, 1)
    if not ok:
        raise UsageError(
            f"{source}: {stem} has shapes down {tuple(down.shape)} / up {tuple(up.shape)}, "
            f"which do not fit the model's weight {weight_shape}"
        )


__all__ = [
    "LoraFile",
    "check_shapes",
    "entry_module",
    "file_family",
    "file_format",
    "identify",
    "read_lora",
    "resolve",
    "sgm_unet_stem",
]
