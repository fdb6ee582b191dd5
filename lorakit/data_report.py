"""What a backend says of a run's training data before the run: each example as the run
reads it (an image's caption, size and bucket; a text row rendered through the chat
template and its token count), with warnings. ``lorakit ui``'s dataset view shows it
(:meth:`lorakit.api.BackendPlugin.inspect_data`). Plain dataclasses: no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DataRow:
    """One example: an image and its caption, or a text row."""

    #: The image's file name in its folder, or ``file:line`` of a text row.
    name: str
    #: The caption, or the row rendered through the chat template.
    text: str
    #: The image's folder (images only).
    folder: str = ""
    #: ``(width, height)`` of the image.
    size: tuple[int, int] | None = None
    #: ``(width, height)`` of the bucket it trains at.
    bucket: tuple[int, int] | None = None
    #: Tokens of the rendered row (text only).
    tokens: int | None = None
    #: What is wrong with it (unreadable, tiny, a duplicate, a missing caption, too long).
    notes: list[str] = field(default_factory=list)


@dataclass
class DataReport:
    """The training data of a config, as its backend reads it."""

    #: ``images`` or ``text``.
    kind: str
    #: The folder or file read.
    source: str
    #: The reader that reads it (``metadata_csv``, ``caption_files``, ``chat``, ``alpaca``...).
    format: str
    #: The examples (at most the ``limit`` asked for).
    rows: list[DataRow] = field(default_factory=list)
    #: Examples in all (``rows`` may hold fewer).
    total: int = 0
    #: Problems of the whole set, one line each.
    warnings: list[str] = field(default_factory=list)
    #: Images per bucket, ``"WxH" -> count`` (images only).
    buckets: dict[str, int] = field(default_factory=dict)
    #: The resolution the buckets are for (images), or the longest row trained (text).
    resolution: int | None = None
    #: The chat template rows are rendered with (text only).
    template: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
