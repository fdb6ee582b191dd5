"""Token rows → batches: ``batch_size`` rows each, padded or packed.

A batch is always ``batch_size`` examples (rows), drawn by a
:class:`LengthGroupedBatchSampler` that puts rows of similar length together, so a step
means the same thing with and without packing. Packing only changes how one batch is laid
out:

- ``padded``: one row per example, right-padded, with an attention mask;
- ``packed`` (sdpa, eager): the examples are packed end to end into rows no longer than the
  longest example of the batch (best fit), position ids starting at 0 for each example;
  the model is called without a mask and without a cache, and transformers builds the
  block-diagonal causal mask from the position ids. No row is longer than the padded batch
  would be, and there are no more rows, so attention never costs more than padding;
- ``flat`` (flash attention / varlen kernels): the whole batch is one row without padding.
  transformers reads packed sequences from position ids only when a batch has one row, so
  this is the layout that keeps examples apart on those kernels.

Both orders are pure functions of ``(seed, epoch)``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import torch

from lorakit_llm.tokenize import IGNORE, TokenizedData


def pack_rows(lengths: list[int], max_len: int) -> list[list[int]]:
    """Group row indices into bins of at most ``max_len`` tokens (best fit decreasing)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        need = lengths[i]
        at = bisect.bisect_left(free, (need, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            bisect.insort(free, (room - need, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_len - need, len(bins) - 1))
    return bins


LAYOUTS = ("padded", "packed", "flat")


class TokenDataset(torch.utils.data.Dataset):
    """One item per row (of ``rows``, default all); ``packed``: batches will be packed."""

    def __init__(
        self, data: TokenizedData, packed: bool = False, rows: list[int] | None = None
    ) -> None:
        self.data = data
        self.packed = packed
        self.rows = list(range(len(data))) if rows is None else rows
        lengths = data.lengths()
        self.lengths = [lengths[i] for i in self.rows]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, labels = self.data.row(self.rows[index])
        return {"input_ids": ids.long(), "labels": labels.long()}


class Collator:
    """Lays a list of rows out as one batch (see the module's docstring for ``layout``).

    Every layout gives ``input_ids`` and ``labels``; ``padded`` adds ``attention_mask``, the
    packed layouts ``position_ids`` (padding at the end of a packed row counts as one more
    sequence, which no real token can see under a causal mask). ``num_tokens`` is the real
    (unpadded) token count, ``num_rows`` the number of examples.
    """

    def __init__(self, pad_id: int, layout: str = "padded") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout: one of {', '.join(LAYOUTS)}")
        self.pad_id = pad_id
        self.layout = layout

    def rows(self, lengths: list[int]) -> list[list[int]]:
        """Which items go into which row."""
        if self.layout == "padded":
            return [[i] for i in range(len(lengths))]
        if self.layout == "flat":
            return [list(range(len(lengths)))]
        return [sorted(b) for b in pack_rows(lengths, max(lengths))]

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = [len(item["input_ids"]) for item in items]
        rows = self.rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        n = len(rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        positions = torch.arange(width).repeat(n, 1)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                k = lengths[i]
                ids[r, at : at + k] = items[i]["input_ids"]
                labels[r, at : at + k] = items[i]["labels"]
                positions[r, at : at + k] = torch.arange(k)
                at += k
            positions[r, at:] = torch.arange(width - at)
            mask[r, :at] = 1
        batch = {"input_ids": ids, "labels": labels}
        if self.layout == "padded":
            batch["attention_mask"] = mask
        else:
            batch["position_ids"] = positions
        batch["num_tokens"] = torch.tensor(sum(lengths))
        batch["num_rows"] = torch.tensor(len(items))
        return batch


class LengthGroupedBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of rows of similar length, in an order that is a function of (seed, epoch).

    Rows are shuffled, cut into mega-batches of ``batch_size * group`` rows, sorted by
    length inside each, split into batches, and the batches shuffled again.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group: int = 50) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.batch_size * self.group
        batches: list[list[int]] = []
        for a in range(0, len(order), mega):
            chunk = sorted(order[a : a + mega], key=lambda i: -self.lengths[i])
            batches += [
                chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)
            ]
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        return iter([batches[i] for i in shuffle])

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def target_count(batch: dict[str, Any]) -> int:
    """Tokens the loss sums over: labels that are not IGNORE after the one-token shift."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def split_rows(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train rows, eval rows)``: ``fraction`` of ``n`` rows held out (at least one), by seed."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    generator = torch.Generator().manual_seed(seed * 104729 + 17)
    order = torch.randperm(n, generator=generator).tolist()
    k = min(max(round(n * fraction), 1), n - 1)
    return sorted(order[k:]), sorted(order[:k])
