"""How the sd backend makes its models trainable: one function for training and for ``plan``.

:func:`adapt_models` injects the run's network (``sd.network``: LoRA, LoCon with
``sd.conv_rank``, LoHa, LoKr, DoRA) through PEFT into the denoiser and, with
``sd.train_text_encoder``, the CLIP text encoders; casts the trainable parameters to float32
and switches gradient checkpointing on as asked. ``SDBackend.setup`` calls it on the loaded
model and the planner on the same model built on the meta device, so a plan counts what a
run trains.
"""

from __future__ import annotations

import re
from typing import Any

from lorakit.api import ConfigError
from lorakit_sd.networks import network_module


def adapt_models(
    denoiser: Any,
    encoders: list[Any],
    *,
    spec: Any,
    config: Any,
    section: Any,
    checkpointing: bool,
) -> list[str]:
    """Make ``denoiser`` (and, when trained, ``encoders``) trainable; the denoiser's targets.

    ``encoders`` are the text encoders LoRA may adapt, in component order (te1, te2).
    """
    t, sec = config.train, section
    targets = spec.expand_targets(t.target_modules)
    conv = conv_targets(denoiser) if sec.conv_rank else []
    paths = with_patterns(denoiser, targets)
    if conv:  # LoCon: full paths, so the 3x3 convolutions get their own rank and alpha
        paths = [p for p, _ in denoiser.named_modules() if _matches(p, targets)] + conv
    add_network(denoiser, paths, "target_modules", config, sec, conv=conv)
    if sec.train_text_encoder:
        for i, encoder in enumerate(encoders):
            names = text_encoder_targets(
                encoder, sec.text_encoder_target_modules, skip_last=spec.skips_last_layer(i)
            )
            add_network(encoder, names, "sd.text_encoder_target_modules", config, sec)
    for module in (denoiser, *encoders):
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if checkpointing:
        denoiser.enable_gradient_checkpointing()
        if sec.train_text_encoder:
            for encoder in encoders:
                encoder.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
    return targets


def add_network(
    module: Any, targets: list[str], key: str, config: Any, sec: Any, conv: list[str] | None = None
) -> None:
    """Inject ``sd.network`` into ``module`` at ``targets`` (``conv`` at ``sd.conv_rank``)."""

    t = config.train
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    if conv and sec.conv_rank:
        conv_alpha = sec.conv_alpha if sec.conv_alpha is not None else sec.conv_rank
        ranks = {p: sec.conv_rank for p in conv}
        alphas = {p: conv_alpha for p in conv}
    if not targets:
        raise ConfigError(f"no module matches {t.target_modules} in the model", key=key)
    peft_config = network_module(sec.network).peft_config(
        rank=t.lora_rank,
        alpha=t.alpha,
        dropout=t.lora_dropout,
        targets=targets,
        ranks=ranks,
        alphas=alphas,
        options=sec,
    )
    try:
        module.add_adapter(peft_config)
    except ValueError as exc:
        if "not found" in str(exc) or "Target modules" in str(exc):
            raise ConfigError(f"no module matches {targets} in the model", key=key) from None
        raise


def text_encoder_targets(encoder: Any, names: list[str], *, skip_last: bool) -> list[str]:
    """Full paths of the text-encoder modules to adapt.

    SDXL reads its first text encoder's penultimate layer, so that encoder's last layer never
    affects the output: with ``skip_last`` it gets no LoRA (it would train nothing).
    """
    layers = encoder.config.num_hidden_layers
    out = []
    for path, _ in encoder.named_modules():
        if not any(path == n or path.endswith("." + n) for n in names):
            continue
        m = re.search(r"encoder\.layers\.(\d+)\.", path)
        if skip_last and m and int(m[1]) == layers - 1:
            continue
        out.append(path)
    return out or names


def with_patterns(model: Any, names: list[str]) -> list[str]:
    """``names`` with each ``*`` pattern (``single_transformer_blocks.*.attn.to_out``)
    replaced by the module paths it matches, whole (PEFT matches plain names as suffixes)."""
    patterns = [n for n in names if "*" in n]
    if not patterns:
        return names
    import fnmatch

    found = [
        path
        for path, _ in model.named_modules()
        if any(
            fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, "*." + p) for p in patterns
        )
    ]
    return [n for n in names if "*" not in n] + found


def _matches(path: str, names: list[str]) -> bool:
    """Whether a module path ends with one of ``names`` (peft's list matching)."""
    return any(path == n or path.endswith("." + n) for n in names)


def conv_targets(unet: Any) -> list[str]:
    """LoCon's modules: the 3x3 convolutions of the UNet's resnet, down- and upsampler blocks.

    These are what kohya's ``conv_dim`` adapts (its LoRA wraps nothing outside transformer,
    resnet and sampler blocks, so ``conv_in`` / ``conv_out`` are not among them).
    """
    import torch

    pattern = re.compile(
        r"^(down_blocks|up_blocks|mid_block)\..*(resnets\.\d+\.conv[12]|samplers\.\d+\.conv)$"
    )
    return [
        path
        for path, module in unet.named_modules()
        if pattern.match(path)
        and isinstance(module, torch.nn.Conv2d)
        and tuple(module.kernel_size) == (3, 3)
    ]
