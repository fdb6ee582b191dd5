"""Edit datasets: each target image with its control images (the images an instruction edits).

A row's control images come from its captions file (a ``control`` column in ``metadata.csv``,
``a.png|b.png`` for several; a ``control`` key in ``metadata.jsonl``) or, for rows without,
from a control folder (``sd.control_dir``, default ``<folder>/control`` when it exists) laid
out as ai-toolkit and musubi-tuner lay it out: the target's relative path and stem with any
image extension (``control/cat.jpg`` for ``cat.png``), or numbered for several
(``control/cat_0.png``, ``control/cat_1.png``). Every control image is fitted to its target's
bucket (the pair keeps one size; the same crop when the two images have the same size, else
its own center crop) and mirrored with it; its VAE moments are cached beside the target's.
Every row of a dataset has the same number of control images, and a model family that takes
none refuses a dataset that has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lorakit.api import DataError
from lorakit_sd.data.buckets import fit_image, image_pixels
from lorakit_sd.data.images import open_rgb
from lorakit_sd.data.masks import find_mask

#: the folder of control images looked for inside a data folder when sd.control_dir is unset
CONTROL_FOLDER = "control"


def control_folder(folder: Path, configured: Path | None) -> Path | None:
    """A data folder's control folder: the configured one, else ``folder/control`` if any."""
    if configured is not None:
        if not configured.is_dir():
            raise DataError(f"control folder not found: {configured} (sd.control_dir)")
        return configured
    default = folder / CONTROL_FOLDER
    return default if default.is_dir() else None


def find_controls(image: str, folder: Path, control_dir: Path) -> list[str]:
    """The control images of ``image`` in ``control_dir``: its stem, else ``stem_0``,
    ``stem_1``... (any image extension)."""
    same = find_mask(image, folder, control_dir)
    if same is not None:
        return [str(same)]
    found: list[str] = []
    while (numbered := find_mask(image, folder, control_dir, f"_{len(found)}")) is not None:
        found.append(str(numbered))
    return found


def check_counts(items: list[Any]) -> None:
    """Every item has as many control images as the first (a batch stacks them)."""
    if not items:
        return
    first = items[0]
    for item in items[1:]:
        if len(item.control) != len(first.control):
            raise DataError(
                f"{item.where or item.image}: {len(item.control)} control image(s), but "
                f"{first.where or first.image} has {len(first.control)}: every image of an "
                "edit dataset needs the same number of control images"
            )


def check_family(items: list[Any], family: Any, others: list[Any]) -> None:
    """Refuse control images ``family`` does not take (``others``: every installed family),
    in one line naming where they come from."""
    if items and not items[0].control and family.captions_see_control:
        raise DataError(
            f"{items[0].where or items[0].image}: {family.label} trains on pairs, and the "
            "training data has no control images (a control column in metadata.csv or a "
            "control/ folder with the images' names)"
        )
    if not items or not items[0].control:
        return
    count, where = len(items[0].control), items[0].where or items[0].image
    if not family.takes_control:
        edit = [f.label for f in others if f.takes_control]
        hint = f" ({', '.join(edit)})" if edit else ""
        raise DataError(
            f"{where}: the training data has control images, but {family.label} takes none; "
            f"train an edit model{hint} or remove the control images"
        )
    if count > family.max_control_images:
        raise DataError(
            f"{where}: {count} control images per image, but {family.label} takes at most "
            f"{family.max_control_images}"
        )


def control_pixels(item: Any, crop: tuple[int, int] | None = None) -> torch.Tensor:
    """An item's control images fitted to its bucket: ``[K, 3, h, w]`` in [-1, 1]."""
    out = []
    for path in item.control:
        image = open_rgb(path)
        out.append(image_pixels(image, item.bucket, crop if image.size == item.size else None))
    return torch.stack(out)


def control_pictures(item: Any) -> list[Any]:
    """An item's control images fitted to its bucket (centered), as PIL images: what an edit
    model's text encoder sees with the instruction."""
    return [fit_image(open_rgb(path), item.bucket) for path in item.control]


def caption_entries(items: list[Any], with_control: bool) -> tuple[list[str], list[int]]:
    """The text cache's entries (distinct captions, the empty one last) and each item's.

    ``with_control``: the family encodes a caption together with its control images, so an
    entry is a (caption, control images) pair, named by the caption and the images' hash."""
    positions: dict[str, int] = {}
    ids = []
    for item in items:
        key = f"{item.caption}\x00{item.control_hash}" if with_control else item.caption
        ids.append(positions.setdefault(key, len(positions)))
    return [*positions, ""], ids


def entry_caption(entry: str) -> str:
    """The caption of a text-cache entry (:func:`caption_entries`)."""
    return entry.split("\x00", 1)[0]
