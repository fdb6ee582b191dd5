"""The sd training loss: caption augmentation, and the denoising loss of a batch of latents.

:func:`denoising_loss` is what a step computes once the latents and the conditioning are
ready: the objective's draw (noise, timesteps, target), the masked loss, the denoiser's
prediction, the per-sample error, the regularisation weight and min-SNR. ``SDBackend.loss``
and ``lorakit plan`` both call it. Every random draw comes from torch's global generator,
whose state the engine saves in each checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit_sd.data import masks
from lorakit_sd.data.captions import shuffle_tags


def denoising_loss(
    module: torch.nn.Module,
    objective: Any,
    latents: torch.Tensor,
    conditioning: dict[str, Any],
    dtype: torch.dtype,
    batch: dict[str, Any],
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample loss of normalised ``latents`` under ``conditioning`` (the module's inputs).

    ``batch`` may hold ``mask`` (masked loss) and ``loss_weight`` (regularisation images);
    ``flip`` says which samples were mirrored (their masks are too).
    """

    draw = objective.draw(latents)
    if "mask" in batch:  # masked loss (sd.conditioning_data_dir / sd.alpha_mask)
        masks.apply_mask(draw, batch["mask"], flip)
    pred = module(draw.noisy.to(dtype), draw.timesteps, **conditioning)
    per_sample = objective.per_sample_loss(pred, draw)
    if "loss_weight" in batch:  # regularisation images count prior_loss_weight times
        per_sample = per_sample * batch["loss_weight"].to(per_sample.device, per_sample.dtype)
    return objective.weigh(per_sample, draw)  # min-SNR (sd.min_snr_gamma)


def caption_dropout_mask(n: int, probability: float) -> torch.Tensor | None:
    """``sd.caption_dropout``: which samples of a batch train with the empty caption."""
    return torch.rand(n) < probability if probability > 0 else None


def augment_captions(captions: list[str], sec: Any, drop: torch.Tensor | None) -> list[str]:
    """Captions encoded this step: tags shuffled (``sd.shuffle_tags``), dropped to ""."""

    if sec.shuffle_tags:
        captions = [shuffle_tags(c, sec.keep_tokens, sec.keep_tokens_separator) for c in captions]
    if drop is not None:
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
    return captions


def cached_text(
    batch: dict[str, Any], empty: dict[str, torch.Tensor], drop: Any, device: Any, dtype: Any
) -> dict[str, Any]:
    """Cached caption embeddings of a batch, the dropped ones replaced by the empty caption's."""
    hidden = batch["hidden"].to(device)
    pooled = batch["pooled"].to(device) if "pooled" in batch else None
    if drop is not None and drop.any():
        mask = drop.to(device)
        hidden = torch.where(mask[:, None, None], empty["hidden"], hidden)
        if pooled is not None:
            pooled = torch.where(mask[:, None], empty["pooled"], pooled)
    return {"hidden": hidden.to(dtype), "pooled": pooled.to(dtype) if pooled is not None else None}
