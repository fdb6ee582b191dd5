"""LoRA files: the kohya/A1111 and diffusers/PEFT names of a LoRA's modules, and writing them.

Both formats describe the same thing, a set of adapted modules each with a ``down`` ([r, in]
or [r, in, kh, kw]) and an ``up`` ([out, r] or [out, r, 1, 1]) matrix and an ``alpha`` (the
update is ``up @ down * alpha / r``). Inside lorakit a LoRA is a list of
:class:`LoraModule`; this module names them for each format and writes them
(:mod:`lorakit_sd.lorafiles.read` reads either back).

kohya keys are ``lora_unet_<path>`` (SD1: diffusers path; SDXL: original SGM path),
``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` + the text model path with its ``text_model.``
level, dots as underscores, each with ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``.
diffusers keys are ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` and
``text_encoder[_2].text_model.<path>...``, with alpha in the ``lora_adapter_metadata``
header entry.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lorakit_sd import families
from lorakit_sd.families.ldm import text_model_path, unet_layout, unet_path_to_ldm

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

        lpb, ups = unet_layout(config)
        return cls(lpb, ups)


def kohya_name(component: str, path: str, family: str, layout: UnetLayout | None) -> str:
    """The kohya/A1111 key stem of a module."""

    if component == "unet":
        if families.get(family).kohya_unet_original_names:
            if layout is None:
                raise ValueError(f"{families.label(family)} UNet names need the UNet layout")
            path = unet_path_to_ldm(path, layout.layers_per_block, layout.up_has_attention)
        return "lora_unet_" + path.replace(".", "_")
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

    table: dict[str, tuple[str, str, Any]] = {}
    if families.get(family).denoiser_attr == "transformer":
        spec = families.get(family)
        for path, mod in lora_targets(unet):
            table[diffusers_name("transformer", path)] = ("transformer", path, mod)
            table[spec.network_stem("transformer", path, None)] = ("transformer", path, mod)
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
        magnitude = (m.tensors or {}).get("dora_scale")
        if magnitude is not None:  # DoRA: PEFT's per-output-row magnitude, flat
            tensors[f"{stem}.lora_magnitude_vector"] = _cast(magnitude.flatten(), dtype)
        prefix = DIFFUSERS_PREFIXES[m.component].rstrip(".")
        cfg = configs.setdefault(prefix, {"targets": [], "ranks": {}, "alphas": {}, "dora": False})
        cfg["dora"] = cfg["dora"] or magnitude is not None
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
            "use_dora": cfg["dora"],
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


__all__ = [
    "DIFFUSERS_PREFIXES",
    "METADATA_KEY",
    "LoraModule",
    "UnetLayout",
    "diffusers_name",
    "kohya_name",
    "lora_targets",
    "model_hash",
    "module_table",
    "to_diffusers",
    "to_kohya",
]
