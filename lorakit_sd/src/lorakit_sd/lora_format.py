"""LoRA files: the kohya/A1111 format, the diffusers/PEFT format, and a strict reader.

Both formats describe the same thing, a set of adapted modules each with a ``down`` ([r, in]
or [r, in, kh, kw]) and an ``up`` ([out, r] or [out, r, 1, 1]) matrix and an ``alpha`` (the
update is ``up @ down * alpha / r``). Inside lorakit a LoRA is a list of
:class:`LoraModule`; this module names them for each format and reads either back.

kohya keys are ``lora_unet_<path>`` (SD1: diffusers path; SDXL: original SGM path),
``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + the text model path with its ``text_model.``
level, dots as underscores, each with ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``.
diffusers keys are ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` and
``text_encoder[_2].text_model.<path>...``, with alpha in the ``lora_adapter_metadata``
header entry. :func:`resolve` refuses any key that maps to no module of the model, and any
shape that does not fit: diffusers and the UIs skip such keys without a word.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.api import FileKind, FileProbe, UsageError, read_safetensors_header
from lorakit_sd.ldm import text_model_path, unet_path_to_ldm

DIFFUSERS_PREFIXES = {
    "unet": "unet.",
    "transformer": "transformer.",
    "te1": "text_encoder.",
    "te2": "text_encoder_2.",
}
METADATA_KEY = "lora_adapter_metadata"


@dataclass
class LoraModule:
    """One adapted module: where it is, and its low-rank update."""

    component: str  # unet | transformer | te1 | te2
    path: str  # the module's path in the loaded model
    down: Any
    up: Any
    alpha: float
    #: LoHa / LoKr / DoRA: the module's LyCORIS tensors by suffix (``hada_w1_a``, ``dora_scale``)
    tensors: dict[str, Any] | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0]) if self.down is not None else 0

    def delta(self, weight: float = 1.0, base: Any = None) -> Any:
        """The full weight update ``up @ down * alpha / r * weight`` (float32).

        LoHa / LoKr / DoRA modules give theirs through :mod:`lorakit_sd.networks`
        (DoRA's depends on the ``base`` weight); callers reshape it to the weight's shape.
        """
        if self.tensors is not None:
            from lorakit_sd.networks.deltas import network_delta

            return network_delta(self, weight, base)
        up = self.up.float().flatten(1)
        down = self.down.float().flatten(1)
        scale = self.alpha / self.rank * weight
        delta = (up @ down) * scale
        if self.down.ndim == 4:
            return delta.reshape(self.up.shape[0], *self.down.shape[1:])
        return delta


@dataclass
class UnetLayout:
    """What naming SDXL UNet modules under their original names needs."""

    layers_per_block: int
    up_has_attention: list[bool]

    @classmethod
    def from_config(cls, config: Any) -> UnetLayout:
        from lorakit_sd.ldm import unet_layout

        lpb, ups = unet_layout(config)
        return cls(lpb, ups)


def kohya_name(component: str, path: str, family: str, layout: UnetLayout | None) -> str:
    """The kohya/A1111 key stem of a module."""
    if component == "unet":
        if family == "sdxl":
            if layout is None:
                raise ValueError("SDXL UNet names need the UNet layout")
            path = unet_path_to_ldm(path, layout.layers_per_block, layout.up_has_attention)
        return "lora_unet_" + path.replace(".", "_")
    from lorakit_sd import families

    return families.get(family).kohya_prefix(component) + text_model_path(path).replace(".", "_")


def diffusers_name(component: str, path: str) -> str:
    """The diffusers-format key stem of a module (text models with ``text_model.``)."""
    if component in ("unet", "transformer"):
        return DIFFUSERS_PREFIXES[component] + path
    return DIFFUSERS_PREFIXES[component] + text_model_path(path)


# -- module tables ---------------------------------------------------------------------------


def lora_targets(module: Any) -> Iterable[tuple[str, Any]]:
    """(path, module) of every Linear / Conv2d a LoRA can adapt (not LoRA's own layers)."""
    import torch

    for name, sub in module.named_modules():
        if ".lora_" in name or name.startswith("lora_") or ".base_layer" in name:
            continue
        base = getattr(sub, "base_layer", None)
        if base is not None and isinstance(base, torch.nn.Linear | torch.nn.Conv2d):
            yield name, base
        elif isinstance(sub, torch.nn.Linear | torch.nn.Conv2d):
            yield name, sub


def module_table(
    unet: Any, text_encoders: list[Any], family: str
) -> dict[str, tuple[str, str, Any]]:
    """kohya key stem → (component, path, module) for everything a LoRA may adapt.

    SD3 / FLUX.1 transformers are named the diffusers way (``transformer.<path>``; kohya
    FLUX.1 files are converted to those names when read); their text encoders both ways.
    """
    from lorakit_sd import families

    table: dict[str, tuple[str, str, Any]] = {}
    if families.get(family).denoiser_attr == "transformer":
        for path, mod in lora_targets(unet):
            table[diffusers_name("transformer", path)] = ("transformer", path, mod)
        for component, encoder in zip(("te1", "te2"), text_encoders, strict=False):
            for path, mod in lora_targets(encoder):
                table[diffusers_name(component, path)] = (component, path, mod)
                table[kohya_name(component, path, family, None)] = (component, path, mod)
        return table
    layout = UnetLayout.from_config(unet.config)
    for path, mod in lora_targets(unet):
        table[kohya_name("unet", path, family, layout)] = ("unet", path, mod)
    for component, encoder in zip(("te1", "te2"), text_encoders, strict=False):
        if encoder is None:
            continue
        for path, mod in lora_targets(encoder):
            table[kohya_name(component, path, family, layout)] = (component, path, mod)
    return table


# -- writing ---------------------------------------------------------------------------------


def _cast(tensor: Any, dtype: Any) -> Any:
    return tensor.detach().to("cpu", dtype).contiguous()


def to_kohya(
    modules: list[LoraModule], family: str, layout: UnetLayout, dtype: Any
) -> dict[str, Any]:
    """The kohya/A1111 tensors: ``<key>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
    import torch

    out: dict[str, Any] = {}
    for m in modules:
        stem = kohya_name(m.component, m.path, family, layout)
        out[f"{stem}.lora_down.weight"] = _cast(m.down, dtype)
        out[f"{stem}.lora_up.weight"] = _cast(m.up, dtype)
        out[f"{stem}.alpha"] = torch.tensor(float(m.alpha), dtype=dtype)
    return out


def _short_target(component: str, path: str) -> str:
    if component in ("unet", "transformer"):
        return path
    full = text_model_path(path)
    return full.removeprefix("text_model.")


def to_diffusers(modules: list[LoraModule], dtype: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The diffusers/PEFT tensors and the header metadata that keeps alpha on reload."""
    tensors: dict[str, Any] = {}
    configs: dict[str, dict[str, Any]] = {}
    for m in modules:
        stem = diffusers_name(m.component, m.path)
        tensors[f"{stem}.lora_A.weight"] = _cast(m.down, dtype)
        tensors[f"{stem}.lora_B.weight"] = _cast(m.up, dtype)
        prefix = DIFFUSERS_PREFIXES[m.component].rstrip(".")
        cfg = configs.setdefault(prefix, {"targets": [], "ranks": {}, "alphas": {}})
        target = _short_target(m.component, m.path)
        cfg["targets"].append(target)
        cfg["ranks"][target] = m.rank
        cfg["alphas"][target] = float(m.alpha)
    packed: dict[str, Any] = {}
    for prefix, cfg in configs.items():
        r = max(cfg["ranks"].values(), key=list(cfg["ranks"].values()).count)
        alpha = max(cfg["alphas"].values(), key=list(cfg["alphas"].values()).count)
        peft_cfg = {
            "r": r,
            "lora_alpha": alpha,
            "target_modules": sorted(cfg["targets"]),
            "rank_pattern": {k: v for k, v in cfg["ranks"].items() if v != r},
            "alpha_pattern": {k: v for k, v in cfg["alphas"].items() if v != alpha},
            "lora_dropout": 0.0,
            "bias": "none",
            "use_dora": False,
        }
        packed.update({f"{prefix}.{k}": v for k, v in peft_cfg.items()})
    metadata = {"format": "pt", METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}
    return tensors, metadata


def model_hash(tensors: dict[str, Any]) -> str:
    """``sshs_model_hash``: sha256 of a safetensors file's bytes after the header."""
    import hashlib

    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()})
    (n,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(blob[8 + n :]).hexdigest()


# -- reading ---------------------------------------------------------------------------------


def file_format(keys: Iterable[str]) -> str | None:
    """``kohya``, ``diffusers`` or None (not an SD LoRA) from tensor names."""
    keys = list(keys)
    if keys and all(
        k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys
    ):
        return "kohya"
    if keys and all(
        k.startswith(("unet.", "transformer.", "text_encoder.", "text_encoder_2.")) for k in keys
    ):
        return "diffusers"
    return None


#: Tensor-name prefix → the part of the pipeline it adapts, for ``lorakit inspect``.
KOHYA_GROUPS = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                "lora_te2_": "text_encoder_2"}  # fmt: skip


def identify(probe: FileProbe) -> FileKind | None:
    """What ``lorakit inspect`` says of an SD LoRA file: kohya or diffusers layout."""
    fmt = file_format(probe.tensor_names) if probe.tensor_names else None
    if fmt == "kohya":
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

    from lorakit_sd.ldm import _UNET_TOP

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
    """The family (``sd1``, ``sdxl``, ``sd3``, ``flux1``): from ss_base_model_version, else
    from the key names and shapes."""
    version = metadata.get("ss_base_model_version", "")
    arch = metadata.get("modelspec.architecture", "")
    if version.startswith("flux") or arch.startswith("flux-1"):
        return "flux1"
    if version.startswith("sd3") or arch.startswith("stable-diffusion-3"):
        return "sd3"
    names = [k for k in keys if k != "__metadata__"]
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in names):
        return "flux1"
    if any(k.startswith("transformer.single_transformer_blocks.") for k in names):
        return "flux1"
    if any(k.startswith("transformer.") for k in names):
        return "sd3"
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v1"):
        return "sd1"
    if arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    for k in keys:
        if k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
            return "sdxl"
        if k.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks", "lora_unet_middle")):
            return "sdxl"
        if k.startswith("lora_unet_add_embedding"):  # SDXL's size conditioning
            return "sdxl"
        # SDXL cross-attention reads 2048-wide text states (SD1: 768)
        shape = getattr(keys[k], "shape", ()) if isinstance(keys, dict) else ()
        wide = list(shape)[1:2] == [2048]
        if wide and k.endswith("attn2_to_k.lora_down.weight"):
            return "sdxl"
    return "sd1"


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
        entries = _group_kohya(path, tensors)
        if family == "flux1":  # BFL's fused layers, split into diffusers' modules
            from lorakit_sd.lora_flux import from_bfl

            entries = from_bfl(entries)
        if family == "sdxl":
            entries = {
                sgm_unet_stem(stem, layout or UnetLayout(2, [True, True, False])): entry
                for stem, entry in entries.items()
            }
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
            if family in ("sd3", "flux1"):  # transformer families keep diffusers names
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
    "LoraModule",
    "UnetLayout",
    "check_shapes",
    "entry_module",
    "diffusers_name",
    "file_family",
    "file_format",
    "kohya_name",
    "model_hash",
    "module_table",
    "read_lora",
    "resolve",
    "to_diffusers",
    "to_kohya",
]
