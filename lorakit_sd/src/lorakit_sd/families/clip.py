"""What the UNet is conditioned on: caption embeddings, SDXL's pooled text and size ids.

Captions are encoded the way diffusers' SD1 / SDXL pipelines do at inference: SD1 takes the
text encoder's last hidden state (or, with ``sd.clip_skip``, an earlier one); SDXL
concatenates both encoders' penultimate hidden states and adds the second encoder's projected
(pooled) output and the six size/crop numbers. Captions longer than one CLIP window are
encoded in 75-token windows and joined, as kohya sd-scripts and A1111 do.
"""

from __future__ import annotations

from typing import Any

import torch

#: Tokens of one CLIP window between its BOS and EOS (77 positions in all).
CHUNK = 75
#: The caption lengths ``sd.max_token_length`` allows (one, two or three windows).
MAX_TOKEN_LENGTHS = (75, 150, 225)


def tokenize(
    tokenizers: list[Any], captions: list[str], max_tokens: int = CHUNK
) -> list[torch.Tensor]:
    """Token ids per tokenizer, ``[B, n * 77]`` for ``n = max_tokens / 75`` windows.

    Each window is BOS + up to 75 caption tokens + EOS, padded to 77, as kohya sd-scripts and
    A1111 lay out long prompts; tokens beyond ``max_tokens`` are cut. With one window this is
    exactly the tokenizer's own ``padding="max_length", truncation=True`` output.
    """
    windows = max(1, max_tokens // CHUNK)
    out = []
    for tok in tokenizers:
        bos, eos = tok.bos_token_id, tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        body = tok(captions, add_special_tokens=False, truncation=False, verbose=False).input_ids
        rows = []
        for seq in body:
            seq = list(seq)[: windows * CHUNK]
            row: list[int] = []
            for w in range(windows):
                part = seq[w * CHUNK : (w + 1) * CHUNK]
                row += [bos, *part, eos] + [pad] * (CHUNK - len(part))
            rows.append(row)
        out.append(torch.tensor(rows, dtype=torch.long))
    return out


def token_count(tokenizer: Any, caption: str) -> int:
    """Caption tokens, without BOS and EOS."""
    return len(tokenizer(caption, add_special_tokens=False, verbose=False).input_ids)


def _join_windows(hidden: torch.Tensor, windows: int) -> torch.Tensor:
    """``[B, n*77, D]`` → ``[B, 2 + 75n, D]``: the first BOS, every window's 75 tokens, the last EOS."""
    if windows == 1:
        return hidden
    parts = [hidden[:, :1]]
    for w in range(windows):
        start = w * (CHUNK + 2) + 1
        parts.append(hidden[:, start : start + CHUNK])
    parts.append(hidden[:, -1:])
    return torch.cat(parts, dim=1)


def _text_model(encoder: Any) -> Any:
    return getattr(encoder, "text_model", encoder)


def encode_ids(
    ids: list[torch.Tensor], text_encoders: list[Any], family: str, clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states [B, 2 + 75n, D], pooled [B, D2] for SDXL else None).

    SD1 reads the last layer, or with ``clip_skip`` N the N-th from last through the final
    layer norm (as A1111 and kohya do); SDXL always reads both encoders' penultimate layers
    and the second encoder's pooled output of the first window.
    """
    device = next(text_encoders[0].parameters()).device
    batch, width = ids[0].shape
    windows = width // (CHUNK + 2)
    if family == "sd1":
        encoder = text_encoders[0]
        flat = ids[0].reshape(-1, CHUNK + 2).to(device)
        if clip_skip > 1:
            out = encoder(flat, output_hidden_states=True)
            hidden = _text_model(encoder).final_layer_norm(out.hidden_states[-clip_skip])
        else:
            hidden = encoder(flat)[0]
        return _join_windows(hidden.reshape(batch, width, -1), windows), None
    hidden_states = []
    pooled = None
    for encoder, tokens in zip(text_encoders, ids, strict=True):
        out = encoder(tokens.reshape(-1, CHUNK + 2).to(device), output_hidden_states=True)
        hidden = out.hidden_states[-2].reshape(batch, width, -1)
        hidden_states.append(_join_windows(hidden, windows))
        pooled = out[0].reshape(batch, windows, -1)[:, 0]
    return torch.cat(hidden_states, dim=-1), pooled


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
        self,
        unet: Any,
        text_encoders: list[Any] | None,
        family: str,
        train_text: bool,
        clip_skip: int = 1,
    ) -> None:
        super().__init__()
        self.clip_skip = clip_skip
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
            with torch.set_grad_enabled(self.train_text and torch.is_grad_enabled()):
                hidden, pooled = encode_ids(input_ids, encoders, self.family, self.clip_skip)
        added = None
        if self.family == "sdxl":
            added = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(
            noisy, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added
        ).sample


def encode_captions(
    captions: list[str],
    tokenizers: list[Any],
    text_encoders: list[Any],
    family: str,
    max_tokens: int = 75,
    clip_skip: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden states, pooled embedding or None) as the SD1/SDXL pipelines compute them."""
    with torch.no_grad():
        ids = tokenize(tokenizers, captions, max_tokens)
        return encode_ids(ids, text_encoders, family, clip_skip)
