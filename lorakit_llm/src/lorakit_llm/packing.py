"""Packed batches: which layout a model's attention needs, and whether it keeps packed
examples apart (a probe run once at setup)."""

from __future__ import annotations

from typing import Any

import torch

from lorakit_llm.data import Collator


def batch_layout(model: Any, packing: bool) -> str:
    """``padded``, ``packed`` (rows no longer than the longest example) or ``flat`` (one row
    per micro-batch: what flash attention and other varlen kernels need)."""
    if not packing:
        return "padded"
    implementation = str(getattr(model.config, "_attn_implementation", None) or "")
    return "flat" if "flash" in implementation or "varlen" in implementation else "packed"


def packing_supported(model: Any, layout: str = "packed") -> bool:
    """Whether ``layout`` keeps packed examples apart in this model (a tiny probe).

    A real batch shape is run: five examples laid out as the collator lays them out (for
    ``packed``, three rows, two of them holding two examples), and each example must get the
    logits it gets alone. "Alone" is compared against the same rows run without position
    ids (examples attending to each other), so the tolerance scales with the model.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.shape[0]
    lengths = [6, 3, 3, 4, 2]
    items, start = [], 3
    for k in lengths:
        ids = (torch.arange(start, start + k) * 7 + 3) % max(vocab - 1, 1) + 1
        items.append({"input_ids": ids, "labels": ids})
        start += k
    collator = Collator(0, layout)
    rows = collator.rows(lengths)
    batch = collator(items)
    ids = batch["input_ids"].to(device)
    try:
        with torch.no_grad():
            joined = model(
                input_ids=ids, position_ids=batch["position_ids"].to(device), use_cache=False
            ).logits
            crossed = model(input_ids=ids, use_cache=False).logits
            error = reference = torch.zeros((), device=device)
            for r, row in enumerate(rows):
                at = 0
                for i in row:
                    k = lengths[i]
                    alone = model(input_ids=items[i]["input_ids"][None].to(device)).logits[0]
                    got = joined[r, at : at + k]
                    error = torch.maximum(error, (got - alone).abs().max().float())
                    leak = (crossed[r, at : at + k] - alone).abs().max().float()
                    reference = torch.maximum(reference, leak)
                    at += k
    finally:
        model.train(was_training)
    return bool(error <= 0.1 * reference + 1e-6)


LAYOUT_WORDS = {
    "padded": "padded (no packing)",
    "packed": "packed without padding into rows no longer than the batch's longest example",
    "flat": "packed into one row per micro-batch (varlen attention)",
}
