"""What ``lorakit plan`` needs from the sd backend: the UNet (and the text encoders a step
runs) on the meta device and a fake batch, from the model's configs alone.

The configs come from a diffusers folder (``model_index.json``, ``unet/config.json`` ...,
weights or not), a hub id (the local cache under ``HF_HUB_OFFLINE``), or, for a single-file
checkpoint, ``sd.base_config`` (default: the family's standard repo). The module is the
backend's own :class:`~lorakit_sd.families.clip.SDTrainModule`, made trainable by the
backend's :func:`~lorakit_sd.step.adapt.adapt_models`; the batch is ``batch_size`` latents of
``sd.resolution`` (the area every bucket keeps), caption embeddings (or token ids when
captions are encoded each step) and, for SDXL, the pooled embedding and size ids; the loss
is the backend's :func:`~lorakit_sd.step.loss.denoising_loss` on the model's scheduler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorakit.api import Config, PlanModel, UsageError, find_images
from lorakit_sd import families
from lorakit_sd.config import SDSection
from lorakit_sd.models import family_of_folder, offline, peek_family, quiet_libraries
from lorakit_sd.step.adapt import adapt_models
from lorakit_sd.step.loss import denoising_loss

DTYPE_NAMES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16", "auto": "bfloat16"}


def config_folder(base: str, section: SDSection) -> Path:
    """The folder holding the model's configs (no weights are read)."""

    path = Path(base).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        family = peek_family(base, section.model_family) or families.names()[0]
        return config_folder(
            section.base_config or families.get(family).default_config_repo, section
        )
    if "/" not in base or base.startswith((".", "/", "~")):
        raise UsageError(f"base model not found: {base}")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                base, allow_patterns=["*.json", "*/*.json"], local_files_only=offline()
            )
        )
    except Exception as exc:
        where = "the local hub cache (HF_HUB_OFFLINE is set)" if offline() else "the hub"
        raise UsageError(
            f"base model {base}: configs not found in {where}: {type(exc).__name__}"
        ) from None


def count_images(config: Config, section: SDSection) -> int | None:
    """Images per epoch (with repeats), from the folders' listings."""
    total = 0
    folders = [(config.train.train_data_dir, section.repeats)]
    folders += [(s.image_dir, s.repeats) for s in section.subsets]
    for folder, repeats in folders:
        if Path(folder).is_dir():
            total += len(find_images(Path(folder))) * repeats
    return total or None


def _smaller(resolution: int) -> tuple[int, ...]:
    step = 64 if resolution >= 512 else 8
    values = {resolution * 7 // 8, resolution * 3 // 4, resolution // 2}
    return tuple(
        sorted(
            {v // step * step for v in values if v // step * step > 0} - {resolution}, reverse=True
        )
    )


def text_encoder_parts(folder: Path) -> list[tuple[str, Any, Any]]:
    """(component, transformers class, config) of each text encoder ``model_index.json``
    names, in component order (``text_encoder``, ``text_encoder_2``...); no weight is read."""
    import transformers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    parts = []
    for name in sorted(k for k in index if k.startswith("text_encoder")):
        entry = index[name]
        if not isinstance(entry, list) or len(entry) < 2 or entry[1] is None:
            continue
        cls = getattr(transformers, entry[1])
        parts.append((name, cls, cls.config_class.from_pretrained(folder, subfolder=name)))
    return parts


def plan_objective(folder: Path, spec: Any, section: SDSection) -> Any:
    """The family's training objective on the model's scheduler config (what setup builds);
    the scheduler's defaults where the folder has no ``scheduler/`` (a step's memory does not
    depend on the schedule's values)."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    try:
        config = DDPMScheduler.load_config(folder, subfolder="scheduler")
    except OSError:
        config = {}
    return spec.objective(SimpleNamespace(scheduler=SimpleNamespace(config=config)), section)


def meta_encoders(parts: list[tuple[str, Any, Any]], dtype: Any) -> list[Any]:
    """Frozen text encoders at ``dtype`` (call on the meta device)."""
    return [cls(cfg).to(dtype).requires_grad_(False) for _, cls, cfg in parts]


def meta_trainable(
    denoiser_class: Any,
    denoiser_config: Any,
    encoder_parts: list[tuple[str, Any, Any]],
    dtype: Any,
    config: Config,
    section: SDSection,
    spec: Any,
    checkpointing: bool,
) -> tuple[Any, list[Any]]:
    """The denoiser and the text encoders of the trained module (none when the captions are
    cached) on the meta device at ``dtype``, made trainable as setup does it."""
    import torch

    with torch.device("meta"), quiet_libraries():
        denoiser = denoiser_class.from_config(denoiser_config).to(dtype).requires_grad_(False)
        encoders = [] if section.text_cache_enabled() else meta_encoders(encoder_parts, dtype)
        adapt_models(
            denoiser,
            encoders,
            spec=spec,
            config=config,
            section=section,
            checkpointing=checkpointing,
        )
    return denoiser, encoders


def traceable(module: Any) -> Any:
    """``module`` in training mode, its LyCORIS layers (LoHa, LoKr) always applying their delta.

    In training those layers draw ``torch.rand(1)`` against their module dropout, a branch on
    data that fake tensors cannot trace; with ``training`` off (on the layer alone: its
    wrapped module stays in training) they take the branch of every step without dropout,
    the step's largest.
    """
    import torch
    from peft.tuners.lycoris_utils import LycorisLayer

    module.train()
    for layer in module.modules():
        if isinstance(layer, LycorisLayer) and isinstance(layer, torch.nn.Module):
            layer.training = False
    return module


def plan_loss(objective: Any, dtype: Any) -> Any:
    """The step's loss on a fake batch: the backend's :func:`~lorakit_sd.step.loss.denoising_loss`."""

    def loss(module: Any, b: dict[str, Any]) -> Any:
        conditioning = {k: v.to(dtype) if k != "input_ids" else v for k, v in b["inputs"].items()}
        return denoising_loss(module, objective, b["latents"], conditioning, dtype, {}).sum()

    return loss


def planner(config: Config) -> PlanModel:
    """The :class:`PlanModel` of an sd config (registered as the backend's planner): the
    family of the base's configs builds it (no weights are read)."""

    section = config.section if isinstance(config.section, SDSection) else SDSection()
    folder = config_folder(config.train.base_model, section)
    family = families.get(family_of_folder(folder))
    plan = family.planner(config, folder, section)
    if plan is None:
        raise UsageError(f"{folder}: lorakit plan cannot plan {family.label} runs yet")
    return plan
