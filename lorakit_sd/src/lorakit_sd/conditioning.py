"""What the UNet is conditioned on: caption embeddings, SDXL's pooled text and size ids.

Captions are encoded the way diffusers' SD1 / SDXL pipelines do at inference: SD1 takes the
text encoder's last hidden state; SDXL concatenates both encoders' penultimate hidden states
and adds the second encoder's projected (pooled) output and the six size/crop numbers.
Caption augmentation (tag shuffling, dropout) draws from torch's global generator so a
resumed run replays it exactly.
"""

from __future__ import annotations

from typing import Any

import torch


def tokenize(tokenizers: list[Any], captions: list[str]) -> list[torch.Tensor]:
    """Token ids per tokenizer, padded/truncated to its length (77 for CLIP)."""
    return [
        tok(
            captions,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        for tok in tokenizers
    ]


def encode_ids(
    ids: list[torch.Tensor], text_encoders: list[Any], family: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states [B, 77, D], pooled [B, D2] for SDXL else None)."""
    device = next(text_encoders[0].parameters()).device
    if family == "sd1":
        return text_encoders[0](ids[0].to(device))[0], None
    hidden = []
    pooled = None
    for encoder, tokens in zip(text_encoders, ids, strict=True):
        out = encoder(tokens.to(device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]
    return torch.cat(hidden, dim=-1), pooled


def shuffle_tags(caption: str, keep: int) -> str:
    """The comma-separated tags after the first ``keep``, in a random order."""
    tags = [t.strip() for t in caption.split(",")]
    head, tail = tags[:keep], tags[keep:]
    if len(tail) > 1:
        tail = [tail[i] for i in torch.randperm(len(tail)).tolist()]
    return ", ".join(t for t in head + tail if t)


def time_ids(
    original: tuple[int, int], crop: tuple[int, int], target: tuple[int, int]
) -> list[int]:
    """SDXL's added time ids: original (h, w), crop top-left (top, left), target (h, w)."""
    (ow, oh), (left, top), (tw, th) = original, crop, target
    return [oh, ow, top, left, th, tw]


class SDTrainModule(torch.nn.Module):
    """What the engine trains: the LoRA-injected UNet, and the text encoders when used.

    The whole forward (caption encoding when not cached, then the UNet) runs inside
    :meth:`forward`, so a DDP-wrapped module synchronises every trained LoRA.
    """

    def __init__(
        self, unet: Any, text_encoders: list[Any] | None, family: str, train_text: bool
    ) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoders = torch.nn.ModuleList(text_encoders or [])
        self.family = family
        self.train_text = train_text

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        hidden: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
        input_ids: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if input_ids is not None:
            encoders = list(self.text_encoders)
            if self.train_text:
                hidden, pooled = encode_ids(input_ids, encoders, self.family)
            else:
                with torch.no_grad():
                    hidden, pooled = encode_ids(input_ids, encoders, self.family)
        added = None
        if self.family == "sdxl":
            added = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(
            noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added
        ).sample
