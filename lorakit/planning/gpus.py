"""Accelerator cards ``lorakit plan --gpu`` knows by name, and how ``--gpu`` is read.

``--gpu`` takes a size (``24GB``, ``24 GiB``, ``80G``, ``0.5GB``: read as GiB, the way cards
are sold: a "24 GB" RTX 4090 has 24,564 MiB) or a card name (``RTX 4090``, ``4090``,
``H100``, ``A100 40GB``). A plan fits when its peak stays under the card's memory minus a
reserve for the CUDA context, cuBLAS workspaces and allocator fragmentation:
:data:`RESERVE_FRACTION` of the card, at most :data:`RESERVE_GIB`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorakit.errors import UsageError

GIB = 1024**3
#: What a training process cannot use of a card: CUDA context, workspaces, fragmentation.
RESERVE_GIB = 1.5
RESERVE_FRACTION = 0.06

#: Card name → memory in GiB (the size the card is sold as; the first size is the default).
CARDS: dict[str, tuple[float, ...]] = {
    "RTX 3060": (12,),
    "RTX 3070": (8,),
    "RTX 3080": (10, 12),
    "RTX 3090": (24,),
    "RTX 4060 Ti": (16, 8),
    "RTX 4070": (12,),
    "RTX 4070 Ti": (12,),
    "RTX 4080": (16,),
    "RTX 4090": (24,),
    "RTX 5090": (32,),
    "RTX A4000": (16,),
    "RTX A5000": (24,),
    "RTX A6000": (48,),
    "RTX 6000 Ada": (48,),
    "T4": (16,),
    "V100": (16, 32),
    "A10": (24,),
    "A10G": (24,),
    "L4": (24,),
    "L40S": (48,),
    "A100": (80, 40),
    "H100": (80,),
    "H200": (141,),
    "B200": (180,),
    "MI300X": (192,),
}


@dataclass(frozen=True)
class Card:
    """A card to plan for: its name and memory."""

    name: str
    gib: float

    @property
    def usable_bytes(self) -> int:
        return int((self.gib - min(RESERVE_GIB, RESERVE_FRACTION * self.gib)) * GIB)

    def __str__(self) -> str:
        size = f"{self.gib:g} GiB"
        return size if self.name == size else f"{self.name} ({size})"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(g|gb|gib)?\s*$", re.IGNORECASE)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("nvidia", "").replace("geforce", ""))


def parse_gpu(text: str) -> Card:
    """A :class:`Card` from ``--gpu``: a size (``24GB``) or a card name (``RTX 4090``)."""
    size = _SIZE.match(text)
    if size and (size.group(2) or float(size.group(1)) < 1000):
        gib = float(size.group(1))
        if gib <= 0:
            raise UsageError(f"--gpu {text!r}: the memory must be more than 0")
        return Card(f"{gib:g} GiB", gib)
    wanted = _key(text)
    memory = re.search(r"(\d+)\s*(?:g|gb|gib)\s*$", text, re.IGNORECASE)
    if memory:
        wanted = _key(text[: memory.start()])
    for name, sizes in CARDS.items():
        key = _key(name)
        if wanted in (key, key.removeprefix("rtx")) and wanted:
            if memory:
                gib = float(memory.group(1))
                if gib not in sizes:
                    known = ", ".join(f"{s:g}GB" for s in sizes)
                    raise UsageError(f"--gpu {text!r}: {name} comes with {known}")
                return Card(f"{name} {gib:g}GB", gib)
            return Card(name, sizes[0])
    known = ", ".join(CARDS)
    raise UsageError(f"--gpu {text!r}: not a size (24GB) nor a card lorakit knows ({known})")


def local_card() -> Card | None:
    """The first CUDA device of this machine, or None (no GPU, or torch not imported)."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return Card(props.name, props.total_memory / GIB)
