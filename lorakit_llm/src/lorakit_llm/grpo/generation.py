"""Rollouts: ``num_generations`` sampled completions per prompt, with the adapter on.

Prompts are rendered as ``lorakit chat`` renders them (the chat template, the BOS where the
tokenizer adds one), left-padded and repeated ``num_generations`` times, so one
``generate`` call samples every completion of a micro-batch. Generation stops on the tokens
``lorakit chat`` stops on (:func:`lorakit_llm.generate.stop_ids`); a completion keeps its
stop token (the policy chose it, so it is scored, as TRL does) and is masked after it. The
text a reward sees is cut before the stop token and before any end-of-turn marker.

:func:`completion_logps` is TRL's per-token log-probability: the model on ``prompt +
completion`` with the attention mask, logits divided by the sampling temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lorakit_llm.chat_templates import end_markers
from lorakit_llm.generate import stop_ids
from lorakit_llm.tokenize import render, with_bos


@dataclass
class Sampling:
    """The sampling keys of the ``llm:`` section."""

    num_generations: int = 8
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def prompt_text(tokenizer: Any, messages: list[dict[str, str]], template: str) -> str:
    """The prompt as the model sees it: the template's generation prompt, BOS included."""
    return with_bos(tokenizer, render(tokenizer, messages, template, prompt=True))


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, each row right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
    return ids, mask


def completion_mask(ids: torch.Tensor, stops: list[int]) -> torch.Tensor:
    """1 up to and including the first stop token of each row, 0 after it."""
    if not stops:
        return torch.ones_like(ids)
    is_stop = torch.isin(ids, torch.tensor(stops, device=ids.device))
    seen_before = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    return (~seen_before).long()


@dataclass
class Generated:
    """A micro-batch's completions, row ``i`` being prompt ``i // num_generations``."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    truncated: torch.Tensor  # no stop token within max_completion_length


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    template: str,
    sampling: Sampling,
) -> Generated:
    """Sample ``num_generations`` completions of each prompt (token ids) in one call."""
    from transformers import GenerationConfig

    stops = stop_ids(model, tokenizer, template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    repeated = [ids for ids in prompts for _ in range(sampling.num_generations)]
    prompt_ids, prompt_mask = left_pad(repeated, pad_id)
    device = next(model.parameters()).device
    config = GenerationConfig(
        max_new_tokens=sampling.max_completion_length,
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k or None,
        eos_token_id=stops or None,
        pad_token_id=pad_id,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=prompt_ids.to(device),
                attention_mask=prompt_mask.to(device),
                generation_config=config,
            )
    finally:
        model.train(was_training)
    completion_ids = out[:, prompt_ids.shape[1] :].cpu()
    if completion_ids.shape[1] == 0:
        completion_ids = torch.full((len(repeated), 1), pad_id, dtype=torch.long)
    mask = completion_mask(completion_ids, stops)
    stopped = torch.isin(completion_ids, torch.tensor(stops or [-1])) & mask.bool()
    markers = end_markers(template)
    texts = []
    for row, row_mask, row_stop in zip(completion_ids, mask, stopped, strict=True):
        kept = row[(row_mask.bool() & ~row_stop)].tolist()
        text = tokenizer.decode(kept, skip_special_tokens=True)
        for marker in markers:
            text = text.split(marker, 1)[0]
        texts.append(text)
    return Generated(
        prompt_ids, prompt_mask, completion_ids, mask, texts, truncated=~stopped.any(dim=1)
    )


def completion_logps(
    module: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``log π(token)`` of every completion token, ``(rows, completion length)``, fp32."""
    from lorakit_llm.preference.logps import token_logps

    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    keep = completion_ids.shape[1]
    logits = module(
        input_ids=input_ids,
        attention_mask=attention_mask,
        use_cache=False,
        logits_to_keep=keep + 1,
    ).logits[:, :-1]
    logits = logits / temperature
    flat = token_logps(logits.reshape(-1, logits.shape[-1]), completion_ids.reshape(-1))
    return flat.view(completion_ids.shape)
