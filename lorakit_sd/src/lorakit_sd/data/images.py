"""Opening training images (through the core decoder) and a full decode check up front.

Every image is decoded once before training starts, so a truncated or corrupt file is
reported (by name) before the first step instead of failing the run halfway.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lorakit.api import decode_rgb


def open_rgb(path: str | Path) -> Any:
    """The image at ``path``, upright, 8-bit RGB, transparency over white.

    The one decoder labeling uses too (``lorakit.api.decode_rgb``): 16-bit and float
    images are scaled, not clipped.
    """

    return decode_rgb(path)


def check_image(path: str | Path) -> tuple[tuple[int, int] | None, str | None]:
    """``((width, height), None)`` for a readable image, else ``(None, reason)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = open_rgb(path)
    except UnidentifiedImageError:
        return None, "not an image PIL can read"
    except Image.DecompressionBombError as exc:
        return None, f"too large ({exc})"
    except (OSError, SyntaxError, ValueError) as exc:
        return None, f"cannot decode ({exc})"
    if min(image.size) < 8:
        return None, f"too small ({image.size[0]}x{image.size[1]})"
    return image.size, None


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (cache keys and the dataset fingerprint)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
