"""Token rows → training items: packed sequences, or single rows in length-grouped batches.

Packing puts several rows into one sequence of at most ``max_seq_len`` tokens (best fit,
longest first, once, deterministically). Each row's position ids start again at 0, and the
model is called without an attention mask and without a cache, so transformers builds a
block-diagonal causal mask from the position ids: rows never attend to each other.

Without packing, each item is one row; a :class:`LengthGroupedBatchSampler` puts rows of
similar length together so little padding is wasted, and the batch carries an attention
mask. Both orders are pure functions of ``(seed, epoch)``.
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


class TokenDataset(torch.utils.data.Dataset):
    """Items are single rows (``groups`` None) or packed groups of rows."""

    def __init__(self, data: TokenizedData, groups: list[list[int]] | None = None) -> None:
        self.data = data
        self.groups = groups
        row_lengths = data.lengths()
        if groups is None:
            self.lengths = row_lengths
        else:
            self.lengths = [sum(row_lengths[i] for i in g) for g in groups]

    @property
    def packed(self) -> bool:
        return self.groups is not None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rows = self.groups[index] if self.groups is not None else [index]
        ids, labels, positions = [], [], []
        for r in rows:
            row_ids, row_labels = self.data.row(r)
            ids.append(row_ids)
            labels.append(row_labels)
            positions.append(torch.arange(len(row_ids)))
        return {
            "input_ids": torch.cat(ids).long(),
            "labels": torch.cat(labels).long(),
            "position_ids": torch.cat(positions),
        }


class Collator:
    """Right-pads a list of items into a batch.

    Packed: ``input_ids``, ``labels``, ``position_ids`` (the padding counts as one more
    sequence, which no real token can see under a causal mask). Unpacked: ``input_ids``,
    ``labels``, ``attention_mask``.
    """

    def __init__(self, pad_id: int, packed: bool) -> None:
        self.pad_id = pad_id
        self.packed = packed

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        n = len(items)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        if self.packed:
            positions = torch.arange(width).repeat(n, 1)
        else:
            mask = torch.zeros((n, width), dtype=torch.long)
        for i, item in enumerate(items):
            k = len(item["input_ids"])
            ids[i, :k] = item["input_ids"]
            labels[i, :k] = item["labels"]
            if self.packed:
                positions[i, :k] = item["position_ids"]
                positions[i, k:] = torch.arange(width - k)
            else:
                mask[i, :k] = 1
        batch = {"input_ids": ids, "labels": labels}
        # Real (unpadded) tokens, for the throughput metric.
        batch["num_tokens"] = torch.tensor(sum(len(item["input_ids"]) for item in items))
        if self.packed:
            batch["position_ids"] = positions
            # Rows in the batch (for the samples count), known before the forward pass.
            batch["num_rows"] = torch.tensor(
                sum(int((item["position_ids"] == 0).sum()) for item in items)
            )
        else:
            batch["attention_mask"] = mask
            batch["num_rows"] = torch.tensor(n)
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
