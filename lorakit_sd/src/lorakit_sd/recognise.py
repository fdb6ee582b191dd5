"""Whether a config's ``base_model`` and ``train_data_dir`` are the ``sd`` backend's to read.

Asked when a config names no ``task_type`` and several backends are installed. Local files
only, and only their headers: a diffusers folder's ``model_index.json``, a single file's
tensor names, a folder listing. A hub id is never looked up.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.api import METADATA_NAME, UsageError, is_image_name
from lorakit_sd import families
from lorakit_sd.models import PICKLE_SUFFIXES, peek_family

#: Pickled checkpoints an image model comes in (``.bin`` is left to whoever reads its magic).
IMAGE_PICKLES = tuple(s for s in PICKLE_SUFFIXES if s != ".bin")


def reads_model(base_model: str) -> str | None:
    """``a single-file <family> checkpoint``, ``a diffusers <family> folder``, ...; None:
    not one of ours."""
    path = Path(base_model).expanduser()
    if path.is_file() and path.suffix.lower() in IMAGE_PICKLES:
        return "a pickled image-model checkpoint"
    try:
        family = peek_family(base_model)
    except (UsageError, OSError, ValueError):
        return None
    if family is None:
        return None
    label = families.label(family)
    if path.is_dir():
        return f"a diffusers {label} folder"
    return f"a single-file {label} checkpoint"


def reads_data(train_data_dir: str) -> str | None:
    """``a folder of images with metadata.csv``; None: no images there."""
    root = Path(train_data_dir).expanduser()
    if not root.is_dir():
        return None
    folders = [root, *(p for p in sorted(root.iterdir())[:256] if p.is_dir())]
    for folder in folders:
        if any(is_image_name(p.name) for p in _first(folder)):
            captions = " with metadata.csv" if (root / METADATA_NAME).is_file() else ""
            return f"a folder of images{captions}"
    return None


def _first(folder: Path, limit: int = 4096) -> list[Path]:
    """Up to ``limit`` entries of ``folder`` (a listing bounded for huge folders)."""
    out = []
    for entry in folder.iterdir():
        out.append(entry)
        if len(out) >= limit:
            break
    return out
