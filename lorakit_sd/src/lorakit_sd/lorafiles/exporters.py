"""The ``kohya`` and ``diffusers`` exporters and the metadata the files carry.

``<name>.safetensors`` is the kohya/A1111/ComfyUI format, with the ``ss_*`` training
metadata A1111 shows and the ``modelspec.*`` keys; ``<name>.diffusers.safetensors`` holds the
same tensors under diffusers/PEFT names, with the LoRA config (rank, alpha) in its header so
``pipe.load_lora_weights`` restores the exact scale. Both carry lorakit's provenance.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorakit.api import AdapterExport, save_safetensors
from lorakit_sd import families
from lorakit_sd.lorafiles.names import LoraModule, model_hash, to_diffusers
from lorakit_sd.networks import PLAIN
from lorakit_sd.networks.files import kohya_network_tensors


def _num(value: float) -> str:
    return f"{value:g}"


def format_metadata(
    family: str,
    name: str,
    rank: int,
    alpha: float,
    resolution: int | None = None,
    denoiser: Any = None,
) -> dict[str, str]:
    """What every kohya-format file needs to be read right (A1111 treats no version as SD1)."""
    meta = {
        "ss_network_module": families.get(family).network_module,
        "ss_network_dim": str(rank),
        "ss_network_alpha": _num(alpha),
        "ss_v2": "False",
        "ss_output_name": name,
        "modelspec.sai_model_spec": "1.0.0",
        **(
            families.get(family).format_metadata_for(denoiser)
            if denoiser is not None
            else families.get(family).format_metadata()
        ),
        "modelspec.title": name,
        "modelspec.date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if resolution:
        meta["modelspec.resolution"] = f"{resolution}x{resolution}"
    return meta


def denoiser_structure(model_config: Mapping[str, Any]) -> Any:
    """The denoiser a view describes, rebuilt from its config on the meta device (no
    weights): the module tree and shapes the kohya / BFL name conversions read."""
    import diffusers
    import torch

    config = dict(model_config)
    cls = getattr(diffusers, config.pop("_class_name"))
    with torch.device("meta"):
        return cls.from_config(config)


def lora_modules(view: AdapterExport) -> list[Any]:
    """The view's plain LoRA layers as :class:`lorakit_sd.lorafiles.names.LoraModule` objects."""

    return [
        LoraModule(
            layer.component,
            layer.path,
            layer.tensors["lora_down.weight"],
            layer.tensors["lora_up.weight"],
            layer.alpha,
            {"dora_scale": layer.tensors["dora_scale"]} if "dora_scale" in layer.tensors else None,
        )
        for layer in view.layers()
    ]


def _header(
    view: AdapterExport, name: str, metadata: dict[str, str], denoiser: Any
) -> dict[str, str]:
    """The provenance, the backend's ``ss_*`` run keys and the format keys of a file."""
    meta = {**metadata, **view.metadata}
    meta.update(
        format_metadata(
            view.family, name, view.network.rank, view.network.alpha, view.resolution, denoiser
        )
    )
    return meta


def export_kohya(
    view: AdapterExport, directory: Path, name: str, metadata: dict[str, str]
) -> list[Path]:
    """``<name>.safetensors``: kohya/A1111 keys, alpha, ``ss_*`` and ``modelspec.*``."""
    import torch

    denoiser = denoiser_structure(view.model_config)
    dtype = getattr(torch, view.save_dtype)
    plain = view.network.type in PLAIN
    family = families.get(view.family)
    if plain:
        parts = [
            (suffix, family.kohya_tensors(modules, denoiser, dtype))
            for suffix, modules in family.file_parts(lora_modules(view))
        ]
    else:
        tensors = kohya_network_tensors(
            view.network.type, view.layers(), view.family, denoiser, dtype
        )
        parts = [("", tensors)]
    written = []
    for suffix, tensors in parts:
        if tensors is None:  # SD3: diffusers' layout is the one its clients read
            continue
        meta = _header(view, name + suffix, metadata, denoiser)
        if not plain:  # as sd-scripts records a lycoris.kohya run
            meta["ss_network_module"] = "lycoris.kohya"
        meta["sshs_model_hash"] = model_hash(tensors)
        path = Path(directory) / f"{name}{suffix}.safetensors"
        save_safetensors(tensors, path, metadata=meta)
        written.append(path)
    return written


def export_diffusers(
    view: AdapterExport, directory: Path, name: str, metadata: dict[str, str]
) -> list[Path]:
    """``<name>.diffusers.safetensors``: diffusers/PEFT keys with the LoRA config in the header."""
    import torch

    if view.network.type not in (*PLAIN, "dora"):  # diffusers reads LoRA and DoRA only
        return []
    denoiser = denoiser_structure(view.model_config)
    written = []
    for suffix, modules in families.get(view.family).file_parts(lora_modules(view)):
        tensors, format_meta = to_diffusers(modules, getattr(torch, view.save_dtype))
        meta = _header(view, name + suffix, metadata, denoiser)
        meta.update(format_meta)
        path = Path(directory) / f"{name}{suffix}.diffusers.safetensors"
        save_safetensors(tensors, path, metadata=meta)
        written.append(path)
    return written
