"""Labelers that need no model: ``filename`` (caption from the file name) and ``sidecar``
(caption from the ``.txt`` file next to each image, as kohya-style datasets keep them)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from lorakit.api import DataError, Labeler

if TYPE_CHECKING:
    from PIL import Image

_COPY = re.compile(r"[\s_-]*(\(\d+\)|\bcopy\b)\s*$", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s_\-.]+")


def caption_from_name(path: str | Path, *, lowercase: bool = False) -> str:
    """``001_red-car (2).png`` -> ``red car``.

    Underscores, dashes and dots become spaces; numbering is dropped: numbers before and
    after the words, a ``(2)`` or ``copy`` that file managers add. Numbers between words
    stay (``car_2_doors`` -> ``car 2 doors``). A name of numbers only gives an empty caption.
    """
    stem = Path(path).stem
    while True:
        trimmed = _COPY.sub("", stem)
        if trimmed == stem:
            break
        stem = trimmed
    words = [w for w in _SEPARATORS.split(stem) if w]
    while words and words[0].isdigit():
        words.pop(0)
    while words and words[-1].isdigit():
        words.pop()
    caption = " ".join(words)
    return caption.lower() if lowercase else caption


class FilenameLabeler(Labeler):
    """Captions each image with its cleaned-up file name."""

    batch_size = 256

    def __init__(self, lowercase: bool = False) -> None:
        self.lowercase = lowercase

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        return [caption_from_name(p, lowercase=self.lowercase) for p in paths]


class SidecarLabeler(Labeler):
    """Reads the caption of ``photo.png`` from ``photo.txt`` (``extension``) next to it.

    Lines are joined with spaces. ``missing`` says what an image without one gets: an
    ``error`` (the default, naming the image), an ``empty`` caption, or its ``filename``.
    """

    batch_size = 256

    def __init__(self, extension: str = ".txt", missing: str = "error") -> None:
        self.extension = extension
        self.missing = missing

    def _caption(self, path: Path) -> str:
        sidecar = path.with_suffix(self.extension)
        if sidecar.is_file():
            try:
                return " ".join(sidecar.read_text(encoding="utf-8-sig").split())
            except UnicodeDecodeError as exc:
                raise DataError(f"not UTF-8 text ({exc.reason})", where=sidecar) from None
        if self.missing == "empty":
            return ""
        if self.missing == "filename":
            return caption_from_name(path)
        raise DataError(
            f"no caption file {sidecar.name} next to it "
            "(--option missing=empty or missing=filename labels it anyway)",
            where=path,
        )

    def label(self, images: list[Image.Image], paths: list[Path]) -> list[str]:
        return [self._caption(p) for p in paths]
