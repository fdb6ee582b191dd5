"""Aspect-ratio buckets: sizes, which bucket an image goes to, and a batch sampler.

Each image keeps its shape: it goes to the bucket (a width × height of about
``resolution²`` pixels, sides multiples of ``bucket_step``) whose aspect ratio is closest to
its own, is scaled to cover it and center-cropped (or cropped at a random offset each step
with ``sd.random_crop``). With ``sd.bucket_no_upscale`` a small image gets a bucket of its own
size instead of being enlarged. A batch holds images of one bucket. The
batch order is a pure function of (seed, epoch), so every process computes the same batches
and a resumed run replays an epoch exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from lorakit.api import ConfigError
from lorakit_sd.data.images import open_rgb


def bucket_sizes(
    resolution: int, step: int, min_side: int | None = None, max_side: int | None = None
) -> list[tuple[int, int]]:
    """(width, height) buckets with sides multiple of ``step`` and area ≤ ``resolution²``.

    Sides lie between ``min_side`` (default ``resolution / 2``) and ``max_side`` (default
    ``resolution * 2``), both rounded to multiples of ``step`` and never below ``step``; the
    square bucket of side ``resolution`` (rounded down to a multiple of ``step``) is always
    there. A ``resolution`` below ``step`` leaves no bucket: a :class:`ConfigError`.
    """

    if step <= 0:
        raise ConfigError(f"must be positive (got {step})", key="sd.bucket_step")
    if resolution < step:
        raise ConfigError(
            f"sd.resolution {resolution} is smaller than sd.bucket_step {step}: "
            "no bucket fits; lower sd.bucket_step or raise sd.resolution",
            key="sd.bucket_step",
        )
    square = resolution // step * step
    low = max(step, -(-(min_side or resolution // 2) // step) * step)  # rounded up
    high = max(square, (max_side or resolution * 2) // step * step)  # rounded down
    area = resolution * resolution
    sizes = {(square, square)}
    width = low
    while width <= high:
        height = min(high, (area // width) // step * step)
        if height >= low:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``size``'s (ties: the larger area)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, not {w}x{h}")
    buckets = [b for b in buckets if b[0] > 0 and b[1] > 0]
    if not buckets:
        raise ValueError("no bucket of positive size to choose from")
    ratio = math.log(w / h)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def no_upscale_bucket(size: tuple[int, int], resolution: int, step: int) -> tuple[int, int]:
    """The bucket of an image that is never enlarged (kohya's ``bucket_no_upscale``).

    An image larger than ``resolution²`` pixels is scaled down to that area, keeping its
    aspect; the bucket is then its size rounded down to multiples of ``step`` (at least one
    step), so resizing into the bucket never enlarges it.
    """
    w, h = size
    scale = min(1.0, math.sqrt(resolution * resolution / (w * h)))
    return (max(step, int(w * scale) // step * step), max(step, int(h * scale) // step * step))


def fit(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int, int, int]:
    """Resize and crop to fill ``bucket``: ``(resized_w, resized_h, left, top)``."""
    w, h = size
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
    return rw, rh, (rw - bw) // 2, (rh - bh) // 2


def random_crop(resized: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """A crop offset ``(left, top)`` drawn from torch's global generator."""
    left = int(torch.randint(0, resized[0] - bucket[0] + 1, ()).item())
    top = int(torch.randint(0, resized[1] - bucket[1] + 1, ()).item())
    return left, top


def load_pixels(
    path: str, bucket: tuple[int, int], crop: tuple[int, int] | None = None
) -> torch.Tensor:
    """An image file as a ``[3, h, w]`` tensor in [-1, 1], fitted to ``bucket``.

    ``crop`` is the ``(left, top)`` offset in the resized image; default the center.
    """
    return image_pixels(open_rgb(path), bucket, crop)


def image_pixels(
    image: Any, bucket: tuple[int, int], crop: tuple[int, int] | None = None
) -> torch.Tensor:
    """A PIL image as :func:`load_pixels` makes a file's."""
    import numpy as np

    image = fit_image(image, bucket, crop)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def fit_image(image: Any, bucket: tuple[int, int], crop: tuple[int, int] | None = None) -> Any:
    """A PIL image scaled to cover ``bucket`` and cropped to it (``crop``: the ``(left, top)``
    offset in the scaled image; default the center). Images and their masks both go here."""
    from PIL import Image

    rw, rh, left, top = fit(image.size, bucket)
    if crop is not None:
        left, top = crop
    image = image.resize((rw, rh), Image.Resampling.LANCZOS)
    return image.crop((left, top, left + bucket[0], top + bucket[1]))


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices that share a bucket, shuffled by (seed, epoch)."""

    def __init__(self, buckets: list[Any], batch_size: int, seed: int) -> None:
        self.buckets = list(buckets)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        groups: dict[Any, list[int]] = {}
        for index, bucket in enumerate(self.buckets):
            groups.setdefault(bucket, []).append(index)
        self.groups = [groups[k] for k in sorted(groups)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        out: list[list[int]] = []
        for group in self.groups:
            order = torch.randperm(len(group), generator=generator).tolist()
            members = [group[i] for i in order]
            out += [
                members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)
            ]
        order = torch.randperm(len(out), generator=generator).tolist()
        return [out[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return sum(math.ceil(len(g) / self.batch_size) for g in self.groups)
