"""LoRAs on layers that fuse several of diffusers' modules (q, k and v stacked by rows), as
FLUX.1's BFL layout and Z-Image's original layout have them, converted exactly.

LoRAs of rank r on the parts are exactly one LoRA of rank ``sum(r)`` on the fused layer: the
downs stacked, the ups block-diagonal (zero rows for parts that were not trained), with alpha
scaled so ``alpha / rank`` is unchanged. Reading a fused entry back splits it: block-diagonal
ups give each part its own columns (the exact inverse), a dense up (a LoRA trained on the
fused layer, as sd-scripts and musubi-tuner do) gives each part the whole down and its rows
of the up, which is exact too.
"""

from __future__ import annotations

from typing import Any

import torch


def fuse(
    parts: list[tuple[int, Any]],
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up, alpha) of one fused layer from ``(rows, LoraModule or None)`` per part.

    The fused rank is the sum of the parts' ranks; alpha is chosen so ``alpha / rank`` is
    the first trained part's scale, and any other part's scale ratio is folded into its
    block of the up: the fused update equals the parts' updates stacked, exactly.
    """
    trained = [m for _, m in parts if m is not None]
    rank = sum(m.rank for m in trained)
    scale = trained[0].alpha / trained[0].rank
    downs, blocks, col = [], [], 0
    up = torch.zeros(sum(rows for rows, _ in parts), rank, dtype=trained[0].up.dtype)
    row = 0
    for rows, m in parts:
        if m is not None:
            ratio = (m.alpha / m.rank) / scale
            up[row : row + rows, col : col + m.rank] = m.up.detach().cpu() * ratio
            downs.append(m.down.detach().cpu())
            col += m.rank
        row += rows
        blocks.append(rows)
    return torch.cat(downs, dim=0), up, scale * rank


def split(
    down: torch.Tensor, up: torch.Tensor, alpha: float, rows: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor, float] | None]:
    """The parts of a fused entry: (down, up, alpha) per part, None for an all-zero part."""
    rank = down.shape[0]
    scale = alpha / rank
    starts = [sum(rows[:j]) for j in range(len(rows))]
    used = []
    for start, n in zip(starts, rows, strict=True):
        block = up[start : start + n]
        used.append(torch.nonzero(block.abs().sum(dim=0)).flatten().tolist())
    flat = [c for cols in used for c in cols]
    disjoint = len(flat) == len(set(flat))
    out: list[tuple[torch.Tensor, torch.Tensor, float] | None] = []
    for start, n, cols in zip(starts, rows, used, strict=True):
        if not cols:
            out.append(None)
            continue
        block = up[start : start + n]
        if disjoint:  # block-diagonal: the part's own columns
            idx = torch.tensor(cols)
            out.append((down[idx], block[:, idx], scale * len(cols)))
        else:  # a dense LoRA on the fused layer: every part keeps the whole down
            out.append((down, block, alpha))
    return out
