"""The causal-LM loss: the summed next-token cross-entropy of a batch, in fp32 chunks.

:func:`causal_lm_loss` is what ``LLMBackend.loss`` returns for a batch of token rows;
``lorakit plan`` traces :func:`chunked_cross_entropy`, its fp32 part.
"""

from __future__ import annotations

from typing import Any

import torch

from lorakit_llm.tokenize import IGNORE

#: Target tokens whose fp32 log-probabilities exist at one time in the loss.
CE_CHUNK = 2048


def _ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")


def causal_lm_loss(module: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The summed next-token loss of a batch (``labels`` IGNORE where nothing is learnt).

    Logits are asked for only where some row has a target (the answers), and the
    cross-entropy runs in fp32 slices: never batch × length × vocab fp32 logits. The
    planner traces this same function.
    """
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]  # packed: no mask, no cache
    else:
        kwargs["attention_mask"] = batch["attention_mask"]
    labels = batch["labels"][:, 1:]
    keep = (labels != IGNORE).any(dim=0).nonzero().squeeze(1)
    logits = module(**kwargs, logits_to_keep=keep).logits
    kept = labels[:, keep]
    mask = kept != IGNORE
    return chunked_cross_entropy(logits[mask], kept[mask])


def chunked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, chunk: int = CE_CHUNK
) -> torch.Tensor:
    """Summed cross-entropy in fp32, ``chunk`` rows at a time.

    Each chunk is checkpointed: its fp32 copy and log-softmax are freed after the forward
    and recomputed in the backward, so at most ``chunk × vocab`` fp32 values live at once
    (a 150k vocabulary × 8k targets would otherwise hold ~5 GB per micro-batch).
    """
    if logits.shape[0] <= chunk:
        return _ce_sum(logits, labels)
    from torch.utils.checkpoint import checkpoint

    grad = torch.is_grad_enabled() and logits.requires_grad
    total = logits.new_zeros((), dtype=torch.float32)
    for a in range(0, logits.shape[0], chunk):
        piece, target = logits[a : a + chunk], labels[a : a + chunk]
        part = (
            checkpoint(_ce_sum, piece, target, use_reentrant=False)
            if grad
            else _ce_sum(piece, target)
        )
        total = total + part
    return total
