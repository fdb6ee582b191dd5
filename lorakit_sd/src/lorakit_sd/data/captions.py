"""Caption augmentation: tags shuffled after the kept ones (``sd.shuffle_tags``).

Draws from torch's global generator, so a resumed run replays it exactly.
"""

from __future__ import annotations

import torch


def shuffle_tags(caption: str, keep: int, separator: str = "") -> str:
    """The comma-separated tags after the first ``keep``, in a random order.

    A caption holding ``separator`` (kohya's ``keep_tokens_separator``) is split there
    instead, and ``keep`` is not used: the tags before its first occurrence stay first,
    those after a second one stay last (a further separator there only ends a tag), in
    order; the tags between are shuffled.
    """
    tail: list[str] = []
    if separator and separator in caption:
        head_text, _, rest = caption.partition(separator)
        middle_text, _, tail_text = rest.partition(separator)
        head, middle, tail = (
            [t.strip() for t in text.split(",") if t.strip()]
            for text in (head_text, middle_text, tail_text.replace(separator, ","))
        )
    else:
        tags = [t.strip() for t in caption.split(",")]
        head, middle = tags[:keep], tags[keep:]
    if len(middle) > 1:
        middle = [middle[i] for i in torch.randperm(len(middle)).tolist()]
    return ", ".join(t for t in head + middle + tail if t)
