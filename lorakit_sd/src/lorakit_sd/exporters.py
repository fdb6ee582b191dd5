"""The ``kohya`` and ``diffusers`` exporters and the metadata the files carry.

``<name>.safetensors`` is the kohya/A1111/ComfyUI format, with the ``ss_*`` training
metadata A1111 shows and the ``modelspec.*`` keys; ``<name>.diffusers.safetensors`` holds the
same tensors under diffusers/PEFT names, with the LoRA config (rank, alpha) in its header so
``pipe.load_lora_weights`` restores the exact scale. Both carry lorakit's provenance.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorakit.api import save_safetensors
from lorakit_sd import families


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
        "ss_network_module": "networks.lora",
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


def training_metadata(backend: Any, name: str, step: int) -> dict[str, str]:
    """``ss_*`` keys describing the run (what A1111's training-info panel shows)."""
    t, sec = backend.config.train, backend.section
    per_epoch = max(1, -(-len(backend.index) // t.batch_size))
    epoch = (step * t.gradient_accumulation_steps) // per_epoch
    tags: dict[str, Counter[str]] = {}
    dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    for item in backend.items:  # n_repeats: the subset's repeats, as sd-scripts writes it
        folder = Path(item.folder).name
        if item.reg:
            entry = reg_dirs.setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})
            entry["img_count"] += 1
            continue
        counter = tags.setdefault(folder, Counter())
        counter.update(tag.strip() for tag in item.caption.split(",") if tag.strip())
        entry = dirs.setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    n_reg = sum(1 for k in backend.index if backend.items[k].reg)
    te_lr = sec.text_encoder_lr or t.learning_rate
    meta = {
        "ss_training_started_at": str(int(backend.started_at)),
        "ss_training_finished_at": str(int(time.time())),
        "ss_steps": str(step),
        "ss_epoch": str(epoch),
        "ss_max_train_steps": str(t.max_steps or ""),
        "ss_num_train_images": str(len(backend.index) - n_reg),
        "ss_num_reg_images": str(n_reg),
        "ss_prior_loss_weight": _num(sec.prior_loss_weight),
        "ss_clip_skip": str(sec.clip_skip) if backend.spec.clip_skip_applies else "None",
        "ss_max_token_length": str(getattr(backend, "max_tokens", 75)),
        "ss_bucket_no_upscale": str(sec.bucket_no_upscale),
        "ss_random_crop": str(sec.random_crop),
        "ss_batch_size_per_device": str(t.batch_size),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation_steps),
        "ss_learning_rate": _num(t.learning_rate),
        "ss_unet_lr": _num(t.learning_rate),
        "ss_text_encoder_lr": _num(te_lr) if sec.train_text_encoder else "0",
        "ss_lr_scheduler": t.lr_scheduler,
        "ss_lr_warmup_steps": str(t.lr_warmup_steps),
        "ss_optimizer": t.optimizer,
        "ss_seed": str(t.seed),
        "ss_mixed_precision": t.mixed_precision,
        "ss_gradient_checkpointing": str(t.gradient_checkpointing),
        "ss_network_dropout": _num(t.lora_dropout),
        "ss_resolution": f"({backend.resolution}, {backend.resolution})",
        "ss_enable_bucket": str(sec.bucket),
        "ss_noise_offset": _num(sec.noise_offset),
        "ss_min_snr_gamma": _num(sec.min_snr_gamma) if sec.min_snr_gamma else "None",
        "ss_caption_dropout_rate": _num(sec.caption_dropout),
        "ss_shuffle_caption": str(sec.shuffle_tags),
        "ss_keep_tokens": str(sec.keep_tokens),
        "ss_flip_aug": str(sec.flip_aug),
        "ss_cache_latents": str(backend.latents_cached),
        "ss_sd_model_name": Path(t.base_model).name,
        "ss_tag_frequency": json.dumps({k: dict(v) for k, v in tags.items()}),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
        **backend.objective.metadata(),
    }
    args: dict[str, str] = {}
    if sec.conv_rank:  # LoCon, as kohya records it
        conv_alpha = sec.conv_alpha if sec.conv_alpha is not None else sec.conv_rank
        args = {"conv_dim": str(sec.conv_rank), "conv_alpha": _num(conv_alpha)}
    if sec.network not in ("lora", "locon"):
        args["algo"] = {"dora": "lora"}.get(sec.network, sec.network)
        if sec.network == "dora":
            args["dora_wd"] = "True"
        if sec.network == "lokr":
            args["factor"] = str(sec.lokr_factor)
            args["decompose_both"] = str(sec.lokr_decompose_both)
    if args:
        meta["ss_network_args"] = json.dumps(args)
    return meta


def _step(metadata: dict[str, str]) -> int:
    try:
        return int(metadata.get("lorakit.step", "0"))
    except ValueError:
        return 0


def export_kohya(backend: Any, directory: Path, name: str, metadata: dict[str, str]) -> list[Path]:
    """``<name>.safetensors``: kohya/A1111 keys, alpha, ``ss_*`` and ``modelspec.*``."""
    from lorakit_sd.lora_format import model_hash
    from lorakit_sd.networks import PLAIN
    from lorakit_sd.networks.files import kohya_network_tensors

    network = backend.section.network
    if network in PLAIN:
        modules = backend.lora_modules()
        tensors = backend.spec.kohya_tensors(modules, backend.unet, backend.save_dtype)
    else:
        tensors = kohya_network_tensors(
            network, backend.adapted_parts(), backend.family, backend.unet, backend.save_dtype
        )
    if tensors is None:  # SD3: diffusers' layout is the one its clients read
        return []
    t = backend.config.train
    meta = dict(metadata)
    meta.update(training_metadata(backend, name, _step(metadata)))
    meta.update(
        format_metadata(
            backend.family, name, t.lora_rank, t.alpha, backend.resolution, backend.unet
        )
    )
    if network not in PLAIN:  # as sd-scripts records a lycoris.kohya run
        meta["ss_network_module"] = "lycoris.kohya"
    meta["sshs_model_hash"] = model_hash(tensors)
    path = Path(directory) / f"{name}.safetensors"
    save_safetensors(tensors, path, metadata=meta)
    return [path]


def export_diffusers(
    backend: Any, directory: Path, name: str, metadata: dict[str, str]
) -> list[Path]:
    """``<name>.diffusers.safetensors``: diffusers/PEFT keys with the LoRA config in the header."""
    from lorakit_sd.lora_format import to_diffusers
    from lorakit_sd.networks import PLAIN

    if backend.section.network not in PLAIN:  # diffusers' load_lora_weights reads LoRA only
        return []
    tensors, format_meta = to_diffusers(backend.lora_modules(), backend.save_dtype)
    t = backend.config.train
    meta = dict(metadata)
    meta.update(training_metadata(backend, name, _step(metadata)))
    meta.update(
        format_metadata(
            backend.family, name, t.lora_rank, t.alpha, backend.resolution, backend.unet
        )
    )
    meta.update(format_meta)
    path = Path(directory) / f"{name}.diffusers.safetensors"
    save_safetensors(tensors, path, metadata=meta)
    return [path]
