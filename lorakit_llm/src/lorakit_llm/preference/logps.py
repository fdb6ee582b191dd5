"""Per-row answer log-probabilities of a batch laid out by the pair collator."""

from __future__ import annotations

from typing import Any

import torch

from lorakit_llm.tokenize import IGNORE

#: Target tokens whose fp32 log-probabilities exist at one time.
CHUNK = 2048


def _token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")


def token_logps(logits: torch.Tensor, labels: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """``log p(label)`` per row of ``logits``, in fp32, ``chunk`` rows at a time (each chunk
    checkpointed, so at most ``chunk × vocab`` fp32 values live at once)."""
    if logits.shape[0] <= chunk:
        return _token_logps(logits, labels)
    from torch.utils.checkpoint import checkpoint

    grad = torch.is_grad_enabled() and logits.requires_grad
    parts = []
    for a in range(0, logits.shape[0], chunk):
        piece, target = logits[a : a + chunk], labels[a : a + chunk]
        parts.append(
            checkpoint(_token_logps, piece, target, use_reentrant=False)
            if grad
            else _token_logps(piece, target)
        )
    return torch.cat(parts)


def sequence_logps(
    module: torch.nn.Module, batch: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed log-probs, target token counts)`` of each of the batch's ``2 × pairs`` rows.

    One forward for all rows; logits only where some row has a target, as for SFT.
    """
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    else:
        kwargs["attention_mask"] = batch["attention_mask"]
    labels = batch["labels"][:, 1:]
    keep = (labels != IGNORE).any(dim=0).nonzero().squeeze(1)
    logits = module(**kwargs, logits_to_keep=keep).logits
    kept = labels[:, keep]
    mask = kept != IGNORE
    logps = token_logps(logits[mask], kept[mask])
    owner = batch["sequence"][:, 1:][:, keep][mask]
    rows = 2 * int(batch["num_rows"])
    sums = logps.new_zeros(rows).index_add(0, owner, logps)
    counts = logps.new_zeros(rows).index_add(0, owner, torch.ones_like(logps))
    return sums, counts
