"""``lorakit export``, ``merge`` and ``sample`` for SD LoRA files.

- ``export FILE --to kohya|diffusers [--base MODEL]``: convert between the two formats. With
  ``--base`` every key is checked against that model; without, against the standard SD1.5 /
  SDXL structure (built on the meta device: no weights are loaded).
- ``merge --base CKPT --lora FILE[:w] ... -o OUT.safetensors``: bake LoRAs into a checkpoint.
- ``sample --base MODEL --lora FILE[:w] ... -p PROMPT``: render with one or several LoRAs
  applied together, one PNG per prompt plus a contact sheet.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from lorakit.api import UsageError, half_dtype

FORMATS = ("kohya", "diffusers")


def standard_structure(family: str) -> tuple[Any, list[Any]]:
    """The standard SD1.5 / SDXL UNet and text encoders on the meta device (no weights)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit_sd import families

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


def _section(config: Any) -> Any:
    from lorakit_sd.config import SDSection

    section = getattr(config, "section", None) if config is not None else None
    return section if isinstance(section, SDSection) else SDSection()


def _load(base: str, section: Any, config: Any = None) -> Any:
    """The base model, read by the loader the config names (``model_loader``) or detects."""
    from lorakit_sd.models import load_base

    return load_base(
        base,
        base_config=section.base_config,
        model_family=section.model_family,
        allow_unsafe_pickle=section.allow_unsafe_pickle,
        loader=getattr(getattr(config, "train", None), "model_loader", None),
    )


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
    from lorakit.api import save_safetensors
    from lorakit_sd.exporters import format_metadata
    from lorakit_sd.lora_format import (
        METADATA_KEY,
        UnetLayout,
        model_hash,
        module_table,
        to_diffusers,
    )
    from lorakit_sd.lora_read import read_lora, resolve

    to = to.lower()
    if to not in FORMATS:
        raise UsageError(f"--to {to}: one of {', '.join(FORMATS)}")
    source = Path(source)
    lora = read_lora(source)
    if base:
        model = _load(base, _section(config), config)
        unet, encoders, family = model.denoiser, model.text_encoders, model.family
        if lora.family != family:
            raise UsageError(f"{source}: a {lora.family} LoRA, but --base is a {family} model")
    else:
        family = lora.family
        unet, encoders = standard_structure(family)
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
        from lorakit_sd import families

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

    from lorakit_sd.merge import merge_checkpoint

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    return merge_checkpoint(base, loras, Path(output), dtype, _section(config), log=log)


def apply_to_model(model: Any, loras: list[tuple[str, float]]) -> list[Any]:
    """Add each LoRA's update (times its weight) into the model's weights; strict keys."""
    import torch

    from lorakit_sd.lora_format import UnetLayout, module_table
    from lorakit_sd.lora_read import read_lora, resolve

    denoiser = model.denoiser
    table = module_table(denoiser, model.text_encoders, model.family)
    config = denoiser.config
    layout = UnetLayout.from_config(config) if hasattr(config, "layers_per_block") else None
    applied = []
    for path, weight in loras:
        lora = read_lora(path, layout)
        if lora.family != model.family:
            raise UsageError(
                f"{path}: a {lora.family} LoRA cannot be used with a {model.family} model"
            )
        modules = resolve(lora, table)
        with torch.no_grad():
            for m in modules:
                target = table_module(table, m).weight
                target += m.delta(weight, target).reshape(target.shape).to(target.dtype)
        applied.append(lora)
    return applied


def table_module(table: dict[str, Any], module: Any) -> Any:
    for component, path, mod in table.values():
        if component == module.component and path == module.path:
            return mod
    raise KeyError(module.path)  # pragma: no cover - resolve() found it


def trained_size(metadata: dict[str, str]) -> tuple[int, int] | None:
    """``(width, height)`` a LoRA was trained at: ``ss_resolution`` (sd-scripts writes
    ``(512, 768)``, width first), else ``modelspec.resolution`` (``512x768``)."""
    import re

    for key in ("ss_resolution", "modelspec.resolution"):
        numbers = [int(n) for n in re.findall(r"\d+", metadata.get(key, ""))]
        if len(numbers) == 1:
            return numbers[0], numbers[0]
        if len(numbers) == 2 and min(numbers) > 0:
            return numbers[0], numbers[1]
    return None


def sample(
    base: str,
    loras: list[tuple[str, float]],
    prompts: list[str],
    output: Path,
    seed: int = 42,
    steps: int | None = None,
    config: Any = None,
    width: int | None = None,
    height: int | None = None,
) -> list[Path]:
    """Render ``prompts`` with ``loras`` applied; returns the images and the contact sheet.

    The size: ``width``/``height``, else ``sd.sample_width``/``sd.sample_height``, else the
    first LoRA's training resolution (``ss_resolution``), else ``sd.resolution`` or the
    family's default. A progress bar (on stderr) follows the denoising steps.
    """
    import torch

    from lorakit_sd.models import quiet_libraries
    from lorakit_sd.sampling import render_and_save

    for name, value in (("--width", width), ("--height", height)):
        if value is not None and (value < 8 or value % 8):
            raise UsageError(f"{name} {value}: a positive multiple of 8")
    section = _section(config)
    model = _load(base, section, config)
    applied = apply_to_model(model, loras)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32
    if device.type == "cuda":
        dtype = half_dtype()
    with quiet_libraries():  # diffusers warns about casting the VAE, which is expected here
        model.pipe.to(device, dtype)
    resolution = section.resolution or model.spec.default_resolution
    trained = next((s for lora in applied if (s := trained_size(lora.metadata))), None)
    default_w, default_h = trained or (resolution, resolution)
    stem = "+".join(Path(p).name.split(".")[0] for p, _ in loras) or "base"
    prediction = section.prediction_type or model.pipe.scheduler.config.get(
        "prediction_type", "epsilon"
    )
    return render_and_save(
        model.pipe, model.family, list(prompts), Path(output), stem, sec=section, seed=seed,
        width=width or section.sample_width or default_w,
        height=height or section.sample_height or default_h,
        steps=steps or section.sample_steps, prediction_type=prediction,
        max_tokens=section.max_token_length,
        clip_skip=section.clip_skip if model.spec.clip_skip_applies else 1, progress=True,
    )  # fmt: skip
