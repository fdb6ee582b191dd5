"""What the ``sd`` backend hands to exporters: its :class:`lorakit.api.AdapterExport`.

The view holds the trained layers (lazily), the network description, the denoiser's config
(what the kohya and BFL name conversions read) and the ``ss_*`` keys describing the run, as
sd-scripts writes them: dataset folders and tag frequencies, image counts, timestamps,
steps and epoch, the caption length, the training options.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lorakit.api import AdapterExport, AdapterLayer, Network
from lorakit_sd.networks import PLAIN, network_module
from lorakit_sd.networks.files import adapted_layers


def _num(value: float) -> str:
    return f"{value:g}"


def adapter_export(backend: Any, step: int) -> AdapterExport:
    """The view of ``backend`` (a set-up :class:`lorakit_sd.backend.SDBackend`) at ``step``."""
    t, sec = backend.config.train, backend.section
    conv_alpha = None
    if sec.conv_rank:
        conv_alpha = sec.conv_alpha if sec.conv_alpha is not None else sec.conv_rank
    denoiser = backend.unet
    return AdapterExport(
        backend="sd",
        network=Network(
            type=sec.network,
            rank=t.lora_rank,
            alpha=t.alpha,
            dropout=t.lora_dropout,
            conv_rank=sec.conv_rank or 0,
            conv_alpha=conv_alpha,
            args=network_args(sec),
        ),
        state_dict=backend.lora_state_dict,
        layers=lambda: layers(backend),
        family=backend.family,
        base_model=t.base_model,
        resolution=backend.resolution,
        started_at=backend.started_at,
        save_dtype=sec.save_dtype,
        model_config={**dict(denoiser.config), "_class_name": class_name(denoiser)},
        metadata=run_metadata(backend, step),
    )


def class_name(denoiser: Any) -> str:
    """The diffusers class the denoiser's config builds (a wrapper of several says so)."""
    return str(getattr(denoiser, "class_name", None) or type(denoiser).__name__)


def layers(backend: Any) -> list[AdapterLayer]:
    """Every adapted module of the denoiser and the trained text encoders, with its tensors.

    A plain LoRA's come from PEFT's state dict (``lora_down.weight`` / ``lora_up.weight``,
    the module's alpha from the LoRA config); other networks' are their LyCORIS tensors.
    """

    network = backend.section.network
    if network in PLAIN:
        return [
            AdapterLayer(
                m.component, m.path, {"lora_down.weight": m.down, "lora_up.weight": m.up}, m.alpha
            )
            for m in backend.lora_modules()
        ]
    writer = network_module(network)
    out = []
    for component, model in backend.adapted_parts():
        for path, layer in adapted_layers(model):
            tensors = writer.layer_tensors(layer)
            out.append(AdapterLayer(component, path, tensors, float(tensors["alpha"])))
    return out


def network_args(sec: Any) -> dict[str, str]:
    """kohya's ``ss_network_args``: LoCon's conv rank / alpha, the LyCORIS algorithm."""
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
    return args


def _dataset_dirs(
    items: list[Any],
) -> tuple[dict[str, Counter[str]], dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Tag frequencies and image folders (training, regularisation), as sd-scripts writes
    them: ``n_repeats`` is the subset's repeats."""
    tags: dict[str, Counter[str]] = {}
    dirs: dict[str, dict[str, int]] = {}
    reg_dirs: dict[str, dict[str, int]] = {}
    for item in items:
        folder = Path(item.folder).name
        if item.reg:
            entry = reg_dirs.setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})
            entry["img_count"] += 1
            continue
        counter = tags.setdefault(folder, Counter())
        counter.update(tag.strip() for tag in item.caption.split(",") if tag.strip())
        entry = dirs.setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})
        entry["img_count"] += 1
    return tags, dirs, reg_dirs


def run_metadata(backend: Any, step: int) -> dict[str, str]:
    """``ss_*`` keys describing the run (what A1111's training-info panel shows)."""
    t, sec = backend.config.train, backend.section
    per_epoch = max(1, -(-len(backend.index) // t.batch_size))
    epoch = (step * t.gradient_accumulation_steps) // per_epoch
    tags, dirs, reg_dirs = _dataset_dirs(backend.items)
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
        "ss_max_token_length": str(backend.max_tokens),
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
        **backend.spec.run_metadata(sec, backend.unet),
    }
    args = network_args(sec)
    if args:
        meta["ss_network_args"] = json.dumps(args)
    return meta
