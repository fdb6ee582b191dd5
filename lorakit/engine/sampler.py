"""A shuffling sampler that is a pure function of (seed, epoch).

No hidden generator state: every process computes the same order, and a resumed run
re-creates an epoch's order exactly, then skips what was already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch


class EpochOrdered(Protocol):
    """A sampler (or batch sampler) whose order is set per epoch: this one, or a backend's
    (buckets, length groups). ``set_epoch`` is called before each epoch."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...


class EpochSampler(torch.utils.data.Sampler[int]):
    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length
