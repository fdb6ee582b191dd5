"""The module the engine trains for a transformer family: the LoRA transformer (and CLIP
encoders when they train), calling the family for captions and the denoiser's inputs."""

from __future__ import annotations

from typing import Any

import torch


class FlowTrainModule(torch.nn.Module):
    """What the engine trains for SD3 / FLUX.1: the LoRA transformer (and CLIP encoders).

    Captions not cached are encoded inside :meth:`forward` (so DDP synchronises a CLIP
    LoRA); the family lays the latents out and calls its transformer.
    """

    def __init__(
        self,
        family: Any,
        pipe: Any,
        transformer: Any,
        text_encoders: list[Any] | None,
        train_text: bool,
        max_tokens: int,
        guidance: float | None,
    ) -> None:
        super().__init__()
        self.family = family
        self.pipe = [pipe]  # a list: not a submodule (its modules are registered below)
        self.transformer = transformer
        self.text_encoders = torch.nn.ModuleList(text_encoders or [])
        self.train_text = train_text
        self.max_tokens = max_tokens
        self.guidance = guidance

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        hidden: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        captions: list[str] | None = None,
        condition: torch.Tensor | None = None,
        control: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser's prediction; ``condition``: channels an image-conditioned model reads
        joined to the noisy latents (an image-to-video model's first frame)."""
        if condition is not None:
            noisy = torch.cat([noisy, condition.to(noisy.dtype)], dim=1)
        if captions is not None:
            with torch.set_grad_enabled(self.train_text and torch.is_grad_enabled()):
                hidden, pooled = self.family.encode(self.pipe[0], captions, self.max_tokens)
            dtype = noisy.dtype
            hidden = hidden.to(dtype)
            pooled = pooled.to(dtype) if pooled is not None else None
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((noisy.shape[0],), self.guidance, device=noisy.device)
        extra = {} if control is None else {"control": control.to(noisy.dtype)}
        return self.family.denoise(
            self.transformer, noisy, timesteps, hidden, pooled, guidance, **extra
        )
